"""The registry against a real etcd: acquire races, exhaustion, expiry, reuse, flannel interop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from leases.config import parse_config
from leases.errors import ConfigMissing, EtcdUnavailable, LeaseLost, NetworkExhausted, SubnetTaken
from leases.etcd_server import EtcdServer
from leases.events import LeaseAdded, LeaseRemoved
from leases.model import Endpoint, Lease
from leases.registry import Registry
from leases.subnet_env import previous_subnet, subnet_env_for, write_subnet_env
from leases.validate import Reason
from tests.overlay import unleased_subnet

pytestmark = pytest.mark.integration

PREFIX = "/vxflow-test/network"
# exactly 50 leasable /24s: 198.19.1.0 .. 198.19.50.0
CONFIG = json.dumps(
    {
        "Network": "198.19.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "198.19.1.0",
        "SubnetMax": "198.19.50.0",
        "Backend": {"Type": "vxlan", "VNI": 1},
    }
)


@pytest.fixture
def registry(etcd: EtcdServer) -> Iterator[Registry]:
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config(CONFIG)
        yield reg


def node_ip(i: int) -> str:
    return f"198.18.0.{i}"


def node_mac(i: int) -> str:
    return f"02:00:00:00:00:{i:02x}"


def test_fifty_concurrent_acquirers_get_distinct_subnets_then_exhaustion(
    etcd: EtcdServer, registry: Registry
) -> None:
    barrier = threading.Barrier(50)
    results: dict[int, Lease | BaseException] = {}

    def agent(i: int) -> None:
        with Registry(etcd.endpoint, PREFIX) as reg:
            barrier.wait()
            try:
                results[i] = reg.acquire(node_ip(i), node_mac(i), ttl=600)
            except BaseException as exc:  # recorded and asserted below
                results[i] = exc

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(1, 51)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    leases = [r for r in results.values() if isinstance(r, Lease)]
    assert len(leases) == 50, [r for r in results.values() if not isinstance(r, Lease)]
    subnets = {lease.subnet for lease in leases}
    assert len(subnets) == 50
    cfg = registry.get_config()
    assert cfg.subnet_min is not None and cfg.subnet_max is not None
    assert all(
        cfg.subnet_min.network_address <= s.network_address <= cfg.subnet_max.network_address
        for s in subnets
    )
    assert all(results[i].public_ip == IPv4Address(node_ip(i)) for i in results)  # type: ignore[union-attr]

    snap = registry.snapshot()
    assert {lease.subnet for lease in snap.leases} == subnets and snap.rejected == ()
    with pytest.raises(NetworkExhausted, match="all 50 are leased"):
        registry.acquire(node_ip(51), node_mac(51))
    # a node that already holds a lease still gets it back from a full network
    again = registry.acquire(node_ip(7), node_mac(7), ttl=600)
    assert again.subnet == results[7].subnet  # type: ignore[union-attr]


def test_expired_lease_reaches_watcher_and_restarted_holder_gets_its_subnet_back(
    registry: Registry, tmp_path: Path
) -> None:
    env_file = tmp_path / "subnet.env"
    cfg = registry.get_config()
    holder = registry.acquire(node_ip(1), node_mac(1), ttl=2)
    write_subnet_env(env_file, subnet_env_for(cfg, holder, 1450))
    other = registry.acquire(node_ip(2), node_mac(2), ttl=600)

    with registry.watch(since=registry.snapshot()) as watch:
        deadline = time.monotonic() + 15
        removed = None
        while removed is None and time.monotonic() < deadline:  # the holder stopped renewing
            event = watch.get(timeout=1)
            if isinstance(event, LeaseRemoved):
                removed = event
        assert removed is not None, "expiry of the lease never reached the watcher"
        assert removed.lease.subnet == holder.subnet
        assert {lease.subnet for lease in watch.snapshot.leases} == {other.subnet}

        # the holder restarts: the subnet file tells it what it had
        back = registry.acquire(
            node_ip(1), node_mac(1), previous_subnet=previous_subnet(env_file), ttl=600
        )
        assert back.subnet == holder.subnet
        assert back.etcd_lease_id != holder.etcd_lease_id
        added = watch.get(timeout=10)
        assert isinstance(added, LeaseAdded) and added.lease.subnet == holder.subnet


def test_restart_within_ttl_reuses_lease_and_endpoints_and_renew_keeps_it(
    registry: Registry,
) -> None:
    lease = registry.acquire(node_ip(3), node_mac(3), ttl=2)
    ep = Endpoint(lease.subnet, lease.subnet.network_address + 10, "0a:00:00:00:00:0a", 4, "vxp-a")
    registry.put_endpoint(ep, lease)
    # a restarted agent (same PublicIP, no subnet file) finds its lease by PublicIP
    again = registry.acquire(node_ip(3), node_mac(3), ttl=2)
    assert (again.subnet, again.etcd_lease_id) == (lease.subnet, lease.etcd_lease_id)
    for _ in range(4):  # renewing keeps lease and endpoint alive past the TTL
        time.sleep(1)
        again = registry.renew(again, ttl=2)
    assert registry.list_endpoints(lease.subnet) == [ep]
    assert registry.time_to_live(again) > 0
    # a new VtepMAC (recreated bridge) rewrites the value, keeping the subnet
    changed = registry.acquire(node_ip(3), "02:00:00:00:00:ff", ttl=2)
    assert changed.subnet == lease.subnet and changed.vtep_mac == "02:00:00:00:00:ff"
    registry.release(changed)
    assert registry.list_leases() == [] and registry.list_endpoints() == []


def test_renew_after_expiry_recreates_or_reports_loss(registry: Registry) -> None:
    lease = registry.acquire(node_ip(4), node_mac(4), ttl=2)
    registry.etcd.revoke(lease.etcd_lease_id)  # as if it had expired
    renewed = registry.renew(lease, ttl=600)
    assert renewed.subnet == lease.subnet and renewed.etcd_lease_id != lease.etcd_lease_id
    registry.etcd.revoke(renewed.etcd_lease_id)
    registry.etcd.put(registry.keys.lease(lease.subnet), '{"PublicIP":"198.18.0.5"}')
    with pytest.raises(LeaseLost, match=r"198\.18\.0\.5"):  # another node took it meanwhile
        registry.renew(renewed)


def test_previous_subnet_is_used_only_when_free_and_fitting(registry: Registry) -> None:
    wanted = IPv4Network("198.19.33.0/24")
    assert registry.acquire(node_ip(6), node_mac(6), previous_subnet=wanted).subnet == wanted
    taken = registry.acquire(node_ip(7), node_mac(7), previous_subnet=wanted)
    assert taken.subnet != wanted
    outside = registry.acquire(
        node_ip(8), node_mac(8), previous_subnet=IPv4Network("198.19.200.0/24")
    )
    assert outside.subnet != IPv4Network("198.19.200.0/24")


def test_reservations_have_no_ttl_and_go_to_their_node(registry: Registry) -> None:
    subnet = IPv4Network("198.19.20.0/24")
    registry.reserve(subnet, node_ip(9))
    with pytest.raises(SubnetTaken):
        registry.reserve(subnet, node_ip(10))
    lease = registry.acquire(node_ip(9), node_mac(9))
    assert lease.subnet == subnet and lease.etcd_lease_id is None
    assert registry.etcd.get(registry.keys.lease(subnet)).lease == 0
    others = {registry.acquire(node_ip(i), node_mac(i), ttl=600).subnet for i in range(11, 20)}
    assert subnet not in others
    registry.release(lease)  # a reservation outlives its node's release
    assert registry.snapshot().lease_for_subnet(subnet) is not None
    assert registry.unreserve(subnet)
    assert registry.snapshot().lease_for_subnet(subnet) is None


def test_endpoints_vanish_with_their_lease(registry: Registry) -> None:
    lease = registry.acquire(node_ip(12), node_mac(12), ttl=600)
    eps = [
        Endpoint(lease.subnet, lease.subnet.network_address + i, f"0a:00:00:00:00:{i:02x}", i)
        for i in (2, 3)
    ]
    for ep in eps:
        registry.put_endpoint(ep, lease)
    with pytest.raises(ValueError, match="gateway"):
        registry.put_endpoint(Endpoint(lease.subnet, lease.gateway, "0a:00:00:00:00:01", 1), lease)
    assert registry.list_endpoints() == eps
    registry.delete_endpoint(eps[0])
    assert registry.list_endpoints(lease.subnet) == eps[1:]
    registry.release(lease)
    assert registry.etcd.range(registry.keys.endpoints, prefix=True)[0] == []


def test_flannel_written_values_are_listed(etcd: EtcdServer) -> None:
    """Values as flannel writes them (current and pre-0.10 format), under the seed's prefix."""
    prefix = "/atomic.io/network"
    with Registry(etcd.endpoint, prefix) as reg:
        reg.set_config(
            '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
        )
        ttl_lease = reg.etcd.grant(86400)
        reg.etcd.put(
            f"{prefix}/subnets/10.20.52.0-24",
            '{"PublicIP":"10.140.0.4","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
            lease=ttl_lease,
        )
        reg.etcd.put(
            f"{prefix}/subnets/10.20.83.0-24",
            '{"PublicIP":"10.140.0.5","BackendType":"vxlan","BackendData":{"VtepMAC":"2e:83:84:1b:95:e4"}}',
        )
        ours = reg.acquire("10.140.0.6", "02:aa:bb:cc:dd:ee")
        leases = {lease.subnet: lease for lease in reg.list_leases()}
        assert set(leases) == {
            IPv4Network("10.20.52.0/24"),
            IPv4Network("10.20.83.0/24"),
            ours.subnet,
        }
        flannel = leases[IPv4Network("10.20.52.0/24")]
        assert (flannel.public_ip, flannel.vtep_mac, flannel.vni, flannel.etcd_lease_id) == (
            IPv4Address("10.140.0.4"),
            "c6:d2:32:6f:8f:44",
            1,
            ttl_lease,
        )
        old = leases[IPv4Network("10.20.83.0/24")]
        assert (old.public_ip, old.vtep_mac, old.vni) == (
            IPv4Address("10.140.0.5"),
            "2e:83:84:1b:95:e4",
            1,
        )

        # what vxflow wrote is flannel's LeaseAttrs: same fields, same JSON types, 24 h etcd lease
        kv = reg.etcd.get(f"{prefix}/subnets/{ours.subnet.network_address}-24")
        value = json.loads(kv.value)
        assert list(value) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData"]
        assert value["PublicIP"] == "10.140.0.6" and value["PublicIPv6"] is None
        assert value["BackendType"] == "vxlan"
        assert value["BackendData"] == {"VNI": 1, "VtepMAC": "02:aa:bb:cc:dd:ee"}
        assert 0 <= value["BackendData"]["VNI"] < 1 << 16  # flannel decodes VNI into a uint16
        assert reg.etcd.time_to_live(kv.lease)[1] == 86400


