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
from ipaddress import AddressValueError, IPv4Address, IPv4Network
from typing import Any

from leases.config import MAX_VNI
from leases.keys import KeyKind
from leases.model import Endpoint, Lease, NetworkConfig, subnet_key

MAX_VALUE_BYTES = 4096  # a flannel lease value is ~130 bytes; anything huge is not one
MAX_OFPORT = 0xFFFFFEFF  # OpenFlow's last physical port number (OFPP_MAX)

_SUBNET_NAME = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})$")
# Canonical dotted quads (no leading zeros, octets <= 255), as ipaddress accepts them:
# a match is parsed with int math; anything else takes ipaddress's path and its errors.
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_CANONICAL_SUBNET_NAME = re.compile(rf"{_QUAD.pattern}-(3[0-2]|[12]?\d)")
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
        if "&" in name:
            raise ValueError(f"dual-stack key {name!r} is not supported (IPv4 only)")
        raise ValueError(f"key name {name!r} is not <a.b.c.d>-<prefixlen>")
    try:
        return IPv4Network(f"{m.group(1)}/{m.group(2)}")
    except (AddressValueError, ValueError) as exc:
        raise ValueError(f"key name {name!r} is not a subnet: {exc}") from exc


def _within(address: int, network: IPv4Network) -> bool:
    return address & int(network.netmask) == int(network.network_address)


def public_ip_problem(ip: IPv4Address, config: NetworkConfig) -> str | None:
    """Why `ip` cannot be a node's PublicIP (underlay VTEP address), or None if it can.

    Not unspecified, multicast, loopback, link-local or reserved (ipaddress's
    `is_*` ranges for IPv4), checked as integer ranges: this runs once per lease.
    """
    n = int(ip)
    if not n or n >> 28 >= 0xE or n >> 24 == 127 or n >> 16 == 0xA9FE:
        return f"PublicIP {ip} is not a unicast underlay address"
    if _within(n, config.network):
        return f"PublicIP {ip} is inside the overlay Network {config.network}"
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


def _subnet(name: str, config: NetworkConfig) -> IPv4Network:
    try:
        subnet = parse_subnet_name(name)
    except ValueError as exc:
        raise _Invalid(Reason.BAD_KEY, str(exc)) from exc
    network = config.network
    if subnet.prefixlen < network.prefixlen or not _within(int(subnet.network_address), network):
        raise _Invalid(
            Reason.OUTSIDE_NETWORK, f"subnet {subnet} is outside Network {config.network}"
        )
    if subnet.prefixlen != config.subnet_len:
        raise _Invalid(
            Reason.WRONG_LENGTH, f"subnet {subnet} is not a /{config.subnet_len} (SubnetLen)"
        )
    return subnet


def _public_ip(obj: dict[str, Any], config: NetworkConfig) -> IPv4Address:
    raw = _field(obj, "PublicIP", str)
    try:
        ip = parse_ipv4(raw)
    except AddressValueError as exc:
        raise _Invalid(Reason.BAD_PUBLIC_IP, f"PublicIP {raw!r} is not an IPv4 address") from exc
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


