"""The fixed points shared by bootstrap (ovsdb/) and the compiler (flows/).

Both sides import these, so a flow can never point at a port number or MAC
that bootstrap did not create: ofports are pinned with `ofport_request`, MACs
are derived from addresses that the lease already carries.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

TUNNEL_PORT = "vxlan0"
TUNNEL_OFPORT = 1
GATEWAY_PORT = "vxgw0"
GATEWAY_OFPORT = 2


def _mac(prefix: tuple[int, int], ip: IPv4Address) -> str:
    return ":".join(f"{b:02x}" for b in (*prefix, *ip.packed))


def pod_mac(ip: IPv4Address) -> str:
    """MAC of a pod interface: 0a:58 + its IPv4 address (Kubernetes' bridge CNI convention)."""
    return _mac((0x0A, 0x58), ip)


def gateway_mac(subnet: IPv4Network) -> str:
    """MAC of a node's gateway port: 0a:58 + the gateway (first host) address."""
    return pod_mac(subnet.network_address + 1)


def vtep_mac_for(public_ip: IPv4Address) -> str:
    """A node's VtepMAC: 0e:76 + its PublicIP (locally administered, stable across restarts)."""
    return _mac((0x0E, 0x76), public_ip)


def vtep_mac_v6_for(public_ip: IPv4Address) -> str:
    """A dual-stack node's BackendV6Data.VtepMAC, its IPv6 VTEP's own (flannel's
    flannel-v6.<VNI> has one too): 0e:36 + its IPv4 PublicIP, unique as that is."""
    return _mac((0x0E, 0x36), public_ip)
