"""tests/overlay.py hands tests unleased subnets: checked against random leases on a real etcd.

The leases here are as random as any test's (the registry draws them), so the
repeat check (`make repeat`) runs this many times; a config of eight subnets
makes a wrong answer likely in every single run, not once in a hundred.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from leases.etcd_server import EtcdServer
from leases.registry import Registry
from tests.overlay import unleased_address, unleased_subnet

pytestmark = [pytest.mark.integration, pytest.mark.random_leases]

PREFIX = "/vxflow-test/overlay"
EIGHT = {"Network": "198.19.0.0/16", "SubnetLen": 24, "SubnetMin": "198.19.1.0",
         "SubnetMax": "198.19.8.0", "Backend": {"Type": "vxlan", "VNI": 1}}  # fmt: skip


@pytest.fixture
def registry(etcd: EtcdServer) -> Iterator[Registry]:
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config(json.dumps(EIGHT))
        yield reg


def test_never_a_held_subnet_until_none_is_left(registry: Registry) -> None:
    held: set[IPv4Network] = set()
    registry.reserve(IPv4Network("198.19.3.0/24"), "198.18.0.30")  # a reservation: no TTL
    held.add(IPv4Network("198.19.3.0/24"))
    registry.etcd.put(registry.keys.lease(IPv4Network("198.19.8.0/24")), "{")  # rejected
    held.add(IPv4Network("198.19.8.0/24"))
    for i in range(1, 7):
        free = unleased_subnet(registry)
        assert free not in held and free.subnet_of(IPv4Network(EIGHT["Network"]))
        assert registry.lease_for(free) is None
        assert unleased_address(registry) in free
        held.add(registry.acquire(f"198.18.0.{i}", f"02:00:00:00:00:{i:02x}", ttl=600).subnet)
    assert len(held) == 8  # every subnet taken: nothing can be handed out as free
    with pytest.raises(AssertionError, match=r"every subnet of 198\.19\.0\.0/16 is leased"):
        unleased_subnet(registry)
