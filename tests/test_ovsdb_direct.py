"""The node side of DirectRouting (pure parts): the route changes and the ingress filter
the agent hands the kernel. The kernel's side is tests/test_e2e_direct.py's."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ovsdb.direct import RTPROT_VXFLOW, candidates, filter_commands, route_commands

S2, S3, S4 = (IPv4Network(f"198.19.{i}.0/24") for i in (2, 3, 4))
A2, A3, A4 = (IPv4Address(f"198.18.0.{i}") for i in (2, 3, 4))


def test_route_commands_touch_only_what_differs_and_only_our_protocol() -> None:
    held = {S2: A2, S3: A3}
    wanted = {S2: A2, S3: A4, S4: A4}  # S3's peer moved, S4 is new
    assert route_commands(wanted, held) == [
        f"route replace 198.19.3.0/24 via 198.18.0.4 proto {RTPROT_VXFLOW}",
        f"route replace 198.19.4.0/24 via 198.18.0.4 proto {RTPROT_VXFLOW}",
    ]
    assert route_commands({}, held) == [f"route del 198.19.2.0/24 proto {RTPROT_VXFLOW}",
                                        f"route del 198.19.3.0/24 proto {RTPROT_VXFLOW}"]  # fmt: skip
    assert route_commands(held, held) == []


def rule_of(batch: dict) -> list[dict]:
    """The drop rule's expressions, after the rule that lets the host's own DNAT pass."""
    dnat, rule = [c["add"]["rule"] for c in batch["nftables"] if "rule" in c.get("add", {})]
    assert dnat["expr"] == [{"match": {"op": "in", "left": {"ct": {"key": "status"}},
                                       "right": "dnat"}}, {"accept": None}]  # fmt: skip
    return rule["expr"]


def test_the_filter_drops_to_own_pods_from_all_but_the_gateway_and_direct_subnets() -> None:
    own = IPv4Network("198.19.1.0/24")
    batch = filter_commands(own, "vxgw0", [S2, S3])
    commands = [next(iter(c)) for c in batch["nftables"]]
    assert commands == ["add", "add", "add", "flush", "add", "add"]  # one transaction: our rules only
    # the drops go to a named counter, which the chain's flush (at every apply) leaves as it is
    assert batch["nftables"][1] == {"add": {"counter": {"family": "ip", "table": "vxflow_direct",
                                                        "name": "dropped"}}}  # fmt: skip
    expr = rule_of(batch)
    assert expr[0]["match"] == {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "vxgw0"}
    assert expr[1]["match"]["right"] == {"prefix": {"addr": "198.19.1.0", "len": 24}}
    assert expr[2]["match"]["op"] == "!=" and expr[2]["match"]["right"] == {"set": [
        {"prefix": {"addr": "198.19.2.0", "len": 24}},
        {"prefix": {"addr": "198.19.3.0", "len": 24}}]}  # fmt: skip
    assert expr[-2:] == [{"counter": "dropped"}, {"drop": None}]
    # no direct peer: everything forwarded to the pods from outside the gateway port drops
    assert [next(iter(e)) for e in rule_of(filter_commands(own, "vxgw0", []))] == [
        "match", "match", "counter", "drop"]  # fmt: skip


def test_ipv6_has_its_own_routes_and_a_filter_in_an_ip6_table() -> None:
    own, peer = IPv6Network("fd00:198:19:1::/64"), IPv6Network("fd00:198:19:2::/64")
    via = IPv6Address("fd00:198:18::2")
    assert route_commands({peer: via}, {}) == [
        f"route replace fd00:198:19:2::/64 via fd00:198:18::2 proto {RTPROT_VXFLOW}"]
    batch = filter_commands(own, "vxgw0", [peer, IPv6Network(via)])
    assert batch["nftables"][0] == {"add": {"table": {"family": "ip6", "name": "vxflow_direct"}}}
    assert {c["add"]["rule"]["family"] for c in batch["nftables"] if "rule" in c.get("add", {})} == {"ip6"}
    expr = rule_of(batch)
    assert expr[1]["match"]["left"] == {"payload": {"protocol": "ip6", "field": "daddr"}}
    assert expr[1]["match"]["right"] == {"prefix": {"addr": "fd00:198:19:1::", "len": 64}}
    assert expr[2]["match"]["left"] == {"payload": {"protocol": "ip6", "field": "saddr"}}
    assert expr[2]["match"]["right"] == {"set": [
        {"prefix": {"addr": "fd00:198:19:2::", "len": 64}},
        {"prefix": {"addr": "fd00:198:18::2", "len": 128}}]}  # fmt: skip


def test_the_rule_is_asked_only_about_accepted_leases_and_accepted_ipv6_halves() -> None:
    """As the controller selects them (flows/validate.py): a lease sharing a PublicIP with
    another is no candidate, nor is either's; an IPv6 subnet two leases claim is neither's;
    an IPv4-only node asks about no PublicIPv6."""
    from tests.test_flows_ipv6 import DUAL, HALVES

    h1, h2, h3 = HALVES
    twin = replace(h3, subnet=IPv4Network("198.19.9.0/24"), ipv6_subnet=None, public_ipv6=None)
    picked = {le.subnet: le for le in candidates(DUAL, h1, [h1, h2, h3, twin])}
    assert set(picked) == {h2.subnet} and picked[h2.subnet].public_ipv6 == h2.public_ipv6
    clash = replace(h3, ipv6_subnet=h2.ipv6_subnet)
    picked = {le.subnet: le for le in candidates(DUAL, h1, [h1, h2, clash])}
    assert set(picked) == {h2.subnet, h3.subnet}
    assert all(le.public_ipv6 is None and le.ipv6_subnet is None for le in picked.values())
    v4_only = replace(h1, ipv6_subnet=None, public_ipv6=None)
    assert all(le.public_ipv6 is None for le in candidates(DUAL, v4_only, [v4_only, h2, h3]))
