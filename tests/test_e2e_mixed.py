"""End to end: a mixed cluster, 2 vxflow nodes + 1 flannel-style node on one etcd prefix.

The flannel-style node runs mininet/flannel_node.py: a flannel-format lease
and a kernel VXLAN device programmed as flannel's vxlan backend does. vxflow's
flows must interoperate with it in both directions, and follow its lease: its
daemon holds a short TTL here, so when it stops, the lease expires on etcd's
own clock and the vxflow nodes drop its flows.
"""

from __future__ import annotations

import time

import pytest

from tests.emulation import emulated_cluster

FLANNEL_TTL = 6


@pytest.mark.e2e
def test_mixed_cluster_pings_every_way_and_drops_an_expired_flannel_lease() -> None:
    with emulated_cluster(
        "b", nodes=2, pods=2, flannel_nodes=1, flannel_lease_ttl=FLANNEL_TTL
    ) as cluster:
        spec = cluster.spec
        assert len(cluster.flannel_nodes) == 1
        (flannel,) = cluster.flannel_nodes
        flannel_pods = cluster.pods_of(flannel)
        failed = [
            f"{a.name}->{b.name}" for a, b in cluster.pairs() if not cluster.reachable(a, b.addr)
        ]
        assert failed == []
        # the flannel node itself reaches vxflow pods through its kernel VXLAN device, and back
        vx_pod = cluster.pods_of(cluster.vxflow_nodes[0])[0]
        assert cluster.reachable(flannel, vx_pod.addr)
        assert cluster.reachable(cluster.vxflow_nodes[1], flannel_pods[0].addr)
        routes = flannel.cmd("ip route")
        for node in cluster.vxflow_nodes:
            assert f"dev flannel.{spec.vni} onlink" in routes, routes
            assert str(node.underlay_ip) in flannel.cmd(f"bridge fdb show dev flannel.{spec.vni}")

        cluster.stop_flannel(flannel)
        address = str(flannel.underlay_ip)
        deadline = time.monotonic() + FLANNEL_TTL + 10
        while any(address in f for n in cluster.vxflow_nodes for f in n.dump_flows()):
            assert time.monotonic() < deadline, "the flannel node's flows outlived its lease"
            time.sleep(0.5)
        assert not cluster.reachable(vx_pod, flannel_pods[0].addr)
        assert cluster.reachable(vx_pod, cluster.pods_of(cluster.vxflow_nodes[1])[0].addr)
