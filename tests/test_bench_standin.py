"""The benchmark's OpenFlow switch stand-in holds what a controller programs, like a switch.

Driven with the controller's own encoder and decoder (controller/ofwire.py) over
loopback: a bundle of a compiled table lands whole, reads back as the same
flows, a strict delete removes exactly one, and convergence is recorded.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace

import pytest

from bench import ofwire as of
from bench.leasegen import cluster
from bench.standin import StandInFleet, StandInSwitch, SwitchState, flow_mod
from controller import ofwire
from flows.compiler import compile_node, lease_cookie
from flows.ports import TUNNEL_OFPORT
from leases.model import datapath_id_for


def _recv(sock: socket.socket) -> tuple[int, int, bytes]:
    head = b""
    while len(head) < 8:
        head += sock.recv(8 - len(head))
    _v, msg_type, length, xid = of.HEADER.unpack(head)
    body = b""
    while len(body) < length - 8:
        body += sock.recv(length - 8 - len(body))
    return msg_type, xid, body


def _until(sock: socket.socket, msg_type: int) -> list[bytes]:
    """Bodies of every message of `msg_type` until one without REPLY_MORE (or a non-multipart)."""
    bodies = []
    while True:
        t, _xid, body = _recv(sock)
        assert t != of.ERROR, f"stand-in answered with an error: {body[:4].hex()}"
        if t != msg_type:
            continue
        bodies.append(body)
        if t != of.MULTIPART_REPLY or not struct.unpack_from("!H", body, 2)[0] & of.MPF_REPLY_MORE:
            return bodies


def _read_back(sock: socket.socket, xid: int) -> set:
    sock.sendall(ofwire.encode_flow_stats_request(xid))
    return {f for body in _until(sock, of.MULTIPART_REPLY) for f in ofwire.decode_flow_stats(body[8:])}


@contextlib.contextmanager
def _one_standin(dpid: int, size: int) -> Iterator[tuple[StandInFleet, socket.socket]]:
    """One stand-in of datapath-id `dpid` (converged at `size` flows), told to connect to
    the listening socket this yields with it (on loopback); stopped in the end."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        fleet = StandInFleet("127.0.0.1", server.getsockname()[1], {dpid: size},
                             [(TUNNEL_OFPORT, "vxlan0")]).start()  # fmt: skip
        try:
            fleet.go()
            yield fleet, server
        finally:
            fleet.stop()


def test_standin_holds_a_bundled_table_and_reads_it_back() -> None:
    c = cluster(300)
    node = c.leases[0]
    desired = compile_node(c.config, c.leases, (), node.public_ip)
    dpid = datapath_id_for(node.public_ip)
    with _one_standin(dpid, len(desired)) as (fleet, server):
        sock, _ = server.accept()
        with sock:
            assert _recv(sock)[0] == of.HELLO
            sock.sendall(of.message(of.OFP14, of.HELLO, 1))
            sock.sendall(of.message(of.OFP14, of.FEATURES_REQUEST, 2))
            (body,) = _until(sock, of.FEATURES_REPLY)
            assert struct.unpack_from("!Q", body)[0] == dpid
            assert _read_back(sock, 3) == set()

            flows = sorted(desired, key=lambda f: f.key)
            sock.sendall(
                ofwire.encode_bundle_control(7, ofwire.OFPBCT_OPEN_REQUEST, 10)
                + ofwire.encode_bundle_adds(7, flows, ofwire.OFPFC_ADD, 11)
                + ofwire.encode_bundle_control(7, ofwire.OFPBCT_COMMIT_REQUEST, 9000)
                + ofwire.encode_barrier(9001)
            )
            _until(sock, of.BARRIER_REPLY)
            assert _read_back(sock, 9002) == set(desired)

            gone = flows[-1]
            sock.sendall(ofwire.encode_flow_mod(gone, ofwire.OFPFC_DELETE_STRICT, 9003)
                         + ofwire.encode_barrier(9004))  # fmt: skip
            _until(sock, of.BARRIER_REPLY)
            assert _read_back(sock, 9005) == set(desired) - {gone}
        assert fleet.wait_converged(timeout=10) >= fleet.started
        report = fleet.stop()
    assert report[dpid]["flows"] == len(desired) - 1
    assert report[dpid]["unsupported"] == {}
    assert report[dpid]["converged_at"] is not None


