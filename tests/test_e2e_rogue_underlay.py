"""End to end: an underlay host that holds no lease sends VXLAN with the network's VNI
and another node's pod address as its source. Nothing reaches the target pod, and the
target's DROP_TUNNEL_SPOOFED flow counts every packet; the nodes keep reaching each other.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address

import pytest

from flows.compiler import DROP_TUNNEL_SPOOFED
from flows.ports import vtep_mac_for
from tests.emulation import emulated_cluster
from vxflow.demo import cluster_module

SENT = 6


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextmanager
def rogue_host(bridge: str, name: str, address: IPv4Address) -> Iterator[str]:
    """A namespace on the underlay bridge with `address`; removed (with its link) after."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", f"{name}h", "type", "veth", "peer", "name", "eth0",
           "netns", name)  # fmt: skip
        sh("ip", "link", "set", f"{name}h", "master", bridge, "up")
        sh("ethtool", "-K", f"{name}h", "tx", "off")
        for cmd in ("ip link set lo up", "ip link set eth0 up", "ethtool -K eth0 tx off",
                    f"ip addr add {address}/24 dev eth0"):  # fmt: skip
            sh("ip", "netns", "exec", name, *cmd.split())
        yield name
    finally:
        subprocess.run(["ip", "link", "del", f"{name}h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def drops(node, cookie: int) -> int:
    out = node.ovs.ofctl("dump-flows", "br-int", f"cookie={cookie:#x}/-1")
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", out))


def echo_requests_received(pod) -> int:
    """ICMP echo requests that reached the pod's stack (its netns's /proc/net/snmp)."""
    header, values = [line.split() for line in pod.cmd("cat /proc/net/snmp").splitlines()
                      if line.startswith("Icmp:")][:2]  # fmt: skip
    return int(values[header.index("InEchos")])


@pytest.mark.e2e
def test_rogue_underlay_host_with_the_vni_and_a_pods_address_delivers_nothing() -> None:
    with emulated_cluster("r", nodes=2, pods=1) as cluster:
        spec = cluster.spec
        n1, n2 = cluster.vxflow_nodes
        (victim,), (impersonated,) = cluster.pods_of(n1), cluster.pods_of(n2)
        bridge = cluster_module().UnderlayBridge
        underlay = next(s for s in cluster.net.switches if isinstance(s, bridge))
        spare = list(underlay.node_addresses())[len(cluster.nodes) + 1]
        target_subnet = victim.ip_if.network
        gateway0 = target_subnet.network_address  # flannel's vxlan address convention
        with rogue_host(underlay.name, f"{spec.tag}x", spare) as ns:

            def run(cmd: str) -> str:
                return sh("ip", "netns", "exec", ns, *cmd.split())

            # a kernel VXLAN device as flannel programs one, claiming n2's pod address
            run(f"ip link add vx0 type vxlan id {spec.vni} dstport {spec.port} local {spare} "
                "nolearning")  # fmt: skip
            run(f"ip addr add {impersonated.addr}/32 dev vx0")
            run("ip link set vx0 up")
            run(f"ip neigh add {gateway0} lladdr {vtep_mac_for(n1.underlay_ip)} dev vx0 "
                "nud permanent")  # fmt: skip
            run(f"bridge fdb add {vtep_mac_for(n1.underlay_ip)} dev vx0 dst {n1.underlay_ip}")
            run(f"ip route add {target_subnet} via {gateway0} dev vx0 onlink")

            run(f"ping -n -c 1 -W 2 {n1.underlay_ip}")  # underlay ARP resolved beforehand
            before_drops, before_rx = drops(n1, DROP_TUNNEL_SPOOFED), echo_requests_received(victim)
            ping = subprocess.run(
                ["ip", "netns", "exec", ns, "ping", "-n", "-c", str(SENT), "-i", "0.2", "-W",
                 "1", "-I", str(impersonated.addr), str(victim.addr)],
                capture_output=True, text=True,
            )  # fmt: skip
            assert f"{SENT} packets transmitted, 0 received" in ping.stdout, ping.stdout
            # flow counters are refreshed from the datapath every few hundred ms
            deadline = time.monotonic() + 5
            while drops(n1, DROP_TUNNEL_SPOOFED) - before_drops < SENT:
                assert time.monotonic() < deadline, drops(n1, DROP_TUNNEL_SPOOFED) - before_drops
                time.sleep(0.2)
            assert echo_requests_received(victim) == before_rx  # nothing reached the pod
        # the real holder of that address still reaches the pod, both ways
        assert cluster.reachable(impersonated, victim.addr)
        assert cluster.reachable(victim, impersonated.addr)
