"""The IPv6 half of a dual-stack node's table (config EnableIPv6, a lease with an IPv6 half).

The routing is IPv4's (`flows.family.routing_flows` with the V6 family); what IPv6
adds:

- its own tunnel port (TUNNEL6_OFPORT: an OVS tunnel's local_ip has one family, as
  flannel's flannel-v6.<VNI> beside flannel.<VNI>), same VNI and UDP port; a remote
  lease's route sets tun_ipv6_dst = its PublicIPv6 and eth_dst = its BackendV6Data
  VtepMAC (what flannel's permanent neighbour entry says), its ingress check admits
  only its IPv6 subnet from its PublicIPv6 (tun_ipv6_src);
- neighbour discovery answered by the switch in ARP (table 10): a solicitation for the
  gateway or any other overlay address gets the gateway MAC, for a local pod its MAC
  (flows/arp.py's `nd_reply`); DAD probes (source ::) stay unanswered, so an address is
  never refused; nothing is flooded and no multicast is routed;
- router advertisements and unsolicited advertisements are dropped wherever they
  enter; a pod's guard admits its own IPv6 address, and for solicitations also its
  EUI-64 link-local address, with its own MAC only.

Hop limit is decremented into the tunnel, as TTL (OVS's dec_ttl does both).
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

from flows.arp import nd_reply, nd_reply_tail
from flows.family import (
    BASE_COOKIE,
    ICMPV6,
    NS,
    PRIO_EXACT,
    PRIO_GUARD,
    PRIO_OVERLAY,
    V6,
    endpoint_ip_flows,
    routing_flows,
)
from flows.flow import (
    ETH_TYPE_IPV6,
    ICMPV6_NA,
    ICMPV6_RA,
    Flow,
    Owner,
    Table,
    cookie_for,
    dec_ttl,
    flow,
    goto_table,
    output,
)
from flows.ports import GATEWAY_OFPORT, TUNNEL6_OFPORT, gateway_mac, link_local
from flows.validate import select_v6, v6_problem
from leases.model import Endpoint, Lease, NetworkConfig

__all__ = ["dual_stack", "endpoint_v6_flows", "ipv6_base_flows", "lease_v6_flows", "select_v6"]

MULTICAST = IPv6Network("ff00::/8")
UNSPECIFIED = IPv6Address("::")


def dual_stack(config: NetworkConfig, own: Lease | None) -> bool:
    """Whether the switch of `own` routes IPv6: the config has EnableIPv6 and `own` an
    IPv6 half fit to route (one attribute test on an IPv4-only config)."""
    return (
        config.ipv6 is not None
        and own is not None
        and own.ipv6_subnet is not None
        and v6_problem(config, own) is None
    )


def gateway6(own: Lease) -> IPv6Address:
    """The node's IPv6 gateway: the first address after its IPv6 subnet's (flannel's
    FLANNEL_IPV6_SUBNET address)."""
    assert own.ipv6_subnet is not None
    return own.ipv6_subnet.network_address + 1


def ipv6_base_flows(config: NetworkConfig, own: Lease) -> list[Flow]:
    """The fixed IPv6 pipeline of a dual-stack node (the caller checked `dual_stack`)."""
    assert config.ipv6 is not None and own.ipv6_subnet is not None
    network, gw, gw_mac, c = config.ipv6.network, gateway6(own), gateway_mac(own.subnet), BASE_COOKIE
    flows = routing_flows(V6, config.backend.vni, network, own.ipv6_subnet, gw, gw_mac)
    flows += [
        flow(Table.CLASSIFY, PRIO_GUARD,
             {"in_port": GATEWAY_OFPORT, "eth_src": gw_mac, **NS}, [goto_table(Table.ARP)], c),
        flow(Table.CLASSIFY, PRIO_GUARD, {**ICMPV6, "icmpv6_type": ICMPV6_RA}, (), c),
        flow(Table.CLASSIFY, PRIO_GUARD, {**ICMPV6, "icmpv6_type": ICMPV6_NA}, (), c),
        flow(Table.ARP, PRIO_GUARD, {**NS, "ipv6_src": UNSPECIFIED}, (), c),
        flow(Table.ARP, PRIO_GUARD, {**ICMPV6, "icmpv6_type": ICMPV6_NA, "icmpv6_code": 0},
             nd_reply_tail(), c),
        flow(Table.ARP, PRIO_EXACT, {**NS, "nd_target": gw}, nd_reply(gw_mac, True), c),
        flow(Table.ARP, PRIO_OVERLAY, {**NS, "nd_target": network}, nd_reply(gw_mac, True), c),
        flow(Table.ROUTE, PRIO_OVERLAY, {"eth_type": ETH_TYPE_IPV6, "ipv6_dst": MULTICAST}, (), c),
    ]
    return flows


def lease_v6_flows(config: NetworkConfig, lease: Lease, own: Lease) -> tuple[Flow, Flow]:
    """A remote lease's IPv6 route (ROUTE) and tunnel-ingress check (CLASSIFY), under the
    lease's cookie. The caller took `lease` from `select_v6` and checked `dual_stack`.
    Built directly, as `remote_lease_flows` builds IPv4's (its matches in canonical order):
    a dual-stack node holds these for every lease in the cluster."""
    cookie = _LEASE_COOKIE | int(lease.subnet.network_address)
    vni = config.backend.vni
    route = Flow(
        _ROUTE,
        PRIO_EXACT,
        (_MATCH_IPV6, ("ipv6_dst", lease.ipv6_subnet)),
        (_DEC_TTL, ("set_field", "eth_src", own.vtep_mac_v6),
         ("set_field", "eth_dst", lease.vtep_mac_v6),
         ("set_field", "tun_ipv6_dst", lease.public_ipv6), ("set_field", "tun_id", vni),
         _TO_TUNNEL6),
        cookie,
    )  # fmt: skip
    ingress = Flow(
        _CLASSIFY,
        PRIO_EXACT,
        (_MATCH_IPV6, _MATCH_TUNNEL6, ("ipv6_src", lease.ipv6_subnet), ("tun_id", vni),
         ("tun_ipv6_src", lease.public_ipv6)),
        (_TO_LOCAL,),
        cookie,
    )  # fmt: skip
    return route, ingress


_ROUTE, _CLASSIFY = int(Table.ROUTE), int(Table.CLASSIFY)
_LEASE_COOKIE = cookie_for(Owner.LEASE)
_MATCH_IPV6 = ("eth_type", ETH_TYPE_IPV6)
_MATCH_TUNNEL6 = ("in_port", TUNNEL6_OFPORT)
_DEC_TTL = dec_ttl()
_TO_TUNNEL6 = output(TUNNEL6_OFPORT)
_TO_LOCAL = goto_table(Table.LOCAL)


def endpoint_v6_flows(own: Lease, endpoint: Endpoint) -> list[Flow]:
    """A local pod's IPv6 flows: spoof guard (own address and MAC; solicitations also from
    its link-local address), its neighbour answer, delivery. Under the endpoint's cookie;
    the caller checked `dual_stack` and that the endpoint has an IPv6 address."""
    c = cookie_for(Owner.ENDPOINT, int(endpoint.ip))
    ip, mac = endpoint.ipv6, endpoint.mac
    guard = {"in_port": endpoint.ofport, "eth_src": mac, "eth_type": ETH_TYPE_IPV6, **NS}
    to_arp = [goto_table(Table.ARP)]
    return [
        *endpoint_ip_flows(V6, ip, own, endpoint, c),
        flow(Table.CLASSIFY, PRIO_GUARD, {**guard, "ipv6_src": ip}, to_arp, c),
        flow(Table.CLASSIFY, PRIO_GUARD, {**guard, "ipv6_src": link_local(mac)}, to_arp, c),
        flow(Table.ARP, PRIO_EXACT, {**NS, "nd_target": ip}, nd_reply(mac, False), c),
    ]
