"""End to end: a cluster whose network the seed's flannel left in etcd's v2 store.

The config and each node's lease start in the v2 store (etcd run with
--enable-v2=true); `vxflow config import-v2 --with-leases` copies them into v3
before any daemon starts (`ClusterSpec(from_v2=True)`). The agents must take
over the very subnets their nodes held, and the overlay converge on them.
"""

from __future__ import annotations

import pytest

from leases.registry import Registry
from tests.emulation import emulated_cluster

pytestmark = pytest.mark.e2e


def test_a_cluster_on_the_imported_v2_keyspace_converges() -> None:
    with emulated_cluster(
        "v", nodes=2, pods=1, prefix="/atomic.io/network", from_v2=True
    ) as cluster:
        seeded = cluster.v2_leases()
        assert len(seeded) == 2
        held = {node: cluster.wait_subnet(node, 5) for node in cluster.vxflow_nodes}
        assert held == seeded  # each agent took over its node's imported lease
        with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
            v2_config = registry.etcd.v2_get(registry.keys.config)
            assert registry.get_config_raw().decode() == v2_config["value"]
            snap = registry.snapshot()
        assert [(lease.public_ip, lease.subnet) for lease in snap.leases] == sorted(
            ((node.underlay_ip, subnet) for node, subnet in seeded.items()),
            key=lambda item: item[1],
        )
        assert all(lease.etcd_lease_id is not None for lease in snap.leases)  # leases, with TTLs
        failed = [
            f"{a.name}->{b.name}" for a, b in cluster.pairs() if not cluster.reachable(a, b.addr)
        ]
        assert failed == []
        n1, n2 = cluster.vxflow_nodes
        assert any(str(n2.underlay_ip) in flow for flow in n1.dump_flows())
        assert any(str(n1.underlay_ip) in flow for flow in n2.dump_flows())
