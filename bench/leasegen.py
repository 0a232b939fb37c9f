"""Synthetic clusters: a network config and N valid, distinct leases, deterministically.

Overlay subnets are /24s of 10.0.0.0/7 (room for 131,071 leases past flannel's
default SubnetMin); PublicIPs are hosts of 198.18.0.0/15, the RFC 2544
benchmarking range, with VtepMACs derived as the node agent derives them.
No benchmark sends traffic to any of these addresses: they exist as flow
fields only (B4, which sends traffic, builds its own cluster in namespaces).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flows.ports import vtep_mac_for
from leases.model import BackendConfig, Lease, NetworkConfig

NETWORK = IPv4Network("10.0.0.0/7")
SUBNET_LEN = 24
PUBLIC_BASE = IPv4Address("198.18.0.1")
PUBLIC_RANGE = IPv4Network("198.18.0.0/15")
VNI = 1
MAX_LEASES = 2 ** (SUBNET_LEN - NETWORK.prefixlen) - 1


def network_config(vni: int = VNI) -> NetworkConfig:
    """flannel defaults made explicit: SubnetMin is the second subnet, SubnetMax the last."""
    first = NETWORK.network_address
    last = NETWORK.broadcast_address + 1 - 2 ** (32 - SUBNET_LEN)
    return NetworkConfig(
        network=NETWORK,
        subnet_len=SUBNET_LEN,
        subnet_min=IPv4Network(f"{first + 2 ** (32 - SUBNET_LEN)}/{SUBNET_LEN}"),
        subnet_max=IPv4Network(f"{last}/{SUBNET_LEN}"),
        backend=BackendConfig(vni=vni),
    )


def lease(index: int, vni: int = VNI) -> Lease:
    """Lease number `index` (0-based): subnet 1+index of NETWORK, PublicIP PUBLIC_BASE+index."""
    if not 0 <= index < MAX_LEASES:
        raise ValueError(f"lease index {index} outside 0..{MAX_LEASES - 1}")
    subnet = IPv4Network(
        (int(NETWORK.network_address) + (index + 1) * 2 ** (32 - SUBNET_LEN), SUBNET_LEN)
    )
    public_ip = PUBLIC_BASE + index
    if public_ip not in PUBLIC_RANGE:
        raise ValueError(f"PublicIP {public_ip} outside {PUBLIC_RANGE}")
    return Lease(subnet=subnet, public_ip=public_ip, vni=vni, vtep_mac=vtep_mac_for(public_ip))


@dataclass(frozen=True)
class Cluster:
    """A network config and its leases; a benchmark's switches are the first few leases."""

    config: NetworkConfig
    leases: tuple[Lease, ...]


def cluster(total: int, vni: int = VNI) -> Cluster:
    """`total` leases numbered 0..total-1."""
    return Cluster(network_config(vni), tuple(lease(i, vni) for i in range(total)))
