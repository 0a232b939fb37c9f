"""DirectRouting's node-side rule and its record (pure): flannel's route test, the
sources a node admits unencapsulated, and the Direct list of the liveness record."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from leases.direct import MAX_DIRECT, direct_sources, route_is_direct
from leases.events import LivenessAdded, LivenessRemoved
from leases.keys import KV, Keys
from leases.liveness import check_liveness, liveness_to_json
from leases.model import Lease, Liveness
from leases.state import View
from leases.validate import Rejection

KEYS = Keys("/coreos.com/network")
IP = IPv4Address("198.18.0.3")
ON_LINK = {"dst": "198.18.0.4", "dev": "br-phy", "prefsrc": "198.18.0.3"}
VIA_ROUTER = {"dst": "198.18.0.140", "gateway": "198.18.0.126", "dev": "br-phy"}


@pytest.mark.parametrize(
    ("routes", "direct"),
    [
        ([ON_LINK], True),  # one route, no gateway: on this node's link
        ([VIA_ROUTER], False),  # behind a router
        ([], False),  # no route at all
        ([ON_LINK, ON_LINK], False),  # several (multipath): flannel keeps VXLAN
        ([{**ON_LINK, "gateway": ""}], True),  # an empty gateway is no gateway
    ],
)
def test_flannels_rule_exactly_one_route_without_gateway(routes: list, direct: bool) -> None:
    assert route_is_direct(routes) is direct


def lease(subnet: str, ip: str) -> Lease:
    return Lease(IPv4Network(subnet), IPv4Address(ip), 1, "0e:00:00:00:00:01")


def test_direct_sources_are_the_subnets_and_addresses_of_direct_peers_only() -> None:
    leases = [lease("198.19.1.0/24", "198.18.0.3"), lease("198.19.2.0/24", "198.18.0.4"),
              lease("198.19.3.0/24", "198.18.0.140")]  # fmt: skip
    direct = {IPv4Address("198.18.0.4"), IP}  # own address named too: never its own subnet
    assert direct_sources(leases, direct, IP) == [IPv4Network("198.18.0.4/32"),
                                                  IPv4Network("198.19.2.0/24")]  # fmt: skip
    assert direct_sources(leases, set(), IP) == []


def test_ipv6_sources_are_those_of_the_peers_whose_publicipv6_is_direct() -> None:
    def dual(i: int) -> Lease:
        return replace(lease(f"198.19.{i}.0/24", f"198.18.0.{i}"),
                       ipv6_subnet=IPv6Network(f"fd00:19:0:{i}::/64"),
                       public_ipv6=IPv6Address(f"fd00:18::{i}"))  # fmt: skip

    leases = [dual(3), dual(4), dual(5), lease("198.19.6.0/24", "198.18.0.6")]
    # 4: both families direct; 5: IPv4 behind a router, IPv6 on the link; 6: IPv4 only
    direct = {IPv4Address("198.18.0.4"), IPv6Address("fd00:18::4"), IPv6Address("fd00:18::5"),
              IPv4Address("198.18.0.6"), IPv6Address("fd00:18::3")}  # fmt: skip
    assert direct_sources(leases, direct, IP, 6) == [
        IPv6Network("fd00:18::4/128"), IPv6Network("fd00:18::5/128"),
        IPv6Network("fd00:19:0:4::/64"), IPv6Network("fd00:19:0:5::/64")]  # fmt: skip
    assert direct_sources(leases, direct, IP) == [
        IPv4Network("198.18.0.4/32"), IPv4Network("198.18.0.6/32"),
        IPv4Network("198.19.4.0/24"), IPv4Network("198.19.6.0/24")]  # fmt: skip


def kv(value: str, lease: int = 9, rev: int = 4) -> KV:
    return KV(KEYS.node(IP), value.encode(), rev, rev, lease)


def test_direct_list_round_trips_and_is_absent_when_off() -> None:
    peers = frozenset({IPv4Address("198.18.0.4"), IPv6Address("fd00:18::4"),
                       IPv4Address("198.18.0.2")})  # fmt: skip
    text = liveness_to_json(Liveness(IP, 2, direct=peers))
    assert json.loads(text)["Direct"] == ["198.18.0.2", "198.18.0.4", "fd00:18::4"]  # stable
    assert check_liveness(kv(text), str(IP)) == Liveness(IP, 2, 9, peers)
    off = liveness_to_json(Liveness(IP, 2))
    assert "Direct" not in json.loads(off)
    assert check_liveness(kv(off), str(IP)).direct is None
    empty = liveness_to_json(Liveness(IP, 2, direct=frozenset()))
    assert check_liveness(kv(empty), str(IP)).direct == frozenset()


@pytest.mark.parametrize(
    "direct",
    [["banana"], ["198.18.0.4", 7], [3232235521], ["fc00::/64"],
     [f"198.18.{i // 256}.{i % 256}" for i in range(MAX_DIRECT + 1)]],
)  # fmt: skip
def test_a_bad_direct_list_rejects_the_record_with_its_reason(direct: list) -> None:
    value = json.dumps({"PublicIP": str(IP), "TTL": 2, "Direct": direct})
    result = check_liveness(kv(value), str(IP))
    assert isinstance(result, Rejection) and result.reason == "bad_direct", result


def test_a_changed_direct_list_is_a_removed_and_an_added_record() -> None:
    first = liveness_to_json(Liveness(IP, 2, direct=frozenset()))
    view = View(KEYS).load([kv(first)], 4)
    peers = frozenset({IPv4Address("198.18.0.4")})
    events, _, _ = view.apply({KEYS.node(IP): kv(liveness_to_json(Liveness(IP, 2, direct=peers)),
                                                 rev=5)}, 5)  # fmt: skip
    assert events == [LivenessRemoved(Liveness(IP, 2, 9, frozenset()), 5),
                      LivenessAdded(Liveness(IP, 2, 9, peers), 5)]  # fmt: skip
