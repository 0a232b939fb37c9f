"""The controller cluster against real etcd and real ovs-vswitchd: membership, mastership,
failover, fencing, and the faults it must survive (harness: tests/ofharness.py).

Each bridge connects to every replica (as the node agents arrange from etcd);
ovs-vswitchd itself reports which connection is master and which slaves, and
the tables are compared with the compiler's desired set throughout.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import ofwire
from controller.mastership import designated
from daemons.processes import stop_process
from flows.flow import Flow, Owner, cookie_for, output
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.model import datapath_id_for
from leases.registry import Registry
from ovsdb.instance import OvsInstance
from tests.ofharness import (
    CONFIG,
    FUNCTIONAL_WAIT,
    PREFIX,
    VXFLOW,
    Cluster,
    Controller,
    node_ip,
    pod,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

TTL = 3  # seconds: short, so failovers happen within the test
OFPT_ROLE_STATUS = 30


@pytest.fixture
def cluster(etcd: EtcdServer, ovs: OvsInstance) -> Iterator[Cluster]:
    with running(etcd, ovs) as c:
        c.controller.member_id, c.controller.member_ttl = "r1", TTL
        yield c


def add_nodes(cluster: Cluster, numbers: range) -> None:
    """A lease and a switch for each node number."""
    for i in numbers:
        cluster.lease(i)
        cluster.add_switch(i)


def start_replicas(cluster: Cluster, tmp_path: Path, count: int) -> list[Controller]:
    replicas = [cluster.controller]
    replicas += [
        cluster.add_replica(member_id=f"r{i}", member_ttl=TTL) for i in range(2, count + 1)
    ]
    for replica in replicas:
        replica.start(tmp_path)
    cluster.point_switches_at(replicas)
    return replicas


def masters(cluster: Cluster, replicas: list[Controller]) -> dict[int, str]:
    """switch number -> the replica id each switch reports as master; fails unless every
    switch has exactly one master and every other connected replica is a slave."""
    by_target = {r.target: r.member_id for r in replicas}
    result = {}
    for ip, bridge in cluster.bridges.items():
        roles = cluster.roles(bridge)
        held = [t for t, role in roles.items() if role == "master"]
        if len(held) != 1 or len(roles) != len(replicas):
            raise AssertionError(f"switch {ip}: {roles}")
        if any(role != "slave" for t, role in roles.items() if t != held[0]):
            raise AssertionError(f"switch {ip}: {roles}")
        result[int(ip.packed[-1])] = by_target[held[0]]
    return result


def wait_masters(
    cluster: Cluster,
    replicas: list[Controller],
    expected: dict[int, str] | None = None,
    timeout: float = FUNCTIONAL_WAIT,
) -> dict[int, str]:
    """Until mastership is settled (and, if given, is `expected`); the deadline is the
    suite's functional wait: replicas that start slowly on a loaded machine settle later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = masters(cluster, replicas)
            if expected is None or held == expected:
                return held
            problem = f"{held} != {expected}"
        except AssertionError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            logs = "\n".join(r.log()[-2000:] for r in replicas)
            pytest.fail(f"mastership not settled: {problem}\n{logs}")
        time.sleep(0.2)


def expected_masters(numbers, member_ids) -> dict[int, str]:
    return {i: designated(datapath_id_for(node_ip(i)), member_ids) for i in numbers}


