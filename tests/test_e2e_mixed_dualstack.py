"""End to end: a mixed dual-stack cluster, 2 vxflow nodes + 1 flannel-style node whose
daemon (mininet/flannel_node.py) holds a dual-stack lease and programs flannel-v6.<VNI>
beside flannel.<VNI> as flanneld's vxlan backend does. Pods reach each other over IPv6 and
IPv4 every way, TCP over IPv6 too, and the flannel node itself reaches vxflow pods.
"""

from __future__ import annotations

import time
from ipaddress import IPv6Network

import pytest

from tests.emulation import emulated_cluster
from tests.test_e2e_cluster import iperf3

VNI = 1
OVERLAY6 = IPv6Network("fd00:198:19::/48")


@pytest.mark.e2e
def test_a_dual_stack_flannel_node_and_vxflow_nodes_reach_each_other_both_ways() -> None:
    with emulated_cluster("f", nodes=2, pods=1, flannel_nodes=1,
                          ipv6_network=OVERLAY6) as cluster:  # fmt: skip
        (flannel,) = cluster.flannel_nodes
        pairs = list(cluster.pairs())
        deadline = time.monotonic() + 30  # IPv4 has converged; IPv6 comes with the same leases
        pending = pairs
        while pending and time.monotonic() < deadline:
            pending = [(a, b) for a, b in pending if not cluster.reachable(a, b.addr6)]
        failed = [f"{a.name}->{b.name} {fam}" for a, b in pairs
                  for fam, dst in (("v6", b.addr6), ("v4", b.addr))
                  if not cluster.reachable(a, dst)]  # fmt: skip
        assert len(pairs) == 6 and failed == []
        devices = flannel.cmd("ip -o link show")
        assert f"flannel-v6.{VNI}" in devices and f"flannel.{VNI}" in devices
        routes = flannel.cmd("ip -6 route")
        onlink = [r for r in routes.splitlines() if f"dev flannel-v6.{VNI}" in r and "onlink" in r]
        assert len(onlink) == 2, routes  # one per vxflow node, as flanneld routes them
        vx_pod, fl_pod = cluster.pods_of(cluster.vxflow_nodes[0])[0], cluster.pods_of(flannel)[0]
        assert cluster.reachable(flannel, vx_pod.addr6)
        assert cluster.reachable(cluster.vxflow_nodes[1], fl_pod.addr6)
        for client, server in ((vx_pod, fl_pod), (fl_pod, vx_pod)):
            result = iperf3(client, server, server.addr6, seconds=2)
            assert "error" not in result, result.get("error")
            assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]
