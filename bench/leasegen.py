"""Synthetic clusters: a network config and N valid, distinct leases, deterministically.

Overlay subnets are /24s of 10.0.0.0/7 (room for 131,071 leases past flannel's
default SubnetMin); PublicIPs are hosts of 198.18.0.0/15, the RFC 2544
benchmarking range, with VtepMACs derived as the node agent derives them.
No benchmark sends traffic to any of these addresses: they exist as flow
fields only (B4, which sends traffic, builds its own cluster in namespaces).

Dual stack (`dual=True`): flannel's EnableIPv6 with IPv6Network fc00::/48 (/64s), and
every lease an IPv6 half: IPv6 subnet number 1+index, PublicIPv6 in 2001:2::/48 (RFC 5180's
benchmarking range), its own VtepMAC; a remote lease then adds twice the flows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.compiler import FLOWS_PER_LEASE
from flows.ports import vtep_mac_for, vtep_mac_v6_for
from leases.model import BackendConfig, FamilyConfig, Lease, NetworkConfig

NETWORK = IPv4Network("10.0.0.0/7")
SUBNET_LEN = 24
PUBLIC_BASE = IPv4Address("198.18.0.1")
PUBLIC_RANGE = IPv4Network("198.18.0.0/15")
VNI = 1
MAX_LEASES = 2 ** (SUBNET_LEN - NETWORK.prefixlen) - 1
NETWORK6 = IPv6Network("fc00::/48")
PUBLIC6_BASE = IPv6Address("2001:2::1")
MAX_LEASES6 = 0xFFFF  # the IPv6 subnets 1..ffff of NETWORK6 (SubnetMax the last)


def network_config(vni: int = VNI, dual: bool = False) -> NetworkConfig:
    """flannel defaults made explicit: SubnetMin is the second subnet, SubnetMax the last
    (IPv6's too, `dual`)."""
    first = NETWORK.network_address
    last = NETWORK.broadcast_address + 1 - 2 ** (32 - SUBNET_LEN)
    six = FamilyConfig(NETWORK6, 64, IPv6Network("fc00:0:0:1::/64"),
                       IPv6Network("fc00:0:0:ffff::/64")) if dual else None  # fmt: skip
    return NetworkConfig(
        network=NETWORK,
        subnet_len=SUBNET_LEN,
        subnet_min=IPv4Network(f"{first + 2 ** (32 - SUBNET_LEN)}/{SUBNET_LEN}"),
        subnet_max=IPv4Network(f"{last}/{SUBNET_LEN}"),
        backend=BackendConfig(vni=vni),
        ipv6=six,
    )


def lease(index: int, vni: int = VNI, dual: bool = False) -> Lease:
    """Lease number `index` (0-based): subnet 1+index of NETWORK, PublicIP PUBLIC_BASE+index."""
    if not 0 <= index < MAX_LEASES:
        raise ValueError(f"lease index {index} outside 0..{MAX_LEASES - 1}")
    subnet = IPv4Network(
        (int(NETWORK.network_address) + (index + 1) * 2 ** (32 - SUBNET_LEN), SUBNET_LEN)
    )
    public_ip = PUBLIC_BASE + index
    if public_ip not in PUBLIC_RANGE:
        raise ValueError(f"PublicIP {public_ip} outside {PUBLIC_RANGE}")
    out = Lease(subnet=subnet, public_ip=public_ip, vni=vni, vtep_mac=vtep_mac_for(public_ip))
    if not dual:
        return out
    if index + 1 > MAX_LEASES6:
        raise ValueError(f"lease index {index} outside 0..{MAX_LEASES6 - 1} for dual stack")
    subnet6 = IPv6Network((int(NETWORK6.network_address) + (index + 1 << 64), 64))
    return replace(out, ipv6_subnet=subnet6, public_ipv6=PUBLIC6_BASE + index,
                   vtep_mac_v6=vtep_mac_v6_for(public_ip))  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """A network config and its leases; a benchmark's switches are the first few leases."""

    config: NetworkConfig
    leases: tuple[Lease, ...]

    @property
    def flows_per_lease(self) -> int:
        """What one remote lease adds to a switch (its IPv6 route and check too, dual stack)."""
        return FLOWS_PER_LEASE * (2 if self.config.ipv6 is not None else 1)


def cluster(total: int, vni: int = VNI, dual: bool = False) -> Cluster:
    """`total` leases numbered 0..total-1 (`dual`: dual-stack ones)."""
    return Cluster(network_config(vni, dual), tuple(lease(i, vni, dual) for i in range(total)))
