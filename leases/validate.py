"""Validation of what etcd holds: every lease and endpoint is input from the network.

Pure functions. Each entry either becomes a model object or a `Rejection`
naming the key and the reason; cross-entry rules (overlapping subnets, one
lease per PublicIP) are applied by `resolve_conflicts`, deterministically, so
every controller replica drops the same entries. Nothing here raises on bad data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
)
from typing import Any

from leases.config import MAX_VNI
from leases.keys import KeyKind
from leases.labels import PolicyInvalid
from leases.model import Endpoint, Lease, NetworkConfig, subnet_key
from leases.pods import pod_identity_from_json

MAX_VALUE_BYTES = 4096  # a flannel lease value is ~130 bytes; anything huge is not one
MAX_OFPORT = 0xFFFFFEFF  # OpenFlow's last physical port number (OFPP_MAX)

_SUBNET_NAME = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})$")
# Canonical dotted quads (no leading zeros, octets <= 255), as ipaddress accepts them:
# a match is parsed with int math; anything else takes ipaddress's path and its errors.
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_CANONICAL_SUBNET_NAME = re.compile(rf"{_QUAD.pattern}-(3[0-2]|[12]?\d)")
_V6_SUBNET_NAME = re.compile(r"([a-f\d:]+)-(\d{1,3})")
_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}$")


class Reason:
    """Short, stable reason codes: the `reason` label of the rejection counter."""

    NO_CONFIG = "no_config"
    BAD_CONFIG = "bad_config"
    BAD_KEY = "bad_key"
    OVERSIZED = "oversized"
    BAD_JSON = "bad_json"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    OUTSIDE_NETWORK = "outside_network"
    WRONG_LENGTH = "wrong_length"
    BAD_PUBLIC_IP = "bad_public_ip"
    BAD_BACKEND = "bad_backend"
    BAD_VNI = "bad_vni"
    BAD_MAC = "bad_mac"
    OVERLAP = "overlap"
    DUPLICATE_PUBLIC_IP = "duplicate_public_ip"
    BAD_IP = "bad_ip"
    BAD_OFPORT = "bad_ofport"
    ORPHAN = "orphan"
    BAD_POD = "bad_pod"


@dataclass(frozen=True)
class Rejection:
    """An etcd entry that was excluded, and why (logged with its key and counted)."""

    kind: KeyKind
    key: str
    reason: str  # a Reason code
    detail: str
    mod_revision: int = 0

    def __str__(self) -> str:
        return f"{self.key}: {self.detail} [{self.reason}]"

    def to_dict(self) -> dict[str, str]:
        """As the CLI's JSON outputs show it."""
        return {"key": self.key, "kind": self.kind.value, "reason": self.reason,
                "detail": self.detail}  # fmt: skip


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def normalize_mac(value: object) -> str:
    """A unicast Ethernet address as lower-case `aa:bb:cc:dd:ee:ff`; ValueError otherwise."""
    if not isinstance(value, str) or not _MAC.match(value.lower()):
        raise ValueError(f"not a MAC address: {json.dumps(value)}")
    mac = value.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"multicast MAC address: {mac}")
    if mac == "00:00:00:00:00:00":
        raise ValueError("all-zero MAC address")
    return mac


def _quad_int(a: str, b: str, c: str, d: str) -> int:
    return int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)


def parse_ipv4(text: str) -> IPv4Address:
    """`IPv4Address(text)` without its per-octet parsing cost in the common case."""
    m = _QUAD.fullmatch(text)
    return IPv4Address(_quad_int(*m.groups()) if m else text)


def parse_subnet_name(name: str) -> IPv4Network:
    """flannel's subnet key name (`10.20.52.0-24`) as a network; ValueError if malformed."""
    fast = _CANONICAL_SUBNET_NAME.fullmatch(name)
    if fast:
        *quad, length = fast.groups()
        prefixlen = int(length)
        address = _quad_int(*quad)
        if not address & (0xFFFFFFFF >> prefixlen):  # else: ipaddress says "host bits set"
            return IPv4Network((address, prefixlen))
    m = _SUBNET_NAME.match(name)
    if not m:
        raise ValueError(f"key name {name!r} is not <a.b.c.d>-<prefixlen>")
    try:
        return IPv4Network(f"{m.group(1)}/{m.group(2)}")
    except (AddressValueError, ValueError) as exc:
        raise ValueError(f"key name {name!r} is not a subnet: {exc}") from exc