def test_a_dropped_standin_connects_again_with_its_table() -> None:
    """The controller drops a stand-in (as it does one that misses its handshake
    deadline): it connects again after its backoff, as a switch does, and reads back
    the table it held, an uncommitted bundle of the lost connection gone."""
    c = cluster(20)
    node = c.leases[0]
    flows = sorted(compile_node(c.config, c.leases, (), node.public_ip), key=lambda f: f.key)
    dpid = datapath_id_for(node.public_ip)
    with _one_standin(dpid, len(flows)) as (fleet, server):
        sock, _ = server.accept()
        with sock:
            assert _recv(sock)[0] == of.HELLO
            sock.sendall(b"".join(ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 2) for f in flows[1:])
                         + ofwire.encode_bundle_control(7, ofwire.OFPBCT_OPEN_REQUEST, 3)
                         + ofwire.encode_bundle_adds(7, flows[:1], ofwire.OFPFC_ADD, 4)
                         + ofwire.encode_barrier(5))  # fmt: skip
            _until(sock, of.BARRIER_REPLY)
        sock, _ = server.accept()  # the stand-in's second connection
        with sock:
            assert _recv(sock)[0] == of.HELLO
            sock.sendall(ofwire.encode_bundle_control(7, ofwire.OFPBCT_COMMIT_REQUEST, 6)
                         + ofwire.encode_barrier(7))  # fmt: skip
            _until(sock, of.BARRIER_REPLY)
            assert _read_back(sock, 8) == set(flows[1:])
        report = fleet.stop()
    assert report[dpid]["reconnects"] == 1
    assert report[dpid]["unsupported"] == {}


def test_watching_a_larger_table_each_lease_finds_the_same_barrier_as_a_full_scan() -> None:
    state = SwitchState(dpid=1, expected=10)
    state.barriers = [(1.0, 10), (2.0, 12), (3.0, 12), (4.0, 14)]
    for size, when in ((12, 2.0), (13, 4.0), (14, 4.0), (15, None), (11, 2.0), (10, 1.0)):
        state.watch(size)
        assert state.reached_at == when, size
        full_scan = next((t for t, n in state.barriers if n >= size), None)
        assert state.reached_at == full_scan


class _Wire:
    """What a stand-in wrote back (a transport's write side, for feeding it by hand)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []  # (type, xid)
        self.closed = False

    def write(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            _v, msg_type, length, xid = of.HEADER.unpack_from(data, pos)
            self.sent.append((msg_type, xid))
            pos += length

    def close(self) -> None:
        self.closed = True


def _held(state: SwitchState) -> set:
    stats = b"".join(StandInSwitch.flow_stats(*flow) for flow in state.held())
    return set(ofwire.decode_flow_stats(stats))


def _fed(state: SwitchState, stream: bytes, seed: int) -> _Wire:
    """`stream` fed to a stand-in of `state` in random pieces, as a socket may cut it."""
    switch, wire, rng = StandInSwitch(state, []), _Wire(), random.Random(seed)
    switch.transport = wire  # type: ignore[assignment]
    pos = 0
    while pos < len(stream):
        step = rng.choice((1, 7, 8, 9, 100, 4096, 65536))
        switch.data_received(stream[pos : pos + step])
        pos += step
    return wire


def test_a_bundle_cut_anywhere_by_the_stream_lands_whole_at_its_commit() -> None:
    """Bundle adds are only framed as they arrive (however the stream cuts them) and
    applied at the commit: the table reads back as the controller's flows, exactly."""
    c = cluster(40, dual=True)
    flows = sorted(compile_node(c.config, c.leases, (), c.leases[0].public_ip), key=lambda f: f.key)
    state = SwitchState(dpid=1, expected=len(flows))
    opened = ofwire.encode_bundle_control(7, ofwire.OFPBCT_OPEN_REQUEST, 10)
    adds = ofwire.encode_bundle_adds(7, flows, ofwire.OFPFC_ADD, 11)
    wire = _fed(state, opened + adds + ofwire.encode_barrier(12), seed=1)
    assert state.flow_count() == 0 and wire.sent == [(of.BUNDLE_CONTROL, 10), (of.BARRIER_REPLY, 12)]
    assert state.messages[of.BUNDLE_ADD_MESSAGE] == len(flows)
    _fed(state, ofwire.encode_bundle_control(7, ofwire.OFPBCT_COMMIT_REQUEST, 13)
         + ofwire.encode_barrier(14), seed=2)  # fmt: skip
    assert state.flow_count() == len(flows) == state.flow_mods
    assert _held(state) == set(flows) and state.unsupported == {}
    assert [t for t, _size in state.barriers] == sorted(t for t, _size in state.barriers)
    assert [size for _t, size in state.barriers] == [0, len(flows)]
    assert state.converged_at == state.barriers[-1][0]


