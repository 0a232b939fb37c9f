"""Putting a synthetic cluster into etcd fast: config plus leases in 128-put transactions.

Values and keys are exactly the registry's (leases/): flannel's lease JSON under
`<prefix>/subnets/`, each bound to one shared etcd lease with flannel's TTL,
so the controller reads them as it reads any node's lease. Loading is setup,
never part of a measured interval.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from leases.config import config_to_json
from leases.model import LEASE_TTL_SECONDS, Lease, NetworkConfig
from leases.registry import Registry
from leases.validate import lease_to_json

TXN_OPS = 128  # etcd's default --max-txn-ops
PREFIX = "/vxflow-bench/network"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def load(registry: Registry, config: NetworkConfig, leases: Sequence[Lease]) -> int:
    """Write the config and every lease; return the etcd lease ID they are bound to."""
    registry.set_config(config_to_json(config))
    etcd_lease = registry.etcd.grant(LEASE_TTL_SECONDS)
    for first in range(0, len(leases), TXN_OPS):
        puts = [
            {"request_put": {"key": _b64(registry.keys.lease(x.subnet, x.ipv6_subnet)),
                             "value": _b64(lease_to_json(x)), "lease": etcd_lease}}
            for x in leases[first : first + TXN_OPS]
        ]  # fmt: skip
        registry.etcd.post("/kv/txn", {"compare": [], "success": puts, "failure": []})
    return etcd_lease


def put_lease(registry: Registry, lease: Lease, etcd_lease: int) -> int:
    """One more lease, as a node's acquire writes it; returns the store revision."""
    return registry.etcd.put(registry.keys.lease(lease.subnet, lease.ipv6_subnet), lease_to_json(lease), etcd_lease)


def delete_lease(registry: Registry, lease: Lease) -> int:
    return registry.etcd.delete(registry.keys.lease(lease.subnet, lease.ipv6_subnet))