def parse_lease_name(name: str) -> tuple[IPv4Network, IPv6Network | None]:
    """A lease's key name as its subnets: `10.20.4.0-24` or, dual-stack (flannel's
    `(\\d+\\.\\d+.\\d+.\\d+)-(\\d+)(?:&([a-f\\d:]+)-(\\d+))?$`),
    `10.20.4.0-24&fc00:0:0:4::-64`; ValueError if malformed. The IPv6 part must be
    written as flannel writes it (canonical, no host bits), so one subnet has one key."""
    v4, amp, v6 = name.partition("&")
    subnet = parse_subnet_name(v4)
    if not amp:
        return subnet, None
    m = _V6_SUBNET_NAME.fullmatch(v6)
    if not m:
        raise ValueError(f"IPv6 part of key name {name!r} is not <ipv6 address>-<prefixlen>")
    try:
        ipv6_subnet = IPv6Network(f"{m.group(1)}/{m.group(2)}")
    except ValueError as exc:
        raise ValueError(f"IPv6 part of key name {name!r} is not a subnet: {exc}") from exc
    if subnet_key(ipv6_subnet) != v6:
        raise ValueError(
            f"IPv6 part of key name {name!r} is not flannel's form {subnet_key(ipv6_subnet)!r}"
        )
    return subnet, ipv6_subnet


def _within(address: int, network: IPv4Network | IPv6Network) -> bool:
    return address & int(network.netmask) == int(network.network_address)


def public_ip_problem(ip: IPv4Address | IPv6Address, config: NetworkConfig) -> str | None:
    """Why `ip` cannot be a node's PublicIP or PublicIPv6 (underlay VTEP address), or None.

    Not unspecified, multicast, loopback, link-local or reserved (ipaddress's
    `is_*` ranges; for IPv4 checked as integer ranges: this runs once per lease),
    and outside the overlay of either family.
    """
    n = int(ip)
    if ip.version == 4:
        if not n or n >> 28 >= 0xE or n >> 24 == 127 or n >> 16 == 0xA9FE:
            return f"PublicIP {ip} is not a unicast underlay address"
        if _within(n, config.network):
            return f"PublicIP {ip} is inside the overlay Network {config.network}"
        return None
    if (
        ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local
        or ip.is_reserved or ip.ipv4_mapped is not None
    ):  # fmt: skip
        return f"PublicIPv6 {ip} is not a unicast underlay address"
    if config.ipv6 is not None and _within(n, config.ipv6.network):
        return f"PublicIPv6 {ip} is inside the overlay IPv6Network {config.ipv6.network}"
    return None


