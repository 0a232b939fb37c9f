"""Overlay subnets and addresses a test may take as unleased, derived from what etcd holds.

Leases are handed out at random, as flannel does, so a subnet written into a
test as "free" is now and then exactly the one a node leased: such a test fails
about once in a hundred runs. Every test that needs a free, unknown or foreign
overlay subnet or address asks here instead.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from leases.config import subnet_range
from leases.registry import Registry


def unleased_subnet(registry: Registry) -> IPv4Network:
    """The highest subnet the network config would hand out that no key under
    `<prefix>/subnets/` names: neither a lease, a reservation nor a rejected entry."""
    config = registry.get_config()
    kvs, _ = registry.etcd.range(registry.keys.subnets, prefix=True)
    held = {kv.key for kv in kvs}
    first, step, count = subnet_range(config)
    for i in reversed(range(count)):
        subnet = IPv4Network((first + i * step, config.subnet_len))
        if registry.keys.lease(subnet) not in held:
            return subnet
    raise AssertionError(f"every subnet of {config.network} is leased")


def unleased_address(registry: Registry) -> IPv4Address:
    """An address in the overlay that no node's subnet holds (the 9th of an unleased subnet)."""
    return unleased_subnet(registry)[9]
