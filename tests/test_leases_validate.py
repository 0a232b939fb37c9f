"""Validation of lease and endpoint values, conflict resolution, and the snapshot diff (pure)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from leases.config import parse_config
from leases.events import (
    ConfigChanged,
    EndpointAdded,
    EndpointRemoved,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
)
from leases.keys import KV, KeyKind, Keys
from leases.model import Endpoint, Lease
from leases.pods import pod_identity
from leases.state import EMPTY, build_snapshot, diff
from leases.validate import (
    MAX_VALUE_BYTES,
    Reason,
    Rejection,
    check_endpoint,
    check_lease,
    endpoint_to_json,
    lease_to_json,
    parse_ipv4,
    parse_subnet_name,
    public_ip_of,
    public_ip_problem,
    resolve_conflicts,
)

CFG = parse_config('{"Network": "198.19.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}')
KEYS = Keys("/test/network")

# flannel's documented value (Documentation/reservations.md), byte for byte
FLANNEL_VALUE = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
)
# what flannel before 0.10 wrote (no VNI, no PublicIPv6): the seed's era
OLD_FLANNEL_VALUE = (
    '{"PublicIP":"10.140.0.4","BackendType":"vxlan","BackendData":{"VtepMAC":"2E:83:84:1B:95:E4"}}'
)


def lease_value(**over: object) -> str:
    obj: dict = {
        "PublicIP": "198.18.0.5",
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:05"},
    }
    data = over.pop("BackendData", None)
    obj.update(over)
    if data is not None:
        obj["BackendData"] = data
    return json.dumps(obj)


def test_flannel_documented_value_parses_and_vxflow_writes_it_back_identically() -> None:
    cfg = parse_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
    lease = check_lease("/coreos.com/network/subnets/10.5.52.0-24", FLANNEL_VALUE, cfg)
    assert lease == Lease(
        subnet=IPv4Network("10.5.52.0/24"),
        public_ip=IPv4Address("192.168.64.3"),
        vni=1,
        vtep_mac="c6:d2:32:6f:8f:44",
    )
    assert lease_to_json(lease) == FLANNEL_VALUE


def test_old_flannel_value_without_vni_takes_the_configs_vni() -> None:
    cfg = parse_config(
        '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
    )
    lease = check_lease("/atomic.io/network/subnets/10.20.52.0-24", OLD_FLANNEL_VALUE, cfg)
    assert isinstance(lease, Lease)
    assert (lease.subnet, lease.public_ip, lease.vni, lease.vtep_mac) == (
        IPv4Network("10.20.52.0/24"),
        IPv4Address("10.140.0.4"),
        1,
        "2e:83:84:1b:95:e4",
    )
    assert lease.gateway == IPv4Address("10.20.52.1")


def test_backend_data_extras_survive_a_rewrite() -> None:
    data = {"VNI": 1, "VtepMAC": "02:00:00:00:00:05", "DatapathID": 7, "Ports": {"tun": 1}}
    lease = check_lease("x/subnets/198.19.3.0-24", lease_value(BackendData=data), CFG)
    assert isinstance(lease, Lease)
    hash(lease)  # extras are kept hashable
    assert json.loads(lease_to_json(lease))["BackendData"] == data
    assert list(json.loads(lease_to_json(lease))["BackendData"])[:2] == ["VNI", "VtepMAC"]


MALFORMED_LEASES = [
    ("198.19.5.0_24", lease_value(), Reason.BAD_KEY),
    ("198.19.5.7-24", lease_value(), Reason.BAD_KEY),  # host bits set
    ("198.19.5.0-24&fc00::-64", lease_value(), Reason.MISSING_FIELD),  # no PublicIPv6
    ("198.19.300.0-24", lease_value(), Reason.BAD_KEY),
    ("10.9.0.0-24", lease_value(), Reason.OUTSIDE_NETWORK),
    ("198.19.4.0-23", lease_value(), Reason.WRONG_LENGTH),
    ("198.19.5.0-24", "x" * (MAX_VALUE_BYTES + 1), Reason.OVERSIZED),
    ("198.19.5.0-24", "{not json", Reason.BAD_JSON),
    ("198.19.5.0-24", b"\xff\xfe", Reason.BAD_JSON),
    ("198.19.5.0-24", "[1]", Reason.BAD_JSON),
    ("198.19.5.0-24", lease_value(PublicIP=None), Reason.MISSING_FIELD),
    ("198.19.5.0-24", lease_value(PublicIP=198), Reason.WRONG_TYPE),
    ("198.19.5.0-24", lease_value(PublicIP="198.18.0"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24", lease_value(PublicIP="198.19.7.1"), Reason.BAD_PUBLIC_IP),  # in overlay
    ("198.19.5.0-24", lease_value(PublicIP="224.0.0.1"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24", lease_value(PublicIP="127.0.0.1"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24", lease_value(PublicIP="0.0.0.0"), Reason.BAD_PUBLIC_IP),
    ("198.19.5.0-24", lease_value(BackendType="udp"), Reason.BAD_BACKEND),
    ("198.19.5.0-24", lease_value(BackendType=None), Reason.MISSING_FIELD),
    ("198.19.5.0-24", lease_value(BackendData=[1]), Reason.WRONG_TYPE),
    (
        "198.19.5.0-24",
        lease_value(BackendData={"VtepMAC": "02:00:00:00:00:05", "VNI": 2}),
        Reason.BAD_VNI,
    ),
    (
        "198.19.5.0-24",
        lease_value(BackendData={"VtepMAC": "02:00:00:00:00:05", "VNI": "1"}),
        Reason.BAD_VNI,
    ),
    (
        "198.19.5.0-24",
        lease_value(BackendData={"VtepMAC": "02:00:00:00:00:05", "VNI": True}),
        Reason.BAD_VNI,
    ),
    ("198.19.5.0-24", lease_value(BackendData={"VNI": 1}), Reason.MISSING_FIELD),
    (
        "198.19.5.0-24",
        lease_value(BackendData={"VNI": 1, "VtepMAC": "zz:00:00:00:00:05"}),
        Reason.BAD_MAC,
    ),
    (
        "198.19.5.0-24",
        lease_value(BackendData={"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}),
        Reason.BAD_MAC,
    ),
    (
        "198.19.5.0-24",
        lease_value(BackendData={"VNI": 1, "VtepMAC": "00:00:00:00:00:00"}),
        Reason.BAD_MAC,
    ),
    ("198.19.5.0-24", lease_value(BackendData={"VNI": 1, "VtepMAC": 5}), Reason.WRONG_TYPE),
    ("198.19.5.0-24", "[" * 4000, Reason.BAD_JSON),  # nested past Python's recursion limit
]


@pytest.mark.parametrize(("name", "value", "reason"), MALFORMED_LEASES)
def test_malformed_lease_gets_its_specific_rejection(name: str, value: str, reason: str) -> None:
    key = f"/test/network/subnets/{name}"
    result = check_lease(key, value, CFG, mod_revision=9)
    assert isinstance(result, Rejection), result
    assert (result.kind, result.key, result.reason, result.mod_revision) == (
        KeyKind.LEASE,
        key,
        reason,
        9,
    )
    assert result.detail


def lease(third_octet: int, public_ip: str, prefixlen: int = 24, rev: int = 1) -> Lease:
    return Lease(
        subnet=IPv4Network(f"198.19.{third_octet}.0/{prefixlen}"),
        public_ip=IPv4Address(public_ip),
        vni=1,
        vtep_mac="02:00:00:00:00:01",
        mod_revision=rev,
    )


@pytest.mark.parametrize(
    "text",
    ["10.20.52.0", "0.0.0.0", "255.255.255.255", "1.2.3.04", "1.2.3.256", "1.2.3", "1.2.3.4 ",
     "1.2.3.4\n", "01.2.3.4", "a.b.c.d", ""],
)  # fmt: skip
def test_fast_ipv4_parsing_agrees_with_ipaddress(text: str) -> None:
    try:
        want: object = IPv4Address(text)
    except ValueError as exc:
        want = type(exc)
    try:
        got: object = parse_ipv4(text)
    except ValueError as exc:
        got = type(exc)
    assert got == want
    for length in (0, 8, 24, 30, 32, 33):
        name = f"{text}-{length}"
        try:
            want = IPv4Network(f"{text}/{length}")
        except ValueError:
            want = ValueError
        try:
            got = parse_subnet_name(name)
        except ValueError:
            got = ValueError
        assert got == want, name


def test_public_ip_ranges_are_ipaddress_ones() -> None:
    for first in [0, 1, 9, 10, 126, 127, 128, 169, 198, 223, 224, 239, 240, 255]:
        for rest in (0, 0x00FEFF, 0x00FE01, 0xFE0001, 0xFFFFFF, 0x123456):
            ip = IPv4Address(first << 24 | rest)
            bad = ip.is_unspecified or ip.is_multicast or ip.is_loopback
            bad = bad or ip.is_link_local or ip.is_reserved or ip in CFG.network
            assert (public_ip_problem(ip, CFG) is not None) == bad, ip
    assert public_ip_problem(IPv4Address("169.254.1.1"), CFG)
    assert public_ip_problem(IPv4Address("198.19.3.4"), CFG)


def test_resolve_conflicts_is_deterministic_and_says_why() -> None:
    candidates = {
        "k/4-23": lease(4, "198.18.0.4", 23),  # overlaps 4/24 and 5/24; lowest wins
        "k/4-24": lease(4, "198.18.0.40"),
        "k/5-24": lease(5, "198.18.0.5"),
        "k/6-24": lease(6, "198.18.0.6"),
        "k/9-24": lease(9, "198.18.0.6"),  # duplicate PublicIP of 6/24
        "k/10-24": lease(10, "198.18.0.10"),
    }
    outcomes = set()
    for order in itertools.permutations(candidates.items()):
        kept, rejected = resolve_conflicts(dict(order))
        outcomes.add((tuple(sorted(kept)), tuple(sorted((r.key, r.reason) for r in rejected))))
    assert len(outcomes) == 1
    kept_keys, rejections = outcomes.pop()
    assert kept_keys == ("k/10-24", "k/4-23", "k/6-24")
    assert rejections == (
        ("k/4-24", Reason.OVERLAP),
        ("k/5-24", Reason.OVERLAP),
        ("k/9-24", Reason.DUPLICATE_PUBLIC_IP),
    )


NODE = lease(3, "198.18.0.3")
LEASES = {NODE.subnet: NODE}


def ep_value(**over: object) -> str:
    obj = {"IP": "198.19.3.10", "MAC": "0a:00:00:00:00:0a", "OFPort": 5, "Port": "vxp-a"}
    obj.update(over)
    return json.dumps(obj)


def test_endpoint_round_trip() -> None:
    ep = Endpoint(NODE.subnet, IPv4Address("198.19.3.10"), "0a:00:00:00:00:0a", 5, "vxp-a")
    assert json.loads(endpoint_to_json(ep)) == json.loads(ep_value())
    assert check_endpoint("k", "198.19.3.0-24/198.19.3.10", endpoint_to_json(ep), LEASES) == ep
    named = replace(ep, pod=pod_identity("x", "a", {"pod": "a"}, [{"name": "h", "containerPort": 80}]))
    assert json.loads(endpoint_to_json(named))["Pod"] == {
        "Namespace": "x", "Name": "a", "Labels": {"pod": "a"},
        "Ports": [{"name": "h", "containerPort": 80, "protocol": "TCP"}],
    }  # fmt: skip
    assert check_endpoint("k", "198.19.3.0-24/198.19.3.10", endpoint_to_json(named), LEASES) == named


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("198.19.3.0-24", ep_value(), Reason.BAD_KEY),
        ("198.19.3.0-24/x", ep_value(), Reason.BAD_KEY),
        ("198.19.8.0-24/198.19.8.10", ep_value(IP="198.19.8.10"), Reason.ORPHAN),
        ("198.19.3.0-24/198.19.4.10", ep_value(IP="198.19.4.10"), Reason.BAD_IP),
        ("198.19.3.0-24/198.19.3.1", ep_value(IP="198.19.3.1"), Reason.BAD_IP),  # the gateway
        ("198.19.3.0-24/198.19.3.255", ep_value(IP="198.19.3.255"), Reason.BAD_IP),
        ("198.19.3.0-24/198.19.3.10", ep_value(IP="198.19.3.11"), Reason.BAD_IP),
        ("198.19.3.0-24/198.19.3.10", ep_value(MAC="ff:ff:ff:ff:ff:ff"), Reason.BAD_MAC),
        ("198.19.3.0-24/198.19.3.10", ep_value(OFPort=0), Reason.BAD_OFPORT),
        ("198.19.3.0-24/198.19.3.10", ep_value(OFPort="5"), Reason.WRONG_TYPE),
        ("198.19.3.0-24/198.19.3.10", ep_value(Port=7), Reason.WRONG_TYPE),
        ("198.19.3.0-24/198.19.3.10", "nope", Reason.BAD_JSON),
        ("198.19.3.0-24/198.19.3.10", ep_value(Pod="x/a"), Reason.WRONG_TYPE),
        ("198.19.3.0-24/198.19.3.10", ep_value(Pod={"Namespace": "x"}), Reason.BAD_POD),
        ("198.19.3.0-24/198.19.3.10", ep_value(Pod={"Name": "a", "Labels": {"k": 1}}), Reason.BAD_POD),
        ("198.19.3.0-24/198.19.3.10", ep_value(Pod={"Name": "a", "Spec": {}}), Reason.BAD_POD),
    ],
)
def test_malformed_endpoint_gets_its_specific_rejection(name: str, value: str, reason: str) -> None:
    result = check_endpoint("key", name, value, LEASES)
    assert isinstance(result, Rejection)
    assert (result.kind, result.reason) == (KeyKind.ENDPOINT, reason)


def kv(key: str, value: str, rev: int, lease_id: int = 0) -> KV:
    return KV(KEYS.root + key, value.encode(), rev, rev, lease_id)


CONFIG_KV = kv("config", '{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}', 1)


def test_snapshot_and_diff_derive_events_from_states() -> None:
    a = kv("subnets/198.19.3.0-24", lease_value(PublicIP="198.18.0.3"), 2, 77)
    ep = kv("vxflow/endpoints/198.19.3.0-24/198.19.3.10", ep_value(), 3, 77)
    junk = kv("subnets/junk", "{}", 4)
    other = kv("vxflow/election/leader", "me", 4)  # not ours to judge: ignored
    s1 = build_snapshot(KEYS, [CONFIG_KV, a, ep, junk, other], 4)
    assert [lease.subnet for lease in s1.leases] == [IPv4Network("198.19.3.0/24")]
    assert s1.leases[0].etcd_lease_id == 77
    assert [e.ip for e in s1.endpoints] == [IPv4Address("198.19.3.10")]
    assert [(r.key, r.reason) for r in s1.rejected] == [(junk.key, Reason.BAD_KEY)]

    events = diff(EMPTY, s1)
    assert [type(e) for e in events] == [ConfigChanged, LeaseAdded, EndpointAdded]
    assert {e.revision for e in events} == {4}
    assert diff(s1, s1) == []

    # a rewrite with the same content (new mod_revision) is no event; a new VtepMAC is
    a2 = kv("subnets/198.19.3.0-24", lease_value(PublicIP="198.18.0.3"), 5, 77)
    s2 = build_snapshot(KEYS, [CONFIG_KV, a2, ep], 5)
    assert diff(s1, s2) == []
    mac = {"VNI": 1, "VtepMAC": "02:00:00:00:00:99"}
    a3 = kv("subnets/198.19.3.0-24", lease_value(PublicIP="198.18.0.3", BackendData=mac), 6, 77)
    s3 = build_snapshot(KEYS, [CONFIG_KV, a3, ep], 6)
    (changed,) = diff(s2, s3)
    assert isinstance(changed, LeaseChanged)
    assert changed.lease.vtep_mac == "02:00:00:00:00:99"

    # the lease goes: its endpoint is removed first, then the lease
    s4 = build_snapshot(KEYS, [CONFIG_KV, ep], 7)
    assert [type(e) for e in diff(s3, s4)] == [EndpointRemoved, LeaseRemoved]
    assert [r.reason for r in s4.rejected] == [Reason.ORPHAN]


def test_invalid_or_missing_config_keeps_the_last_valid_one() -> None:
    a = kv("subnets/198.19.3.0-24", lease_value(PublicIP="198.18.0.3"), 2)
    s1 = build_snapshot(KEYS, [CONFIG_KV, a], 2)
    bad = kv("config", '{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}', 3)
    s2 = build_snapshot(KEYS, [bad, a], 3, fallback_config=s1.config)
    assert s2.config == s1.config and s2.leases == s1.leases
    assert [(r.kind, r.reason) for r in s2.rejected] == [(KeyKind.CONFIG, Reason.BAD_CONFIG)]
    assert diff(s1, s2) == []
    s3 = build_snapshot(KEYS, [a], 4, fallback_config=s1.config)
    assert s3.leases == s1.leases and s3.rejected[0].reason == Reason.NO_CONFIG
    # with no valid config ever seen, nothing can be validated: nothing is usable
    s4 = build_snapshot(KEYS, [a], 4)
    assert (s4.config, s4.leases) == (None, ())


def test_config_change_can_withdraw_leases() -> None:
    a = kv("subnets/198.19.3.0-24", lease_value(PublicIP="198.18.0.3"), 2)
    s1 = build_snapshot(KEYS, [CONFIG_KV, a], 2)
    narrower = kv(
        "config", '{"Network": "198.19.0.0/16", "SubnetLen": 25, "Backend": {"Type": "vxlan"}}', 3
    )
    s2 = build_snapshot(KEYS, [narrower, a], 3)
    assert [type(e) for e in diff(s1, s2)] == [ConfigChanged, LeaseRemoved]
    assert s2.rejected[0].reason == Reason.WRONG_LENGTH


@pytest.mark.parametrize("dual", [False, True])
def test_incremental_view_matches_full_rebuild_and_its_events_replay(dual: bool) -> None:
    """Random puts/deletes (valid, invalid, rival PublicIPs, endpoints, config changes):
    after every batch the incremental view equals a full rebuild, and applying its
    events to the previous state yields the new one. `dual`: dual-stack configs and
    keys too, whose leases also rival for PublicIPv6 and IPv6 subnets."""
    import random

    from leases.state import View

    rng = random.Random(7)
    v6 = ', "EnableIPv6": true, "IPv6Network": "fc00::/48"' if dual else ""
    configs = [
        f'{{"Network": "198.19.0.0/16", "Backend": {{"Type": "vxlan"}}{v6}}}',
        f'{{"Network": "198.19.0.0/16", "SubnetLen": 25, "Backend": {{"Type": "vxlan"}}{v6}}}',
        '{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}',  # invalid: keep the last
    ]
    if dual:
        configs.append('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')

    def random_change(rev: int) -> tuple[str, KV | None]:
        roll = rng.random()
        if roll < 0.05:
            return KEYS.config, kv("config", rng.choice(configs), rev)
        if roll < 0.6:
            key = f"subnets/198.19.{rng.randrange(6)}.{rng.choice([0, 0, 0, 128])}-{rng.choice([24, 24, 25])}"
            six = {}
            if dual and rng.random() < 0.7:
                key += f"&fc00:0:0:{rng.randrange(4)}::-{rng.choice([64, 64, 64, 80])}"
                six = {"PublicIPv6": f"fd18::{rng.randrange(4)}",
                       "BackendV6Data": {"VNI": 1, "VtepMAC": "02:00:00:00:00:06"}}  # fmt: skip
            value = rng.choice(
                [
                    lease_value(PublicIP=f"198.18.0.{rng.randrange(4)}", **six),
                    lease_value(PublicIP="1.2.3", **six),
                    "{",
                ]
            )
        else:
            node = f"198.19.{rng.randrange(6)}.0-24"
            host = rng.choice([1, 10, 11, 300])
            key = f"vxflow/endpoints/{node}/198.19.{node.split('.')[2]}.{host}"
            value = ep_value(IP=key.rsplit("/", 1)[1])
        return KEYS.root + key, None if rng.random() < 0.3 else kv(key, value, rev)

    view = View(KEYS).load([CONFIG_KV], 1)
    leases = {lease.subnet: lease for lease in view.snapshot().leases}
    endpoints = set(view.snapshot().endpoints)
    for rev in range(2, 400):
        changes = dict(random_change(rev) for _ in range(rng.randrange(1, 4)))
        events, _, _ = view.apply(changes, rev)
        for event in events:
            match event:
                case LeaseAdded(lease=lease) | LeaseChanged(lease=lease):
                    leases[lease.subnet] = lease
                case LeaseRemoved(lease=lease):
                    assert leases.pop(lease.subnet) is not None
                case EndpointAdded(endpoint=ep):
                    endpoints.add(ep)
                case EndpointRemoved(endpoint=ep):
                    endpoints.remove(ep)
        incremental = view.snapshot()
        full = build_snapshot(KEYS, view.kvs.values(), rev, fallback_config=incremental.config)
        assert incremental.leases == full.leases
        assert incremental.endpoints == full.endpoints
        assert set(incremental.rejected) == set(full.rejected)
        # a rewrite changing only the revision is no event (leases.state._same)
        unrevised = {s: replace(x, mod_revision=0) for s, x in leases.items()}
        assert {x.subnet: replace(x, mod_revision=0) for x in incremental.leases} == unrevised
        assert set(incremental.endpoints) == endpoints
        assert len({lease.public_ip for lease in incremental.leases}) == len(incremental.leases)
        sixes = [lease for lease in incremental.leases if lease.ipv6_subnet is not None]
        assert len({lease.public_ipv6 for lease in sixes}) == len(sixes)
        assert len({lease.ipv6_subnet for lease in sixes}) == len(sixes)
        if rev % 40 == 0:  # go on from a copy of the rebuild's view (as a watch starts)
            view = full.view.copy()
            view.apply(dict([random_change(rev)]), rev)
            assert full.view.snapshot() == full  # the original is untouched
            view = full.view.copy()


def test_a_view_keeps_nothing_for_keys_it_does_not_use_or_entries_that_went() -> None:
    """Memory follows what vxflow uses: other keys' raw values are not kept, and a node's
    endpoints deleted leave no empty group behind (also in the controller's model)."""
    from controller.model import ClusterModel
    from leases.state import View

    a = kv("subnets/198.19.3.0-24", lease_value(PublicIP="198.18.0.3"), 2, 77)
    ep = kv("vxflow/endpoints/198.19.3.0-24/198.19.3.10", ep_value(), 3, 77)
    other = kv("vxflow/election/leader", "x" * 100_000, 4)  # not vxflow's: never kept
    view = View(KEYS).load([CONFIG_KV, a, ep, other], 4)
    assert set(view.kvs) == {CONFIG_KV.key, a.key, ep.key}
    view.apply({other.key: kv("vxflow/election/leader", "y", 5)}, 5)
    assert other.key not in view.kvs
    events, _, _ = view.apply({ep.key: None}, 6)
    assert [type(e) for e in events] == [EndpointRemoved]
    assert view._groups == {}

    model = ClusterModel()
    model.load(view.snapshot().config, view.snapshot().leases, [])
    (endpoint,) = build_snapshot(KEYS, [CONFIG_KV, a, ep], 3).endpoints
    model.apply([EndpointAdded(endpoint, 3)])
    model.apply([EndpointRemoved(endpoint, 6)])
    assert dict(model._endpoints) == {}


def test_public_ip_of_is_lenient_with_any_value() -> None:
    assert public_ip_of('{"PublicIP": "198.18.0.7"}') == IPv4Address("198.18.0.7")
    for value in ('{"PublicIP": "x"}', "[]", "{oops", "[" * 4000):
        assert public_ip_of(value) is None