def _object(value: bytes | str, limit: int = MAX_VALUE_BYTES) -> dict[str, Any]:
    if len(value) > limit:
        raise _Invalid(Reason.OVERSIZED, f"value of {len(value)} bytes exceeds {limit}")
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Invalid(Reason.BAD_JSON, f"value is not JSON: {exc}") from exc
    except RecursionError:  # `[[[[...` of a few KiB: never a valid value, never a crash
        raise _Invalid(Reason.BAD_JSON, "value is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise _Invalid(Reason.BAD_JSON, "value is not a JSON object")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj or obj[name] is None:
        raise _Invalid(Reason.MISSING_FIELD, f"{name} is missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _Invalid(Reason.WRONG_TYPE, f"{name} has the wrong type: {json.dumps(value)}")
    return value


def _subnets(name: str, config: NetworkConfig) -> tuple[IPv4Network, IPv6Network | None]:
    try:
        subnet, ipv6_subnet = parse_lease_name(name)
    except ValueError as exc:
        raise _Invalid(Reason.BAD_KEY, str(exc)) from exc
    _fits(subnet, config.network, config.subnet_len, "")
    if ipv6_subnet is not None and config.ipv6 is not None:
        _fits(ipv6_subnet, config.ipv6.network, config.ipv6.subnet_len, "IPv6")
    return subnet, ipv6_subnet


def _fits(
    subnet: IPv4Network | IPv6Network, network: IPv4Network | IPv6Network, length: int, fam: str
) -> None:
    if subnet.prefixlen < network.prefixlen or not _within(int(subnet.network_address), network):
        raise _Invalid(Reason.OUTSIDE_NETWORK, f"subnet {subnet} is outside {fam}Network {network}")
    if subnet.prefixlen != length:
        raise _Invalid(Reason.WRONG_LENGTH, f"subnet {subnet} is not a /{length} ({fam}SubnetLen)")


def _public_ip(obj: dict[str, Any], config: NetworkConfig, version: int = 4) -> Any:
    name = "PublicIP" if version == 4 else "PublicIPv6"
    raw = _field(obj, name, str)
    try:
        ip = parse_ipv4(raw) if version == 4 else IPv6Address(raw)
    except AddressValueError as exc:
        raise _Invalid(
            Reason.BAD_PUBLIC_IP, f"{name} {raw!r} is not an IPv{version} address"
        ) from exc
    problem = public_ip_problem(ip, config)
    if problem:
        raise _Invalid(Reason.BAD_PUBLIC_IP, problem)
    return ip


class RawJSON(str):
    """A nested BackendData value kept verbatim so it survives a rewrite of the lease."""


def _freeze(value: Any) -> Any:
    """BackendData extras stay hashable: nested JSON is kept as its canonical text."""
    if isinstance(value, dict | list):
        return RawJSON(json.dumps(value, sort_keys=True, separators=(",", ":")))
    return value


def _backend_data(obj: dict[str, Any], name: str, config: NetworkConfig) -> tuple[str, dict]:
    """BackendData (or BackendV6Data): its VtepMAC and the rest; the VNI must be the config's."""
    data = _field(obj, name, dict)
    vni = data.get("VNI", config.backend.vni)  # flannel before 0.10 wrote no VNI
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= MAX_VNI:
        raise _Invalid(Reason.BAD_VNI, f"{name}.VNI {json.dumps(vni)} is not a VNI")
    if vni != config.backend.vni:
        raise _Invalid(
            Reason.BAD_VNI, f"{name}.VNI {vni} differs from the config's {config.backend.vni}"
        )
    try:
        mac = normalize_mac(_field(data, "VtepMAC", str))
    except ValueError as exc:
        raise _Invalid(Reason.BAD_MAC, f"{name}.VtepMAC: {exc}") from exc
    return mac, data


def _lease(
    name: str,
    value: bytes | str,
    config: NetworkConfig,
    etcd_lease_id: int | None,
    mod_revision: int,
) -> Lease:
    """One lease; a dual-stack key needs the value's IPv6 half (PublicIPv6, BackendV6Data),
    which is checked like the IPv4 one. In an IPv4-only config the key's IPv6 subnet has
    no network to lie in: it is kept as written (the key names it), routed by no one. An
    IPv4-only key's value may carry a PublicIPv6: without a subnet it is ignored."""
    subnet, ipv6_subnet = _subnets(name, config)
    obj = _object(value)
    public_ip = _public_ip(obj, config)
    backend_type = _field(obj, "BackendType", str)
    if backend_type != "vxlan":
        raise _Invalid(Reason.BAD_BACKEND, f'BackendType {backend_type!r} is not "vxlan"')
    mac, data = _backend_data(obj, "BackendData", config)
    extra = tuple(sorted((k, _freeze(v)) for k, v in data.items() if k not in ("VNI", "VtepMAC")))
    public_ipv6 = mac6 = None
    if ipv6_subnet is not None:
        public_ipv6 = _public_ip(obj, config, 6)
        mac6, _ = _backend_data(obj, "BackendV6Data", config)
    return Lease(
        subnet=subnet,
        public_ip=public_ip,
        vni=config.backend.vni,
        vtep_mac=mac,
        backend_type=backend_type,
        backend_data_extra=extra,
        etcd_lease_id=etcd_lease_id,
        mod_revision=mod_revision,
        ipv6_subnet=ipv6_subnet,
        public_ipv6=public_ipv6,
        vtep_mac_v6=mac6,
    )


def check_lease(
    key: str,
    value: bytes | str,
    config: NetworkConfig,
    *,
    etcd_lease_id: int | None = None,
    mod_revision: int = 0,
) -> Lease | Rejection:
    """Validate one `<prefix>/subnets/<name>` entry against the network config."""
    try:
        return _lease(key.rsplit("/", 1)[-1], value, config, etcd_lease_id, mod_revision)
    except _Invalid as bad:
        return Rejection(KeyKind.LEASE, key, bad.reason, bad.detail, mod_revision)


def public_ip_of(value: bytes | str) -> IPv4Address | None:
    """The PublicIP of a lease value, leniently (reservations may lack BackendData)."""
    try:
        return IPv4Address(json.loads(value)["PublicIP"])
    except (ValueError, KeyError, TypeError, AddressValueError, RecursionError):
        return None


def claims_of(lease: Lease) -> tuple[object, ...]:
    """What a lease holds that no other lease may: its PublicIP and IPv4 subnet and,
    dual-stack, its PublicIPv6 and IPv6 subnet. (Each subnet is only a part of a
    dual-stack key, so two keys can name the same one.)"""
    if lease.ipv6_subnet is None:
        return lease.public_ip, lease.subnet
    return lease.public_ip, lease.subnet, lease.public_ipv6, lease.ipv6_subnet


def resolve_conflicts(leases: Mapping[str, Lease]) -> tuple[dict[str, Lease], list[Rejection]]:
    """Drop leases that overlap another or share its PublicIP, PublicIPv6 or IPv6 subnet.

    Deterministic, independent of the order of events: the lease with the
    lowest subnet wins, of two keys naming one subnet the lower key. (Valid leases
    all have SubnetLen, so other overlaps only arise from entries validated against
    different configs; kept as a guard.)
    """
    if len(leases) == 1:  # the usual case: one lease per PublicIP
        return dict(leases), []
    kept: dict[str, Lease] = {}
    rejected: list[Rejection] = []
    ordered = sorted(
        leases.items(),
        key=lambda kv: (kv[1].subnet.network_address, kv[1].subnet.prefixlen, kv[0]),
    )
    last: tuple[str, Lease] | None = None  # kept lease reaching furthest up
    holder: dict[object, str] = {}

    def reject(key: str, lease: Lease, reason: str, detail: str) -> None:
        rejected.append(Rejection(KeyKind.LEASE, key, reason, detail, lease.mod_revision))

    for key, lease in ordered:
        if last and lease.subnet.network_address <= last[1].subnet.broadcast_address:
            reject(key, lease, Reason.OVERLAP,
                   f"subnet {lease.subnet} overlaps {last[1].subnet} ({last[0]})")  # fmt: skip
            continue
        taken = next((c for c in claims_of(lease) if c in holder), None)
        if taken is not None:
            if isinstance(taken, IPv4Network | IPv6Network):
                reason, what = Reason.OVERLAP, f"subnet {taken} is already leased by"
            else:
                reason = Reason.DUPLICATE_PUBLIC_IP
                what = f"{'PublicIP' if taken.version == 4 else 'PublicIPv6'} {taken} already holds"
            reject(key, lease, reason, f"{what} {holder[taken]}")
            continue
        holder.update((c, key) for c in claims_of(lease))
        kept[key] = lease
        if last is None or lease.subnet.broadcast_address > last[1].subnet.broadcast_address:
            last = (key, lease)
    return kept, rejected


def lease_to_json(lease: Lease) -> str:
    """The lease's etcd value exactly as flannel's vxlan backend writes it.

    Go's json.Marshal of flannel's LeaseAttrs: compact, fields in struct order,
    `PublicIPv6` null and BackendV6Data omitted on an IPv4-only node; vxflow's
    extras only inside BackendData, after VNI and VtepMAC.
    """
    data: dict[str, Any] = {"VNI": lease.vni, "VtepMAC": lease.vtep_mac}
    for k, v in lease.backend_data_extra:
        data[k] = json.loads(v) if isinstance(v, RawJSON) else v
    value: dict[str, Any] = {
        "PublicIP": str(lease.public_ip),
        "PublicIPv6": str(lease.public_ipv6) if lease.public_ipv6 else None,
        "BackendType": lease.backend_type,
        "BackendData": data,
    }
    if lease.vtep_mac_v6 is not None:
        value["BackendV6Data"] = {"VNI": lease.vni, "VtepMAC": lease.vtep_mac_v6}
    return json.dumps(value, separators=(",", ":"))


def node_key(
    name: str, what: str, tail: str = "", v6: bool = False
) -> tuple[IPv4Network, IPv4Address | IPv6Address, str]:
    """A key name `<subnet-key>/<ip>` (with `tail`: `<subnet-key>/<ip>/<tail>`) as its parts;
    `what` names the key's kind in the error. With `v6`, `<ip>` may be an IPv6 address too
    (written as Python writes it: one key per address)."""
    parts = name.split("/")
    if len(parts) != (3 if tail else 2):
        shape = f"<subnet-key>/<ip>{'/' + tail if tail else ''}"
        raise _Invalid(Reason.BAD_KEY, f"{what} key name {name!r} is not {shape}")
    try:
        ip = ip_address(parts[1]) if v6 and ":" in parts[1] else IPv4Address(parts[1])
        subnet = parse_subnet_name(parts[0])
    except (ValueError, AddressValueError) as exc:
        raise _Invalid(Reason.BAD_KEY, f"{what} key name {name!r}: {exc}") from exc
    if str(ip) != parts[1]:
        raise _Invalid(Reason.BAD_KEY, f"{what} key name {name!r}: write {parts[1]} as {ip}")
    return subnet, ip, parts[2] if tail else ""


def _endpoint(name: str, value: bytes | str, leases: Mapping[IPv4Network, Lease]) -> Endpoint:
    node_subnet, ip, _ = node_key(name, "endpoint")
    lease = leases.get(node_subnet)
    if lease is None:
        raise _Invalid(Reason.ORPHAN, f"no valid lease for node subnet {node_subnet}")
    if ip not in node_subnet or ip in (
        node_subnet.network_address,
        lease.gateway,
        node_subnet.broadcast_address,
    ):
        raise _Invalid(
            Reason.BAD_IP, f"{ip} is not a pod address of {node_subnet} (gateway {lease.gateway})"
        )
    obj = _object(value)
    if _field(obj, "IP", str) != str(ip):
        raise _Invalid(Reason.BAD_IP, f"IP {obj['IP']!r} differs from the key's {ip}")
    try:
        mac = normalize_mac(_field(obj, "MAC", str))
    except ValueError as exc:
        raise _Invalid(Reason.BAD_MAC, f"MAC: {exc}") from exc
    ofport = _field(obj, "OFPort", int)
    if not 1 <= ofport <= MAX_OFPORT:
        raise _Invalid(Reason.BAD_OFPORT, f"OFPort {ofport} is not an OpenFlow port number")
    port_name = obj.get("Port", "")
    if not isinstance(port_name, str):
        raise _Invalid(Reason.WRONG_TYPE, f"Port has the wrong type: {json.dumps(port_name)}")
    pod = obj.get("Pod")
    if pod is not None:
        if not isinstance(pod, dict):
            raise _Invalid(Reason.WRONG_TYPE, f"Pod has the wrong type: {json.dumps(pod)[:60]}")
        try:
            pod = pod_identity_from_json(pod)
        except PolicyInvalid as exc:
            raise _Invalid(Reason.BAD_POD, str(exc)) from exc
    return Endpoint(node_subnet=node_subnet, ip=ip, mac=mac, ofport=ofport, port_name=port_name,
                    pod=pod, ipv6=_endpoint_ipv6(obj, lease))  # fmt: skip


def _endpoint_ipv6(obj: dict[str, Any], lease: Lease) -> IPv6Address | None:
    """A dual-stack pod's `IPv6`: a pod address of its node's IPv6 subnet, or absent (also
    when the node's lease has no IPv6 half any more: its IPv4 is judged alone)."""
    raw, six = obj.get("IPv6"), lease.ipv6_subnet
    if raw is None or six is None:
        return None
    try:
        ip = IPv6Address(_field(obj, "IPv6", str))
    except (ValueError, AddressValueError) as exc:
        raise _Invalid(Reason.BAD_IP, f"IPv6 {raw!r}: {exc}") from exc
    if ip not in six or ip in (six.network_address, six.network_address + 1):
        raise _Invalid(Reason.BAD_IP, f"IPv6 {ip} is not a pod address of the node's IPv6 "
                                      f"subnet {six}")  # fmt: skip
    return ip


def check_endpoint(
    key: str,
    name: str,
    value: bytes | str,
    leases: Mapping[IPv4Network, Lease],
    *,
    mod_revision: int = 0,
) -> Endpoint | Rejection:
    """Validate one `<prefix>/vxflow/endpoints/<name>` entry; `leases` are the valid ones."""
    try:
        return _endpoint(name, value, leases)
    except _Invalid as bad:
        return Rejection(KeyKind.ENDPOINT, key, bad.reason, bad.detail, mod_revision)


def endpoint_to_json(ep: Endpoint) -> str:
    value: dict[str, Any] = {"IP": str(ep.ip), "MAC": ep.mac, "OFPort": ep.ofport,
                             "Port": ep.port_name}  # fmt: skip
    if ep.pod is not None:
        value["Pod"] = ep.pod.to_dict()
    if ep.ipv6 is not None:
        value["IPv6"] = str(ep.ipv6)
    return json.dumps(value, separators=(",", ":"))


def endpoint_name(ep: Endpoint) -> str:
    """The endpoint's key name below `<prefix>/vxflow/endpoints/`."""
    return f"{subnet_key(ep.node_subnet)}/{ep.ip}"
