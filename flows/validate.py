"""Which leases and endpoints may produce flows.

Lease and endpoint values come from the network (etcd). The registry already
rejects malformed ones; this is the compiler's own guard against values that
are well-formed but would steal or blackhole another node's traffic. Every
rejection carries a reason an operator can act on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TypeVar

from flows.ports import GATEWAY_OFPORT, TUNNEL6_OFPORT, TUNNEL_OFPORT
from leases.model import Endpoint, Lease, NetworkConfig
from leases.validate import public_ip_problem

T = TypeVar("T", Lease, Endpoint)

MAX_POD_OFPORT = 0xFEFF  # OFPP_MAX: numbers above are reserved ports


@dataclass(frozen=True)
class Rejected:
    """A lease or endpoint that yields no flow, and why."""

    item: Lease | Endpoint
    reason: str


@dataclass(frozen=True)
class Selection:
    accepted: tuple
    rejected: tuple[Rejected, ...]


_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _unicast_mac_problem(mac: str) -> str | None:
    if _CANONICAL_MAC.fullmatch(mac) and not int(mac[:2], 16) & 1 and mac != "00:00:00:00:00:00":
        return None  # the common case, without splitting
    parts = mac.split(":")
    if len(parts) != 6 or any(len(p) != 2 for p in parts) or mac != mac.lower():
        return f"MAC {mac!r} is not lower-case aa:bb:cc:dd:ee:ff"
    try:
        octets = bytes(int(p, 16) for p in parts)
    except ValueError:
        return f"MAC {mac!r} is not hexadecimal"
    if octets[0] & 1:
        return f"MAC {mac} is multicast/broadcast"
    if not any(octets):
        return "MAC is all zeros"
    return None


def lease_problem(config: NetworkConfig, lease: Lease) -> str | None:
    """Why this lease, on its own, must not produce flows (None: it may).

    Address ranges are checked as integers (ipaddress's `is_*` ranges): this
    runs once per lease when the controller loads a cluster.
    """
    if lease.backend_type != "vxlan":
        return f"backend type {lease.backend_type!r} is not vxlan"
    net, mask = int(config.network.network_address), int(config.network.netmask)
    if lease.subnet.prefixlen != config.subnet_len:
        return f"subnet {lease.subnet} is not a /{config.subnet_len}"
    if lease.subnet.prefixlen < config.network.prefixlen or (
        int(lease.subnet.network_address) & mask != net
    ):
        return f"subnet {lease.subnet} is outside the network {config.network}"
    if lease.vni != config.backend.vni:
        return f"VNI {lease.vni} differs from the network's VNI {config.backend.vni}"
    ip = lease.public_ip
    n = int(ip) if isinstance(ip, IPv4Address) else None
    if n is None or n >> 28 == 0xE or n == 0:  # multicast 224/4, unspecified
        return f"PublicIP {ip} is not a unicast IPv4 address"
    if n >> 24 == 127 or n >> 16 == 0xA9FE or n == 0xFFFFFFFF:  # loopback, link-local
        return f"PublicIP {ip} is not routable between nodes"
    if n & mask == net:
        return f"PublicIP {ip} lies inside the overlay network {config.network}"
    return _unicast_mac_problem(lease.vtep_mac)


def _select(
    items: Iterable[T],
    problem: Callable[[T], str | None],
    unique: tuple[tuple[Callable[[T], object], str], ...],
) -> Selection:
    """Items without a problem, less those sharing a value that must be unique.

    Every holder of a shared value is rejected (the first `unique` key that is
    shared names the reason): none of them is known to be the right one.
    """
    rejected: list[Rejected] = []
    valid: list[T] = []
    for item in items:
        reason = problem(item)
        if reason:
            rejected.append(Rejected(item, reason))
        else:
            valid.append(item)
    counts = [(Counter(key(item) for item in valid), key, why) for key, why in unique]
    accepted = []
    for item in valid:
        shared = next((why.format(key(item)) for c, key, why in counts if c[key(item)] > 1), None)
        if shared:
            rejected.append(Rejected(item, shared))
        else:
            accepted.append(item)
    return Selection(tuple(accepted), tuple(rejected))


def select_leases(config: NetworkConfig, leases: Iterable[Lease]) -> Selection:
    """Leases that may produce flows.

    Besides each lease's own checks: two leases naming one PublicIP are both
    rejected, because traffic for either subnet could reach the wrong node and
    neither is known to be the live one; so are duplicate subnets.
    """
    return _select(
        leases,
        lambda lease: lease_problem(config, lease),
        (
            (lambda lease: lease.public_ip, "PublicIP {} is held by several leases"),
            (lambda lease: lease.subnet, "subnet {} is leased several times"),
        ),
    )


def v6_problem(config: NetworkConfig, lease: Lease) -> str | None:
    """Why the IPv6 half of this lease must not produce flows (None: it may). Only asked
    of a lease with an IPv6 subnet under a config with EnableIPv6; a problem here costs
    the lease its IPv6 flows only, never its IPv4 ones."""
    six, subnet = config.ipv6, lease.ipv6_subnet
    if six is None or subnet is None:
        return "no IPv6 half under an EnableIPv6 config"
    if lease.public_ipv6 is None or lease.vtep_mac_v6 is None:
        return f"IPv6 subnet {subnet} without PublicIPv6 and BackendV6Data"
    if subnet.prefixlen != six.subnet_len:
        return f"IPv6 subnet {subnet} is not a /{six.subnet_len}"
    if not subnet.subnet_of(six.network):
        return f"IPv6 subnet {subnet} is outside the IPv6Network {six.network}"
    return public_ip_problem(lease.public_ipv6, config) or _unicast_mac_problem(lease.vtep_mac_v6)


# what a lease's IPv6 half must hold alone, with the reason when another lease holds it too
# (select_v6; the controller's model keeps an index of each, controller/model.py)
V6_CLAIMS: tuple[tuple[Callable[[Lease], object], str], ...] = (
    (lambda lease: lease.public_ipv6, "PublicIPv6 {} is held by several leases"),
    (lambda lease: lease.ipv6_subnet, "IPv6 subnet {} is leased several times"),
)


def select_v6(config: NetworkConfig, leases: Iterable[Lease]) -> Selection:
    """The leases whose IPv6 half may produce flows (asked only on a dual-stack node).

    As `select_leases` for IPv4: two leases naming one PublicIPv6 or one IPv6
    subnet both lose their IPv6 flows (their IPv4 ones are judged apart).
    """
    return _select(
        [lease for lease in leases if lease.ipv6_subnet is not None],
        lambda lease: v6_problem(config, lease),
        V6_CLAIMS,
    )


def endpoint_problem(lease: Lease, endpoint: Endpoint) -> str | None:
    """Why this endpoint of the node holding `lease` must not produce flows."""
    if endpoint.node_subnet != lease.subnet:
        return f"endpoint belongs to {endpoint.node_subnet}, not to this node's {lease.subnet}"
    subnet = lease.subnet
    if endpoint.ip not in subnet:
        return f"IP {endpoint.ip} is outside the node's subnet {subnet}"
    if endpoint.ip in (subnet.network_address, subnet.broadcast_address, lease.gateway):
        return f"IP {endpoint.ip} is the subnet's network, broadcast or gateway address"
    if not 0 < endpoint.ofport <= MAX_POD_OFPORT or endpoint.ofport in (
        TUNNEL_OFPORT,
        GATEWAY_OFPORT,
        TUNNEL6_OFPORT,
    ):
        return f"ofport {endpoint.ofport} is not a pod port number"
    six = lease.ipv6_subnet
    if endpoint.ipv6 is not None and six is not None:  # (no IPv6 half: no IPv6 flows)
        if endpoint.ipv6 not in six:
            return f"IPv6 {endpoint.ipv6} is outside the node's IPv6 subnet {six}"
        if endpoint.ipv6 in (six.network_address, six.network_address + 1):
            return f"IPv6 {endpoint.ipv6} is the IPv6 subnet's network or gateway address"
    return _unicast_mac_problem(endpoint.mac)


def select_endpoints(lease: Lease | None, endpoints: Iterable[Endpoint]) -> Selection:
    """The node's own endpoints that may produce flows.

    Endpoints of other nodes are skipped silently (not rejected): every node's
    switch sees the whole list. Two endpoints on one ofport are both rejected
    (a stale record and a new pod; the agent will correct it).
    """
    if lease is None:
        return Selection((), ())
    own = [e for e in endpoints if e.node_subnet == lease.subnet]
    unique = (
        (lambda e: e.ofport, "ofport {} has several endpoints"),
        (lambda e: e.ip, "IP {} has several endpoints"),
    )
    if any(e.ipv6 is not None for e in own):  # an IPv4-only node: no IPv6 to count
        unique += ((lambda e: e.ipv6 or e.ip, "IPv6 {} has several endpoints"),)
    return _select(own, lambda endpoint: endpoint_problem(lease, endpoint), unique)