def test_config_errors_and_unreachable_etcd(etcd: EtcdServer) -> None:
    with Registry(etcd.endpoint, "/vxflow-test/empty") as reg:
        with pytest.raises(ConfigMissing):
            reg.get_config()
        snap = reg.snapshot()
        assert snap.config is None and snap.rejected[0].reason == Reason.NO_CONFIG
        with pytest.raises(ValueError, match="SubnetLen"):
            reg.set_config(
                '{"Network": "198.19.0.0/16", "SubnetLen": 8, "Backend": {"Type": "vxlan"}}'
            )
        assert reg.etcd.get(reg.keys.config) is None  # validated before writing
        reg.set_config(CONFIG)
        with pytest.raises(ValueError, match="inside the overlay"):
            reg.acquire("198.19.0.5", node_mac(1))
        assert reg.get_config() == parse_config(CONFIG)
    with Registry(f"http://127.0.0.1:1,{etcd.endpoint}", "/vxflow-test/empty") as failover:
        assert failover.get_config() == parse_config(CONFIG)
    with (
        Registry("http://127.0.0.1:1", PREFIX, timeout=1) as dead,
        pytest.raises(EtcdUnavailable, match="refused"),
    ):
        dead.snapshot()


@pytest.mark.random_leases
def test_lease_for_judges_one_entry(registry: Registry) -> None:
    lease = registry.acquire(node_ip(13), node_mac(13), ttl=600)
    assert registry.lease_for(lease.subnet) == lease
    free = unleased_subnet(registry)  # never a literal: the lease above is random
    assert registry.lease_for(free) is None
    registry.etcd.put(registry.keys.lease(free), "{")
    rejected = registry.lease_for(free)
    assert (
        rejected is not None
        and not isinstance(rejected, Lease)
        and rejected.reason == Reason.BAD_JSON
    )


