"""End to end: DirectRouting (flannel's vxlan option) on a cluster whose nodes share the
underlay link.

- Pod to pod between nodes on one link: the underlay carries the pods' plain IP, no VXLAN.
- A peer reached through a router (a router namespace on the underlay and routes via it,
  as a second underlay subnet would have): VXLAN again, decided from the route change
  alone (no lease event), and plain IP again when the router goes.
- The kernel's direct routes come back after the underlay interface goes down and up
  (flannel #1070 loses them).
- A host on the underlay that holds no lease and routes a packet to a node's pod subnet:
  the node's direct-ingress filter drops and counts it; the pod sees nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

import pytest

from flows.flow import Owner, cookie_for
from leases.registry import Registry
from ovsdb.direct import RTPROT_VXFLOW
from tests.emulation import emulated_cluster
from tests.ofharness import VXFLOW
from tests.test_e2e_rogue_underlay import echo_requests_received, rogue_host
from tests.test_e2e_trace import walk
from vxflow.demo import cluster_module

VXLAN_PORT = 8472


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def direct_routes(node) -> set[str]:
    """The subnets (either family) of the flows that route a peer directly on `node`'s br-int."""
    mask = 0xFFFF << 48  # the magic byte and the owner kind
    out = node.ovs.ofctl("dump-flows", "br-int", f"cookie={cookie_for(Owner.DIRECT):#x}/{mask:#x}")
    return set(re.findall(r"(?:nw_dst|ipv6_dst)=([\da-f.:/]+)", out))


def kernel_routes(node, six: bool = False) -> set[str]:
    """The agent's direct routes, by the commands README.md shows (those with a next hop:
    the gateway port's own routes of protocol 118, IPv6Network's, have none)."""
    assert RTPROT_VXFLOW == 118
    command = "ip -6 route show proto 118" if six else "ip route show proto 118"
    return {line.split()[0] for line in node.cmd(command).splitlines() if " via " in line}