def _lease(
    name: str,
    value: bytes | str,
    config: NetworkConfig,
    etcd_lease_id: int | None,
    mod_revision: int,
) -> Lease:
    subnet = _subnet(name, config)
    obj = _object(value)
    public_ip = _public_ip(obj, config)
    backend_type = _field(obj, "BackendType", str)
    if backend_type != "vxlan":
        raise _Invalid(Reason.BAD_BACKEND, f'BackendType {backend_type!r} is not "vxlan"')
    data = _field(obj, "BackendData", dict)
    vni = data.get("VNI", config.backend.vni)  # flannel before 0.10 wrote no VNI
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= MAX_VNI:
        raise _Invalid(Reason.BAD_VNI, f"BackendData.VNI {json.dumps(vni)} is not a VNI")
    if vni != config.backend.vni:
        raise _Invalid(
            Reason.BAD_VNI, f"BackendData.VNI {vni} differs from the config's {config.backend.vni}"
        )
    try:
        mac = normalize_mac(_field(data, "VtepMAC", str))
    except ValueError as exc:
        raise _Invalid(Reason.BAD_MAC, f"BackendData.VtepMAC: {exc}") from exc
    extra = tuple(sorted((k, _freeze(v)) for k, v in data.items() if k not in ("VNI", "VtepMAC")))
    return Lease(
        subnet=subnet,
        public_ip=public_ip,
        vni=vni,
        vtep_mac=mac,
        backend_type=backend_type,
        backend_data_extra=extra,
        etcd_lease_id=etcd_lease_id,
        mod_revision=mod_revision,
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


def resolve_conflicts(leases: Mapping[str, Lease]) -> tuple[dict[str, Lease], list[Rejection]]:
    """Drop leases that overlap another or share its PublicIP.

    Deterministic, independent of the order of events: the lease with the
    lowest subnet wins. (Valid leases all have SubnetLen, so overlaps only
    arise from entries validated against different configs; kept as a guard.)
    """
    if len(leases) == 1:  # the usual case: one lease per PublicIP
        return dict(leases), []
    kept: dict[str, Lease] = {}
    rejected: list[Rejection] = []
    ordered = sorted(
        leases.items(), key=lambda kv: (kv[1].subnet.network_address, kv[1].subnet.prefixlen)
    )
    last: tuple[str, Lease] | None = None  # kept lease reaching furthest up
    holder: dict[IPv4Address, str] = {}
    for key, lease in ordered:
        if last and lease.subnet.network_address <= last[1].subnet.broadcast_address:
            rejected.append(
                Rejection(
                    KeyKind.LEASE,
                    key,
                    Reason.OVERLAP,
                    f"subnet {lease.subnet} overlaps {last[1].subnet} ({last[0]})",
                    lease.mod_revision,
                )
            )
            continue
        if lease.public_ip in holder:
            rejected.append(
                Rejection(
                    KeyKind.LEASE,
                    key,
                    Reason.DUPLICATE_PUBLIC_IP,
                    f"PublicIP {lease.public_ip} already holds {holder[lease.public_ip]}",
                    lease.mod_revision,
                )
            )
            continue
        holder[lease.public_ip] = key
        kept[key] = lease
        if last is None or lease.subnet.broadcast_address > last[1].subnet.broadcast_address:
            last = (key, lease)
    return kept, rejected


def lease_to_json(lease: Lease) -> str:
    """The lease's etcd value exactly as flannel's vxlan backend writes it.

    Go's json.Marshal of flannel's LeaseAttrs: compact, fields in struct order,
    `PublicIPv6` null on an IPv4-only node, BackendV6Data omitted; vxflow's
    extras only inside BackendData, after VNI and VtepMAC.
    """
    data: dict[str, Any] = {"VNI": lease.vni, "VtepMAC": lease.vtep_mac}
    for k, v in lease.backend_data_extra:
        data[k] = json.loads(v) if isinstance(v, RawJSON) else v
    value = {
        "PublicIP": str(lease.public_ip),
        "PublicIPv6": None,
        "BackendType": lease.backend_type,
        "BackendData": data,
    }
    return json.dumps(value, separators=(",", ":"))


def _endpoint(name: str, value: bytes | str, leases: Mapping[IPv4Network, Lease]) -> Endpoint:
    parts = name.split("/")
    if len(parts) != 2:
        raise _Invalid(Reason.BAD_KEY, f"endpoint key name {name!r} is not <subnet-key>/<ip>")
    try:
        node_subnet = parse_subnet_name(parts[0])
        ip = IPv4Address(parts[1])
    except (ValueError, AddressValueError) as exc:
        raise _Invalid(Reason.BAD_KEY, f"endpoint key name {name!r}: {exc}") from exc
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
    return Endpoint(node_subnet=node_subnet, ip=ip, mac=mac, ofport=ofport, port_name=port_name)


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
    return json.dumps(
        {"IP": str(ep.ip), "MAC": ep.mac, "OFPort": ep.ofport, "Port": ep.port_name},
        separators=(",", ":"),
    )


def endpoint_name(ep: Endpoint) -> str:
    """The endpoint's key name below `<prefix>/vxflow/endpoints/`."""
    return f"{subnet_key(ep.node_subnet)}/{ep.ip}"