def test_paged_range_equals_one_range(registry: Registry) -> None:
    for i in range(10):
        registry.etcd.put(f"{registry.keys.root}paged/{i:02d}", f"v{i}")
    registry.etcd.put(f"{registry.keys.root}paged/\xe9", "non-ascii key")
    whole = registry.etcd.range(registry.keys.root, prefix=True)
    for size in (1, 3, 11, 1000):
        assert registry.etcd.range(registry.keys.root, prefix=True, page_size=size) == whole


def test_replica_registration_and_switch_claims(registry: Registry) -> None:
    r1 = registry.register_member("r1", "tcp:198.18.0.254:6653", ttl=30)
    assert r1 is not None and r1.create_revision > 0
    assert registry.register_member("r1", "tcp:198.18.0.254:6654", ttl=30) is None  # held
    assert registry.member_entry("r1").lease == r1.etcd_lease_id
    r2 = registry.register_member("r2", "tcp:198.18.0.253:6653", ttl=30)
    a, b, c = 0x7678C6120001, 0x7678C6120002, 0x7678C6120003
    first = registry.claim_switches({a: 0, b: 0}, "r1", r1.etcd_lease_id)
    assert set(first) == {a, b} and first[a].generation == first[b].generation  # one txn
    assert registry.claim_switches({a: 0}, "r2", r2.etcd_lease_id) == {}  # taken: lost race
    # a takeover expects the claim it saw; one stale expectation holds up no other claim
    second = registry.claim_switches(
        {a: first[a].generation, b: first[b].generation - 1, c: 0}, "r2", r2.etcd_lease_id
    )
    assert set(second) == {a, c} and second[a].generation > first[a].generation
    snap = registry.snapshot()
    assert [(m.id, m.address) for m in snap.members] == [("r1", "tcp:198.18.0.254:6653"),
                                                         ("r2", "tcp:198.18.0.253:6653")]  # fmt: skip
    assert {(x.datapath_id, x.controller) for x in snap.claims} == {(a, "r2"), (b, "r1"), (c, "r2")}
    registry.etcd.revoke(r1.etcd_lease_id)  # r1 gone: its membership and claims with it
    snap = registry.snapshot()
    assert [m.id for m in snap.members] == ["r2"]
    assert {x.datapath_id for x in snap.claims} == {a, c}
