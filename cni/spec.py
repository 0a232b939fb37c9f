"""The CNI protocol, pure: versions, the invocation environment, errors and results.

Spec 1.0.0 (ADD, DEL, CHECK, VERSION) and 1.1.0 (STATUS, GC). Results are
rendered in the version the configuration asks for: 0.3.x and 0.4.0 carry
`"version": "4"` on each IP, 1.0.0 drops it, 1.1.0 may add an interface's
`mtu`. Podman 4's CNI backend writes 0.4.0 configurations; libcni reads up to
1.0.0. 0.1.0 and 0.2.0 (a different result shape) are not supported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# What each command cannot do without (spec section 2).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
# Which spec version introduced a command (a configuration older than that cannot use it).
SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_IFNAME_MAX = 15  # IFNAMSIZ - 1


class ErrorCode(IntEnum):
    """The spec's well-known codes (0-99) and vxflow's own (100+)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    ALREADY_EXISTS = 100  # the interface or host port of this attachment exists already
    SETUP_FAILED = 101  # a kernel or OVSDB operation failed (details say which)
    CHECK_FAILED = 102  # CHECK found the attachment missing or different
    ADDRESS_CLAIMED = 103  # IPAM's address is claimed by another port of the bridge already


class CniError(Exception):
    """An error the plugin reports as the spec's error JSON (and a non-zero exit)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code, self.msg, self.details = int(code), msg, details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_key(version: str) -> tuple[int, int, int]:
    """A semantic version "X.Y.Z" as a comparable tuple (CniError 1 if it is not one)."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if m is None:
        raise CniError(ErrorCode.INCOMPATIBLE_VERSION, "invalid CNI version", repr(version))
    return int(m[1]), int(m[2]), int(m[3])


def check_version(version: str, command: str) -> None:
    """Raise CniError 1 unless `version` is supported and new enough for `command`."""
    if version not in SUPPORTED_VERSIONS:
        version_key(version)  # an unparsable string gets its own message
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    since = SINCE.get(command)
    if since and version_key(version) < version_key(since):
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"{command} needs cniVersion {since} or later, config is {version}",
        )


def version_result(request: bytes) -> dict[str, Any]:
    """The VERSION answer: the asked version echoed (ours if none) and every supported one."""
    asked = LATEST
    if request.strip():
        try:
            asked = str(json.loads(request).get("cniVersion") or LATEST)
        except (ValueError, AttributeError) as exc:
            raise CniError(
                ErrorCode.DECODING_FAILURE, "cannot decode VERSION input", str(exc)
            ) from exc
    return {"cniVersion": asked, "supportedVersions": list(SUPPORTED_VERSIONS)}


# -- the environment -----------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    """One plugin call's environment (spec section 2, "Parameters")."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()  # CNI_ARGS "K=V;K=V"
    path: tuple[str, ...] = ()  # CNI_PATH, where delegated plugins are looked up
    # CNI_NETNS as this process opens it when that differs from the path: the agent's CNI
    # server uses the caller's open descriptor (/proc/PID/fd/N), as it may not see the
    # caller's mounts. Results and records always name CNI_NETNS itself.
    netns_handle: str = ""

    @property
    def netns_here(self) -> str:
        return self.netns_handle or self.netns


def _valid_ifname(name: str) -> bool:
    return (
        0 < len(name) <= _IFNAME_MAX
        and name not in (".", "..")
        and not any(c in name for c in "/:") and not any(c.isspace() for c in name)
    )  # fmt: skip


def parse_invocation(environ: Mapping[str, str], netns_handle: str = "") -> Invocation:
    """Read and validate CNI_* variables; CniError 4 (or 3) names what is wrong."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            ErrorCode.INVALID_ENVIRONMENT,
            "invalid CNI_COMMAND",
            f"CNI_COMMAND={command!r}; expected one of {', '.join(COMMANDS)}",
        )
    missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(
            ErrorCode.INVALID_ENVIRONMENT, f"required env variables [{', '.join(missing)}] missing"
        )
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.match(container_id):
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "invalid characters in CNI_CONTAINERID",
                       container_id)  # fmt: skip
    netns = environ.get("CNI_NETNS", "")
    if any(c.isspace() for c in netns):
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "invalid CNI_NETNS", repr(netns))
    # ADD and CHECK enter it, and the agent and `ip` would resolve a relative path
    # differently (libcni's VERSION probe sends "dummy": no other command uses it)
    if command in ("ADD", "CHECK") and not netns.startswith("/"):
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "CNI_NETNS must be an absolute path",
                       repr(netns))  # fmt: skip
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and not _valid_ifname(ifname):
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "invalid CNI_IFNAME", repr(ifname))
    args = []
    for item in filter(None, environ.get("CNI_ARGS", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(ErrorCode.INVALID_ENVIRONMENT, "invalid CNI_ARGS", repr(item))
        args.append((key, value))
    return Invocation(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=tuple(args),
        path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
        netns_handle=netns_handle,
    )


# -- results -------------------------------------------------------------------
@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the container's netns path; empty on the host
    mtu: int | None = None


@dataclass(frozen=True)
class IPConfig:
    address: IPv4Interface | IPv6Interface
    gateway: IPv4Address | IPv6Address | None = None
    interface: int | None = None  # index into Result.interfaces


@dataclass(frozen=True)
class Route:
    dst: IPv4Network | IPv6Network
    gw: IPv4Address | IPv6Address | None = None


@dataclass(frozen=True)
class Result:
    """An ADD result (or an IPAM plugin's abbreviated one: no interfaces)."""

    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)

    def after(self, prev: Result) -> Result:
        """This result appended to a previous plugin's (a chained ADD passes prevResult on)."""
        shift = len(prev.interfaces)
        ips = tuple(
            replace(ip, interface=None if ip.interface is None else ip.interface + shift)
            for ip in self.ips
        )
        return Result(
            interfaces=prev.interfaces + self.interfaces,
            ips=prev.ips + ips,
            routes=prev.routes + self.routes,
            dns=self.dns or prev.dns,
        )

    def with_interfaces(self, interfaces: tuple[Interface, ...], index: int) -> Result:
        """This (IPAM) result attached to `interfaces`, every IP on `interfaces[index]`."""
        ips = tuple(replace(ip, interface=index) for ip in self.ips)
        return replace(self, interfaces=interfaces, ips=ips)