@contextmanager
def capture(node, expression: str) -> Iterator[list[str]]:
    """tcpdump on `node`'s underlay port while the block runs; the lines it saw."""
    lines: list[str] = []
    proc = node.popen(["tcpdump", "-l", "-n", "-i", "eth0", expression],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # tcpdump says "listening on" on stderr once its capture is open
        proc.stderr.readline()
        yield lines
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        lines += out.splitlines()


def plain(lines: list[str], src, dst) -> list[str]:
    """Echo requests on the wire as they are (tcpdump prints a VXLAN packet's inner one on
    a line of its own, without a timestamp: not counted)."""
    return [ln for ln in lines if re.match(rf"[\d:.]+ IP {src} > {dst}: ICMP echo request", ln)]


def vxlan(lines: list[str], to) -> list[str]:
    return [ln for ln in lines if re.match(rf"[\d:.]+ IP6? [\da-f.:]+ > {to}\.{VXLAN_PORT}: ", ln)]


def ping(pod, address, count: int = 3) -> bool:
    return " 0% packet loss" in pod.cmd(f"ping -c {count} -i 0.2 -W 1 {address}")


@contextmanager
def router(bridge, name: str, address: IPv4Address, behind, others) -> Iterator[None]:
    """A router namespace `name` on the underlay at `address`; `behind` and `others` reach
    each other only through it (host routes via it both ways), as across two subnets."""
    with rogue_host(bridge.name, name, address) as ns:
        for cmd in ("sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv4.conf.all.send_redirects=0",
                    "sysctl -qw net.ipv4.conf.eth0.send_redirects=0"):  # fmt: skip
            subprocess.run(["ip", "netns", "exec", ns, *cmd.split()], check=True)
        routes = [(n, behind) for n in others] + [(behind, n) for n in others]
        try:
            for node, peer in routes:
                node.cmd(f"ip route replace {peer.underlay_ip}/32 via {address} dev br-phy")
                node.cmd(f"ping -c 1 -W 1 {peer.underlay_ip}")  # the tunnel's next hop, resolved
            yield
        finally:
            for node, peer in routes:
                node.cmd(f"ip route del {peer.underlay_ip}/32 via {address}")


@pytest.mark.e2e
def test_direct_routing_plain_ip_on_one_link_vxlan_behind_a_router_rogue_dropped() -> None:
    with emulated_cluster("d", nodes=3, pods=1, direct_routing=True, agent_metrics=True) as cluster:
        n1, n2, n3 = cluster.vxflow_nodes
        bridge = next(s for s in cluster.net.switches
                      if isinstance(s, cluster_module().UnderlayBridge))  # fmt: skip
        spare = list(bridge.node_addresses())[len(cluster.nodes) + 1:]  # held by no node
        (p1,), (p2,), (p3,) = (cluster.pods_of(n) for n in (n1, n2, n3))
        s2, s3 = (str(p.ip_if.network) for p in (p2, p3))
        wait_for("n1 routes n2 and n3 directly", lambda: direct_routes(n1) == {s2, s3})
        assert kernel_routes(n1) == {s2, s3}

        # one link: the pods' own addresses on the underlay, no VXLAN
        with capture(n2, f"icmp or udp port {VXLAN_PORT}") as seen:
            assert ping(p1, p2.addr)
        assert len(plain(seen, p1.addr, p2.addr)) == 3, seen
        assert not vxlan(seen, n2.underlay_ip), seen
        tools_show_the_direct_hop(cluster, p1, p2, n1, n2, {n2, n3})
        assert " 0% packet loss" in n1.cmd(f"ping -c 2 -i 0.2 -W 1 {p2.addr}")  # host to pod

        # n3 behind a router: decided again from the route change alone, VXLAN both ways
        with router(bridge, f"{cluster.spec.tag}g", spare[0], n3, (n1, n2)):
            wait_for("n1 tunnels to n3", lambda: direct_routes(n1) == {s2})
            wait_for("n3 tunnels to all", lambda: not direct_routes(n3))
            assert kernel_routes(n1) == {s2}
            wait_for("pod to pod through the router", lambda: ping(p1, p3.addr, 1))
            with capture(n3, f"icmp or udp port {VXLAN_PORT}") as seen:
                assert ping(p1, p3.addr)
            assert len(vxlan(seen, n3.underlay_ip)) >= 3, seen
            assert not plain(seen, p1.addr, p3.addr), seen
            doc = json.loads(vxflow(cluster, "trace", str(p1.addr), str(p3.addr), "-o", "json",
                                    *ovs_flags(cluster)).stdout)  # fmt: skip
            assert doc["hops"][0]["result"] == "tunnel" and doc["delivered"]
        wait_for("n1 routes n3 directly again", lambda: direct_routes(n1) == {s2, s3})

        # the underlay interface down and up: the kernel drops the routes, the agent restores
        n1.cmd("ip link set br-phy down")
        wait_for("the kernel dropped n1's direct routes", lambda: not kernel_routes(n1))
        n1.cmd("ip link set br-phy up")
        wait_for("n1's direct routes restored", lambda: kernel_routes(n1) == {s2, s3})
        wait_for("pod to pod again", lambda: ping(p1, p2.addr, 1))

        # a host on the underlay with no lease routes a packet to n1's pod subnet
        with rogue_host(bridge.name, f"{cluster.spec.tag}x", spare[1]) as ns:
            subprocess.run(["ip", "netns", "exec", ns, "ip", "route", "add",
                            str(p1.ip_if.network), "via", str(n1.underlay_ip)], check=True)  # fmt: skip
            before, dropped, metered = echo_requests_received(p1), nft_drops(n1), drops_metric(n1)
            subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "4", "-i", "0.2", "-W", "1",
                            str(p1.addr)], capture_output=True)  # fmt: skip
            assert echo_requests_received(p1) == before
            assert nft_drops(n1) - dropped == 4
            assert drops_metric(n1) - metered == 4  # the agent's metrics page says so too
        assert ping(p1, p2.addr)  # the nodes keep reaching each other


