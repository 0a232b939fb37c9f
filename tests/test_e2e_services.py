"""End to end: virtual services on a 4-node vxflow cluster (real etcd, controller, agents,
OVS userspace conntrack and NAT, Mininet).

Three backends, one pod on each of n1-n3, answer every TCP connection (and UDP
datagram) with their own name and the address they see the client at
(mininet/namesrv.py); the client is the pod on n4. One cluster serves the module,
its ServiceNetwork set once and routed by every node's agent before any test; each
test sets the service as it needs it, and waits until every switch holds that
service's group (with affinity: its links) before it measures. The controller
restart runs last.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from flows.flow import Owner, Table, cookie_for
from flows.ports import GATEWAY_PORT
from flows.services import affinity_links, group_id, hairpin_source, port_group
from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.test_e2e_cluster import in_host

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
NAMESRV = str(ROOT / "mininet" / "namesrv.py")
SERVICE_NETWORK = IPv4Network("198.20.0.0/16")
VIP = "198.20.0.10"
PORT = 8080  # every backend's TargetPort


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("s", nodes=4, pods=1) as running, serving(running, running.vxflow_nodes[:3]):
        yield running


@contextmanager
def serving(cluster, nodes) -> Iterator[None]:
    """The name server in the first pod of each of `nodes`, the ServiceNetwork set and
    routed by every node: a cluster ready for services; the servers stopped after."""
    servers = []
    try:
        for node in nodes:
            pod = cluster.pods_of(node)[0]
            server = in_host(pod, sys.executable, NAMESRV, "serve", pod.name, str(PORT),
                             stdout=subprocess.PIPE)  # fmt: skip
            assert server.stdout.readline().strip() == "listening"
            servers.append(server)
        with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
            registry.set_service_network(str(SERVICE_NETWORK))
        wait_routed(cluster)
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait()


def wait_routed(cluster, timeout: float = 20) -> None:
    """Every vxflow node routes the ServiceNetwork into its gateway port, as its agent does
    once it sees the range set: what a node's own connections to a VIP need."""
    deadline = time.monotonic() + timeout
    for node in cluster.vxflow_nodes:
        while f"dev {GATEWAY_PORT} " not in node.sh(f"ip -4 route show {SERVICE_NETWORK}"):
            assert time.monotonic() < deadline, (node.name, node.sh("ip -4 route"))
            time.sleep(0.1)


def backends(cluster) -> list:
    """The backend pods, on n1, n2, n3."""
    return [cluster.pods_of(node)[0] for node in cluster.vxflow_nodes[:3]]


def client(cluster):
    return cluster.pods_of(cluster.vxflow_nodes[3])[0]


def put_service(cluster, backend_pods, weights=None, port: int = 80, protocol: str = "TCP",
                vip: str = VIP, **extra):  # fmt: skip
    """Store the service and wait until every switch holds its group as desired."""
    weights = weights or [1] * len(backend_pods)
    value = {
        "Name": f"svc-{vip.rsplit('.', 1)[1]}", "VIP": vip,
        "Ports": [{"Port": port, "Protocol": protocol, "TargetPort": PORT}],
        "Backends": [{"IP": str(p.addr), "Weight": w} for p, w in zip(backend_pods, weights, strict=True)],
        **extra,
    }  # fmt: skip
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        service = registry.put_service(value)
    wait_programmed(cluster, service)
    return service


def wait_programmed(cluster, service, timeout: float = 20) -> None:
    want = port_group(SERVICE_NETWORK, service, 0)
    gid = group_id(SERVICE_NETWORK, service, 0)
    deadline = time.monotonic() + timeout
    for node in cluster.vxflow_nodes:
        while not (_holds(node, gid, want) and _holds_links(node, gid, service)):
            assert time.monotonic() < deadline, (node.name, node.ovs.ofctl("dump-groups", "br-int"))
            time.sleep(0.1)


def _holds_links(node, gid: int, service) -> bool:
    """Whether the node's br-int holds the links of a port with affinity, each to its backend
    (true for a port without affinity: it has none)."""
    want = Counter(str(ip) for ip in affinity_links(service.backends)) if service.affinity_timeout else {}
    cookie = cookie_for(Owner.SERVICE, gid)
    flows = node.ovs.ofctl("dump-flows", "br-int", f"cookie={cookie:#x}/-1,table={Table.SVC_LINK}")
    return Counter(re.findall(r"nat\(dst=([\d.]+):", flows)) == want


def _holds(node, gid: int, want) -> bool:
    """Whether the node's br-int holds group `gid` with `want`'s buckets (None: not at all)."""
    groups = node.ovs.ofctl("dump-groups", "br-int")
    line = next((g for g in groups.splitlines() if f"group_id={gid}," in g), None)
    if want is None or line is None:
        return want is None and line is None
    held = sorted(line.split(",bucket=")[1:])
    expected = [(b.weight, f"nat(dst={b.actions[0][4][1]}:") for b in want.buckets]

    def weight(text: str) -> int:
        return int(text[7 : text.index(",")]) if text.startswith("weight:") else 1

    return len(held) == len(expected) and all(
        any(weight(text) == w and target in text for text in held) for w, target in expected
    )


