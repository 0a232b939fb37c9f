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

Dual stack (flannel decides each family apart): the agent names a peer's PublicIPv6
too when the kernel routes it without a gateway, and the peer's IPv6 subnet then gets
the same flow of its own (same cookie), routed by the host `via <PublicIPv6>`; only
for a peer whose IPv6 half the compiler accepted (flows/ipv6.py `select_v6`).

With DirectRouting off nothing here adds a flow.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.family import V4, V6, Family
from flows.flow import Flow, Owner, Table, cookie_for, flow, output, set_field
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
    reachable: Collection[IPv4Address | IPv6Address] | None,
) -> list[Lease]:
    """The accepted `leases` that `own`'s node routes directly, in either family: none
    unless DirectRouting is on and its agent named their PublicIP or PublicIPv6 as
    `reachable` (its liveness record)."""
    if not config.backend.direct_routing or own is None or not reachable:
        return []
    return [le for le in leases if le.public_ip != own.public_ip
            and (le.public_ip in reachable or le.public_ipv6 in reachable)]  # fmt: skip


def direct_flow(own: Lease, peer: Lease, fam: Family = V4) -> Flow:
    """`peer`'s subnet of family `fam` to the host, which routes it via the peer's
    PublicIP (IPv6: PublicIPv6)."""
    subnet: IPv4Network | IPv6Network | None = peer.subnet if fam is V4 else peer.ipv6_subnet
    return flow(
        Table.ROUTE,
        PRIO_DIRECT,
        {"eth_type": fam.eth_type, fam.dst: subnet},
        [set_field("eth_dst", gateway_mac(own.subnet)), output(GATEWAY_OFPORT)],
        direct_cookie(peer.subnet),
    )


def direct_flows(
    own: Lease,
    peers: Iterable[Lease],
    reachable: Collection[IPv4Address | IPv6Address],
    v6: Collection[IPv4Network] = (),
) -> list[Flow]:
    """The direct routes of `peers` (`direct_leases`), each family whose PublicIP is in
    `reachable`; IPv6 only on a dual-stack node and for the peers whose subnet is in `v6`
    (those with an accepted IPv6 half)."""
    out = []
    for peer in peers:
        if peer.public_ip in reachable:
            out.append(direct_flow(own, peer))
        if (peer.ipv6_subnet is not None and peer.public_ipv6 in reachable
                and peer.subnet in v6):  # fmt: skip
            out.append(direct_flow(own, peer, V6))
    return out