def test_replicas_share_the_switches_and_a_third_moves_only_its_own(cluster, tmp_path):
    numbers = range(1, 21)
    add_nodes(cluster, numbers)
    two = start_replicas(cluster, tmp_path, 2)
    held = wait_masters(cluster, two, expected_masters(numbers, ["r1", "r2"]))
    share = Counter(held.values())
    assert all(6 <= share[r] <= 14 for r in ("r1", "r2")), share  # 30-70 % of 20
    # the claims as an operator reads them (README): etcdctl get --prefix <prefix>/vxflow/masters/
    shown = subprocess.run(
        ["etcdctl", "--endpoints", cluster.etcd.endpoint, "get", "--prefix",
         f"{PREFIX}/vxflow/masters/"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout  # fmt: skip
    assert shown.count('{"Controller":"r1"}') == share["r1"], shown
    assert shown.count('{"Controller":"r2"}') == share["r2"], shown
    cluster.wait_converged()
    for replica in two:
        assert replica.metric("vxflow_controller_member") == 1
        assert replica.metric("vxflow_controller_mastered_switches") == share[replica.member_id]

    third = cluster.add_replica(member_id="r3", member_ttl=TTL).start(tmp_path)
    cluster.point_switches_at([*two, third])
    after = wait_masters(cluster, [*two, third], expected_masters(numbers, ["r1", "r2", "r3"]))
    moved = {i for i in numbers if after[i] != held[i]}
    assert moved and all(after[i] == "r3" for i in moved), (held, after)
    cluster.wait_converged()
    # the switches r3 took over were right already: read back, nothing to send
    wait_for("r3's readbacks", lambda: third.metric(
        "vxflow_controller_readbacks_total", reason="mastership") == len(moved))  # fmt: skip
    assert third.metric("vxflow_controller_flow_mods_total", command="add") == 0
    assert third.metric("vxflow_controller_flow_mods_total", command="delete") == 0


def test_a_killed_master_fails_over_and_changes_after_the_kill_reach_every_switch(
    cluster, tmp_path
):
    numbers = range(1, 7)
    leases = {i: cluster.lease(i) for i in numbers}
    for i in numbers:
        cluster.add_switch(i)
    replicas = start_replicas(cluster, tmp_path, 3)
    held = wait_masters(cluster, replicas)
    cluster.wait_converged()
    victim = next(r for r in replicas if r.member_id == held[1])
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    # right after the kill: a new node, and a pod on the node whose master died
    cluster.lease(7)
    cluster.registry.put_endpoint(pod(leases[1], 10, 5), leases[1])
    survivors = [r for r in replicas if r is not victim]
    cluster.wait_converged(timeout=TTL + 15)
    took = time.monotonic() - killed
    wait_masters(cluster, survivors, expected_masters(numbers, [r.member_id for r in survivors]))
    print(f"changes after the kill reached every switch in {took:.2f}s (member TTL {TTL}s)")
    for replica in survivors:
        assert replica.metric("vxflow_controller_openflow_errors_total") == 0


def test_a_paused_replica_is_fenced_and_rejoins(cluster, tmp_path):
    """SIGSTOP past its lease: the other replica takes its switches over with newer
    generations; resumed, the paused one is demoted by the switches, writes nothing,
    re-registers and takes its share back. The tables stay right all along."""
    numbers = range(1, 5)
    add_nodes(cluster, numbers)
    r1, r2 = replicas = start_replicas(cluster, tmp_path, 2)
    # OVS drops a peer silent for two inactivity probes (5 s each by default): keep r1's
    # connections through its pause, so the switches' demotion (ROLE_STATUS) reaches it
    for uuid in cluster.ovs.vsctl("--bare", "--columns=_uuid", "list", "controller").split():
        cluster.ovs.vsctl("set", "controller", uuid, "inactivity_probe=30000")
    held = wait_masters(cluster, replicas)
    cluster.wait_converged()
    assert "r1" in held.values(), held
    writes_before = {form: r1.metric("vxflow_controller_changes_total", form=form, result="ok")
                     for form in ("bundle", "flow_mod")}  # fmt: skip

    r1.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for("r2 to master every switch", lambda: all(
            cluster.roles(b).get(r2.target) == "master" for b in cluster.bridges.values()),
            TTL + 10)  # fmt: skip
        cluster.lease(5)  # while r1 sleeps: only r2 may program it
        cluster.wait_converged()
    finally:
        r1.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    while time.monotonic() - resumed < 2:  # r1 wakes up to a world that moved on
        cluster.wait_converged(timeout=1)
    wait_for("r1 to rejoin", lambda: r1.metric("vxflow_controller_member") == 1, TTL + 10)
    wait_masters(cluster, replicas, held)  # the same members again: the same masters
    cluster.wait_converged()
    assert r1.metric("vxflow_controller_membership_lost_total") >= 1
    assert "stopped writing to switches" in r1.log()
    # the switches demoted r1 themselves (ROLE_STATUS), or refused its stale role request
    fenced = r1.metric("vxflow_controller_demotions_total", by="switch") + r1.metric(
        "vxflow_controller_role_refused_total", reason="stale")  # fmt: skip
    assert fenced >= 1, r1.log()[-3000:]
    # nothing r1 sent after waking up was taken: the tables were right when it came back
    for form in ("bundle", "flow_mod"):
        assert r1.metric("vxflow_controller_changes_total", form=form, result="ok") == (
            writes_before[form])  # fmt: skip


def test_a_second_replica_with_the_same_id_is_refused(cluster, tmp_path):
    cluster.lease(1)
    cluster.add_switch(1)
    first = cluster.controller.start(tmp_path)
    wait_for("r1 to join", lambda: first.metric("vxflow_controller_member") == 1)
    twin = cluster.add_replica(member_id="r1", member_ttl=TTL).start(tmp_path)
    assert twin.proc.wait(timeout=TTL + 20) == 3, twin.log()
    assert "is held by a live replica" in twin.log() and "give every replica its own --id" in (
        twin.log())  # fmt: skip
    assert "Traceback" not in twin.log()
    wait_masters(cluster, [first], {1: "r1"})
    cluster.wait_converged()


@pytest.mark.parametrize("fault", ["no config", "unreachable etcd"])
def test_a_replica_without_config_or_etcd_never_touches_a_switch(cluster, tmp_path, fault):
    bridge = cluster.add_switch(1)
    marker = "table=0,priority=7,cookie=0x77,actions=drop"
    cluster.ovs.ofctl("add-flow", bridge, marker)
    replica = cluster.controller
    if fault == "no config":
        replica.prefix = "/vxflow-test/unconfigured"
    else:
        replica.etcd = f"http://127.0.0.1:{free_loopback_port()}"
    replica.start(tmp_path)
    wait_for("the switch to connect", lambda: "connected from" in replica.log())
    time.sleep(TTL + 1)
    # ovs-vswitchd writes the connection's status to OVSDB lazily: wait until it shows
    wait_for("the switch to report the connection", lambda: cluster.roles(bridge))
    assert cluster.roles(bridge) == {replica.target: "other"}  # never asked for a role
    assert cluster.dump(bridge) == {"cookie=0x77, priority=7 actions=drop"}
    assert replica.metric("vxflow_controller_member") == 0
    assert replica.metric("vxflow_controller_flow_mods_total", command="add") == 0
    with Registry(cluster.etcd.endpoint, replica.prefix) as registry:
        assert registry.snapshot().members == ()


def test_etcd_gone_longer_than_the_ttl_stops_writes_and_changes_nothing(cluster, tmp_path):
    numbers = range(1, 5)
    add_nodes(cluster, numbers)
    replicas = start_replicas(cluster, tmp_path, 2)
    wait_masters(cluster, replicas)
    cluster.wait_converged()
    tables = {b: cluster.dump(b) for b in cluster.bridges.values()}
    adds_before = sum(
        r.metric("vxflow_controller_flow_mods_total", command="add") for r in replicas
    )
    paused = time.monotonic()
    cluster.etcd.pause()
    try:
        wait_for("both replicas to stop writing",
                 lambda: all(r.metric("vxflow_controller_member") == 0 for r in replicas),
                 TTL + 10)  # fmt: skip
        for bridge, table in tables.items():  # the data plane keeps its flows
            assert cluster.dump(bridge) == table
    finally:
        cluster.etcd.resume()
    wait_for("membership back", lambda: all(
        r.metric("vxflow_controller_member") == 1 for r in replicas), TTL + 20)  # fmt: skip
    wait_masters(cluster, replicas)
    cluster.wait_converged()
    adds_after = sum(r.metric("vxflow_controller_flow_mods_total", command="add") for r in replicas)
    assert adds_after == adds_before  # tables verified by readback; nothing re-sent
    elapsed = time.monotonic() - paused
    for bridge in cluster.bridges.values():  # no flow was replaced: durations kept running
        durations = re.findall(r"duration=([\d.]+)s", cluster.ovs.ofctl("dump-flows", bridge))
        assert durations and min(map(float, durations)) >= elapsed - 0.5


# -- the switch side of fencing, with raw OpenFlow ---------------------------------------


class RawController:
    """A bare OpenFlow 1.4 connection to a bridge's management socket."""

    def __init__(self, mgmt: Path) -> None:
        wait_for(f"{mgmt} to exist", mgmt.exists)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(mgmt))
        self.sock.sendall(struct.pack("!BBHI", ofwire.OFP_VERSION, 0, 8, 1))  # HELLO
        self.buf = b""
        self.xid = 100
        self.unsolicited: list[int] = []  # types of messages that answer no request

    def request(self, data_for_xid) -> tuple[int, bytes]:
        """Send one message (built for a fresh xid) and a barrier; the reply to it, or the
        error it caused, as (type, message)."""
        self.xid += 2
        self.sock.sendall(data_for_xid(self.xid) + ofwire.encode_barrier(self.xid + 1))
        answer = None
        while True:
            while len(self.buf) < 8 or len(self.buf) < struct.unpack_from("!H", self.buf, 2)[0]:
                self.buf += self.sock.recv(65536)
            _, kind, length, xid = struct.unpack_from("!BBHI", self.buf)
            msg, self.buf = self.buf[:length], self.buf[length:]
            if xid == self.xid:
                answer = (kind, msg)
            elif xid != self.xid + 1:
                self.unsolicited.append(kind)
            if xid == self.xid + 1 and kind == ofwire.OFPT_BARRIER_REPLY:
                return answer or (kind, msg)

    def close(self) -> None:
        self.sock.close()


def test_ovs_fences_a_superseded_master(ovs: OvsInstance):
    """What the cluster relies on, shown on ovs-vswitchd itself: once a newer generation is
    master, the old master's writes are refused (OFPBRC_IS_SLAVE) and so is its claim to
    be master again with its old generation_id (OFPRRFC_STALE)."""
    bridge = "vxfence0"
    ovs.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
              "fail_mode=secure", "protocols=OpenFlow14")  # fmt: skip
    old, new = RawController(ovs.mgmt_socket(bridge)), RawController(ovs.mgmt_socket(bridge))
    flow = Flow(0, 5, (("in_port", 7),), (output(8),), cookie_for(Owner.BASE, 1))
    try:
        master = lambda gen: lambda xid: ofwire.encode_role_request(2, gen, xid)  # noqa: E731
        add = lambda xid: ofwire.encode_flow_mod(flow, ofwire.OFPFC_ADD, xid)  # noqa: E731
        assert old.request(master(10))[0] == ofwire.OFPT_ROLE_REPLY
        assert old.request(add)[0] == ofwire.OFPT_BARRIER_REPLY  # taken
        assert new.request(master(11))[0] == ofwire.OFPT_ROLE_REPLY
        kind, msg = old.request(add)
        assert OFPT_ROLE_STATUS in old.unsolicited  # the switch told the old master at once
        assert (kind, struct.unpack_from("!HH", msg, 8)) == (ofwire.OFPT_ERROR, (1, 10))
        kind, msg = old.request(master(10))
        assert (kind, struct.unpack_from("!HH", msg, 8)) == (ofwire.OFPT_ERROR, (11, 0))
    finally:
        old.close()
        new.close()
        ovs.vsctl("--if-exists", "del-br", bridge)


