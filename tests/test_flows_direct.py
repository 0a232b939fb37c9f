"""DirectRouting's flows and the controller's per-(node, peer) decision (pure): nothing
changes while it is off; on, a direct peer's subnet goes to the gateway port above its
tunnel route; the model follows the agents' Direct lists and lease events."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from controller.model import FULL, ClusterModel
from flows.compiler import PRIO_EXACT, compile_node, lease_cookie
from flows.direct import PRIO_DIRECT, direct_cookie
from flows.explain import owner_text
from flows.flow import Table
from flows.ports import GATEWAY_OFPORT, gateway_mac
from leases.events import ConfigChanged, LeaseAdded, LeaseRemoved, LivenessAdded, LivenessRemoved
from leases.model import BackendConfig, Liveness
from tests.test_controller_sync import CONFIG, lease

ON = replace(CONFIG, backend=BackendConfig(direct_routing=True))
L1, L2, L3 = lease(1), lease(2), lease(3)
N1, N2, N3 = L1.public_ip, L2.public_ip, L3.public_ip


def direct_of(flows) -> dict:
    return {f.match[1][1]: f for f in flows if f.priority == PRIO_DIRECT}


def test_off_changes_no_flow_even_with_a_direct_list() -> None:
    plain = compile_node(CONFIG, [L1, L2, L3], [], N1)
    assert compile_node(CONFIG, [L1, L2, L3], [], N1, reachable={N2, N3}) == plain
    assert not direct_of(plain)


def test_on_routes_only_the_reachable_peers_to_the_gateway_above_their_tunnel_route() -> None:
    flows = compile_node(ON, [L1, L2, L3], [], N1, reachable={N1, N2, IPv4Address("198.18.0.99")})
    direct = direct_of(flows)
    assert set(direct) == {L2.subnet}  # not itself, not a PublicIP without a lease, not L3
    (flow,) = direct.values()
    assert (flow.table, flow.cookie) == (Table.ROUTE, direct_cookie(L2.subnet))
    assert flow.actions == (("set_field", "eth_dst", gateway_mac(L1.subnet)),
                            ("output", GATEWAY_OFPORT))  # fmt: skip
    tunnel = [f for f in flows if f.cookie == lease_cookie(L2) and f.table == Table.ROUTE]
    assert len(tunnel) == 1 and tunnel[0].priority == PRIO_EXACT < PRIO_DIRECT  # the fallback
    assert compile_node(ON, [L1, L2, L3], [], N1) == compile_node(CONFIG, [L1, L2, L3], [], N1)
    assert owner_text(flow.cookie, 24) == "direct route to 198.19.2.0/24 (DirectRouting, no VXLAN)"


def model(config=ON) -> ClusterModel:
    m = ClusterModel()
    m.load(config, [L1, L2, L3], [], alive=(N1, N2, N3), direct={N1: frozenset({N2})})
    return m


def test_model_follows_direct_lists_touching_only_the_changed_routes_of_that_node() -> None:
    m = model()
    assert set(direct_of(m.desired(N1, FULL))) == {L2.subnet}
    assert not direct_of(m.desired(N2, FULL))  # N2's agent named nobody
    impact = m.apply([LivenessRemoved(Liveness(N1, 2, 7, frozenset({N2})), 5),
                      LivenessAdded(Liveness(N1, 2, 7, frozenset({N2, N3})), 5)])  # fmt: skip
    scope = impact.scope_for(N1, L1.subnet)
    # the record's change is a removal and an addition: N2's route is looked at again too
    # (unchanged, so the diff sends nothing for it), N3's is new
    assert not scope.full and scope.cookies == {direct_cookie(L2.subnet), direct_cookie(L3.subnet)}
    assert not impact.scope_for(N2, L2.subnet) and not impact.full_nodes
    assert set(direct_of(m.desired(N1, scope).flows)) == {L2.subnet, L3.subnet}
    assert set(direct_of(m.desired(N1, FULL))) == {L2.subnet, L3.subnet}
    # the same record renewed (no change of its list) touches nothing
    same = m.apply([LivenessAdded(Liveness(N1, 2, 7, frozenset({N2, N3})), 6)])
    assert not same.scope_for(N1, L1.subnet)
    gone = m.apply([LivenessRemoved(Liveness(N1, 2, 7, frozenset({N2, N3})), 7)])  # agent gone
    scope = gone.scope_for(N1, L1.subnet)
    assert scope.cookies == {direct_cookie(L2.subnet), direct_cookie(L3.subnet)}
    assert not direct_of(m.desired(N1, scope).flows)  # so the diff deletes both
    assert not direct_of(m.desired(N1, FULL))


def test_a_lease_event_brings_its_direct_route_in_the_scope_of_other_switches() -> None:
    m = model()
    impact = m.apply([LeaseRemoved(L2, 5)])
    scope = impact.scope_for(N1, L1.subnet)
    assert scope.covers(direct_cookie(L2.subnet))
    assert not direct_of(m.desired(N1, scope))  # gone: the diff deletes its direct route
    impact = m.apply([LeaseAdded(L2, 6)])
    scoped = m.desired(N1, impact.scope_for(N1, L1.subnet))
    assert set(direct_of(scoped.flows)) == {L2.subnet}
    assert direct_of(scoped.flows) == direct_of(m.desired(N1, FULL))  # scoped == full's part


def test_turning_the_option_off_and_on_resyncs_every_switch() -> None:
    m = model()
    impact = m.apply([ConfigChanged(ON, CONFIG, 5)])
    assert impact.all_nodes and not direct_of(m.desired(N1, FULL))
    assert m.direct == {N1: frozenset({N2})}  # kept: the option back on needs no new record
    m.apply([ConfigChanged(CONFIG, ON, 6)])
    assert set(direct_of(m.desired(N1, FULL))) == {L2.subnet}


def test_dual_stack_each_family_is_direct_on_its_own_and_ipv6_only_for_an_accepted_half() -> None:
    """flannel decides the PublicIPv6 apart: L2 is direct in both families, L3 over IPv6
    only (its IPv4 behind a router); a peer whose IPv6 half is rejected (its subnet another's)
    gets no IPv6 direct route, which would take that other node's traffic."""
    from tests.test_flows_ipv6 import DUAL, HALVES

    dual = replace(DUAL, backend=BackendConfig(vni=7, direct_routing=True))
    h1, h2, h3 = HALVES
    reachable = {h2.public_ip, h2.public_ipv6, h3.public_ipv6}
    flows = compile_node(dual, HALVES, [], h1.public_ip, reachable=reachable)
    direct = {f.match: f for f in flows if f.priority == PRIO_DIRECT}
    assert {dict(m).get("ip_dst") or dict(m)["ipv6_dst"] for m in direct} == {
        h2.subnet, h2.ipv6_subnet, h3.ipv6_subnet}  # fmt: skip
    six = next(f for m, f in direct.items() if dict(m).get("ipv6_dst") == h2.ipv6_subnet)
    assert six.cookie == direct_cookie(h2.subnet) and six.actions == (
        ("set_field", "eth_dst", gateway_mac(h1.subnet)), ("output", GATEWAY_OFPORT))  # fmt: skip
    # the model compiles the same, in full and scoped by the peer's cookie
    m = ClusterModel()
    m.load(dual, HALVES, [], alive=[h.public_ip for h in HALVES],
           direct={h1.public_ip: frozenset(reachable)})  # fmt: skip
    assert {f for f in m.desired(h1.public_ip, FULL).flows if f.priority == PRIO_DIRECT} == {
        f for f in flows if f.priority == PRIO_DIRECT}  # fmt: skip
    impact = m.apply([LivenessAdded(Liveness(h1.public_ip, 2, 7, frozenset({h2.public_ip})), 5)])
    scope = impact.scope_for(h1.public_ip, h1.subnet)  # L2's IPv6 and L3 no longer direct
    assert scope.cookies == {direct_cookie(h2.subnet), direct_cookie(h3.subnet)}
    assert set(direct_of(m.desired(h1.public_ip, scope).flows)) == {h2.subnet}
    # L3's IPv6 half claims L2's IPv6 subnet: rejected, so no direct route for it either
    clash = replace(h3, ipv6_subnet=h2.ipv6_subnet)
    flows = compile_node(dual, [h1, h2, clash], [], h1.public_ip, reachable={clash.public_ipv6})
    assert not [f for f in flows if f.priority == PRIO_DIRECT]
