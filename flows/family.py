"""What the two address families share in the pipeline: the priorities, the base cookies,
and the routing flows of one family, built by one function with a `Family` parameter
(the IPv4 and IPv6 halves of a node's table differ in field names and tunnel port only).

flows/compiler.py documents the pipeline; flows/ipv6.py adds what only IPv6 has.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.arp import arp_reply, nd_reply
from flows.flow import (
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    ETH_TYPE_IPV6,
    ICMPV6_NS,
    IP_PROTO_ICMPV6,
    Flow,
    Owner,
    Table,
    cookie_for,
    flow,
    goto_table,
    output,
    set_field,
)
from flows.ports import GATEWAY_OFPORT, TUNNEL6_OFPORT, TUNNEL_OFPORT, gateway_mac
from leases.model import Endpoint, Lease

PRIO_GUARD = 110  # above the exact flows: ND's own paths, drops that outrank a pod's guard
PRIO_EXACT = 100  # per-owner flows and the node's own addresses
PRIO_OVERLAY = 10  # the rest of the overlay network
PRIO_DEFAULT = 1  # everything else routed to the host
PRIO_MISS = 0  # table-miss: drop

BASE_COOKIE = cookie_for(Owner.BASE)
# Drops worth counting apart: base flows with cookies of their own (see flows/compiler.py).
DROP_TUNNEL_SPOOFED = cookie_for(Owner.BASE, 1)
DROP_TUNNEL_OTHER = cookie_for(Owner.BASE, 2)
ICMPV6 = {"eth_type": ETH_TYPE_IPV6, "ip_proto": IP_PROTO_ICMPV6}
NS = {**ICMPV6, "icmpv6_type": ICMPV6_NS, "icmpv6_code": 0}  # a neighbour solicitation


@dataclass(frozen=True)
class Family:
    """One address family's names in OVS's fields and its tunnel port."""

    eth_type: int
    src: str
    dst: str
    tun_src: str
    tun_dst: str
    tunnel: int  # the ofport of its tunnel (an OVS tunnel port's local_ip has one family)
    version: int  # 4 or 6, as `ipaddress` numbers them


V4 = Family(ETH_TYPE_IP, "ip_src", "ip_dst", "tun_src", "tun_dst", TUNNEL_OFPORT, 4)
V6 = Family(ETH_TYPE_IPV6, "ipv6_src", "ipv6_dst", "tun_ipv6_src", "tun_ipv6_dst", TUNNEL6_OFPORT, 6)


def family(ip: IPv4Address | IPv6Address | IPv4Network | IPv6Network) -> Family:
    return V6 if ip.version == 6 else V4


def neighbour_answer(
    target: IPv4Address | IPv6Address | IPv4Network | IPv6Network, mac: str, priority: int,
    cookie: int,
) -> Flow:  # fmt: skip
    """ARP: a request (IPv6: a solicitation) for `target` answered with `mac` (IPv6: as a
    router's)."""
    if target.version == 4:
        match = {"eth_type": ETH_TYPE_ARP, "arp_op": ARP_REQUEST, "arp_tpa": target}
        return flow(Table.ARP, priority, match, arp_reply(mac), cookie)
    return flow(Table.ARP, priority, {**NS, "nd_target": target}, nd_reply(mac, True), cookie)


def routing_flows(
    fam: Family,
    vni: int,
    network: IPv4Network | IPv6Network,
    subnet: IPv4Network | IPv6Network,
    gateway: IPv4Address | IPv6Address,
    gw_mac: str,
) -> list[Flow]:
    """One family's fixed routing: the tunnel's counting drops, the gateway port into
    ROUTE, the node's own subnet to LOCAL, the rest of the overlay dropped, anything
    else to the host, and the gateway's own address delivered to it."""
    t, c = fam.eth_type, BASE_COOKIE
    to_gateway = [set_field("eth_dst", gw_mac), output(GATEWAY_OFPORT)]
    return [
        flow(Table.CLASSIFY, PRIO_OVERLAY,
             {"in_port": fam.tunnel, "tun_id": vni, "eth_type": t, fam.src: network},
             (), DROP_TUNNEL_SPOOFED),
        flow(Table.CLASSIFY, PRIO_DEFAULT, {"in_port": fam.tunnel}, (), DROP_TUNNEL_OTHER),
        flow(Table.CLASSIFY, PRIO_EXACT,
             {"in_port": GATEWAY_OFPORT, "eth_src": gw_mac, "eth_type": t},
             [goto_table(Table.ROUTE)], c),
        flow(Table.ROUTE, PRIO_EXACT, {"eth_type": t, fam.dst: subnet},
             [goto_table(Table.LOCAL)], c),
        flow(Table.ROUTE, PRIO_OVERLAY, {"eth_type": t, fam.dst: network}, (), c),
        flow(Table.ROUTE, PRIO_DEFAULT, {"eth_type": t}, to_gateway, c),
        flow(Table.LOCAL, PRIO_EXACT, {"eth_type": t, fam.dst: gateway}, to_gateway, c),
    ]


def endpoint_ip_flows(
    fam: Family, address: IPv4Address | IPv6Address, own: Lease, endpoint: Endpoint, cookie: int
) -> list[Flow]:
    """A local pod's spoof guard for one family (its port, MAC and `address` -> ROUTE) and
    its delivery (to `address`: MACs rewritten as a router would, out of its port)."""
    t = fam.eth_type
    return [
        flow(Table.CLASSIFY, PRIO_EXACT,
             {"in_port": endpoint.ofport, "eth_src": endpoint.mac, "eth_type": t, fam.src: address},
             [goto_table(Table.ROUTE)], cookie),
        flow(Table.LOCAL, PRIO_EXACT, {"eth_type": t, fam.dst: address},
             [set_field("eth_src", gateway_mac(own.subnet)), set_field("eth_dst", endpoint.mac),
              output(endpoint.ofport)], cookie),
    ]