def test_two_replicas_as_the_readme_starts_them(etcd: EtcdServer, tmp_path: Path) -> None:
    """`vxflow controller --port 6653` and `vxflow controller --port 6654`, as typed, with
    FLANNELD_ETCD_* in the environment: two members with the default ids and addresses."""
    with Registry(etcd.endpoint, PREFIX) as registry:
        registry.set_config(CONFIG)
        env = {**os.environ, "FLANNELD_ETCD_ENDPOINTS": etcd.endpoint,
               "FLANNELD_ETCD_PREFIX": PREFIX}  # fmt: skip
        procs = []
        try:
            for port in ("6653", "6654"):
                with open(tmp_path / f"c{port}.log", "wb") as log:
                    procs.append(subprocess.Popen([VXFLOW, "controller", "--port", port],
                                                  env=env, stdout=log, stderr=log))  # fmt: skip
            host = socket.gethostname()
            want = [(f"{host}:6653", "tcp:127.0.0.1:6653"), (f"{host}:6654", "tcp:127.0.0.1:6654")]
            wait_for("both replicas to register", lambda: [
                (m.id, m.address) for m in registry.snapshot().members] == want)  # fmt: skip
        finally:
            for proc in procs:
                stop_process(proc)
        # a clean stop leaves the cluster at once
        assert registry.snapshot().members == ()