def test_cookie_masked_deletes_and_modifies_keep_to_their_cookies() -> None:
    """A whole-table delete or modify reaches the flows whose cookie matches under the
    mask, and only them; a modify replaces instructions and keeps each flow's cookie."""
    c = cluster(12)
    flows = compile_node(c.config, c.leases, (), c.leases[0].public_ip)
    state = SwitchState(dpid=1, expected=0)
    assert state.apply([ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1) for f in flows]) == []
    doomed = lease_cookie(c.leases[5])
    gone = {f for f in flows if f.cookie == doomed}
    assert gone and state.flow_mod(flow_mod(of.FC_DELETE, of.OFPTT_ALL, 0, of.EMPTY_MATCH, doomed,
                                            cookie_mask=(1 << 64) - 1))  # fmt: skip
    assert _held(state) == set(flows) - gone
    kept = lease_cookie(c.leases[3])
    table = next(f.table for f in flows if f.cookie == kept)
    changed = {f for f in flows if f.cookie == kept and f.table == table}
    # (the modify's cookie differs from theirs outside the mask: theirs stays)
    assert state.flow_mod(flow_mod(of.FC_MODIFY, table, 0, of.EMPTY_MATCH, kept ^ 1 << 40,
                                   cookie_mask=0xFFFFFFFF))  # fmt: skip
    expect = {replace(f, actions=()) if f in changed else f for f in set(flows) - gone}
    assert _held(state) == expect
    # with a match, a non-strict command needs a classifier: refused, nothing changed
    in_port_1 = struct.pack("!HHII4x", 1, 12, 0x80000004, 1)  # OXM: in_port=1
    assert not state.flow_mod(flow_mod(of.FC_DELETE, table, 0, in_port_1, 0))
    assert _held(state) == expect


