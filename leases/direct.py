"""DirectRouting (flannel's vxlan `DirectRouting`): which peers a node reaches without VXLAN (pure).

flannel's rule (pkg/ip/iface.go `DirectRouting`), applied on the node: ask the kernel for
the route to the peer's PublicIP; exactly one route, with no gateway, means the peer is
on this node's own link, and its subnet is routed `<subnet> via <PublicIP>` instead of
into the VXLAN device. Any other answer (a gateway, no route, several) keeps VXLAN.

The agent applies the rule to every peer and publishes the PublicIPs it found direct in
its liveness record (`"Direct": [...]`, leases/liveness.py), never in flannel's lease
value. The controller then routes (node, peer) directly when the config's
Backend.DirectRouting is on and the node's record names the peer (flows/direct.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from leases.model import Lease

MAX_DIRECT = 2048  # peers one liveness record names: nodes on one link, and then some


def route_is_direct(routes: Sequence[Mapping[str, Any]]) -> bool:
    """flannel's test on the answer of a route lookup (`ip -j route get`, one dict per
    route): exactly one route and it has no gateway."""
    return len(routes) == 1 and not routes[0].get("gateway")


def direct_sources(
    leases: Iterable[Lease], direct: Collection[IPv4Address], own: IPv4Address
) -> list[IPv4Network]:
    """The sources that may reach this node's pods unencapsulated: the subnets of the
    peers it reaches directly (the counterpart of the tunnel-ingress check, which admits
    a source subnet only from the PublicIP that leases it), and those peers' PublicIPs
    (their hosts' own traffic to our pods, which the direct route sends from there)."""
    peers = [le for le in leases if le.public_ip in direct and le.public_ip != own]
    return sorted({le.subnet for le in peers} | {IPv4Network(le.public_ip) for le in peers})
