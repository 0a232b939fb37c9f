"""The IPv6 half of a dual-stack node's table (flows/ipv6.py), through the compiler and the
controller's model: routes over the IPv6 tunnel, neighbour discovery, ingress and spoof
guards; and an IPv4-only config or node gets exactly the IPv4 flows."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv6Address, IPv6Network

import pytest

from controller.model import FULL, ClusterModel, Scope
from flows.arp import nd_reply, nd_reply_tail
from flows.compiler import DROP_TUNNEL_OTHER, DROP_TUNNEL_SPOOFED, compile_node, subnet_cookie
from flows.flow import (
    ETH_TYPE_IP,
    ETH_TYPE_IPV6,
    ICMPV6_NA,
    ICMPV6_NS,
    ICMPV6_RA,
    IP_PROTO_ICMPV6,
    OFPP_IN_PORT,
    Flow,
    Owner,
    Table,
    owner_of,
)
from flows.ports import GATEWAY_OFPORT, TUNNEL6_OFPORT, TUNNEL_OFPORT, gateway_mac, link_local
from flows.validate import select_endpoints, select_v6
from leases.events import LeaseChanged
from leases.model import FamilyConfig
from tests.test_flows_compiler import CONFIG, LEASES, NODE1, PODS, outputs, run

NET6 = IPv6Network("fc00::/48")
DUAL = replace(CONFIG, ipv6=FamilyConfig(NET6, 64, IPv6Network("fc00:0:0:1::/64"),
                                         IPv6Network("fc00:0:0:ffff::/64")))  # fmt: skip
HALVES = [
    replace(x, ipv6_subnet=IPv6Network(f"fc00:0:0:{i}::/64"),
            public_ipv6=IPv6Address(f"fd00:198:18::{i}"), vtep_mac_v6=f"0e:36:c6:12:00:0{i}")
    for i, x in enumerate(LEASES, 1)
]  # fmt: skip
PODS6 = [replace(p, ipv6=IPv6Address(f"fc00:0:0:{p.node_subnet.network_address.packed[2]}::"
                                     f"{p.ip.packed[3]:x}"))
         for p in PODS]  # fmt: skip
GW6 = IPv6Address("fc00:0:0:1::1")
GW_MAC = gateway_mac(LEASES[0].subnet)


@pytest.fixture
def node1() -> frozenset[Flow]:
    return compile_node(DUAL, HALVES, PODS6, NODE1)


def v6(pod, dst: str, **kw) -> dict:
    return {"in_port": pod.ofport, "eth_src": pod.mac, "eth_type": ETH_TYPE_IPV6,
            "ipv6_src": pod.ipv6, "ipv6_dst": IPv6Address(dst), **kw}  # fmt: skip


def ns(packet: dict, target: str) -> dict:
    return {**packet, "ip_proto": IP_PROTO_ICMPV6, "icmpv6_type": ICMPV6_NS, "icmpv6_code": 0,
            "nd_target": IPv6Address(target)}  # fmt: skip


def is_v6(f: Flow) -> bool:
    m = dict(f.match)
    return m.get("eth_type") == ETH_TYPE_IPV6 or m.get("in_port") == TUNNEL6_OFPORT


def test_ipv4_only_config_or_node_gets_exactly_the_ipv4_flows(node1) -> None:
    v4 = compile_node(CONFIG, LEASES, PODS, NODE1)
    # the same leases and pods with IPv6 halves, but EnableIPv6 off: nothing more
    assert compile_node(CONFIG, HALVES, PODS6, NODE1) == v4
    # dual stack: every IPv4 flow as it was, and everything added is IPv6
    assert v4 <= node1 and all(is_v6(f) for f in node1 - v4)
    # a dual-stack cluster, but this node's lease has no IPv6 half: the IPv4 flows only
    assert compile_node(DUAL, [LEASES[0], *HALVES[1:]], PODS6, NODE1) == v4


def test_pod_to_remote_pod_goes_into_the_ipv6_tunnel_hop_limit_decremented(node1) -> None:
    pod, node2 = PODS6[0], HALVES[1]
    actions = run(node1, v6(pod, "fc00:0:0:2::a"))
    assert actions == (
        ("dec_ttl",),
        ("set_field", "eth_src", HALVES[0].vtep_mac_v6),
        ("set_field", "eth_dst", node2.vtep_mac_v6),
        ("set_field", "tun_ipv6_dst", node2.public_ipv6),
        ("set_field", "tun_id", 7),
        ("output", TUNNEL6_OFPORT),
    )
    route = next(f for f in node1 if ("ipv6_dst", node2.ipv6_subnet) in f.match)
    assert route.cookie == subnet_cookie(node2.subnet)  # the lease owns its IPv6 flows too
    assert run(node1, v6(pod, "fc00:0:0:77::1")) == ()  # unleased overlay: dropped
    assert run(node1, v6(pod, "ff02::1")) == ()  # multicast is never routed


def test_local_pod_gateway_and_host_delivery(node1) -> None:
    a, b = PODS6[0], PODS6[1]
    assert run(node1, v6(a, str(b.ipv6))) == (
        ("set_field", "eth_src", GW_MAC), ("set_field", "eth_dst", b.mac), ("output", b.ofport))
    assert outputs(run(node1, v6(a, str(GW6)))) == [GATEWAY_OFPORT]
    assert outputs(run(node1, v6(a, "2001:db8::1"))) == [GATEWAY_OFPORT]  # leaves via the host
    host = {"in_port": GATEWAY_OFPORT, "eth_src": GW_MAC, "eth_type": ETH_TYPE_IPV6,
            "ipv6_src": GW6, "ipv6_dst": a.ipv6}  # fmt: skip
    assert outputs(run(node1, host)) == [a.ofport]  # node -> its pod
    assert outputs(run(node1, {**host, "ipv6_dst": IPv6Address("fc00:0:0:3::a")})) == [
        TUNNEL6_OFPORT]  # node -> a remote pod  # fmt: skip


def test_neighbour_solicitations_answered_by_the_switch(node1) -> None:
    a, b = PODS6[0], PODS6[1]
    ask = v6(a, "ff02::1:ff00:1")
    assert run(node1, ns(ask, str(GW6))) == nd_reply(GW_MAC, router=True)
    assert run(node1, ns(ask, str(b.ipv6))) == nd_reply(b.mac, router=False)
    assert run(node1, ns(ask, "fc00:0:0:2::a")) == nd_reply(GW_MAC, router=True)  # remote
    # the advertisement made is finished by the one flow in ARP that matches an NA (none
    # enters from outside: CLASSIFY drops them), back to the asker only
    assert nd_reply(GW_MAC, True)[-1] == ("resubmit", Table.ARP)
    tails = [f for f in node1 if f.table == Table.ARP and ("icmpv6_type", ICMPV6_NA) in f.match]
    assert [f.actions for f in tails] == [nd_reply_tail()]
    assert nd_reply_tail() == (("move", "eth_src", "nd_tll"), ("output", OFPP_IN_PORT))
    # from the pod's own link-local address (the kernel's EUI-64 one) too; never another's
    assert run(node1, ns({**ask, "ipv6_src": link_local(a.mac)}, str(GW6))) == nd_reply(GW_MAC, True)
    assert run(node1, ns({**ask, "ipv6_src": link_local(b.mac)}, str(GW6))) == ()
    # duplicate address detection (source ::) is never answered, for pods and gateway alike
    dad = {**ask, "ipv6_src": IPv6Address("::")}
    assert run(node1, ns(dad, str(a.ipv6))) == ()
    host = {"in_port": GATEWAY_OFPORT, "eth_src": GW_MAC, "eth_type": ETH_TYPE_IPV6,
            "ipv6_src": IPv6Address("::"), "ipv6_dst": IPv6Address("ff02::1:ff00:1")}  # fmt: skip
    assert run(node1, ns(host, str(GW6))) == ()
    # the host's own solicitation for a pod gets the pod's MAC
    assert run(node1, ns({**host, "ipv6_src": GW6}, str(b.ipv6))) == nd_reply(b.mac, False)
    assert link_local("0a:58:c6:13:01:0a") == IPv6Address("fe80::858:c6ff:fe13:10a")


def test_spoof_guard_binds_address_and_mac_and_drops_router_advertisements(node1) -> None:
    a, b = PODS6[0], PODS6[1]
    good = v6(a, "fc00:0:0:2::a")
    assert outputs(run(node1, good)) == [TUNNEL6_OFPORT]
    assert run(node1, {**good, "ipv6_src": b.ipv6}) == ()  # another pod's address
    assert run(node1, {**good, "eth_src": b.mac}) == ()  # another pod's MAC
    assert run(node1, {**good, "ipv6_src": link_local(a.mac)}) == ()  # link-local: ND only
    icmp = {**good, "ip_proto": IP_PROTO_ICMPV6, "icmpv6_code": 0}
    assert run(node1, {**icmp, "icmpv6_type": ICMPV6_RA}) == ()
    assert run(node1, {**icmp, "icmpv6_type": ICMPV6_NA}) == ()


def test_ipv6_tunnel_ingress_bound_to_the_peers_public_ipv6_and_subnet(node1) -> None:
    pod, node2, node3 = PODS6[0], HALVES[1], HALVES[2]
    pkt = {"in_port": TUNNEL6_OFPORT, "tun_id": 7, "tun_ipv6_src": node2.public_ipv6,
           "eth_type": ETH_TYPE_IPV6, "ipv6_src": IPv6Address("fc00:0:0:2::a"),
           "ipv6_dst": pod.ipv6}  # fmt: skip

    def verdict(**change) -> tuple[tuple, int]:
        hit: list[Flow] = []
        return run(node1, {**pkt, **change}, hit), hit[0].cookie

    assert outputs(verdict()[0]) == [pod.ofport]
    assert ("dec_ttl",) not in verdict()[0]
    assert verdict(tun_ipv6_src=node3.public_ipv6) == ((), DROP_TUNNEL_SPOOFED)
    assert verdict(tun_ipv6_src=IPv6Address("fd00:198:18::66")) == ((), DROP_TUNNEL_SPOOFED)
    assert verdict(ipv6_src=IPv6Address("fc00:0:0:1::9")) == ((), DROP_TUNNEL_SPOOFED)
    assert verdict(tun_id=8) == ((), DROP_TUNNEL_OTHER)
    assert verdict(ipv6_src=IPv6Address("2001:db8::1")) == ((), DROP_TUNNEL_OTHER)
    # never routed back into the tunnel, even to a leased remote subnet
    assert verdict(ipv6_dst=IPv6Address("fc00:0:0:3::a"))[0] == ()
    # IPv4 arriving on the IPv6 tunnel port, and IPv6 on the IPv4 one: dropped
    v4 = {**pkt, "eth_type": ETH_TYPE_IP}
    assert run(node1, v4) == ()
    assert run(node1, {**pkt, "in_port": TUNNEL_OFPORT}) == ()


def test_a_bad_or_shared_ipv6_half_costs_its_ipv6_flows_only() -> None:
    shared = replace(HALVES[2], public_ipv6=HALVES[1].public_ipv6)  # node 3 claims node 2's
    outside = replace(HALVES[1], ipv6_subnet=IPv6Network("fd99:0:0:2::/64"))
    assert select_v6(DUAL, [HALVES[0], HALVES[1], shared]).accepted == (HALVES[0],)
    reasons = {r.reason for r in select_v6(DUAL, [HALVES[0], outside]).rejected}
    assert reasons == {"IPv6 subnet fd99:0:0:2::/64 is outside the IPv6Network fc00::/48"}
    flows = compile_node(DUAL, [HALVES[0], HALVES[1], shared], PODS6, NODE1)
    assert not any(("tun_ipv6_dst", HALVES[1].public_ipv6) in f.actions for f in flows)
    v4 = compile_node(CONFIG, LEASES, PODS, NODE1)
    assert {f for f in flows if not is_v6(f)} == v4  # IPv4 untouched


def test_an_endpoint_outside_the_ipv6_subnet_is_rejected() -> None:
    bad = replace(PODS6[1], ipv6=IPv6Address("fc00:0:0:2::5"))
    gw = replace(PODS6[1], ipv6=GW6)
    twin = replace(PODS6[1], ipv6=PODS6[0].ipv6)
    for ep, why in [(bad, "outside"), (gw, "gateway"), (twin, "several")]:
        sel = select_endpoints(HALVES[0], [PODS6[0], ep])
        assert any(why in r.reason for r in sel.rejected), (ep, sel.rejected)


def test_the_models_scoped_tables_hold_a_leases_ipv6_flows() -> None:
    model = ClusterModel()
    model.load(DUAL, HALVES, PODS6)
    full = model.desired(NODE1, FULL)
    assert set(full) == compile_node(DUAL, HALVES, PODS6, NODE1)
    cookie = subnet_cookie(HALVES[1].subnet)
    scoped = model.desired(NODE1, Scope.of_cookies(frozenset({cookie})))
    assert set(scoped) == {f for f in full if f.cookie == cookie}
    assert sum(is_v6(f) for f in scoped) == 2
    pods = model.desired(NODE1, Scope(owners=frozenset({Owner.ENDPOINT})))
    assert set(pods) == {f for f in full if owner_of(f.cookie)[0] is Owner.ENDPOINT}


def test_ipv6_flows_encode_as_osken_does_and_decode_back(node1) -> None:
    """The wire format of the IPv6 fields: byte-identical to os-ken's serialisation (which
    lacks OVS's ND extension fields nd_reserved and nd_options_type, and names nd_tll by
    its NXM header in a move: the ND responder's flows are held to the decoder, and to OVS
    itself in tests/test_e2e_dualstack.py)."""
    from controller import ofwire
    from tests.test_controller_ofwire import OSKEN_NAME, osken_flow_mod, serialized, stats_entry

    names = {**OSKEN_NAME, "nd_target": "ipv6_nd_target", "nd_tll": "ipv6_nd_tll"}
    six = sorted((f for f in node1 if is_v6(f) or any(a[1:2] == ("nd_reserved",) for a in
                  f.actions)), key=lambda f: (f.table, f.priority, str(f.match)))  # fmt: skip
    extension = [f for f in six if any((a[0] == "set_field" and a[1].startswith("nd_"))
                                       or (a[0] == "move" and a[2].startswith("nd_"))
                                       for a in f.actions)]  # fmt: skip
    assert extension and len(extension) < len(six)
    for xid, f in enumerate(six, 1):
        if f in extension:
            continue
        renamed = Flow(f.table, f.priority, tuple((names.get(k, k), v) for k, v in f.match),
                       f.actions, f.cookie)  # fmt: skip
        want = serialized(osken_flow_mod(renamed, ofwire.OFPFC_ADD), xid)
        assert ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, xid) == want, f
    assert set(ofwire.decode_flow_stats(b"".join(stats_entry(f) for f in six))) == set(six)


def test_the_model_counts_and_logs_a_rejected_ipv6_half_once(caplog) -> None:
    shared = replace(HALVES[2], public_ipv6=HALVES[1].public_ipv6)
    model = ClusterModel()
    model.load(DUAL, [HALVES[0], HALVES[1], shared], PODS6)
    flows = set(model.desired(NODE1, FULL))
    model.desired(NODE1, FULL)  # asked again: cached, not logged again
    assert not any(("tun_ipv6_dst", HALVES[1].public_ipv6) in f.actions for f in flows)
    keys = {k for k in model.rejected if k.endswith(" IPv6")}
    assert keys == {f"lease {HALVES[1].subnet} IPv6", f"lease {shared.subnet} IPv6"}
    assert caplog.text.count("is held by several leases (its IPv4 flows stay)") == 2
    model.load(DUAL, HALVES, PODS6)
    model.desired(NODE1, FULL)
    assert not any(k.endswith(" IPv6") for k in model.rejected)


def test_a_lease_event_rescopes_its_ipv6_flows_on_every_dual_stack_switch() -> None:
    """A remote lease whose IPv6 half moves (a new PublicIPv6) or goes: the event's scope on
    another switch is that lease's cookie, and the scoped table holds its new IPv6 flows
    (none once the half is gone), as a full compile would."""
    model = ClusterModel()
    model.load(DUAL, HALVES, PODS6)
    moved = replace(HALVES[1], public_ipv6=IPv6Address("fd00:198:18::99"))
    for new in (moved, replace(HALVES[1], ipv6_subnet=None, public_ipv6=None, vtep_mac_v6=None)):
        impact = model.apply([LeaseChanged(HALVES[1], new, 7)])
        scope = impact.scope_for(NODE1, HALVES[0].subnet)
        scoped = set(model.desired(NODE1, scope))
        cookie = subnet_cookie(HALVES[1].subnet)
        want = {f for f in compile_node(DUAL, [HALVES[0], new, HALVES[2]], PODS6, NODE1)
                if f.cookie == cookie}  # fmt: skip
        assert scope.covers(cookie) and {f for f in scoped if f.cookie == cookie} == want
        assert sum(is_v6(f) for f in want) == (2 if new.ipv6_subnet else 0)
        model.apply([LeaseChanged(new, HALVES[1], 8)])  # back, for the next case


@pytest.mark.parametrize("own", [
    replace(HALVES[0], ipv6_subnet=IPv6Network("fd99:0:0:1::/64")),  # outside the network
    replace(HALVES[0], vtep_mac_v6=None),  # no BackendV6Data
    replace(HALVES[0], public_ipv6=HALVES[1].public_ipv6),  # shared: still fit to route
    LEASES[0],  # IPv4 only
])  # fmt: skip
def test_the_models_dual_stack_verdict_on_its_own_node_is_the_compilers(own) -> None:
    """The model tells a dual-stack node from its index of fit halves (not by judging the
    node's half per event): its full and lease-scoped tables are what a full compile gives,
    with IPv6 flows exactly when the node's own half is fit to route."""
    leases = [own, *HALVES[1:]]
    model = ClusterModel()
    model.load(DUAL, leases, PODS6)
    want = compile_node(DUAL, leases, PODS6, NODE1)
    assert set(model.desired(NODE1, FULL)) == want
    routed = own.vtep_mac_v6 is not None and own.ipv6_subnet is not None and own.ipv6_subnet.subnet_of(NET6)
    assert any(is_v6(f) for f in want) == routed
    cookie = subnet_cookie(HALVES[2].subnet)
    scoped = set(model.desired(NODE1, Scope.of_cookies(frozenset({cookie}))))
    assert scoped == {f for f in want if f.cookie == cookie}
    assert sum(is_v6(f) for f in scoped) == (2 if routed else 0)


@pytest.mark.parametrize("claim", ["public_ipv6", "ipv6_subnet"])
def test_a_half_starting_or_stopping_to_be_shared_rescopes_the_other_holders_flows(claim) -> None:
    """Node 3's lease takes node 2's PublicIPv6 (or IPv6 subnet), then gives it back: the
    event on node 3 also flips node 2's IPv6 half (both lose it, both regain it), so node
    2's cookie is in the event's scope on node 1's switch, and the scoped table holds its
    IPv6 flows as a full compile does at each step (before, they stayed stale)."""
    model = ClusterModel()
    model.load(DUAL, HALVES, PODS6)
    taker = replace(HALVES[2], **{claim: getattr(HALVES[1], claim)})
    for old, new in ((HALVES[2], taker), (taker, HALVES[2])):
        impact = model.apply([LeaseChanged(old, new, 7)])
        scope = impact.scope_for(NODE1, HALVES[0].subnet)
        leases = [HALVES[0], HALVES[1], new]
        for other in (HALVES[1], new):
            cookie = subnet_cookie(other.subnet)
            want = {f for f in compile_node(DUAL, leases, PODS6, NODE1) if f.cookie == cookie}
            assert scope.covers(cookie), (claim, other.subnet)
            assert {f for f in model.desired(NODE1, scope) if f.cookie == cookie} == want
            assert sum(is_v6(f) for f in want) == (0 if new is taker else 2)
        assert set(model.desired(NODE1, FULL)) == compile_node(DUAL, leases, PODS6, NODE1)


@pytest.mark.parametrize("seed", range(8))
def test_a_switch_following_the_models_scopes_holds_what_a_full_compile_gives(seed) -> None:
    """Random lease events among dual-stack leases drawing their PublicIPv6 and IPv6 subnet
    from a pool of two each (so halves start and stop being shared, and leases come and
    go): node 1's switch, replacing after each event only the flows of the event's scope,
    holds exactly the flows a full compile of the leases gives (nothing stale)."""
    from leases.events import LeaseAdded, LeaseRemoved
    from tests.test_flows_compiler import lease

    rng = random.Random(seed)
    pubs = [IPv6Address("fd00:198:18::a"), IPv6Address("fd00:198:18::b")]
    sixes = [IPv6Network("fc00:0:0:a::/64"), IPv6Network("fc00:0:0:b::/64")]

    def draw(i: int):
        if rng.random() < 0.2:
            return lease(i)  # IPv4 only
        return replace(lease(i), ipv6_subnet=rng.choice(sixes), public_ipv6=rng.choice(pubs),
                       vtep_mac_v6=f"0e:36:c6:12:00:0{i}")  # fmt: skip

    held = {1: HALVES[0]}
    model = ClusterModel()
    model.load(DUAL, held.values(), PODS6)
    table = set(model.desired(NODE1, FULL))
    for step in range(40):
        i = rng.choice([2, 3, 4, 5])
        old = held.get(i)
        if old is None:
            held[i] = draw(i)
            event = LeaseAdded(held[i], step)
        elif rng.random() < 0.25:
            del held[i]
            event = LeaseRemoved(old, step)
        else:
            held[i] = draw(i)
            event = LeaseChanged(old, held[i], step)
        scope = model.apply([event]).scope_for(NODE1, HALVES[0].subnet)
        fresh = model.desired(NODE1, scope)
        table = {f for f in table if not scope.covers(f.cookie)} | set(fresh)
        want = compile_node(DUAL, held.values(), PODS6, NODE1)
        assert table == want, (seed, step, event, table ^ want)
