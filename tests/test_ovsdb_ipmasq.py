"""flannel's masquerade rules in nftables form, pure."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from ovsdb.ipmasq import CHAIN, TABLE, install_commands, listed_rules, masq_rules

N, S = IPv4Network("198.19.0.0/16"), IPv4Network("198.19.5.0/24")


def prefix(op: str, field: str, net: str) -> dict:
    addr, length = net.split("/")
    return {"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}},
                      "right": {"prefix": {"addr": addr, "len": int(length)}}}}  # fmt: skip


def test_flannels_six_rules_in_order() -> None:
    """pkg/trafficmngr/iptables masqRules: mark, S->N, N->S, !N->S return; N->!mcast, !N->N masq."""
    ret, masq = {"return": None}, {"masquerade": {"flags": "fully-random"}}
    mark = {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 0x4000]},
                      "right": 0x4000}}  # fmt: skip
    assert masq_rules(N, S) == [
        [mark, ret],
        [prefix("==", "saddr", "198.19.5.0/24"), prefix("==", "daddr", "198.19.0.0/16"), ret],
        [prefix("==", "saddr", "198.19.0.0/16"), prefix("==", "daddr", "198.19.5.0/24"), ret],
        [prefix("!=", "saddr", "198.19.0.0/16"), prefix("==", "daddr", "198.19.5.0/24"), ret],
        [prefix("==", "saddr", "198.19.0.0/16"), prefix("!=", "daddr", "224.0.0.0/4"), masq],
        [prefix("!=", "saddr", "198.19.0.0/16"), prefix("==", "daddr", "198.19.0.0/16"), masq],
    ]


def test_install_is_one_batch_that_replaces_only_our_chain() -> None:
    batch = install_commands(masq_rules(N, S))["nftables"]
    assert batch[0] == {"add": {"table": {"family": "ip", "name": TABLE}}}
    assert batch[1]["add"]["chain"] | {} == {
        "family": "ip", "table": TABLE, "name": CHAIN, "type": "nat", "hook": "postrouting",
        "prio": 100, "policy": "accept",
    }  # fmt: skip
    assert batch[2] == {"flush": {"chain": {"family": "ip", "table": TABLE, "name": CHAIN}}}
    assert [c["add"]["rule"]["expr"] for c in batch[3:]] == masq_rules(N, S)
    assert all(c["add"]["rule"]["table"] == TABLE for c in batch[3:])


def test_listing_reads_back_our_chain_only() -> None:
    listing = {"nftables": [
        {"metainfo": {}}, {"table": {"family": "ip", "name": TABLE}},
        {"rule": {"chain": CHAIN, "handle": 2, "expr": [{"return": None}]}},
        {"rule": {"chain": "elsewhere", "handle": 3, "expr": [{"accept": None}]}},
    ]}  # fmt: skip
    assert listed_rules(listing) == [[{"return": None}]]


def test_flannels_ipv6_rules_are_the_same_six_in_the_ip6_family() -> None:
    """flannel's MasqIP6Rules: the same shape over IPv6Network and the IPv6 subnet, multicast
    ff00::/8, in `table ip6 vxflow`."""
    n6, s6 = IPv6Network("fd00:198:19::/48"), IPv6Network("fd00:198:19:5::/64")
    six = masq_rules(n6, s6)
    four = masq_rules(N, S)
    assert len(six) == 6 and six[0] == four[0] and [r[-1] for r in six] == [r[-1] for r in four]
    ip6 = {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                     "right": {"prefix": {"addr": "ff00::", "len": 8}}}}  # fmt: skip
    assert six[4][1] == ip6
    assert six[1][0]["match"]["right"] == {"prefix": {"addr": "fd00:198:19:5::", "len": 64}}
    batch = install_commands(six, "ip6")["nftables"]
    assert batch[0] == {"add": {"table": {"family": "ip6", "name": TABLE}}}
    assert all(c["add"]["rule"]["family"] == "ip6" for c in batch[3:])
