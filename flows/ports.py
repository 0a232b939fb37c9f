"""The fixed points shared by bootstrap (ovsdb/) and the compiler (flows/).

Both sides import these, so a flow can never point at a port number or MAC
that bootstrap did not create: ofports are pinned with `ofport_request`, MACs
are derived from addresses that the lease already carries.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

TUNNEL_PORT = "vxlan0"
TUNNEL_OFPORT = 1
GATEWAY_PORT = "vxgw0"
GATEWAY_OFPORT = 2
# a dual-stack node's IPv6 tunnel (flannel's flannel-v6.<VNI>): its own port, since an OVS
# tunnel port's local_ip is of one family; high, so no pod already holds the number when
# a node turns IPv6 on (OVS hands pods the next free numbers from 3 up)
TUNNEL6_PORT = "vxlan6"
TUNNEL6_OFPORT = 0xFEFE


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


def link_local(mac: str) -> IPv6Address:
    """The modified EUI-64 link-local address the kernel gives an interface with `mac`
    (addr_gen_mode eui64, the default): the source of a pod's own neighbour solicitations."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return IPv6Address(b"\xfe\x80" + bytes(6) + eui)
