"""End to end: a dual-stack 3-node vxflow cluster (real etcd, controller, agents, OVS,
Mininet). The underlay has IPv4 and IPv6 addresses (fd00:198:18::/64, inside the cluster's
namespaces only); flannel's config has EnableIPv6 with IPv6Network fd00:198:19::/48, the
agents lease both families (--public-ipv6) and pods get an address of each. IPv6 services
(an IPv6ServiceNetwork) and network policy over IPv6 at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Network

import pytest

from flows.services import group_id, hairpin_source
from leases.registry import Registry
from leases.services import link_count
from tests.emulation import emulated_cluster
from tests.ofharness import VXFLOW
from tests.test_e2e_cluster import in_host, iperf3
from tests.test_e2e_liveness import CHECKED_PORT, listed, serve, stop_checked
from tests.test_e2e_services import NAMESRV, run_in
from tests.test_e2e_trace import walk

VNI = 7
PORT = 4789
OVERLAY6 = IPv6Network("fd00:198:19::/48")
SERVICE6 = IPv6Network("fd00:198:20::/108")
TARGET = 8080  # every server's port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("d", nodes=3, pods=2, vni=VNI, port=PORT,
                          ipv6_network=OVERLAY6) as running:  # fmt: skip
        deadline = time.monotonic() + 30  # IPv4 has converged; IPv6 rides the same flows
        pending = list(running.pairs())
        while pending and time.monotonic() < deadline:
            pending = [(a, b) for a, b in pending if not running.reachable(a, b.addr6)]
        yield running


def test_every_pod_pair_pings_over_ipv6_and_ipv4(cluster) -> None:
    assert len(cluster.pods) == 6
    assert all(p.addr6 in OVERLAY6 for p in cluster.pods)
    failed = [f"{a.name}->{b.name} {fam}" for a, b in cluster.pairs()
              for fam, dst in (("v6", b.addr6), ("v4", b.addr))
              if not cluster.reachable(a, dst)]  # fmt: skip
    assert failed == []


def test_ipv6_crosses_the_ipv6_underlay_in_vxlan_hop_limit_decremented(cluster) -> None:
    n1, n3 = cluster.vxflow_nodes[0], cluster.vxflow_nodes[2]
    src, dst = cluster.pods_of(n1)[0], cluster.pods_of(n3)[1]
    seen, out = cluster.capture(n3, lambda: cluster.ping(src, dst.addr6, count=2, wait=2))
    assert " 0% packet loss" in out, out
    assert set(re.findall(r"ttl=(\d+)", out)) == {"63"}, out  # ping shows the hop limit so
    assert f"{n1.underlay_ip6}" in seen and f"> {n3.underlay_ip6}.{PORT}: VXLAN" in seen, seen
    assert f"vni {VNI}" in seen and f"{src.addr6} > {dst.addr6}: ICMP6, echo request" in seen, seen


def test_node_to_pod_over_ipv6(cluster) -> None:
    n1, n2 = cluster.vxflow_nodes[0], cluster.vxflow_nodes[1]
    for pod in (cluster.pods_of(n1)[0], cluster.pods_of(n2)[0]):
        out = cluster.ping(n1, pod.addr6, count=2, wait=2)
        assert " 0% packet loss" in out, out


def test_tcp_over_ipv6_across_nodes(cluster) -> None:
    client = cluster.pods_of(cluster.vxflow_nodes[0])[0]
    server = cluster.pods_of(cluster.vxflow_nodes[1])[1]
    result = iperf3(client, server, server.addr6, seconds=2)
    assert "error" not in result, result.get("error")
    received = result["end"]["sum_received"]
    assert received["bytes"] > 1_000_000, received  # full-size segments fit the IPv6 underlay


def test_neighbour_discovery_answered_by_the_switch_without_flooding(cluster) -> None:
    """A pod's solicitation for its gateway is answered with the gateway MAC, by the switch:
    its neighbour on the same node sees no solicitation at all."""
    n1 = cluster.vxflow_nodes[0]
    asker, other = cluster.pods_of(n1)
    gateway = IPv6Address(int(asker.addr6) & ~0xFFFFFFFFFFFFFFFF) + 1
    dump = subprocess.Popen(["mnexec", "-a", str(other.pid), "tcpdump", "-l", "-n", "-i", "eth0",
                             "icmp6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in dump.stderr:
            if line.startswith("listening on"):
                break
        asker.cmd(f"ip -6 neigh flush dev eth0 && ping -6 -c 1 -W 2 {gateway}")
        time.sleep(1)
    finally:
        dump.terminate()
        seen, _ = dump.communicate()
    neigh = asker.cmd(f"ip -6 neigh show {gateway} dev eth0")
    gw_mac = n1.cmd("cat /sys/class/net/vxgw0/address").strip()
    assert gw_mac and gw_mac in neigh, neigh
    assert "neighbor solicitation" not in seen, seen


def test_ipv6_spoofing_from_a_pod_is_dropped(cluster) -> None:
    n1, n2 = cluster.vxflow_nodes[0], cluster.vxflow_nodes[1]
    pod, target = cluster.pods_of(n1)[0], cluster.pods_of(n2)[0]
    spoofed = cluster.pods_of(n1)[1].addr6  # its neighbour's address
    pod.cmd(f"ip -6 addr add {spoofed}/128 dev eth0 nodad")
    try:
        out = pod.cmd(f"ping -6 -n -c 2 -W 1 -I {spoofed} {target.addr6}")
    finally:
        pod.cmd(f"ip -6 addr del {spoofed}/128 dev eth0")
    assert "100% packet loss" in out, out
    assert cluster.reachable(pod, target.addr6)  # its own address still works


def test_vxflow_trace_follows_ipv6_over_the_ipv6_tunnel(cluster) -> None:
    n1, n2 = cluster.vxflow_nodes[:2]
    a, b = cluster.pods_of(n1)[0], cluster.pods_of(n2)[1]
    rc, doc = walk(cluster, a.addr6, b.addr6)
    assert rc == 0 and doc["delivered"] is True, doc
    first, second = doc["hops"]
    assert (first["node"], first["result"], first["tun_dst"]) == (
        str(n1.underlay_ip), "tunnel", str(n2.underlay_ip6))
    assert "icmp6" in first["packet"] and first["flows"][0]["owner"] == f"endpoint {a.addr}"
    assert (second["node"], second["result"]) == (str(n2.underlay_ip), "delivered")
    assert second["detail"].startswith(f"to pod {b.addr} (port ")
    # the pod named by its IPv4 address traces IPv6 too; spoofing its neighbour is refused
    assert walk(cluster, a.addr, b.addr6)[1]["delivered"] is True
    rc, doc = walk(cluster, a.addr6, b.addr6, "--src-ip", str(cluster.pods_of(n1)[1].addr6))
    assert rc == 1 and doc["hops"][0]["result"] == "dropped", doc
    assert "spoof guard" in doc["hops"][0]["detail"]


def test_vxflow_status_shows_each_nodes_ipv6_subnet(cluster) -> None:
    res = subprocess.run([VXFLOW, "status", *cluster.etcd_flags(), "-o", "json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    nodes = {n["public_ip"]: n for n in json.loads(res.stdout)["nodes"]}
    for node in cluster.vxflow_nodes:
        assert nodes[str(node.underlay_ip)]["ipv6_subnet"] == str(cluster.ipv6_subnet(node))
    text = subprocess.run([VXFLOW, "status", *cluster.etcd_flags()], capture_output=True,
                          text=True, timeout=60).stdout  # fmt: skip
    n1 = cluster.vxflow_nodes[0]
    assert f"{nodes[str(n1.underlay_ip)]['subnet']}+{cluster.ipv6_subnet(n1)}" in text, text


def test_an_icmpv6_error_comes_back_across_the_tunnel(cluster, tmp_path) -> None:
    """A UDP datagram to a closed port of a remote pod: its ICMPv6 port unreachable (from
    the remote pod's address) crosses the tunnel back and fails the sender's next call."""
    a, b = cluster.pods_of(cluster.vxflow_nodes[0])[0], cluster.pods_of(cluster.vxflow_nodes[2])[0]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.settimeout(3)\ns.connect(('{b.addr6}', 9))\ns.send(b'x')\n"
        "try:\n    s.recv(1)\nexcept ConnectionRefusedError:\n    print('refused')\n"
    )
    assert a.cmd(f"python3 {probe}").strip() == "refused"


# -- IPv6 services and policy ------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(cluster) -> Iterator[list]:
    """A name server (mininet/namesrv.py, IPv4 and IPv6) in the first pod of every node, and
    the IPv6ServiceNetwork set; the servers stopped after."""
    procs = []
    try:
        for node in cluster.vxflow_nodes:
            pod = cluster.pods_of(node)[0]
            procs.append(in_host(pod, sys.executable, NAMESRV, "serve", pod.name, str(TARGET),
                                 stdout=subprocess.PIPE))  # fmt: skip
            assert procs[-1].stdout.readline().strip() == "listening"
        with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
            registry.set_service_network(str(SERVICE6))
        yield [cluster.pods_of(node)[0] for node in cluster.vxflow_nodes]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def put_service6(cluster, name: str, vip: IPv6Address, backends: list, **extra):
    """Store an IPv6 service; wait until every switch holds its group (with affinity: its
    links), as the controller programs it."""
    value = {"Name": name, "VIP": str(vip), "Ports": [{"Port": 80, "TargetPort": TARGET}],
             "Backends": [{"IP": str(p.addr6)} for p in backends], **extra}  # fmt: skip
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        service = registry.put_service(value)
    gid = group_id(SERVICE6, service, 0)
    deadline = time.monotonic() + 20
    for node in cluster.vxflow_nodes:
        while True:
            if extra:
                held = node.ovs.ofctl("dump-flows", "br-int", f"cookie={0x7604 << 48 | gid:#x}/-1,table=46")
                done = held.count("nat(dst=[") == link_count(len(backends))
            else:
                line = [g for g in node.ovs.ofctl("dump-groups", "br-int").splitlines()
                        if f"group_id={gid}," in g]  # fmt: skip
                done = bool(line) and line[0].count("nat(dst=[") == len(backends)
            if done:
                break
            assert time.monotonic() < deadline, (node.name, node.ovs.ofctl("dump-groups", "br-int"))
            time.sleep(0.1)
    return service


def answers(result: dict) -> Counter:
    """By backend name (the first word of each answer)."""
    return Counter({a.split()[0]: n for a, n in result["answers"].items()})


def test_a_v6_vip_spreads_over_its_backends(cluster, servers) -> None:
    vip = SERVICE6[0x10]
    put_service6(cluster, "web6", vip, servers)
    client = cluster.pods_of(cluster.vxflow_nodes[0])[1]
    result = run_in(client, "connect", str(vip), "80", "90")
    assert result["failed"] == 0, result
    spread = answers(result)
    assert set(spread) == {p.name for p in servers} and min(spread.values()) >= 10, spread
    # DNAT only: each backend saw the client's own IPv6 address
    assert {a.split()[1] for a in result["answers"]} == {str(client.addr6)}, result


def test_v6_client_ip_affinity_keeps_a_client_on_one_backend(cluster, servers) -> None:
    vip = SERVICE6[0x11]
    put_service6(cluster, "sticky6", vip, servers, SessionAffinity="ClientIP")
    for client in (cluster.pods_of(n)[1] for n in cluster.vxflow_nodes):
        result = run_in(client, "connect", str(vip), "80", "20")
        assert result["failed"] == 0 and len(answers(result)) == 1, (client.name, result)


def test_a_pod_reaches_its_own_v6_service_through_the_hairpin_source(cluster, servers) -> None:
    own = servers[1]
    vip = SERVICE6[0x12]
    put_service6(cluster, "self6", vip, [own])
    result = run_in(own, "connect", str(vip), "80", "3")
    assert result == {"answers": {f"{own.name} {hairpin_source(SERVICE6)}": 3}, "failed": 0}


def test_the_node_reaches_a_v6_vip_and_backends_see_its_ipv6_gateway(cluster, servers) -> None:
    """Every dual-stack agent routes the IPv6ServiceNetwork into vxgw0 (routing protocol
    119); the node's own connections to a v6 VIP are balanced as its pods' are."""
    deadline = time.monotonic() + 20
    for node in cluster.vxflow_nodes:
        while "dev vxgw0 proto 119" not in node.sh(f"ip -6 route show {SERVICE6}"):
            assert time.monotonic() < deadline, (node.name, node.sh("ip -6 route"))
            time.sleep(0.1)
    vip = SERVICE6[0x13]
    put_service6(cluster, "node6", vip, servers)
    n1 = cluster.vxflow_nodes[0]
    result = run_in(n1, "connect", str(vip), "80", "30")
    assert result["failed"] == 0 and set(answers(result)) == {p.name for p in servers}, result
    gateway6 = cluster.ipv6_subnet(n1).network_address + 1
    assert {a.split()[1] for a in result["answers"]} == {str(gateway6)}, result


def groups6(cluster, gid: int) -> list[set[str]]:
    """The IPv6 backends of group `gid` on each switch."""
    held = []
    for node in cluster.vxflow_nodes:
        line = next((g for g in node.ovs.ofctl("dump-groups", "br-int").splitlines()
                     if f"group_id={gid}," in g), "")  # fmt: skip
        held.append(set(re.findall(r"nat\(dst=\[([0-9a-f:]+)\]", line)))
    return held


def until_groups6(cluster, gid: int, want: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(held != want for held in groups6(cluster, gid)):
        assert time.monotonic() < deadline, (want, groups6(cluster, gid))
        time.sleep(0.1)


def test_a_killed_v6_backend_leaves_every_switchs_group_and_is_back_after_a_restart(
    cluster, servers
) -> None:
    """An IPv6 service's HealthCheck: each backend's agent probes it over IPv6 (from its
    node's IPv6 gateway); one whose server dies is unready and leaves the service's group on
    every switch (and `vxflow services list` says so), and is back when restarted."""
    pod2, pod3 = servers[1], servers[2]
    node3 = cluster.vxflow_nodes[2]

    checked = {pod.name: serve(pod) for pod in (pod2, pod3)}
    check = {"Type": "TCP", "Port": CHECKED_PORT, "PeriodSeconds": 1, "TimeoutSeconds": 1,
             "FailureThreshold": 2, "SuccessThreshold": 1}  # fmt: skip
    vip, both = SERVICE6[0x14], {str(pod2.addr6), str(pod3.addr6)}
    try:
        with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
            service = registry.put_service({
                "Name": "checked6", "VIP": str(vip),
                "Ports": [{"Port": 80, "TargetPort": CHECKED_PORT}],
                "Backends": [{"IP": str(pod2.addr6)}, {"IP": str(pod3.addr6)}],
                "HealthCheck": check,
            })  # fmt: skip
        gid = group_id(SERVICE6, service, 0)
        until_groups6(cluster, gid, both)
        checked[pod3.name].kill()
        checked[pod3.name].wait()
        until_groups6(cluster, gid, {str(pod2.addr6)})
        (entry,) = [s for s in listed(cluster, "services", "list")["services"]
                    if s["Name"] == "checked6"]  # fmt: skip
        assert entry["UnreadyBackends"] == [str(pod3.addr6)], entry
        checked[pod3.name] = serve(pod3)
        until_groups6(cluster, gid, both)
        client = cluster.pods_of(cluster.vxflow_nodes[0])[1]
        result = run_in(client, "connect", str(vip), "80", "30")
        assert result["failed"] == 0 and set(answers(result)) == {pod2.name, pod3.name}, result
    finally:
        stop_checked(cluster, checked.values(), "checked6")
    log = (cluster.node_dir(node3) / "agent.log").read_text()  # one line per transition
    assert log.count(f"backend {pod3.addr6} of service checked6 is unready") == 1, log[-3000:]
    assert log.count(f"backend {pod3.addr6} of service checked6 is ready") == 2, log[-3000:]


def test_ipv6_policy_allows_the_selected_client_and_drops_another(cluster, servers) -> None:
    """A policy isolating a server for ingress, from pods labelled role=client only: over
    IPv6 one client gets through and another pod is dropped, as over IPv4."""
    server = servers[1]
    allowed = cluster.pods_of(cluster.vxflow_nodes[0])[1]
    denied = cluster.pods_of(cluster.vxflow_nodes[2])[1]
    roles = ((server, "server"), (allowed, "client"), (denied, "other"))
    for pod, role in roles:
        node = next(n for n in cluster.vxflow_nodes if pod in cluster.pods_of(n))
        node.ovs.vsctl("set", "Interface", pod.name, "external_ids:vxflow-namespace=x",
                       f"external_ids:vxflow-pod={pod.name}",
                       f"external_ids:vxflow-labels={json.dumps(json.dumps({'role': role}))}")  # fmt: skip
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "server6", "namespace": "x"},
              "spec": {"podSelector": {"matchLabels": {"role": "server"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                    "ports": [{"port": TARGET}]}]}}  # fmt: skip
    target = f"[{server.addr6}]:{TARGET}/tcp"
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        deadline = time.monotonic() + 20
        while sum(e.pod is not None for e in registry.list_endpoints()) < len(roles):
            assert time.monotonic() < deadline, registry.list_endpoints()
            time.sleep(0.1)
        assert (probe(allowed, target), probe(denied, target)) == (True, True)  # no policy yet
        registry.put_policies([policy])
        try:
            deadline, seen = time.monotonic() + 15, None
            while seen != (True, False):
                assert time.monotonic() < deadline, seen
                seen = (probe(allowed, target), probe(denied, target))
            # the IPv4 address of the same pods: the same verdicts
            assert (probe(allowed, f"{server.addr}:{TARGET}/tcp"),
                    probe(denied, f"{server.addr}:{TARGET}/tcp")) == (True, False)  # fmt: skip
        finally:
            registry.delete_policy("x", "server6")


def probe(pod, target: str) -> bool:
    """Whether a new connection from `pod` to `target` (namesrv's probe form) is answered."""
    out = subprocess.run(["mnexec", "-a", str(pod.pid), sys.executable, NAMESRV, "probe", "1"],
                         input=target + "\n", capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return json.loads(out.stdout) == [True]