def run_in(host, *args: str, timeout: float = 300) -> dict:
    out = subprocess.run(["mnexec", "-a", str(host.pid), sys.executable, NAMESRV, *args],
                         capture_output=True, text=True, timeout=timeout, check=True)  # fmt: skip
    result = json.loads(out.stdout)
    result.pop("seconds", None)
    return result


def spread(result: dict) -> Counter:
    """Answers by backend name (the first word of each answer)."""
    return Counter({answer.split()[0]: n for answer, n in result["answers"].items()})


def test_300_connections_spread_over_backends_on_three_nodes(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods)
    result = run_in(client(cluster), "connect", VIP, "80", "300")
    assert result["failed"] == 0, result
    by_backend = spread(result)
    assert set(by_backend) == {p.name for p in pods}, result
    for name, n in by_backend.items():
        assert 0.20 <= n / 300 <= 0.47, (name, by_backend)
    # no SNAT: every backend saw the client pod's own address
    assert {a.split()[1] for a in result["answers"]} == {str(client(cluster).addr)}


def test_weights_2_1_1_give_the_heavy_backend_40_to_60_percent(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods, weights=[2, 1, 1])
    result = run_in(client(cluster), "connect", VIP, "80", "300")
    assert result["failed"] == 0, result
    heavy = spread(result)[pods[0].name]
    assert 0.40 <= heavy / 300 <= 0.60, result


