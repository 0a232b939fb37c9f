"""Dual stack in flannel's format: configs, keys and lease values from flannel's own
sources read as flannel reads them; malformed or hijacking IPv6 halves rejected with a
reason; the registry handing out dual-stack leases against a real etcd."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from leases.config import ConfigError, leasable, parse_config
from leases.errors import LeaseLost, NetworkExhausted
from leases.etcd_server import EtcdServer
from leases.keys import KV, Keys
from leases.model import Endpoint, Lease, lease_key_name
from leases.registry import Registry
from leases.state import build_snapshot
from leases.subnet_env import parse_subnet_env, render, subnet_env_for
from leases.validate import (
    Reason,
    Rejection,
    check_endpoint,
    check_lease,
    endpoint_name,
    endpoint_to_json,
    lease_to_json,
    parse_lease_name,
)

KEYS = Keys("/test/network")
DUAL = parse_config(
    '{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48",'
    ' "Backend": {"Type": "vxlan"}}'
)
V4_ONLY = parse_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')


# --- flannel's corpus (pkg/subnet/config_test.go, subnet_test.go, backend/vxlan) ----------

# TestSubnetNodev6 and TestSubnetNodeInvalid, verbatim
FLANNEL_DUAL_KEY = "10.12.13.0-24&fd00:12:13::-56"
FLANNEL_INVALID_KEYS = [
    "10",
    "10.12.13.0",
    "10.12.13-24",
    "10.12.13.300-24",
    "10.12.13.0-24hi",
    "&2001::-56",
    "10.12.13.0-24&:12:13:-56",
    "10.12.13.0-24&20011::-56",
    "10.12.13.0-24&2001-56",
    "10.12.13.0-24&2001::",
    "10.12.13.0-24&2001::-56hi",
]


def test_flannel_dual_stack_key_parses_and_is_written_back_alike() -> None:
    subnet, ipv6_subnet = parse_lease_name(FLANNEL_DUAL_KEY)
    assert (subnet, ipv6_subnet) == (IPv4Network("10.12.13.0/24"), IPv6Network("fd00:12:13::/56"))
    assert lease_key_name(subnet, ipv6_subnet) == FLANNEL_DUAL_KEY  # flannel's MakeSubnetKey
    assert parse_lease_name("10.12.13.0-24") == (IPv4Network("10.12.13.0/24"), None)


@pytest.mark.parametrize("name", FLANNEL_INVALID_KEYS)
def test_keys_flannel_cannot_parse_are_not_leases(name: str) -> None:
    with pytest.raises(ValueError):
        parse_lease_name(name)
    result = check_lease(f"/test/network/subnets/{name}", "{}", DUAL)
    assert isinstance(result, Rejection) and result.reason == Reason.BAD_KEY


def test_flannel_ipv6_config_examples() -> None:
    """TestIPv6ConfigDefaults / TestIPv6ConfigOverrides (lower-case keys included), with the
    IPv4 network and vxlan backend vxflow needs; flannel's IPv6-only form is refused by name."""
    v4 = '"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan"}'
    defaults = parse_config(f'{{ "enableIPv6": true, "ipv6Network": "fc00::/48", {v4} }}')
    assert defaults.ipv6 is not None
    assert str(defaults.ipv6.network) == "fc00::/48"
    assert str(defaults.ipv6.subnet_min.network_address) == "fc00:0:0:1::"
    assert str(defaults.ipv6.subnet_max.network_address) == "fc00:0:0:ffff::"
    assert defaults.ipv6.subnet_len == 64
    overrides = parse_config(
        '{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::",'
        f' "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, {v4} }}'
    )
    assert overrides.ipv6 is not None
    assert str(overrides.ipv6.subnet_min.network_address) == "fc00:0:0:1::"
    assert str(overrides.ipv6.subnet_max.network_address) == "fc00:0:0:f::"
    assert overrides.ipv6.subnet_len == 124
    # Documentation/configuration.md's dual-stack example network
    doc = parse_config(f'{{"EnableIPv6": true, "IPv6Network": "2001:cafe:42:0::/56", {v4}}}')
    assert doc.ipv6 is not None and doc.ipv6.subnet_len == 64
    with pytest.raises(ConfigError) as info:
        parse_config(
            f'{{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false, {v4} }}'
        )
    assert info.value.field == "EnableIPv4"


