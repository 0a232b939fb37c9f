"""DirectRouting (flannel's vxlan `DirectRouting`): which peers a node reaches without VXLAN (pure).

flannel's rule (pkg/ip/iface.go `DirectRouting`), applied on the node: ask the kernel for
the route to the peer's PublicIP; exactly one route, with no gateway, means the peer is
on this node's own link, and its subnet is routed `<subnet> via <PublicIP>` instead of
into the VXLAN device. Any other answer (a gateway, no route, several) keeps VXLAN.

The agent applies the rule to every peer, to its PublicIPv6 too on a dual-stack node (each
family decided apart, as flannel does), and publishes the addresses it found direct in
its liveness record (`"Direct": [...]`, leases/liveness.py), never in flannel's lease
value. The controller then routes (node, peer) directly when the config's
Backend.DirectRouting is on and the node's record names the peer (flows/direct.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from leases.model import Lease

MAX_DIRECT = 2048  # peers one liveness record names: nodes on one link, and then some


def route_is_direct(routes: Sequence[Mapping[str, Any]]) -> bool:
    """flannel's test on the answer of a route lookup (`ip -j route get`, one dict per
    route): exactly one route and it has no gateway."""
    return len(routes) == 1 and not routes[0].get("gateway")


def direct_sources(
    leases: Iterable[Lease],
    direct: Collection[IPv4Address | IPv6Address],
    own: IPv4Address,
    version: int = 4,
) -> list[IPv4Network] | list[IPv6Network]:
    """The sources of IP `version` that may reach this node's pods unencapsulated: the
    subnets of the peers it reaches directly (the counterpart of the tunnel-ingress check,
    which admits a source subnet only from the PublicIP that leases it), and those peers'
    PublicIPs (their hosts' own traffic to our pods, which the direct route sends from
    there); for IPv6, of the peers whose PublicIPv6 is direct."""
    pairs = [(le.public_ip, le.subnet) if version == 4 else (le.public_ipv6, le.ipv6_subnet)
             for le in leases if le.public_ip != own]  # fmt: skip
    found = {net for address, subnet in pairs if address is not None and subnet is not None
             and address in direct for net in (subnet, ip_network(address))}  # fmt: skip
    return sorted(found)