def render_result(result: Result, cni_version: str) -> dict[str, Any]:
    """The result JSON object in the shape of `cni_version`."""
    legacy = version_key(cni_version) < (1, 0, 0)
    out: dict[str, Any] = {"cniVersion": cni_version}
    if result.interfaces:
        out["interfaces"] = []
        for iface in result.interfaces:
            item: dict[str, Any] = {"name": iface.name}
            if iface.mac:
                item["mac"] = iface.mac
            if iface.mtu is not None and version_key(cni_version) >= (1, 1, 0):
                item["mtu"] = iface.mtu
            if iface.sandbox:
                item["sandbox"] = iface.sandbox
            out["interfaces"].append(item)
    if result.ips:
        out["ips"] = []
        for ip in result.ips:
            item = {"version": str(ip.address.version)} if legacy else {}
            item["address"] = str(ip.address)
            if ip.gateway is not None:
                item["gateway"] = str(ip.gateway)
            if ip.interface is not None:
                item["interface"] = ip.interface
            out["ips"].append(item)
    if result.routes:
        out["routes"] = [
            {"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw is not None else {})}
            for r in result.routes
        ]
    if result.dns:
        out["dns"] = dict(result.dns)
    return out


_PARSERS = {
    "address": ip_address,
    "interface": ip_interface,
    "network": lambda v: ip_network(v, strict=False),  # Go's ParseCIDR accepts host bits
}


def _ip(kind: str, value: Any, what: str):
    """`value` parsed as an address, interface or network of either family (CniError 6 if
    it is none; which families a node can route, the plugin judges)."""
    try:
        return _PARSERS[kind](value)
    except (TypeError, ValueError) as exc:
        raise CniError(ErrorCode.DECODING_FAILURE, f"invalid {what}", repr(value)) from exc


def parse_result(obj: Any) -> Result:
    """A result object of any supported version (prevResult, an IPAM plugin's output)."""
    if not isinstance(obj, dict):
        raise CniError(ErrorCode.DECODING_FAILURE, "a result must be a JSON object", repr(obj))
    try:
        interfaces = tuple(
            Interface(
                name=str(i["name"]),
                mac=str(i.get("mac", "")),
                sandbox=str(i.get("sandbox", "")),
                mtu=i.get("mtu"),
            )
            for i in obj.get("interfaces") or ()
        )
        ips = tuple(
            IPConfig(
                address=_ip("interface", i["address"], "address"),
                gateway=_ip("address", i["gateway"], "gateway") if i.get("gateway") else None,
                interface=i.get("interface"),
            )
            for i in obj.get("ips") or ()
        )
        routes = tuple(
            Route(
                dst=_ip("network", r["dst"], "route destination"),
                gw=_ip("address", r["gw"], "route gateway") if r.get("gw") else None,
            )
            for r in obj.get("routes") or ()
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CniError(ErrorCode.DECODING_FAILURE, "malformed result", f"{exc!r} in {obj}") from exc
    dns = obj.get("dns") or {}
    if not isinstance(dns, dict):
        raise CniError(ErrorCode.DECODING_FAILURE, "malformed result", f"dns: {dns!r}")
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=dns)


def parse_error(obj: Any) -> CniError | None:
    """A delegated plugin's error JSON as a CniError (None if `obj` is not one)."""
    if isinstance(obj, dict) and isinstance(obj.get("code"), int) and obj["code"] > 0:
        return CniError(obj["code"], str(obj.get("msg", "")), str(obj.get("details", "")))
    return None
