"""Pod ports on br-int -> Endpoints: the convention a CNI plugin follows, and its validation.

A pod port is an Interface on the integration bridge, not created by vxflow,
whose external_ids carry

- `attached-mac=<pod MAC>` (the key OVS-based CNIs already use), and
- `vxflow-ip=<pod IPv4 address>` (inside this node's subnet, not its
  network, gateway or broadcast address).

The endpoint's ofport is the Interface's `ofport` as ovs-vswitchd assigned it.
A port with neither key is not a pod (left alone, silently). A port with a
malformed or out-of-subnet value is rejected: logged once with the reason and
never published, so a typo can never steal another pod's traffic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address

from leases.model import Endpoint, Lease
from leases.validate import normalize_mac

MAC_KEY = "attached-mac"
IP_KEY = "vxflow-ip"


@dataclass(frozen=True)
class PodPort:
    """What the agent reads from one Interface row (plain values, no IDL objects)."""

    name: str
    ofport: int | None  # None until ovs-vswitchd has assigned one (or -1: it failed)
    external_ids: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PodRejection:
    port: str
    reason: str

    def __str__(self) -> str:
        return f"pod port {self.port} rejected: {self.reason}"


def _endpoint(port: PodPort, lease: Lease) -> Endpoint | PodRejection | None:
    ids = dict(port.external_ids)
    raw_mac, raw_ip = ids.get(MAC_KEY), ids.get(IP_KEY)
    if raw_mac is None and raw_ip is None:
        return None
    if raw_mac is None or raw_ip is None:
        missing = MAC_KEY if raw_mac is None else IP_KEY
        return PodRejection(port.name, f"external_ids:{missing} is missing")
    try:
        mac = normalize_mac(raw_mac)
    except ValueError as exc:
        return PodRejection(port.name, f"external_ids:{MAC_KEY}: {exc}")
    try:
        ip = IPv4Address(raw_ip)
    except (AddressValueError, ValueError):
        return PodRejection(port.name, f"external_ids:{IP_KEY}={raw_ip!r} is not an IPv4 address")
    subnet = lease.subnet
    if ip not in subnet:
        return PodRejection(port.name, f"{IP_KEY} {ip} is outside this node's subnet {subnet}")
    if ip in (subnet.network_address, lease.gateway, subnet.broadcast_address):
        return PodRejection(port.name, f"{IP_KEY} {ip} is {subnet}'s network, gateway or broadcast")
    if port.ofport is None or port.ofport < 1:
        return None  # not attached yet: vswitchd will assign an ofport and the IDL tells us
    return Endpoint(node_subnet=subnet, ip=ip, mac=mac, ofport=port.ofport, port_name=port.name)


def endpoints_from_ports(
    ports: Iterable[PodPort], lease: Lease
) -> tuple[dict[IPv4Address, Endpoint], list[PodRejection]]:
    """The endpoints to publish (by IP) and the ports rejected, with reasons.

    Two ports claiming one IP are both rejected: publishing either could
    hijack the other's traffic, and the operator must resolve it.
    """
    found: dict[IPv4Address, list[Endpoint]] = {}
    rejected: list[PodRejection] = []
    for port in sorted(ports, key=lambda p: p.name):
        result = _endpoint(port, lease)
        if isinstance(result, PodRejection):
            rejected.append(result)
        elif result is not None:
            found.setdefault(result.ip, []).append(result)
    endpoints: dict[IPv4Address, Endpoint] = {}
    for ip, claims in found.items():
        if len(claims) == 1:
            endpoints[ip] = claims[0]
            continue
        names = ", ".join(c.port_name for c in claims)
        rejected.extend(
            PodRejection(c.port_name, f"{ip} is claimed by ports {names}") for c in claims
        )
    return endpoints, rejected
