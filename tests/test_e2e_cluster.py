"""End to end: a 3-node vxflow cluster (real etcd, controller, agents, OVS, Mininet).

One cluster serves the module (starting one costs seconds); the tests that
disturb it (controller restart, node leave/rejoin) run last and restore it.
The VNI and UDP port are not the defaults, so the capture proves the config
reached the wire.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from leases.registry import Registry
from tests.emulation import emulated_cluster

VNI = 7
PORT = 4789
LEASE_TTL = 10  # seconds: a stopped node's lease runs out within the test (flannel's is 24 h)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster(
        "a", nodes=3, pods=2, vni=VNI, port=PORT, agent_lease_ttl=LEASE_TTL
    ) as running:
        yield running


def in_host(host, *cmd: str, **kw) -> subprocess.Popen:
    """A process inside a Mininet host's namespaces, ours to stop by PID."""
    return subprocess.Popen(["mnexec", "-a", str(host.pid), *cmd], text=True, **kw)


def test_all_pod_pairs_ping(cluster) -> None:
    failed = [f"{a.name}->{b.name}" for a, b in cluster.pairs() if not cluster.reachable(a, b.addr)]
    assert len(cluster.pods) == 6
    assert failed == []


def test_node_to_remote_pod_ping_ttl63(cluster) -> None:
    n1, n3 = cluster.vxflow_nodes[0], cluster.vxflow_nodes[2]
    out = cluster.ping(n1, cluster.pods_of(n3)[1].addr, count=3, wait=2)
    assert " 0% packet loss" in out, out
    assert set(re.findall(r"ttl=(\d+)", out)) == {"63"}, out


def iperf3(client, server, address, seconds: int = 3) -> dict:
    """One iperf3 TCP run from pod `client` to pod `server` at `address` (either family);
    the client's JSON report."""
    srv = in_host(
        server, "iperf3", "-s", "-1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while "5201" not in server.cmd("ss -Hltn sport = :5201"):  # listening: ready
            assert srv.poll() is None and time.monotonic() < deadline, "iperf3 -s did not start"
            time.sleep(0.1)
        out = client.cmd(f"iperf3 -c {address} -t {seconds} -J")
        srv.wait(timeout=15)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    return json.loads(out)


def test_iperf3_tcp_across_nodes(cluster) -> None:
    client, server = (
        cluster.pods_of(cluster.vxflow_nodes[0])[0],
        cluster.pods_of(cluster.vxflow_nodes[1])[1],
    )
    result = iperf3(client, server, server.addr)
    assert "error" not in result, result.get("error")
    received = result["end"]["sum_received"]
    assert received["bytes"] > 1_000_000, received
    assert received["seconds"] >= 2.5, received


def test_capture_shows_vni_and_udp_port(cluster) -> None:
    src, dst = (
        cluster.pods_of(cluster.vxflow_nodes[0])[0],
        cluster.pods_of(cluster.vxflow_nodes[2])[0],
    )
    receiver = cluster.vxflow_nodes[2]
    seen, out = cluster.capture(receiver, lambda: cluster.ping(src, dst.addr, count=2, wait=2))
    assert " 0% packet loss" in out, out
    assert f"> {receiver.underlay_ip}.{PORT}: VXLAN, flags [I] (0x08), vni {VNI}" in seen, seen
    assert f"{src.addr} > {dst.addr}: ICMP echo request" in seen, seen


def test_controller_restart_loses_no_packet(cluster) -> None:
    src, dst = (
        cluster.pods_of(cluster.vxflow_nodes[0])[1],
        cluster.pods_of(cluster.vxflow_nodes[2])[1],
    )
    tables_before = {n.name: sorted(n.dump_flows()) for n in cluster.vxflow_nodes}
    # A fixed count that ping completes itself: interrupting it would count the
    # echo still in flight as lost.
    count = 400  # 20 s at 50 ms, longer than a restart and resync take
    ping = in_host(
        src, "ping", "-n", "-i", "0.05", "-c", str(count), str(dst.addr), stdout=subprocess.PIPE
    )
    try:
        time.sleep(1)
        cluster.restart_controller_connected(timeout=30)
        time.sleep(2)  # the new controller has read back and synced every switch by now
        assert ping.poll() is None, "ping ended before the restart was over: raise its count"
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.send_signal(signal.SIGINT)
            ping.communicate(timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, received = int(m[1]), int(m[2])
    assert sent == count, out
    assert received == sent, out
    # the new controller found every table right and left it as it was
    assert {n.name: sorted(n.dump_flows()) for n in cluster.vxflow_nodes} == tables_before


def mentions(node, text: str) -> list[str]:
    return [f for f in node.dump_flows() if text in f]


def test_node_leave_removes_its_flows_and_rejoin_restores_them(cluster) -> None:
    n1, n2, n3 = cluster.vxflow_nodes
    watcher = cluster.pods_of(n1)[0]
    assert mentions(n1, str(n3.underlay_ip)), "n3's remote-subnet flow should be on n1"

    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        subnet = next(x for x in registry.list_leases() if x.public_ip == n3.underlay_ip).subnet
    cluster.stop_agent(n3)  # SIGTERM: the agent keeps its lease, which then expires on etcd's clock
    deadline = time.monotonic() + LEASE_TTL + 20
    while mentions(n1, str(n3.underlay_ip)) or mentions(n2, str(n3.underlay_ip)):
        assert time.monotonic() < deadline, "n3's flows still on n1/n2 after its lease expired"
        time.sleep(0.5)
    for node in (n1, n2):
        assert mentions(node, str(subnet.network_address)) == [], node.dump_flows()
    assert not cluster.reachable(watcher, cluster.pods_of(n3)[0].addr)

    cluster.start_agent(n3)
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        deadline = time.monotonic() + 30
        while not (mine := [x for x in registry.list_leases() if x.public_ip == n3.underlay_ip]):
            assert time.monotonic() < deadline, "n3 did not take a lease again"
            time.sleep(0.5)
    assert mine[0].subnet == subnet
    cluster.wait_connected(timeout=30)
    for pod in cluster.pods_of(n3):
        assert cluster.reachable(watcher, pod.addr)
        assert cluster.reachable(pod, watcher.addr)