def test_a_thousand_fake_members_neither_stall_renewals_nor_leave_a_switch_masterless(
    cluster, tmp_path
):
    """Anyone with a credential for the prefix can register members that are no replica.
    A thousand of them: only the 16 oldest count (r1 among them), every membership renewal
    lands in time while they churn, and a new switch whose designated member is a fake
    (it never claims) is taken over by r1 once orphaned."""
    add_nodes(cluster, range(1, 3))
    r1 = start_replicas(cluster, tmp_path, 1)[0]
    wait_masters(cluster, [r1])
    new_dpid = datapath_id_for(node_ip(3))
    prefix = next(p for p in (f"fake{n}-" for n in range(100))
                  if designated(new_dpid, ["r1", *(f"{p}{i}" for i in range(15))]) != "r1")  # fmt: skip
    etcd = cluster.registry.etcd
    lease = etcd.grant(60)
    for churn in range(3):  # registered, then their addresses changed twice: events each time
        for i in range(1000):
            value = f'{{"ID":"{prefix}{i}","Address":"tcp:127.0.0.1:{churn + 1}"}}'
            etcd.put(f"{PREFIX}/vxflow/controllers/{prefix}{i}", value, lease=lease)
    wait_for("the fakes counted", lambda: r1.metric("vxflow_controller_members_ignored") == 985)
    cluster.lease(3)
    cluster.add_switch(3)
    cluster.point_switches_at([r1])
    assert wait_masters(cluster, [r1], timeout=6 * TTL) == {1: "r1", 2: "r1", 3: "r1"}
    cluster.wait_converged()
    assert r1.metric("vxflow_controller_membership_lost_total") == 0
    assert r1.metric("vxflow_controller_member") == 1
    assert "985 controller members beyond the first 16 (the oldest) are ignored" in r1.log()
    etcd.revoke(lease)
