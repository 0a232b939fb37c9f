"""End to end: logged policy drops (`vxflow controller --log-policy-drops`) on an emulated
cluster.

Two nodes, one pod each: y/a on the first, x/b on the second, whose ingress a policy
isolates with no rule (every connection to it denied). The controller runs with
`--log-policy-drops` as typed (its default rate, DROP_LOG_RATE packets/s with a burst of
as many). A denied connection is one log line naming the node, the pod, the direction,
the isolating policy, the addresses and ports; a flood of FLOOD packets at the pod is held
by the switch's meter to what its rate and burst let through in the flood's time (no other
timing is asserted: every wait is on a condition), and every packet the meter let through
is a line or a count of the suppressed; a meter deleted behind the controller's back is
added again and the drops it took with it are repaired.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from flows.flow import Table
from flows.policy import DROP_LOG_RATE, drop_cookie
from leases.policy import policy_to_json
from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.ofharness import metric, wait_for
from tests.test_e2e_cluster import in_host
from tests.test_e2e_trace import walk
from tests.test_flows_policy_eval import netpol as make_policy

pytestmark = pytest.mark.e2e

# UDP packets sent at the denied pod as fast as one process sends them (not all reach it:
# the emulated links and the userspace datapath drop some on the way)
FLOOD = 3000
BURST = DROP_LOG_RATE  # the meter's burst (controller/droplog.py: one second's worth)
CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(0.5)  # one SYN: TCP would send the next one after 1 s
try:
    s.connect((sys.argv[1], 80))
except OSError:
    pass
print(s.getsockname()[1])
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x" * 32, (sys.argv[1], 81))
print(s.getsockname()[1])
"""


class Setup:
    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.client_node, self.server_node = cluster.vxflow_nodes
        (self.client,) = cluster.pods_of(self.client_node)
        (self.server,) = cluster.pods_of(self.server_node)
        self.replica = cluster.replicas[0]
        self.metrics = f"http://127.0.0.1:{self.replica.metrics_port}/metrics"

    def name(self, node, pod, namespace: str, name: str) -> None:
        node.ovs.vsctl("set", "Interface", pod.name, f"external_ids:vxflow-namespace={namespace}",
                       f"external_ids:vxflow-pod={name}",
                       f"external_ids:vxflow-labels={json.dumps(json.dumps({'pod': name}))}")  # fmt: skip

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.metrics, name, **labels)

    def suppressed(self) -> float:
        return sum(self.metric("vxflow_policy_drops_suppressed_total", reason=r)
                   for r in ("rate", "backlog", "undecodable"))  # fmt: skip

    def lines(self) -> list[str]:
        return [x for x in self.replica.log_path.read_text().splitlines() if "policy drop: " in x]

    def ofctl(self, *args: str) -> str:
        return self.server_node.ovs.ofctl("-O", "OpenFlow13", *args)

    def meter(self) -> tuple[int, int] | None:
        """The switch's meter 1: (packets in, packets its drop band dropped); None: none."""
        out = self.ofctl("meter-stats", "br-int", "meter=1")
        found = re.search(r"meter:1 .*packet_in_count:(\d+).*\n\s*0: packet_count:(\d+)", out)
        return (int(found.group(1)), int(found.group(2))) if found else None

    def passed(self) -> int:
        """Packets the meter let through to the controller."""
        held = self.meter()
        return held[0] - held[1] if held else -1

    def drop_flows(self) -> str:
        cookie = drop_cookie(self.server.addr)
        return self.ofctl("dump-flows", "br-int", f"table={int(Table.POL_INGRESS)},"
                          f"cookie={cookie:#x}/-1")  # fmt: skip

    def logged_drops_held(self) -> bool:
        return "meter:1,CONTROLLER:128" in self.drop_flows()

    def connect(self) -> int:
        """One denied TCP connection from the client to the server's port 80: its port."""
        proc = in_host(self.client, sys.executable, "-c", CONNECT, str(self.server.addr),
                       stdout=subprocess.PIPE)  # fmt: skip
        out, _ = proc.communicate(timeout=30)
        return int(out)

    def accounted(self) -> bool:
        """Every packet the meter let through is logged or counted suppressed."""
        return self.passed() == self.metric("vxflow_policy_drops_logged_total") + self.suppressed()


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with emulated_cluster("dl", nodes=2, pods=1, controller_options=("--log-policy-drops",)) as cluster:
        s = Setup(cluster)
        s.name(s.client_node, s.client, "y", "a")
        s.name(s.server_node, s.server, "x", "b")
        registry = Registry(cluster.etcd_endpoint, cluster.spec.prefix)
        try:
            wait_for("both pods named in etcd", lambda: sum(
                e.pod is not None for e in registry.list_endpoints()) == 2)  # fmt: skip
            policy = make_policy("x", "deny", {}, ingress=[])
            registry.put_policies([json.loads(policy_to_json(policy))])
            wait_for("the server's default drop, logged", s.logged_drops_held)
            yield s
        finally:
            registry.close()


