"""Diffing read-back against desired, cookies and the ovs-ofctl rendering."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network

from flows.compiler import node_table
from flows.diff import diff_flows, diff_table
from flows.flow import OFPP_IN_PORT, Owner, cookie_for, flow, output, owner_of, set_field, to_ofctl
from leases.model import Lease, NetworkConfig

A = flow(20, 100, {"eth_type": 0x0800, "ip_dst": IPv4Network("198.19.2.0/24")}, [output(1)], 5)
B = flow(30, 100, {"eth_type": 0x0800, "ip_dst": IPv4Address("198.19.1.9")}, [output(9)], 6)
C = flow(0, 0, {}, (), 7)


def test_an_unchanged_table_yields_no_message():
    d = diff_flows({A, B, C}, {C, B, A})
    assert not d and len(d) == 0


def test_changed_actions_or_cookie_are_re_added_under_the_same_key():
    changed = flow(20, 100, dict(A.match), [output(2)], 5)
    recooked = flow(30, 100, dict(B.match), B.actions, 99)
    d = diff_flows({A, B, C}, {changed, recooked, C})
    assert set(d.add) == {changed, recooked} and d.delete == ()


def test_missing_and_stale_entries():
    d = diff_flows({A, C}, {B, C})
    assert d.add == (B,) and d.delete == (A,) and len(d) == 2


def test_applying_then_reverting_returns_to_the_same_table():
    current = {A, C}
    forward = diff_flows(current, {B, C})
    applied = {f for f in current if f.key not in {x.key for x in forward.delete}} | set(
        forward.add
    )
    back = diff_flows(applied, current)
    restored = {f for f in applied if f.key not in {x.key for x in back.delete}} | set(back.add)
    assert restored == current


def test_match_is_canonical_whatever_the_order_given():
    one = flow(0, 1, {"in_port": 3, "eth_type": 0x0800}, (), 1)
    two = flow(0, 1, {"eth_type": 0x0800, "in_port": 3}, (), 1)
    assert one == two and hash(one) == hash(two)


def test_cookie_round_trip_and_foreign_cookies():
    for owner, key in ((Owner.BASE, 0), (Owner.LEASE, 0xC6130200), (Owner.ENDPOINT, 0xFFFFFFFF)):
        assert owner_of(cookie_for(owner, key)) == (owner, key)
    assert owner_of(0) is None
    assert owner_of(0x1234) is None
    assert owner_of(cookie_for(Owner.LEASE, 1) | (1 << 40)) is None
    assert owner_of((0x76 << 56) | (9 << 48)) is None


def test_ofctl_rendering():
    assert to_ofctl(A) == (
        "cookie=0x5,table=20,priority=100,eth_type=0x0800,ip_dst=198.19.2.0/24 actions=output:1"
    )
    assert to_ofctl(C) == "cookie=0x7,table=0,priority=0 actions=drop"
    arp = flow(10, 1, {"tun_id": 7}, [set_field("tun_id", 7), output(OFPP_IN_PORT)], 1)
    assert to_ofctl(arp).endswith("tun_id=0x7 actions=set_field:0x7->tun_id,in_port")


def _table(own_index: int = 0):
    leases = [
        Lease(IPv4Network(f"198.19.{i}.0/24"), IPv4Address(f"198.18.0.{i}"), 1, f"0e:00:00:00:00:{i:02x}")
        for i in range(1, 6)
    ]
    config = NetworkConfig(IPv4Network("198.19.0.0/16"))
    return node_table(config, leases, [], leases[own_index])


def test_cold_switch_gets_the_routes_compact_and_the_same_table():
    table = _table()
    assert len(table.routes) == 2 * 4 and len(table) == len(list(table)) == len(set(table))
    cold = diff_table([B], table)
    assert cold.routes is table.routes and cold.delete == (B,)
    # the routes as a change's messages make them (controller/switch.py): flow i of routes
    routes = [cold.routes.flow(i) for i in range(cold.added_routes)]
    assert len(cold.add) + len(routes) == len(table)  # each flow added once
    assert set(cold.add) | set(routes) == set(table) == set(diff_flows([B], table).add)


def test_a_route_on_the_switch_means_a_full_comparison():
    table = _table()
    held = list(table)[:-1]
    last = table.routes.flow(len(table.routes) - 1)
    foreign = dataclasses.replace(last, cookie=0)  # a route's key, not our cookie
    warm = diff_table([*held, foreign], table)
    assert warm.routes is None
    assert warm.add == (last,) and warm.delete == ()
    # a foreign entry at a route's key on an otherwise cold switch: deleted, then the route added
    cold = diff_table([foreign], table)
    assert cold.delete == (foreign,) and cold.routes is table.routes and last not in cold.add
    assert cold.routes.flow(cold.added_routes - 1) == last
