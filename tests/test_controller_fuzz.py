"""A fuzz test of the controller's OpenFlow listener, bounded in count and time.

Peers connect to the controller port and send random bytes and mutated OpenFlow
1.4 messages (bit flips, truncations, lying lengths, foreign versions, oversized
claims), or connect and never finish the handshake. The controller must stay up,
keep every real switch's session (no reconnect) and table, and still program.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.guard import HANDSHAKE_TIMEOUT
from leases.etcd_server import EtcdServer
from leases.model import datapath_id_for
from ovsdb.instance import OvsInstance
from tests.ofharness import Cluster, node_ip, running, wait_for

pytestmark = pytest.mark.integration

MESSAGES = 3000  # at least this many fuzzed messages...
BUDGET = 120.0  # ...within this many seconds (the test fails if the budget is too short)
SEED = 1212
V = 5  # OpenFlow 1.4


def _msg(mtype: int, body: bytes = b"", xid: int = 7, version: int = V) -> bytes:
    return struct.pack("!BBHI", version, mtype, 8 + len(body), xid) + body


@pytest.fixture
def cluster(etcd: EtcdServer, ovs: OvsInstance) -> Iterator[Cluster]:
    with running(etcd, ovs) as c:
        yield c


def templates() -> list[bytes]:
    """Well-formed messages a switch may send, for the mutations to start from."""
    fake_dpid = datapath_id_for(node_ip(99))  # a node's shape, but no lease holds it
    flow_entry = struct.pack("!HBxIIHHHHH2xQQQ", 56, 0, 1, 0, 0, 0, 0, 0, 0, 0x7601, 0, 0)
    flow_entry += struct.pack("!HH4x", 1, 4) + struct.pack("!HH4x", 4, 8)
    port = struct.pack("!IH2x6s2x16sII", 1, 40, b"\x02" * 6, b"vxlan0".ljust(16, b"\0"), 0, 0)
    packet_in = struct.pack("!IHBBQ", 0xFFFFFFFF, 14, 0, 0, 0) + struct.pack("!HH4x", 1, 4)
    packet_in += b"\0\0" + b"\xff" * 14
    return [
        _msg(0),  # hello
        _msg(0, struct.pack("!HHI", 1, 8, 0b110000)),  # hello with a version bitmap
        _msg(2, b"ping" * 4),  # echo request
        _msg(6, struct.pack("!QIBB2xII", fake_dpid, 0, 254, 0, 0x4F, 0)),  # features reply
        _msg(1, struct.pack("!HH", 2, 3) + b"\x05\x0e\x00\x08\x00\x00\x00\x01"),  # error
        _msg(19, struct.pack("!HH4x", 1, 0) + flow_entry),  # flow-stats reply
        _msg(10, packet_in),
        _msg(12, struct.pack("!B7x", 2) + port),  # port status
        _msg(21),  # barrier reply
        _msg(8, struct.pack("!HH", 0, 128)),  # get-config reply
        _msg(200, b"\x00" * 24),  # no such type
    ]


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # noise
        return rng.randbytes(rng.randint(1, 300))
    msg = bytearray(rng.choice(pool))
    if kind == 1:  # bit flips anywhere
        for _ in range(rng.randint(1, 6)):
            msg[rng.randrange(len(msg))] ^= 1 << rng.randrange(8)
    elif kind == 2:  # truncated, the header still claiming the full length
        msg = msg[: rng.randint(1, len(msg))]
    elif kind == 3:  # a length that lies (below the header, a little more, far more)
        struct.pack_into("!H", msg, 2, rng.choice([0, 1, 7, len(msg) + 3, 0xFFFF]))
    elif kind == 4:  # another version
        msg[0] = rng.choice([0, 1, 4, 6, 0x7F, 0xFF])
    else:  # oversized: a body far larger than any reply, length field at the maximum
        msg = bytearray(_msg(rng.choice([19, 10, 1]), rng.randbytes(0xFFFF - 8)))
    return bytes(msg)


def fuzz(port: int, rng: random.Random) -> int:
    """Fuzzed connections until MESSAGES were sent or BUDGET ran out; messages sent."""
    pool = templates()
    sent, deadline = 0, time.monotonic() + BUDGET
    while sent < MESSAGES and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as peer:
                if rng.random() < 0.7:
                    peer.sendall(_msg(0))
                for _ in range(rng.randint(1, 60)):
                    peer.sendall(mutate(rng, pool))
                    sent += 1
        except OSError:  # the controller dropped this peer: what it should do
            continue
    return sent


def test_fuzzed_peers_leave_the_controller_and_every_switch_intact(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    c.lease(1), c.lease(2)
    c.controller.start(tmp_path)
    c.add_switch(1), c.add_switch(2)
    c.wait_converged()
    tables = {bridge: c.dump(bridge) for bridge in c.bridges.values()}

    def sessions() -> list[int]:  # how often each real switch connected
        log = c.controller.log()
        return [log.count(f"switch of {node_ip(i)} connected from") for i in (1, 2)]

    assert sessions() == [1, 1]

    silent = socket.create_connection(("127.0.0.1", c.controller.port), timeout=5)
    started = time.monotonic()
    sent = fuzz(c.controller.port, random.Random(SEED))
    assert sent >= MESSAGES, f"only {sent} messages in {BUDGET:.0f}s"

    assert c.controller.proc is not None and c.controller.proc.poll() is None  # still up
    for bridge, table in tables.items():
        assert c.dump(bridge) == table
    # the real switches kept their sessions: no reconnect
    assert sessions() == [1, 1]
    c.lease(3)  # and it still programs them
    c.wait_converged()

    # the peer that never said hello is dropped once its handshake time is up
    silent.settimeout(max(1.0, HANDSHAKE_TIMEOUT + 10 - (time.monotonic() - started)))
    try:
        while silent.recv(4096):  # the controller's hello, then the close
            pass
    finally:
        silent.close()
    wait_for("the silent peer counted",
             lambda: c.controller.metric("vxflow_controller_switches_refused_total",
                                         reason="handshake_timeout") >= 1)  # fmt: skip
    log = c.controller.log()
    assert "Traceback" not in log, log[-3000:]