def test_the_meter_is_on_every_switch_and_the_drop_still_drops(setup: Setup) -> None:
    """(`ovs-ofctl -O OpenFlow13 dump-meters`: the userspace datapath of OVS 3.x has meters.)"""
    for node in setup.cluster.vxflow_nodes:
        out = node.ovs.ofctl("-O", "OpenFlow13", "dump-meters", "br-int")
        assert re.search(rf"meter=1 pktps burst stats bands=\s*type=drop rate={DROP_LOG_RATE} "
                         rf"burst_size={BURST}", out), out  # fmt: skip
    flows = setup.drop_flows()
    assert "actions=meter:1,CONTROLLER:128" in flows and "output:" not in flows, flows
    # `vxflow trace` still calls it a drop, by the pod's isolation
    rc, doc = walk(setup.cluster, setup.client.addr, setup.server.addr, "--protocol", "tcp",
                   "--dport", "80")  # fmt: skip
    assert rc == 1 and doc["hops"][-1]["result"] == "dropped", doc
    assert doc["hops"][-1]["detail"].startswith("network policy: ingress of pod x/b is isolated "
                                                "by x/deny"), doc  # fmt: skip


def test_a_denied_connection_is_one_line_naming_node_pod_direction_policy_and_addresses(
        setup: Setup) -> None:  # fmt: skip
    before = setup.lines()
    port = setup.connect()
    client, server = setup.client.addr, setup.server.addr
    want = (f"policy drop: node {setup.server_node.underlay_ip}, pod x/b, ingress, default "
            f"isolation by policy x/deny: tcp {client}:{port} -> {server}:80")  # fmt: skip
    wait_for("the drop's line", lambda: any(want in x for x in setup.lines()))
    wait_for("every packet the meter let through accounted for", setup.accounted)
    new = [x for x in setup.lines() if x not in before]
    assert [x for x in new if want in x] == [next(x for x in new if want in x)], new
    assert len(new) == 1, new


def test_a_flood_is_bounded_by_the_meter_and_all_it_let_through_is_accounted_for(
        setup: Setup) -> None:  # fmt: skip
    wait_for("earlier drops accounted for", setup.accounted)
    passed_before, logged_before = setup.passed(), setup.metric("vxflow_policy_drops_logged_total")
    lines_before = len(setup.lines())
    hits_before, in_before = _packets(setup.drop_flows()), setup.meter()[0]
    started = time.monotonic()
    proc = in_host(setup.client, sys.executable, "-c", SEND, str(setup.server.addr), str(FLOOD),
                   stdout=subprocess.PIPE)  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    sent = time.monotonic() - started
    port = int(out)

    def settled() -> bool:
        # what reached the drop (its flow's count, which the switch updates a moment after
        # its meter's) all went through the meter, and the controller accounted for it
        return (setup.meter()[0] - in_before == _packets(setup.drop_flows()) - hits_before
                and setup.accounted())  # fmt: skip

    wait_for("the flood's drops counted and accounted for", settled)
    took = time.monotonic() - started  # the last packet reached the meter before this
    hits = _packets(setup.drop_flows()) - hits_before
    passed = setup.passed() - passed_before
    print(f"flood: {FLOOD} sent in {sent:.2f} s, {hits} reached the drop, {passed} passed the "
          f"meter, settled after {took:.2f} s")  # fmt: skip
    logged = setup.metric("vxflow_policy_drops_logged_total") - logged_before
    # the meter's own semantics: at most its burst (its bucket was full: nothing hit it for
    # seconds) plus its rate for as long as the flood could have reached it (from before
    # the first packet was sent to after the last was counted); the rest it dropped
    assert 0 < passed <= BURST + DROP_LOG_RATE * took, (passed, took)
    assert passed < hits, (passed, hits)
    lines = setup.lines()[lines_before:]
    assert len(lines) == logged <= passed, (len(lines), logged, passed)
    assert all(f":{port} -> {setup.server.addr}:81" in x and " udp " in x for x in lines), lines[:3]


def test_a_deleted_meter_is_added_again_and_its_drops_repaired(setup: Setup) -> None:
    """Deleting a meter deletes the flows that use it: their repair is refused while the
    meter is missing, retried from a readback that adds the meter first."""
    log_before = len(setup.replica.log_path.read_text())
    setup.ofctl("del-meters", "br-int", "meter=1")
    assert setup.meter() is None
    wait_for("the meter back", lambda: setup.meter() is not None)
    wait_for("the logged drop back", setup.logged_drops_held)
    log = setup.replica.log_path.read_text()[log_before:]
    refused = log.index(f"switch {setup.server_node.underlay_ip} rejected add of flow (error "
                        f"type 12 ")  # fmt: skip (OFPET_METER_MOD_FAILED)
    assert "actions=meter:1,controller:128" in log[refused:].splitlines()[0], log
    assert "resyncing from a fresh readback" in log[refused:], log
    before = len(setup.lines())
    port = setup.connect()
    wait_for("a drop logged again", lambda: any(f":{port} -> " in x for x in setup.lines()[before:]))


def _packets(flows: str) -> int:
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", flows))
