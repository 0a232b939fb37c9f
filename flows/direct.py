"""DirectRouting's flows: a peer on this node's own underlay link gets its pods' traffic
unencapsulated (flannel's vxlan `DirectRouting`), through the host.

Per (node, peer) the controller routes directly when the config's Backend.DirectRouting
is on, the peer's lease is accepted, and the node's agent found the peer direct by
flannel's rule (leases/direct.py) and says so in its liveness record. Then one flow in
ROUTE, above the peer's tunnel route (which stays, the fallback when the flow goes),
sends the peer's subnet to the gateway port, as the node's default route does: the
host routes it `<subnet> via <PublicIP>` onto the underlay (the agent's kernel route,
ovsdb/direct.py), so the packet leaves with the pod addresses as they are, no VXLAN.
The host also checks what arrives that way: only a direct peer's subnet may reach
this node's pods unencapsulated (ovsdb/direct.py's filter), the counterpart of the
tunnel-ingress check.

With DirectRouting off nothing here adds a flow.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from ipaddress import IPv4Address, IPv4Network

from flows.flow import ETH_TYPE_IP, Flow, Owner, Table, cookie_for, flow, output, set_field
from flows.ports import GATEWAY_OFPORT, gateway_mac
from leases.model import Lease, NetworkConfig

PRIO_DIRECT = 101  # above the compiler's PRIO_EXACT (100): the peer's tunnel route


def direct_cookie(subnet: IPv4Network) -> int:
    """The cookie of a direct route: its own owner kind, so the lease's compact pair of
    flows (route + ingress check) stays as it is."""
    return cookie_for(Owner.DIRECT, int(subnet.network_address))


def direct_leases(
    config: NetworkConfig,
    own: Lease | None,
    leases: Iterable[Lease],
    reachable: Collection[IPv4Address] | None,
) -> list[Lease]:
    """The accepted `leases` that `own`'s node routes directly: none unless DirectRouting
    is on and its agent named their PublicIPs as `reachable` (its liveness record)."""
    if not config.backend.direct_routing or own is None or not reachable:
        return []
    return [le for le in leases if le.public_ip in reachable and le.public_ip != own.public_ip]


def direct_flow(own: Lease, peer: Lease) -> Flow:
    """`peer`'s subnet to the host, which routes it via the peer's PublicIP."""
    return flow(
        Table.ROUTE,
        PRIO_DIRECT,
        {"eth_type": ETH_TYPE_IP, "ip_dst": peer.subnet},
        [set_field("eth_dst", gateway_mac(own.subnet)), output(GATEWAY_OFPORT)],
        direct_cookie(peer.subnet),
    )


def direct_flows(own: Lease, peers: Iterable[Lease]) -> list[Flow]:
    return [direct_flow(own, peer) for peer in peers]