def flannel_value(public_ip: str = "198.18.0.5", public_ipv6: str = "fd18::5", **over) -> str:
    """A dual-stack lease value as flannel's vxlan backend (newSubnetAttrs) marshals it."""
    obj: dict = {
        "PublicIP": public_ip,
        "PublicIPv6": public_ipv6,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"},
        "BackendV6Data": {"VNI": 1, "VtepMAC": "ae:5d:4b:6f:3a:01"},
    }
    obj.update(over)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}, separators=(",", ":"))


def test_flannel_dual_stack_value_parses_and_is_written_back_byte_for_byte() -> None:
    key = "/coreos.com/network/subnets/198.19.4.0-24&fc00:0:0:4::-64"
    lease = check_lease(key, flannel_value(), DUAL)
    assert lease == Lease(
        subnet=IPv4Network("198.19.4.0/24"),
        public_ip=IPv4Address("198.18.0.5"),
        vni=1,
        vtep_mac="c6:d2:32:6f:8f:44",
        ipv6_subnet=IPv6Network("fc00:0:0:4::/64"),
        public_ipv6=IPv6Address("fd18::5"),
        vtep_mac_v6="ae:5d:4b:6f:3a:01",
    )
    assert lease_to_json(lease) == flannel_value()
    assert Keys("/coreos.com/network").lease(lease.subnet, lease.ipv6_subnet) == key


def test_ipv4_only_config_keeps_a_dual_stack_lease_for_its_ipv4_half() -> None:
    """A config without EnableIPv6 (flannel's nodes too) routes such a lease's IPv4 half;
    the IPv6 half is still checked as written, and kept so the key stays the same."""
    key = "/test/network/subnets/198.19.4.0-24&fc00:0:0:4::-64"
    lease = check_lease(key, flannel_value(), V4_ONLY)
    assert isinstance(lease, Lease)
    assert lease.subnet == IPv4Network("198.19.4.0/24")
    assert KEYS.lease(lease.subnet, lease.ipv6_subnet) == key
    bad = check_lease(key, flannel_value(public_ipv6="ff02::1"), V4_ONLY)
    assert isinstance(bad, Rejection) and bad.reason == Reason.BAD_PUBLIC_IP


