"""The controller's one reading thread for plain-TCP switches (controller/reader.py),
against a hand-driven peer on a real controller: messages split across reads and
packed into one are each read whole, and a peer the controller has dropped is let go
even while it stays silent and connected.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.guard import HANDSHAKE_TIMEOUT
from controller.reader import CHECK_INTERVAL
from leases.etcd_server import EtcdServer
from leases.model import datapath_id_for
from ovsdb.instance import OvsInstance
from tests.ofharness import Cluster, node_ip, running, wait_for

pytestmark = pytest.mark.integration
V = 5  # OpenFlow 1.4
HELLO, ECHO_REQUEST, ECHO_REPLY, FEATURES_REQUEST, FEATURES_REPLY = 0, 2, 3, 5, 6
MULTIPART_REQUEST, MULTIPART_REPLY, MP_PORT_DESC, MP_FLOW_MONITOR = 18, 19, 13, 16


@pytest.fixture
def cluster(etcd: EtcdServer, ovs: OvsInstance) -> Iterator[Cluster]:
    with running(etcd, ovs) as c:
        yield c


def _msg(mtype: int, body: bytes = b"", xid: int = 7) -> bytes:
    return struct.pack("!BBHI", V, mtype, 8 + len(body), xid) + body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the controller closed the connection")
        data += chunk
    return data


def _until(sock: socket.socket, mtype: int, mp_type: int | None = None) -> tuple[int, list[int]]:
    """Read the controller's messages until one of `mtype` (and multipart `mp_type`):
    its xid, and the xids of the echo replies read on the way."""
    echoes = []
    while True:
        _, got, length, xid = struct.unpack("!BBHI", _recv_exactly(sock, 8))
        body = _recv_exactly(sock, length - 8)
        if got == ECHO_REPLY:
            echoes.append(xid)
        if got == mtype and (mp_type is None or struct.unpack_from("!H", body)[0] == mp_type):
            return xid, echoes


def _connect(cluster: Cluster) -> socket.socket:
    """A connection to the controller once it listens."""
    peers: list[socket.socket] = []

    def connected() -> bool:
        try:
            peers.append(socket.create_connection(("127.0.0.1", cluster.controller.port), 15))
        except ConnectionRefusedError:
            return False
        return True

    wait_for("the controller listening", connected)
    return peers[0]


def _byte_by_byte(sock: socket.socket, data: bytes) -> None:
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        time.sleep(0.002)  # each byte its own segment (TCP_NODELAY), its own read


def test_split_and_packed_messages_are_each_read_whole(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.lease(5)
    c.controller.start(tmp_path)
    with _connect(c) as peer:
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _byte_by_byte(peer, _msg(HELLO))
        xid, _ = _until(peer, FEATURES_REQUEST)
        features = struct.pack("!QIBB2xII", datapath_id_for(node_ip(5)), 0, 254, 0, 0x4F, 0)
        _byte_by_byte(peer, _msg(FEATURES_REPLY, features, xid))
        xid, _ = _until(peer, MULTIPART_REQUEST, MP_PORT_DESC)
        _byte_by_byte(peer, _msg(MULTIPART_REPLY, struct.pack("!HH4x", MP_PORT_DESC, 0), xid))
        # the handshake read whole: the controller takes the switch and asks for its monitor
        _until(peer, MULTIPART_REQUEST, MP_FLOW_MONITOR)
        log = c.controller.log()
        assert f"switch of {node_ip(5)} connected from" in log
        assert f"OpenFlow peer ('127.0.0.1', {peer.getsockname()[1]}) is read by the shared" in log
        # three messages in one segment: three replies
        peer.sendall(b"".join(_msg(ECHO_REQUEST, b"x" * n, 0x50 + n) for n in range(3)))
        echoes: list[int] = []
        while len(echoes) < 3:
            echoes += _until(peer, ECHO_REPLY)[1]
        assert echoes == [0x50, 0x51, 0x52]


def _held_by_a_process(local_port: int) -> bool:
    """Whether the controller's end of the connection from `local_port` is still some
    process's socket (not only the kernel's, closing)."""
    out = subprocess.run(["ss", "-Htnp", "state", "all", f"( dport = :{local_port} )"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return "pid=" in out


def _released_after_its_drop(cluster: Cluster, peer: socket.socket) -> None:
    """Read the controller's hello and the end of its stream (it dropped the peer), while the
    peer keeps its end open and says nothing: the controller lets go all the same, soon."""
    local_port = peer.getsockname()[1]
    while peer.recv(4096):
        pass
    wait_for("the controller letting the connection go",
             lambda: not _held_by_a_process(local_port), timeout=3 * CHECK_INTERVAL)  # fmt: skip


def test_a_dropped_peer_that_stays_connected_is_let_go(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.controller.start(tmp_path)
    with _connect(c) as silent, _connect(c) as malformed:
        for port in (silent.getsockname()[1], malformed.getsockname()[1]):
            wait_for("the controller holding the connection", lambda p=port: _held_by_a_process(p))
        # a hello element of length 0: dropped at once (controller/wirecheck.py)
        malformed.sendall(_msg(HELLO, struct.pack("!HH", 1, 0)))
        _released_after_its_drop(c, malformed)
        # no hello at all: dropped when its handshake time is up (controller/guard.py)
        silent.settimeout(HANDSHAKE_TIMEOUT + 10)
        _released_after_its_drop(c, silent)
    for reason in ("malformed", "handshake_timeout"):
        assert c.controller.metric("vxflow_controller_switches_refused_total", reason=reason) == 1