def test_messages_short_of_their_kind_get_a_counted_error_and_one_with_no_length_hangs_up() -> None:
    """A bundle add with no inner message, or shorter than the one it carries, is counted
    and answered with an error; one whose flow_mod is cut short, at the commit, the rest
    of the bundle applied; a length below
    8 leaves no way to find the next message: an error, then the connection closed (not
    a loop on the same bytes)."""
    c = cluster(5)
    flows = compile_node(c.config, c.leases, (), c.leases[0].public_ip)
    whole = ofwire.encode_bundle_adds(7, flows, ofwire.OFPFC_ADD, 2)
    cut = of.message(of.OFP14, of.FLOW_MOD, 0, bytes(30))  # a flow_mod of 38 bytes
    state = SwitchState(dpid=1, expected=0)
    wire = _fed(state, ofwire.encode_bundle_control(7, ofwire.OFPBCT_OPEN_REQUEST, 1) + whole
                + of.message(of.OFP14, of.BUNDLE_ADD_MESSAGE, 3, struct.pack("!I2xH", 7, 1))
                + of.message(of.OFP14, of.BUNDLE_ADD_MESSAGE, 4, struct.pack("!I2xH", 7, 1) + cut)
                + of.message(of.OFP14, of.BUNDLE_ADD_MESSAGE, 8, struct.pack("!I2xH", 7, 1)
                             + struct.pack("!BBHI", 5, of.FLOW_MOD, 100, 0))  # (claims 100 bytes)
                + ofwire.encode_bundle_control(7, ofwire.OFPBCT_COMMIT_REQUEST, 5)
                + ofwire.encode_barrier(6) + struct.pack("!BBHI", 5, 20, 4, 7), seed=4)  # fmt: skip
    assert _held(state) == set(flows)
    assert wire.sent == [(of.BUNDLE_CONTROL, 1), *[(of.ERROR, 0)] * 3, (of.BUNDLE_CONTROL, 5),
                         (of.BARRIER_REPLY, 6), (of.ERROR, 0)] and wire.closed  # fmt: skip
    assert state.unsupported == {"bundle add shorter than its kind": 1,
                                 "bundle add shorter than its inner message": 1,
                                 "message shorter than its kind": 1,
                                 "message shorter than its header": 1}  # fmt: skip


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_fleet_dealt_over_two_processes_converges_and_ends_them() -> None:
    """Four stand-ins over two processes: each holds the table it was sent (read back),
    the fleet reports them all converged and their watched tables reached (or how many
    did not, in time), and stopping it reports every one and leaves neither process."""
    c = cluster(30, dual=True)
    nodes = c.leases[:4]
    tables = {datapath_id_for(n.public_ip): sorted(compile_node(c.config, c.leases, (), n.public_ip),
                                                   key=lambda f: f.key) for n in nodes}  # fmt: skip
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        fleet = StandInFleet("127.0.0.1", server.getsockname()[1],
                             {d: len(flows) for d, flows in tables.items()},
                             [(TUNNEL_OFPORT, "vxlan0")], procs=2)  # fmt: skip
        try:
            fleet.start()
            pids = fleet.pids
            assert len(set(pids)) == 2
            fleet.go()
            socks = [server.accept()[0] for _ in tables]
            held = {}
            for sock in socks:
                assert _recv(sock)[0] == of.HELLO
                sock.sendall(of.message(of.OFP14, of.HELLO, 1) + of.message(of.OFP14, of.FEATURES_REQUEST, 2))
                (body,) = _until(sock, of.FEATURES_REPLY)
                dpid = struct.unpack_from("!Q", body)[0]
                sock.sendall(ofwire.encode_bundle_control(7, ofwire.OFPBCT_OPEN_REQUEST, 3)
                             + ofwire.encode_bundle_adds(7, tables[dpid], ofwire.OFPFC_ADD, 4)
                             + ofwire.encode_bundle_control(7, ofwire.OFPBCT_COMMIT_REQUEST, 5)
                             + ofwire.encode_barrier(6))  # fmt: skip
                _until(sock, of.BARRIER_REPLY)
                held[dpid] = _read_back(sock, 7)
            assert held == {d: set(flows) for d, flows in tables.items()}
            assert fleet.wait_converged(timeout=10) >= fleet.started
            reached = fleet.table_reached({d: len(flows) for d, flows in tables.items()}, 10)
            assert set(reached) == set(tables)
            with pytest.raises(TimeoutError, match=r"^4 stand-ins short of their table after 0\.2s$"):
                fleet.table_reached({d: len(flows) + 1 for d, flows in tables.items()}, 0.2)
            for sock in socks:  # one flow more each: the watch that timed out answers late
                sock.sendall(flow_mod(of.FC_ADD, 200, 1, of.EMPTY_MATCH, 0) + ofwire.encode_barrier(8))
                _until(sock, of.BARRIER_REPLY)
                sock.close()
        finally:
            report = fleet.stop()
    assert {d: r["flows"] for d, r in report.items()} == {d: len(f) + 1 for d, f in tables.items()}
    assert all(r["unsupported"] == {} for r in report.values())
    assert all(_gone(pid) for pid in pids)


def test_a_fleet_whose_process_dies_says_which_and_ends_the_others() -> None:
    """A stand-in process killed under the fleet: the next question names it and its
    exit, and stopping ends the other process (by its PID) all the same."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        fleet = StandInFleet("127.0.0.1", server.getsockname()[1], {1: 10, 2: 10},
                             [(TUNNEL_OFPORT, "vxlan0")], procs=2).start()  # fmt: skip
        pids = fleet.pids
        try:
            fleet.go()
            os.kill(pids[1], signal.SIGKILL)
            with pytest.raises(RuntimeError, match=rf"stand-in process {pids[1]} died \(exit code -9\)"):
                while True:  # (the other one answers; the dead one's pipe ends at its exit)
                    fleet.wait_converged(timeout=0)
        except TimeoutError:
            pytest.fail("the fleet went on as if its dead process were there")
        finally:
            fleet.stop(timeout=5)
    assert all(_gone(pid) for pid in pids)
