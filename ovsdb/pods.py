"""Pod ports on br-int -> Endpoints: the convention a CNI plugin follows, and its validation.

A pod port is an Interface on the integration bridge, not created by vxflow,
whose external_ids carry

- `attached-mac=<pod MAC>` (the key OVS-based CNIs already use), and
- `vxflow-ip=<pod IPv4 address>` (inside this node's subnet, not its
  network, gateway or broadcast address), and on a dual-stack node
- `vxflow-ipv6=<pod IPv6 address>` (inside this node's IPv6 subnet, not its
  first two addresses; ignored while the node's lease has no IPv6 half).

Who the pod is, for network policy, comes from four more keys, all optional:
`vxflow-namespace` (default `default`, as kubectl's), `vxflow-pod` (the pod's
name), `vxflow-labels` (a JSON object of strings) and `vxflow-ports` (a JSON
list of `{"name", "containerPort", "protocol"}`, as in a pod spec). Labels or
ports without a pod name are rejected: a pod nobody named cannot be selected.

The endpoint's ofport is the Interface's `ofport` as ovs-vswitchd assigned it.
A port with neither key is not a pod (left alone, silently). A port with a
malformed or out-of-subnet value is rejected: logged once with the reason and
never published, so a typo can never steal another pod's traffic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv6Address

from leases.labels import PolicyInvalid
from leases.model import Endpoint, Lease
from leases.pods import PodIdentity, pod_identity
from leases.policy import DEFAULT_NAMESPACE
from leases.validate import normalize_mac

MAC_KEY = "attached-mac"
IP_KEY = "vxflow-ip"
IPV6_KEY = "vxflow-ipv6"
NAMESPACE_KEY = "vxflow-namespace"
POD_KEY = "vxflow-pod"
LABELS_KEY = "vxflow-labels"
PORTS_KEY = "vxflow-ports"


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
    ipv6 = _ipv6(ids.get(IPV6_KEY), lease)
    if isinstance(ipv6, str):
        return PodRejection(port.name, ipv6)
    pod = identity_of(ids)
    if isinstance(pod, str):
        return PodRejection(port.name, pod)
    if port.ofport is None or port.ofport < 1:
        return None  # not attached yet: vswitchd will assign an ofport and the IDL tells us
    return Endpoint(node_subnet=subnet, ip=ip, mac=mac, ofport=port.ofport, port_name=port.name,
                    pod=pod, ipv6=ipv6)  # fmt: skip


def _ipv6(raw: str | None, lease: Lease) -> IPv6Address | str | None:
    """The pod's IPv6 address; None: none (or the node has no IPv6 subnet); a string: why
    the port is rejected."""
    six = lease.ipv6_subnet
    if raw is None or six is None:
        return None
    try:
        ip = IPv6Address(raw)
    except (AddressValueError, ValueError):
        return f"external_ids:{IPV6_KEY}={raw!r} is not an IPv6 address"
    if ip not in six:
        return f"{IPV6_KEY} {ip} is outside this node's IPv6 subnet {six}"
    if ip in (six.network_address, six.network_address + 1):
        return f"{IPV6_KEY} {ip} is {six}'s network or gateway address"
    return ip


def identity_of(ids: dict[str, str]) -> PodIdentity | str | None:
    """The pod's identity from external_ids; None: unnamed; a string: why it is rejected."""
    name = ids.get(POD_KEY)
    if name is None:
        extra = [k for k in (NAMESPACE_KEY, LABELS_KEY, PORTS_KEY) if k in ids]
        return f"external_ids:{extra[0]} without external_ids:{POD_KEY}" if extra else None
    decoded = {}
    for key in (LABELS_KEY, PORTS_KEY):
        try:
            decoded[key] = json.loads(ids[key]) if key in ids else None
        except ValueError:
            return f"external_ids:{key} is not JSON: {ids[key][:60]!r}"
    try:
        return pod_identity(ids.get(NAMESPACE_KEY, DEFAULT_NAMESPACE), name,
                            decoded[LABELS_KEY], decoded[PORTS_KEY])  # fmt: skip
    except PolicyInvalid as exc:
        return f"external_ids: {exc}"


def identity_external_ids(pod: PodIdentity) -> dict[str, str]:
    """The external_ids that carry `pod` (what `identity_of` reads back): written by vxflow-cni
    on ADD and by `vxflow pods label`/`ports` on a running pod."""
    ids = {NAMESPACE_KEY: pod.namespace, POD_KEY: pod.name,
           LABELS_KEY: json.dumps(pod.label_map, sort_keys=True, separators=(",", ":"))}  # fmt: skip
    if pod.ports:
        ids[PORTS_KEY] = json.dumps([p.to_dict() for p in pod.ports], separators=(",", ":"))
    return ids


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
    by_ipv6: dict[IPv6Address, list[Endpoint]] = {}
    for claims in found.values():
        for c in claims:
            if c.ipv6 is not None:
                by_ipv6.setdefault(c.ipv6, []).append(c)
    shared = [(ip, claims) for ip, claims in [*found.items(), *by_ipv6.items()] if len(claims) > 1]
    for ip, claims in shared:
        names = ", ".join(c.port_name for c in claims)
        rejected.extend(
            PodRejection(c.port_name, f"{ip} is claimed by ports {names}") for c in claims
        )
    out = {c.port_name for _, claims in shared for c in claims}
    endpoints = {ip: claims[0] for ip, claims in found.items()
                 if len(claims) == 1 and claims[0].port_name not in out}  # fmt: skip
    return endpoints, rejected