MALFORMED_V6 = [
    ("198.19.5.0-24&fc00:0:0:5::-80", flannel_value(), Reason.WRONG_LENGTH),
    ("198.19.5.0-24&fc01:0:0:5::-64", flannel_value(), Reason.OUTSIDE_NETWORK),
    ("198.19.5.0-24&fc00:0:0:5::1-64", flannel_value(), Reason.BAD_KEY),  # host bits
    ("198.19.5.0-24&fc00:0000:0:5::-64", flannel_value(), Reason.BAD_KEY),  # not flannel's form
    ("198.19.5.0-24&FC00:0:0:5::-64", flannel_value(), Reason.BAD_KEY),  # flannel's regex: a-f
    ("198.19.5.0-24&fc00:0:0:5::-129", flannel_value(), Reason.BAD_KEY),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6=None), Reason.MISSING_FIELD),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6=...), Reason.MISSING_FIELD),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(BackendV6Data=...), Reason.MISSING_FIELD),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6=6), Reason.WRONG_TYPE),
    (
        "198.19.5.0-24&fc00:0:0:5::-64",
        flannel_value(public_ipv6="198.18.0.6"),
        Reason.BAD_PUBLIC_IP,
    ),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6="fc00::7"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6="::1"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6="fe80::1"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6="ff02::1"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(public_ipv6="::"), Reason.BAD_PUBLIC_IP),
    (
        "198.19.5.0-24&fc00:0:0:5::-64",
        flannel_value(public_ipv6="::ffff:198.18.0.6"),
        Reason.BAD_PUBLIC_IP,
    ),
    ("198.19.5.0-24&fc00:0:0:5::-64", flannel_value(BackendV6Data=[]), Reason.WRONG_TYPE),
    (
        "198.19.5.0-24&fc00:0:0:5::-64",
        flannel_value(BackendV6Data={"VNI": 2, "VtepMAC": "ae:5d:4b:6f:3a:01"}),
        Reason.BAD_VNI,
    ),
    (
        "198.19.5.0-24&fc00:0:0:5::-64",
        flannel_value(BackendV6Data={"VNI": 1}),
        Reason.MISSING_FIELD,
    ),
    (
        "198.19.5.0-24&fc00:0:0:5::-64",
        flannel_value(BackendV6Data={"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}),
        Reason.BAD_MAC,
    ),
]


@pytest.mark.parametrize(("name", "value", "reason"), MALFORMED_V6)
def test_malformed_ipv6_half_gets_its_specific_rejection(
    name: str, value: str, reason: str
) -> None:
    key = f"/test/network/subnets/{name}"
    result = check_lease(key, value, DUAL, mod_revision=4)
    assert isinstance(result, Rejection), result
    assert (result.key, result.reason, result.mod_revision) == (key, reason, 4)
    assert result.detail


def kv(name: str, value: str, rev: int) -> KV:
    return KV(f"{KEYS.subnets}{name}", value.encode(), rev, rev)


CONFIG_KV = KV(
    KEYS.config,
    b'{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48",'
    b' "Backend": {"Type": "vxlan"}}',
    1,
    1,
)


def test_a_lease_claiming_another_nodes_ipv6_half_is_rejected_whatever_the_order() -> None:
    """Node A holds 198.19.4.0/24 and fc00:0:0:4::/64 on PublicIPv6 fd18::4. Entries that
    would take over its IPv6 traffic (its PublicIPv6, its IPv6 subnet under another IPv4
    subnet) or its IPv4 subnet (under a dual-stack key) are rejected, each with a reason,
    and A keeps everything, in whatever order the entries arrive."""
    a = kv("198.19.4.0-24&fc00:0:0:4::-64", flannel_value("198.18.0.4", "fd18::4"), 2)
    rivals = [
        kv("198.19.7.0-24&fc00:0:0:7::-64", flannel_value("198.18.0.7", "fd18::4"), 3),
        kv("198.19.8.0-24&fc00:0:0:4::-64", flannel_value("198.18.0.8", "fd18::8"), 4),
        kv("198.19.4.0-24&fc00:0:0:9::-64", flannel_value("198.18.0.9", "fd18::9"), 5),
    ]
    honest = kv("198.19.10.0-24&fc00:0:0:a::-64", flannel_value("198.18.0.10", "fd18::a"), 6)
    outcomes = set()
    for order in itertools.permutations([a, *rivals, honest]):
        snap = build_snapshot(KEYS, [CONFIG_KV, *order], 9)
        outcomes.add(
            (
                tuple(lease.key_name for lease in snap.leases),
                tuple(sorted((r.key.rsplit("/", 1)[1], r.reason) for r in snap.rejected)),
            )
        )
    assert outcomes == {
        (
            ("198.19.4.0-24&fc00:0:0:4::-64", "198.19.10.0-24&fc00:0:0:a::-64"),
            (
                ("198.19.4.0-24&fc00:0:0:9::-64", Reason.OVERLAP),
                ("198.19.7.0-24&fc00:0:0:7::-64", Reason.DUPLICATE_PUBLIC_IP),
                ("198.19.8.0-24&fc00:0:0:4::-64", Reason.OVERLAP),
            ),
        )
    }


def test_subnet_env_gets_flannels_ipv6_lines_and_reads_them_back() -> None:
    lease = check_lease(f"{KEYS.subnets}198.19.4.0-24&fc00:0:0:4::-64", flannel_value(), DUAL)
    assert isinstance(lease, Lease)
    env = subnet_env_for(DUAL, lease, 1450, ipmasq=True)
    text = render(env)
    assert text == (
        "FLANNEL_NETWORK=198.19.0.0/16\n"
        "FLANNEL_SUBNET=198.19.4.1/24\n"
        "FLANNEL_IPV6_NETWORK=fc00::/48\n"
        "FLANNEL_IPV6_SUBNET=fc00:0:0:4::1/64\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )  # flannel's WriteSubnetFile, line for line
    assert parse_subnet_env(text) == env
    # the same lease under an IPv4-only config: the file is flannel's IPv4-only one
    assert "IPV6" not in render(subnet_env_for(V4_ONLY, lease, 1450))


# --- the registry against a real etcd ---------------------------------------------------

PREFIX = "/vxflow-test/network"


def dual_config(**over: object) -> str:
    obj = {
        "Network": "198.19.0.0/16",
        "SubnetMin": "198.19.1.0",
        "SubnetMax": "198.19.20.0",
        "EnableIPv6": True,
        "IPv6Network": "fc00::/48",
        "Backend": {"Type": "vxlan"},
    }
    obj.update(over)
    return json.dumps({k: v for k, v in obj.items() if v is not None})


@pytest.fixture
def registry(etcd: EtcdServer) -> Iterator[Registry]:
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config(dual_config())
        yield reg


def node(i: int) -> dict:
    return {
        "public_ip": f"198.18.0.{i}",
        "vtep_mac": f"02:00:00:00:04:{i:02x}",
        "public_ipv6": f"fd18::{i:x}",
        "vtep_mac_v6": f"02:00:00:00:06:{i:02x}",
    }


@pytest.mark.integration
def test_concurrent_nodes_get_distinct_dual_stack_leases_in_flannels_format(
    etcd: EtcdServer, registry: Registry
) -> None:
    barrier = threading.Barrier(12)
    results: dict[int, Lease | BaseException] = {}

    def agent(i: int) -> None:
        with Registry(etcd.endpoint, PREFIX) as reg:
            barrier.wait()
            try:
                results[i] = reg.acquire(**node(i), ttl=600)
            except BaseException as exc:  # recorded and asserted below
                results[i] = exc

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    leases = [r for r in results.values() if isinstance(r, Lease)]
    assert len(leases) == 12, results
    cfg = registry.get_config()
    assert cfg.ipv6 is not None
    assert len({lease.subnet for lease in leases}) == 12
    assert len({lease.ipv6_subnet for lease in leases}) == 12
    for lease in leases:
        assert leasable(cfg, lease.subnet)
        assert lease.ipv6_subnet is not None and leasable(cfg.ipv6, lease.ipv6_subnet)
        kv = registry.etcd.get(registry.keys.lease(lease.subnet, lease.ipv6_subnet))
        assert kv is not None and kv.value == lease_to_json(lease).encode()
        assert parse_lease_name(kv.key.rsplit("/", 1)[1]) == (lease.subnet, lease.ipv6_subnet)
        assert json.loads(kv.value)["BackendV6Data"]["VtepMAC"] == lease.vtep_mac_v6
    snap = registry.snapshot()
    assert set(snap.leases) == set(leases)
    assert snap.rejected == ()
    # a node acquiring again gets its lease back, both halves, under the same etcd lease
    again = registry.acquire(**node(3), ttl=600)
    first = results[3]
    assert isinstance(first, Lease)
    assert (again.subnet, again.ipv6_subnet, again.etcd_lease_id) == (
        first.subnet,
        first.ipv6_subnet,
        first.etcd_lease_id,
    )
    renewed = registry.renew(again, ttl=600)
    assert renewed.key_name == again.key_name


@pytest.mark.integration
def test_a_node_without_public_ipv6_leases_ipv4_only(registry: Registry) -> None:
    """flannel would stop; vxflow keeps the node's IPv4 working (a dual-stack config
    accepts an IPv4-only lease), and refuses a PublicIPv6 inside the overlay."""
    with pytest.raises(ValueError, match="inside the overlay"):
        registry.acquire(**{**node(1), "public_ipv6": "fc00::1"})
    lease = registry.acquire("198.18.0.1", "02:00:00:00:00:01")
    assert (lease.ipv6_subnet, lease.public_ipv6, lease.vtep_mac_v6) == (None, None, None)
    assert registry.list_leases() == [lease]
    assert lease.key_name == f"{lease.subnet.network_address}-24"


@pytest.mark.integration
@pytest.mark.random_leases
def test_previous_subnets_and_a_dual_stack_reservation_are_honoured(registry: Registry) -> None:
    registry.reserve(
        IPv4Network("198.19.5.0/24"),
        "198.18.0.5",
        ipv6_subnet=IPv6Network("fc00:0:0:55::/64"),
        public_ipv6="fd18::5",
    )
    reserved = registry.acquire(**node(5))
    assert (reserved.subnet, reserved.ipv6_subnet, reserved.etcd_lease_id) == (
        IPv4Network("198.19.5.0/24"),
        IPv6Network("fc00:0:0:55::/64"),
        None,
    )
    taken = {lease.ipv6_subnet for lease in registry.list_leases()}
    wanted6 = next(
        IPv6Network((0xFC00 << 112 | i << 64, 64)) for i in range(1, 99)
        if IPv6Network((0xFC00 << 112 | i << 64, 64)) not in taken
    )  # fmt: skip
    wanted4 = next(
        IPv4Network(f"198.19.{i}.0/24") for i in range(1, 21)
        if registry.lease_for(IPv4Network(f"198.19.{i}.0/24")) is None
    )  # fmt: skip
    lease = registry.acquire(
        **node(6), previous_subnet=wanted4, previous_ipv6_subnet=wanted6, ttl=600
    )
    assert (lease.subnet, lease.ipv6_subnet) == (wanted4, wanted6)
    found = registry.lease_for(wanted4)
    assert isinstance(found, Lease) and found.ipv6_subnet == wanted6


@pytest.mark.integration
def test_turning_ipv6_on_and_off_moves_the_key_and_keeps_the_ipv4_subnet(
    etcd: EtcdServer,
) -> None:
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config(dual_config(EnableIPv6=None, IPv6Network=None))
        v4 = reg.acquire(**node(7), ttl=600)
        assert v4.ipv6_subnet is None and v4.public_ipv6 is None
        assert json.loads(reg.etcd.get(reg.keys.lease(v4.subnet)).value)["PublicIPv6"] is None

        reg.set_config(dual_config())
        dual = reg.acquire(**node(7), ttl=600)
        assert dual.subnet == v4.subnet and dual.etcd_lease_id == v4.etcd_lease_id
        assert dual.ipv6_subnet is not None and dual.public_ipv6 == IPv6Address("fd18::7")
        assert reg.etcd.get(reg.keys.lease(v4.subnet)) is None  # moved, not copied
        assert [lease.key_name for lease in reg.list_leases()] == [dual.key_name]

        reg.set_config(dual_config(EnableIPv6=False))
        back = reg.acquire(**node(7), ttl=600)
        assert (back.subnet, back.ipv6_subnet, back.etcd_lease_id) == (
            v4.subnet,
            None,
            v4.etcd_lease_id,
        )
        assert [lease.key_name for lease in reg.list_leases()] == [back.key_name]


@pytest.mark.integration
def test_ipv6_exhaustion_is_reported_like_ipv4s(etcd: EtcdServer) -> None:
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config(dual_config(IPv6Network="fc00::/124"))  # /126 subnets: 3 leasable
        got = [reg.acquire(**node(i), ttl=600) for i in range(1, 4)]
        assert len({lease.ipv6_subnet for lease in got}) == 3
        with pytest.raises(NetworkExhausted, match="no free /126"):
            reg.acquire(**node(4), ttl=600)


@pytest.mark.integration
@pytest.mark.random_leases
def test_renew_after_expiry_recreates_both_halves_unless_one_was_taken(registry: Registry) -> None:
    lease = registry.acquire(**node(4), ttl=600)
    registry.etcd.revoke(lease.etcd_lease_id)  # as if it had expired
    renewed = registry.renew(lease, ttl=600)
    assert (renewed.subnet, renewed.ipv6_subnet) == (lease.subnet, lease.ipv6_subnet)
    assert renewed.etcd_lease_id != lease.etcd_lease_id
    registry.etcd.revoke(renewed.etcd_lease_id)
    # meanwhile another node's key names our IPv6 subnet under an IPv4 subnet of its own
    free4 = next(
        IPv4Network(f"198.19.{i}.0/24") for i in range(1, 21)
        if registry.lease_for(IPv4Network(f"198.19.{i}.0/24")) is None
        and IPv4Network(f"198.19.{i}.0/24") != lease.subnet
    )  # fmt: skip
    registry.etcd.put(registry.keys.lease(free4, lease.ipv6_subnet), flannel_value("198.18.0.9"))
    with pytest.raises(LeaseLost, match=str(lease.ipv6_subnet)):
        registry.renew(renewed)
    assert registry.etcd.get(registry.keys.lease(lease.subnet, lease.ipv6_subnet)) is None


def test_an_endpoints_ipv6_address_rides_in_its_value_and_is_judged() -> None:
    lease = check_lease(f"{KEYS.subnets}198.19.4.0-24&fc00:0:0:4::-64", flannel_value(), DUAL)
    leases = {lease.subnet: lease}
    ep = Endpoint(lease.subnet, IPv4Address("198.19.4.7"), "0a:58:c6:13:04:07", 5, "p7",
                  ipv6=IPv6Address("fc00:0:0:4::7"))  # fmt: skip
    name, value = endpoint_name(ep), endpoint_to_json(ep)
    assert json.loads(value)["IPv6"] == "fc00:0:0:4::7"
    assert check_endpoint("k", name, value, leases) == ep
    for bad in ("fc00:0:0:5::7", "fc00:0:0:4::1", "nonsense"):
        got = check_endpoint("k", name, value.replace("fc00:0:0:4::7", bad), leases)
        assert isinstance(got, Rejection) and got.reason is Reason.BAD_IP, got
    # without an IPv6 half the node's endpoints are judged for IPv4 alone
    plain = {lease.subnet: replace(lease, ipv6_subnet=None, public_ipv6=None, vtep_mac_v6=None)}
    assert check_endpoint("k", name, value, plain) == replace(ep, ipv6=None)
    assert "IPv6" not in endpoint_to_json(replace(ep, ipv6=None))  # IPv4-only as before
