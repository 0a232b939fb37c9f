"""End to end: a mixed cluster, 2 vxflow nodes + 1 flannel-style node on one etcd prefix.

The flannel-style node runs mininet/flannel_node.py: a flannel-format lease
and a kernel VXLAN device programmed as flannel's vxlan backend does. vxflow's
flows must interoperate with it in both directions.
"""

from __future__ import annotations

import pytest

from tests.emulation import Underlay
from vxflow.demo import cluster_module


@pytest.mark.e2e
def test_mixed_cluster_pods_ping_in_every_direction() -> None:
    vxcluster = cluster_module()
    spec = vxcluster.ClusterSpec(nodes=2, pods=2, flannel_nodes=1, tag=f"{Underlay().tag}b")
    with vxcluster.Cluster(spec=spec) as cluster:
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