def vxflow(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([VXFLOW, *args, *cluster.etcd_flags()], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def ovs_flags(cluster) -> list[str]:
    return [f"--ovs={n.underlay_ip}={n.ovs.vswitchd_ctl}" for n in cluster.vxflow_nodes]


def tools_show_the_direct_hop(cluster, src, dst, node, peer, direct) -> None:
    """`vxflow trace` shows the direct hop (next hop, no VNI); `flows show` and `status`
    which peers are direct."""
    res = vxflow(cluster, "trace", str(src.addr), str(dst.addr), "-o", "json", *ovs_flags(cluster))
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["delivered"], res.stdout + res.stderr
    first, second = doc["hops"]
    assert (first["result"], first["next_hop"], first["vni"]) == ("direct", str(peer.underlay_ip),
                                                                  None)  # fmt: skip
    assert first["flows"][-1]["owner"].startswith(f"direct route to {dst.ip_if.network}")
    assert second["in_port"] == f"2 (host, routed directly from {node.underlay_ip})"
    assert "nw_ttl=62" in second["packet"]  # one hop for each host's forwarding
    assert second["result"] == "delivered" and second["detail"].startswith(f"to pod {dst.addr}")
    text = vxflow(cluster, "trace", str(src.addr), str(dst.addr), *ovs_flags(cluster)).stdout
    assert f"routed directly via {peer.underlay_ip}: DirectRouting, no VXLAN" in text
    show = vxflow(cluster, "flows", "show", "--node", str(node.underlay_ip))
    assert f"table=20,priority=101,eth_type=0x0800,ip_dst={dst.ip_if.network} " in show.stdout
    named = re.search(r"# DirectRouting: direct to (.*); VXLAN to the rest", show.stderr)
    assert named and {ip.split()[0] for ip in named[1].split(", ")} == {
        str(n.underlay_ip) for n in direct}, show.stderr  # fmt: skip
    status = json.loads(vxflow(cluster, "status", "-o", "json").stdout)
    assert status["config"]["direct_routing"] is True
    (mine,) = [n for n in status["nodes"] if n["public_ip"] == str(node.underlay_ip)]
    assert set(mine["direct"]) == {str(n.underlay_ip) for n in direct}
    assert "DIRECT PEERS" in vxflow(cluster, "status").stdout


def nft_drops(node, family: str = "ip") -> int:
    """The ingress filter's drops, by the commands README.md shows."""
    out = node.cmd(f"nft list table {family} vxflow_direct")
    assert 'counter name "dropped" drop' in out, out  # the rule counts into the named counter
    (count,) = re.findall(r"counter dropped \{\s*packets (\d+) bytes \d+", out)
    return int(count)


def drops_metric(node) -> float:
    """vxflow_agent_direct_ingress_dropped_packets_total on `node`'s agent's metrics page (on
    the node's own loopback)."""
    url = f"http://127.0.0.1:{cluster_module().AGENT_METRICS_PORT}/metrics"
    text = node.cmd(f"{sys.executable} -c 'import urllib.request as u; "
                    f"print(u.urlopen(\"{url}\", timeout=5).read().decode())'")  # fmt: skip
    found = re.findall(r"^vxflow_agent_direct_ingress_dropped_packets_total (\S+)\r?$", text, re.M)
    assert len(found) == 1, text
    return float(found[0])


@pytest.mark.e2e
@pytest.mark.parametrize("flannel_direct", [True, False], ids=["flannel-direct", "flannel-old"])
def test_mixed_cluster_with_a_flannel_style_node(flannel_direct: bool) -> None:
    """With DirectRouting the flannel-style node and the vxflow node route to each other
    with plain IP both ways; a flannel node that ignores the option (one from before it)
    keeps sending VXLAN, which the vxflow node accepts, while the vxflow node's own
    packets to it are plain IP (as flannel's direct nodes send to such a node)."""
    with emulated_cluster("m", nodes=1, pods=1, flannel_nodes=1, direct_routing=True,
                          flannel_direct_routing=flannel_direct) as cluster:  # fmt: skip
        (vx,), (fl,) = cluster.vxflow_nodes, cluster.flannel_nodes
        (pv,), (pf,) = cluster.pods_of(vx), cluster.pods_of(fl)
        sv, sf = str(pv.ip_if.network), str(pf.ip_if.network)
        wait_for("vx routes the flannel node directly", lambda: direct_routes(vx) == {sf})
        via = f"via {vx.underlay_ip}" if flannel_direct else "dev flannel."
        wait_for(f"the flannel node routes vx {via}",
                 lambda: via in fl.cmd(f"ip route show {sv}"))  # fmt: skip
        wait_for("both ways", lambda: ping(pv, pf.addr, 1) and ping(pf, pv.addr, 1))
        with capture(fl, f"icmp or udp port {VXLAN_PORT}") as seen:
            assert ping(pv, pf.addr)
            assert ping(pf, pv.addr)
        assert len(plain(seen, pv.addr, pf.addr)) == 3, seen  # vx -> fl: direct
        assert not vxlan(seen, fl.underlay_ip), seen
        back = plain(seen, pf.addr, pv.addr), vxlan(seen, vx.underlay_ip)
        assert (len(back[0]), len(back[1]) >= 3) == ((3, False) if flannel_direct else (0, True))


def lost_run(pod, address, during: Callable[[], None]) -> tuple[int, int]:
    """Pings every 0.1 s while `during()` runs; (sent, the longest run of lost replies)."""
    proc = pod.popen(["ping", "-n", "-O", "-i", "0.1", "-W", "1", str(address)],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1)
        during()
        time.sleep(2)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    answered = {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl", out)}
    sent = max([int(m) for m in re.findall(r"icmp_seq=(\d+)", out)], default=0)
    longest = run = 0
    for seq in range(1, sent + 1):
        run = 0 if seq in answered else run + 1
        longest = max(longest, run)
    return sent, longest


@pytest.mark.e2e
def test_turning_direct_routing_off_and_on_loses_no_ping_beyond_one_second() -> None:
    with emulated_cluster("o", nodes=2, pods=1, direct_routing=True) as cluster:
        n1, n2 = cluster.vxflow_nodes
        (p1,), (p2,) = cluster.pods_of(n1), cluster.pods_of(n2)
        s1, s2 = str(p1.ip_if.network), str(p2.ip_if.network)
        wait_for("direct both ways", lambda: direct_routes(n1) == {s2} and direct_routes(n2) == {s1})

        def toggle(on: bool) -> Callable[[], None]:
            def set_config() -> None:
                cluster.spec = replace(cluster.spec, direct_routing=on)
                cluster.write_config()
                want = {s2} if on else set()
                wait_for(f"direct routing {'on' if on else 'off'}",
                         lambda: direct_routes(n1) == want == kernel_routes(n1))  # fmt: skip
            return set_config

        for on in (False, True):
            sent, longest = lost_run(p1, p2.addr, toggle(on))
            assert sent >= 25 and longest <= 10, (on, sent, longest)  # 10 x 0.1 s: one second
        with capture(n2, f"icmp or udp port {VXLAN_PORT}") as seen:
            assert ping(p1, p2.addr)
        assert len(plain(seen, p1.addr, p2.addr)) == 3, seen


@pytest.fixture(scope="module")
def pair() -> Iterator:
    """Two nodes on one link with two pods each, DirectRouting and --ip-masq on: the
    cluster of the tests of what must keep working over a direct path."""
    with emulated_cluster("v", nodes=2, pods=2, direct_routing=True, ip_masq=True) as cluster:
        n1, n2 = cluster.vxflow_nodes
        s1, s2 = (str(cluster.pods_of(n)[0].ip_if.network) for n in (n1, n2))
        wait_for("direct both ways", lambda: direct_routes(n1) == {s2} and direct_routes(n2) == {s1})
        yield cluster


@pytest.mark.e2e
def test_a_service_and_ip_masq_over_a_direct_path(pair) -> None:
    """A pod reaches a service whose backend is on a direct peer: the connection crosses
    the underlay as plain TCP to the backend's own address (DNAT in the client's switch),
    the backend sees the client pod's address (--ip-masq leaves overlay to overlay
    alone), and the reply finds its way back (un-DNAT)."""
    from tests.test_e2e_services import PORT, VIP, put_service, run_in, serving

    n1, n2 = pair.vxflow_nodes
    p1, p2 = pair.pods_of(n1)[0], pair.pods_of(n2)[0]
    with serving(pair, [n2]):
        put_service(pair, [p2])
        with capture(n2, f"tcp port {PORT} or udp port {VXLAN_PORT}") as seen:
            result = run_in(p1, "connect", VIP, "80", "5")
    assert result["failed"] == 0, result
    assert {a.split()[1] for a in result["answers"]} == {str(p1.addr)}  # not masqueraded
    assert [ln for ln in seen if re.match(rf"[\d:.]+ IP {p1.addr}\.\d+ > {p2.addr}\.{PORT}: ", ln)]
    assert not vxlan(seen, n2.underlay_ip), seen


POLICIES = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: direct}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-b, namespace: direct}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {pod: b}}
"""


def name_pods(cluster, names: dict[str, Any]) -> None:
    """Each pod's identity (namespace `direct`, its name, the label pod=<name>) on its OVS
    Interface, as vxflow-cni writes it; back once every one is published in etcd."""
    for name, pod in names.items():
        node = next(n for n in cluster.vxflow_nodes if pod in cluster.pods_of(n))
        node.ovs.vsctl("set", "Interface", pod.name, "external_ids:vxflow-namespace=direct",
                       f"external_ids:vxflow-pod={name}",
                       f"external_ids:vxflow-labels={json.dumps(json.dumps({'pod': name}))}")  # fmt: skip
    registry = Registry(cluster.etcd_endpoint, cluster.spec.prefix)
    try:
        wait_for("the pods' identities in etcd", lambda: {
            e.pod.name for e in registry.list_endpoints() if e.pod is not None} >= set(names))  # fmt: skip
    finally:
        registry.close()


@pytest.mark.e2e
def test_network_policy_over_a_direct_path_both_directions(pair, tmp_path) -> None:
    """n1 holds pods a and c, n2 b and d, routed to each other directly. b admits only a
    (ingress, judged on n2 although the packet came in through its host), a may reach only
    b (egress, judged on n1 before the direct route): c reaches d but not b, a reaches b
    but not d; `vxflow trace` names the isolation that drops c -> b after the direct hop."""
    n1, n2 = pair.vxflow_nodes
    (a, c), (b, d) = pair.pods_of(n1), pair.pods_of(n2)
    name_pods(pair, {"a": a, "b": b, "c": c, "d": d})
    manifest = tmp_path / "netpol.yaml"
    manifest.write_text(POLICIES)
    res = vxflow(pair, "policies", "set", str(manifest))
    assert res.returncode == 0, res.stdout + res.stderr
    want = {("a", "b"): True, ("c", "b"): False, ("a", "d"): False, ("c", "d"): True}
    pods = {"a": a, "b": b, "c": c, "d": d}
    try:
        wait_for("the policies enforced over the direct path", lambda: {
            (s, t): ping(pods[s], pods[t].addr, 1) for s, t in want} == want, timeout=30)  # fmt: skip
        rc, doc = walk(pair, c.addr, b.addr)
        assert rc == 1 and doc["hops"][0]["result"] == "direct", doc
        assert doc["hops"][-1]["result"] == "dropped", doc
        assert doc["hops"][-1]["detail"] == ("network policy: ingress of pod direct/b is isolated "
                                             "by direct/b-from-a, and no rule of them allows this "
                                             "connection")  # fmt: skip
        assert walk(pair, a.addr, b.addr)[1]["delivered"] is True
        # the node's own traffic into its isolated pod still passes (kubelet's probes)
        assert " 0% packet loss" in n2.cmd(f"ping -c 2 -i 0.2 -W 1 {b.addr}")
    finally:
        for name in ("direct/b-from-a", "direct/a-to-b"):
            vxflow(pair, "policies", "rm", name)


@pytest.mark.e2e
def test_a_spoofed_source_from_a_pod_does_not_cross_the_direct_path(pair) -> None:
    """A pod sends with its neighbour's address, a source the peer's direct-ingress filter
    admits (the sender's node leases it): its switch's spoof guard drops it, so nothing
    leaves the node nor reaches the target; its own address still gets through."""
    n1, n2 = pair.vxflow_nodes
    pod, neighbour = pair.pods_of(n1)
    target = pair.pods_of(n2)[1]
    before = echo_requests_received(target)
    pod.cmd(f"ip addr add {neighbour.addr}/32 dev eth0")
    try:
        with capture(n1, f"icmp and src {neighbour.addr}") as seen:
            out = pod.cmd(f"ping -n -c 3 -i 0.2 -W 1 -I {neighbour.addr} {target.addr}")
    finally:
        pod.cmd(f"ip addr del {neighbour.addr}/32 dev eth0")
    assert "100% packet loss" in out, out
    assert not [ln for ln in seen if re.match(r"[\d:.]+ IP ", ln)], seen
    assert echo_requests_received(target) == before
    assert ping(pod, target.addr)


def echo6_requests_received(pod) -> int:
    """ICMPv6 echo requests that reached the pod's stack (its netns's /proc/net/snmp6)."""
    (count,) = re.findall(r"^Icmp6InEchos\s+(\d+)", pod.cmd("cat /proc/net/snmp6"), re.M)
    return int(count)


@pytest.mark.e2e
def test_ipv6_direct_routes_in_a_dual_stack_cluster() -> None:
    """flannel decides the PublicIPv6 apart and so does the agent: a peer whose PublicIPv6
    is on the link gets its pods' IPv6 as plain IPv6 via that address (a kernel route
    `<IPv6 subnet> via <PublicIPv6>`, the flow beside IPv4's), the record names it, trace
    shows the hop; behind a router (IPv6 only) it gets VXLAN over IPv6 while IPv4 stays
    direct; a host on the link routing IPv6 to a node's pods is dropped by the filter's
    IPv6 table."""
    from tests.test_e2e_dualstack import OVERLAY6

    with emulated_cluster("6", nodes=2, pods=1, direct_routing=True, ipv6_network=OVERLAY6,
                          agent_metrics=True) as cluster:  # fmt: skip
        n1, n2 = cluster.vxflow_nodes
        (p1,), (p2,) = cluster.pods_of(n1), cluster.pods_of(n2)
        s2, s2_6 = str(p2.ip_if.network), str(p2.ip6_if.network)
        wait_for("n1 routes n2 directly in both families", lambda: direct_routes(n1) == {s2, s2_6})
        assert kernel_routes(n1, six=True) == {s2_6} and kernel_routes(n1) == {s2}
        assert f"{s2_6} via {n2.underlay_ip6} " in n1.cmd(f"ip -6 route show {s2_6}")
        wait_for("pod to pod over IPv6", lambda: ping(p1, p2.addr6, 1))
        with capture(n2, f"icmp6 or udp port {VXLAN_PORT}") as seen:
            assert ping(p1, p2.addr6)
        echo = [ln for ln in seen if re.match(rf"[\d:.]+ IP6 {p1.addr6} > {p2.addr6}: ICMP6, echo request", ln)]
        assert len(echo) == 3, seen
        assert not vxlan(seen, n2.underlay_ip6) and not vxlan(seen, n2.underlay_ip), seen

        doc = json.loads(vxflow(cluster, "trace", str(p1.addr6), str(p2.addr6), "-o", "json",
                                *ovs_flags(cluster)).stdout)  # fmt: skip
        first, second = doc["hops"]
        assert (first["result"], first["next_hop"], first["vni"]) == (
            "direct", str(n2.underlay_ip6), None), doc  # fmt: skip
        assert second["result"] == "delivered" and doc["delivered"], doc
        status = json.loads(vxflow(cluster, "status", "-o", "json").stdout)
        (mine,) = [n for n in status["nodes"] if n["public_ip"] == str(n1.underlay_ip)]
        assert set(mine["direct"]) == {str(n2.underlay_ip), str(n2.underlay_ip6)}
        show = vxflow(cluster, "flows", "show", "--node", str(n1.underlay_ip)).stderr
        assert (f"# DirectRouting: direct to {n2.underlay_ip} ({s2}, {s2_6} via {n2.underlay_ip6}); "
                "VXLAN to the rest") in show, show  # fmt: skip

        bridge = next(s for s in cluster.net.switches
                      if isinstance(s, cluster_module().UnderlayBridge))  # fmt: skip
        spare = list(bridge.node_addresses())[len(cluster.nodes) + 1:]  # held by no node
        router6, rogue6 = (cluster_module().UNDERLAY6.network_address + int(a.packed[3])
                           for a in spare[:2])  # fmt: skip

        # n2's PublicIPv6 behind a router, its PublicIP still on the link: IPv6 alone goes
        # back to VXLAN, decided from the route change alone
        with rogue_host(bridge.name, f"{cluster.spec.tag}g", spare[0]) as ns:
            for cmd in ("sysctl -qw net.ipv6.conf.all.forwarding=1",
                        "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0",
                        f"ip -6 addr add {router6}/64 dev eth0 nodad"):  # fmt: skip
                subprocess.run(["ip", "netns", "exec", ns, *cmd.split()], check=True)
            hops = ((n1, n2), (n2, n1))
            try:
                for node, peer in hops:
                    node.cmd(f"ip -6 route replace {peer.underlay_ip6}/128 via {router6} dev br-phy")
                    node.cmd(f"ping -6 -c 1 -W 1 {peer.underlay_ip6}")  # the tunnel's next hop
                wait_for("n1 tunnels IPv6 to n2", lambda: direct_routes(n1) == {s2})
                assert kernel_routes(n1, six=True) == set() and kernel_routes(n1) == {s2}
                wait_for("pod to pod over IPv6 through the router", lambda: ping(p1, p2.addr6, 1))
                with capture(n2, f"icmp6 or udp port {VXLAN_PORT}") as seen:
                    assert ping(p1, p2.addr6)
                assert len(vxlan(seen, n2.underlay_ip6)) >= 3, seen
            finally:
                for node, peer in hops:
                    node.cmd(f"ip -6 route del {peer.underlay_ip6}/128 via {router6}")
        wait_for("n1 routes n2's IPv6 directly again", lambda: direct_routes(n1) == {s2, s2_6})

        with rogue_host(bridge.name, f"{cluster.spec.tag}y", spare[1]) as ns:
            for cmd in ("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0",
                        f"ip -6 addr add {rogue6}/64 dev eth0 nodad",
                        f"ip -6 route add {p1.ip6_if.network} via {n1.underlay_ip6}"):  # fmt: skip
                subprocess.run(["ip", "netns", "exec", ns, *cmd.split()], check=True)
            before, dropped, metered = echo6_requests_received(p1), nft_drops(n1, "ip6"), drops_metric(n1)
            subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-c", "4", "-i", "0.2", "-W",
                            "1", str(p1.addr6)], capture_output=True)  # fmt: skip
            assert echo6_requests_received(p1) == before
            assert nft_drops(n1, "ip6") - dropped == 4
            assert drops_metric(n1) - metered == 4
        assert ping(p1, p2.addr6)