def test_a_long_lived_connection_survives_adding_and_removing_other_backends(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods[:2])
    held = in_host(client(cluster), sys.executable, NAMESRV, "hold", VIP, "80",
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        first = held.stdout.readline().split()[0]
        mine = next(p for p in pods if p.name == first)
        others = [p for p in pods if p is not mine]
        steps = [
            [mine, *others],  # another backend added
            [mine],  # both others removed
            [others[0], mine],  # one back, in another order
            [mine, others[1]],  # one swapped for another
        ]
        for i, step in enumerate(steps):
            put_service(cluster, step, weights=[3 if p is mine else 1 for p in step])
            held.stdin.write(f"line {i}\n")
            held.stdin.flush()
            assert held.stdout.readline().strip() == f"line {i}", f"after step {i}"
    finally:
        held.stdin.close()
        held.wait(timeout=10)
    assert held.returncode == 0


def test_after_a_backend_is_removed_no_new_connection_reaches_it(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods)
    put_service(cluster, [pods[0], pods[2]])
    result = run_in(client(cluster), "connect", VIP, "80", "150")
    assert result["failed"] == 0, result
    assert set(spread(result)) == {pods[0].name, pods[2].name}, result


def test_a_direct_connection_reusing_a_vip_connections_port_is_not_taken_for_its_reply(
    cluster,
) -> None:
    """The client reaches a backend through the VIP from source port P, closes (the entry
    stays, TIME_WAIT), then connects to that backend's own address from P again: the
    backend's answer to the direct connection must not be un-DNATed to the VIP."""
    pods = backends(cluster)
    put_service(cluster, pods)
    # above the pod's ephemeral ports (32768-60999): no earlier test's connection holds one
    # in TIME_WAIT, which would refuse the bind (EADDRINUSE)
    for sport in range(61000, 61005):
        via = run_in(client(cluster), "from", str(sport), VIP, "80")
        assert via["failed"] == 0, via
        chosen = next(p for p in pods if p.name in next(iter(via["answers"])))
        direct = run_in(client(cluster), "from", str(sport), str(chosen.addr), str(PORT))
        assert direct == {"answers": {f"{chosen.name} {client(cluster).addr}": 1}, "failed": 0}


def test_the_node_reaches_the_vip_and_backends_see_its_gateway_address(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods)
    node = cluster.vxflow_nodes[3]
    result = run_in(node, "connect", VIP, "80", "30")
    assert result["failed"] == 0, result
    assert set(spread(result)) <= {p.name for p in pods} and len(spread(result)) >= 2, result
    gateway = str(client(cluster).addr).rsplit(".", 1)[0] + ".1"
    assert {a.split()[1] for a in result["answers"]} == {gateway}


def test_client_ip_affinity_keeps_one_client_on_one_backend(cluster) -> None:
    pods = backends(cluster)
    sticky = {"vip": "198.20.0.11", "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 60}
    put_service(cluster, pods, **sticky)
    for who in (client(cluster), cluster.vxflow_nodes[3], cluster.pods_of(cluster.vxflow_nodes[0])[0]):
        result = run_in(who, "connect", "198.20.0.11", "80", "40")
        assert result["failed"] == 0, result
        assert len(spread(result)) == 1, (who.name, result)
    # across backend changes: another backend removed, the client stays; its own removed,
    # it moves to one of the others and stays there
    (mine,) = spread(run_in(client(cluster), "connect", "198.20.0.11", "80", "1"))
    others = [p for p in pods if p.name != mine]
    put_service(cluster, [p for p in pods if p is not others[0]], **sticky)
    assert spread(run_in(client(cluster), "connect", "198.20.0.11", "80", "20")) == {mine: 20}
    put_service(cluster, others, **sticky)
    result = run_in(client(cluster), "connect", "198.20.0.11", "80", "20")
    assert result["failed"] == 0 and len(spread(result)) == 1, result
    assert set(spread(result)) <= {p.name for p in others}, result


def test_a_pod_reaches_its_own_service_and_sees_the_hairpin_source(cluster) -> None:
    own = backends(cluster)[0]
    put_service(cluster, [own], vip="198.20.0.12")
    result = run_in(own, "connect", "198.20.0.12", "80", "10")
    assert result == {"answers": {f"{own.name} {hairpin_source(SERVICE_NETWORK)}": 10}, "failed": 0}


def test_a_service_without_backends_drops_and_counts(cluster) -> None:
    service = put_service(cluster, [], vip="198.20.0.13")
    result = run_in(client(cluster), "connect", "198.20.0.13", "80", "2", timeout=60)
    assert result == {"answers": {}, "failed": 2}
    node = cluster.vxflow_nodes[3]
    cookie = f"cookie={0x7604 << 48 | group_id(SERVICE_NETWORK, service, 0):#x},"
    # the README's line, as typed (run on the node, with its OVS's run directory)
    line = "ovs-ofctl -O OpenFlow14 dump-flows br-int table=40"
    assert line in " ".join((ROOT / "README.md").read_text().split())
    drops = [f for f in node.ovs.run(*shlex.split(line)).splitlines() if cookie in f]
    assert len(drops) == 1 and "actions=drop" in drops[0], drops
    assert int(re.search(r"n_packets=(\d+)", drops[0])[1]) >= 2  # SYNs and their retries


def test_udp_entries_of_a_removed_backend_are_flushed(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods[:2], vip="198.20.0.14", port=53, protocol="UDP")
    first = run_in(client(cluster), "udp", "198.20.0.14", "53", "3", "40000")
    (answer,) = first["answers"]
    assert answer.endswith("from 198.20.0.14:53"), first  # the client sees the VIP only
    chosen = next(p for p in pods[:2] if answer.startswith(p.name))
    other = next(p for p in pods[:2] if p is not chosen)
    node = cluster.vxflow_nodes[3]
    entry = (f"udp,orig=(src={client(cluster).addr},dst=198.20.0.14,sport=40000,dport=53),"
             f"reply=(src={chosen.addr},dst={client(cluster).addr},sport={PORT},dport=40000)")  # fmt: skip
    assert entry in node.ovs.appctl("dpctl/dump-conntrack", "zone=7678")
    put_service(cluster, [other], vip="198.20.0.14", port=53, protocol="UDP")
    deadline = time.monotonic() + 10  # the flush follows the group-mod's barrier
    while entry in node.ovs.appctl("dpctl/dump-conntrack", "zone=7678"):
        assert time.monotonic() < deadline, "the removed backend's entry is still there"
        time.sleep(0.1)
    # the same client port again: balanced anew (its entry would have kept it on `chosen`)
    after = run_in(client(cluster), "udp", "198.20.0.14", "53", "3", "40000")
    assert list(after["answers"]) == [f"{other.name} {client(cluster).addr} from 198.20.0.14:53"]


def test_a_controller_restart_under_a_stream_of_connections_loses_none(cluster) -> None:
    pods = backends(cluster)
    put_service(cluster, pods)
    tables = {n.name: tables_of(n) for n in cluster.vxflow_nodes}
    # 400 connections at 20 a second: 20 s, longer than a restart and resync take
    stream = in_host(client(cluster), sys.executable, NAMESRV, "connect", VIP, "80", "400", "20",
                     stdout=subprocess.PIPE)  # fmt: skip
    try:
        time.sleep(3)
        cluster.restart_controller_connected(timeout=30)
        time.sleep(3)  # read back, found right
        assert stream.poll() is None, "the stream ended before the restart was over"
        out, _ = stream.communicate(timeout=60)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
    result = json.loads(out)
    assert result["failed"] == 0, result
    assert sum(result["answers"].values()) == 400
    assert len(spread(result)) == 3, result
    # the new controller found every table and group right and left them as they were
    assert {n.name: tables_of(n) for n in cluster.vxflow_nodes} == tables


def tables_of(node) -> tuple[list[str], list[str]]:
    """Flows (without counters; learned entries come and go) and groups of br-int."""
    flows = [f for f in node.dump_flows() if "cookie=0x7606" not in f]
    return sorted(flows), sorted(node.ovs.ofctl("dump-groups", "br-int").splitlines()[1:])
