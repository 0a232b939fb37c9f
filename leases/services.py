"""Virtual services and vxflow's own config: validation and JSON values (pure).

    <prefix>/vxflow/config          {"ServiceNetwork": "10.96.0.0/16",
                                     "IPv6ServiceNetwork": "fd00:96::/108"}
    <prefix>/vxflow/services/<name> {"Name": name, "VIP": ip,
                                     "Ports": [{"Port", "Protocol", "TargetPort"}],
                                     "Backends": [{"IP", "Weight"}],
                                     "SessionAffinity": "None" | "ClientIP",
                                     "SessionAffinityTimeout": seconds,
                                     "HealthCheck": {"Type": "TCP" | "HTTP", "Port",
                                                     "Path", "PeriodSeconds",
                                                     "TimeoutSeconds", "FailureThreshold",
                                                     "SuccessThreshold"}}

Like leases and endpoints, every value is input from the network: a service
either becomes a `Service` or a `Rejection` naming the key and the reason,
and only accepted services ever yield a flow. Two services claiming one VIP
are resolved deterministically (the older key keeps it), so every controller
replica programs the same one.

Each family has its range (as flannel's Network and IPv6Network): a service's VIP lies
in its family's, and its backends are pods of that family's overlay. An IPv6 service
needs a dual-stack network config (EnableIPv6).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from hashlib import blake2b
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from itertools import pairwise
from typing import Any

from leases.config import ConfigError
from leases.controllers import target_ip
from leases.keys import KV, KeyKind
from leases.model import (
    Backend,
    HealthCheck,
    Lease,
    Member,
    NetworkConfig,
    Service,
    ServicePort,
    VxflowConfig,
)
from leases.validate import Reason, Rejection, _field, _Invalid, _object

MAX_SERVICE_BYTES = 64 * 1024  # a service with hundreds of backends, not more
MAX_PORTS = 256  # a port's place among its service's ports is 8 bits of its group id
MAX_BACKENDS = 512  # one OpenFlow group-mod (64 KiB) must hold a bucket per backend
MAX_WEIGHT = 0xFFFF  # an OpenFlow bucket weight is 16 bits
MAX_AFFINITY_TIMEOUT = 0xFFFF  # the learned flow's idle_timeout is 16 bits
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default for ClientIP affinity
# at most 2**20 VIPs, a VIP's offset being 20 bits of its group id: a range is a /12 to /30,
# for IPv6 a /108 to /126 (as Kubernetes bounds an IPv6 service range by /108)
VIP_BITS = 20
# Client-IP affinity: a port's link table (flows/services.py) has one of these sizes, the
# smallest with LINKS_PER_BACKEND links per backend: primes, as Maglev's permutations need
LINK_TABLES = (67, 257, 1031, 2053)
LINKS_PER_BACKEND = 4
# Every node holds every service's flows (and the controller a copy per switch): one value
# of 13 KB could otherwise compile to 657,408 flows (256 ports x 512 backends, affinity)
MAX_SERVICE_FLOWS = 16_384  # per service
MAX_SERVICES_FLOWS = 65_536  # all services together; the older keep theirs
PROTOCOLS = ("TCP", "UDP")
CHECK_TYPES = ("TCP", "HTTP")
MAX_PERIOD = 3600  # seconds, for PeriodSeconds and TimeoutSeconds
MAX_THRESHOLD = 1000  # probes in a row, for FailureThreshold and SuccessThreshold
MAX_PATH = 1024
CHECK_FIELDS = frozenset({"Type", "Port", "Path", "PeriodSeconds", "TimeoutSeconds",
                          "FailureThreshold", "SuccessThreshold"})  # fmt: skip
CHECK_DEFAULTS = {f.name: f.default for f in fields(HealthCheck)}  # kubelet's, in the model
AFFINITIES = ("None", "ClientIP")
SERVICE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_NOT_ROUTABLE = tuple(
    ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3",
                            "::/127", "::ffff:0:0/96", "fe80::/10", "ff00::/8")
)  # fmt: skip
# each family's key in <prefix>/vxflow/config, as flannel names its Network and IPv6Network
NETWORK_KEYS = {4: "ServiceNetwork", 6: "IPv6ServiceNetwork"}


class ServiceReason:
    """Reason codes of rejected services (beside `leases.validate.Reason`)."""

    NO_SERVICE_NETWORK = "no_service_network"
    BAD_VIP = "bad_vip"
    DUPLICATE_VIP = "duplicate_vip"
    BAD_PORT = "bad_port"
    BAD_PROTOCOL = "bad_protocol"
    DUPLICATE_PORT = "duplicate_port"
    BAD_BACKEND = "bad_backend"
    DUPLICATE_BACKEND = "duplicate_backend"
    BAD_WEIGHT = "bad_weight"
    BAD_AFFINITY = "bad_affinity"
    BAD_HEALTH_CHECK = "bad_health_check"
    TOO_MANY = "too_many"
    FLOW_BUDGET = "flow_budget"


def link_count(backends: int) -> int:
    """The number of links of a port with affinity and `backends` backends (at most
    MAX_BACKENDS of them)."""
    return next(n for n in LINK_TABLES if n >= LINKS_PER_BACKEND * backends)


def service_flows(svc: Service) -> int:
    """How many flows the service's ports compile to on every node (flows.services.port_flows:
    the VIP's dispatch and its new-connection flow; with affinity also a flow per backend,
    the multipath flow and one per link)."""
    per_port = 2
    if svc.backends and svc.affinity_timeout:
        per_port += len(svc.backends) + 1 + link_count(len(svc.backends))
    return per_port * len(svc.ports)


# -- vxflow's config ------------------------------------------------------------------


Underlay = Iterable[tuple[IPv4Address | IPv6Address, str]]  # what a range must not hold, named


def underlay_of(
    leases: Iterable[Lease], members: Iterable[Member]
) -> list[tuple[IPv4Address | IPv6Address, str]]:
    """The nodes' PublicIPs (and PublicIPv6s) and the controllers' addresses: every agent
    routes the ServiceNetwork into its gateway port, so a range holding one of them would
    cut every node off that node's VXLAN or that controller."""
    out: list[tuple[IPv4Address | IPv6Address, str]] = [
        (lease.public_ip, f"the PublicIP of lease {lease.subnet}") for lease in leases
    ]
    out += [(lease.public_ipv6, f"the PublicIPv6 of lease {lease.subnet}") for lease in leases
            if lease.public_ipv6 is not None]  # fmt: skip
    out += [(ip, f"the address of controller {m.id}") for m in members if (ip := target_ip(m.address))]
    return out


def overlay_of(config: NetworkConfig, version: int) -> IPv4Network | IPv6Network | None:
    """The overlay network of one family (None: the config has no IPv6)."""
    if version == 4:
        return config.network
    return config.ipv6.network if config.ipv6 is not None else None


def _network_problem(
    net: IPv4Network | IPv6Network, config: NetworkConfig | None, underlay: Underlay
) -> str | None:
    low = net.max_prefixlen - VIP_BITS
    if not low <= net.prefixlen <= net.max_prefixlen - 2:
        return f"{net} must be a /{low} to /{net.max_prefixlen - 2} (at most 2**20 virtual IPs)"
    if any(net.overlaps(bad) for bad in _NOT_ROUTABLE if bad.version == net.version):
        return f"{net} overlaps an unspecified, loopback, link-local or multicast range"
    if config is not None:
        overlay = overlay_of(config, net.version)
        if overlay is None:
            return f"{net}: IPv6 services need EnableIPv6 and an IPv6Network in the network config"
        if net.overlaps(overlay):
            name = "Network" if net.version == 4 else "IPv6Network"
            return f"{net} overlaps the overlay {name} {overlay}"
    return underlay_problem(net, underlay)


def underlay_problem(net: IPv4Network | IPv6Network, underlay: Underlay) -> str | None:
    """Why `net` cannot be the ServiceNetwork: it holds one of the `underlay` addresses."""
    for ip, what in underlay:
        if ip in net:
            return f"{net} holds {what} ({ip}): every node would route it into its gateway port"
    return None


def parse_vxflow_config(
    raw: bytes | str, config: NetworkConfig | None, underlay: Underlay = ()
) -> VxflowConfig:
    """`<prefix>/vxflow/config`; ConfigError naming the field at fault. Unknown fields are
    left alone (a newer vxflow's); `config` (flannel's, if known) bounds the service range,
    which must hold none of the `underlay` addresses."""
    try:
        obj = _object(raw)
    except _Invalid as bad:
        raise ConfigError("config", bad.detail) from None
    v4 = _service_network(obj, 4, config, underlay)
    v6 = _service_network(obj, 6, config, underlay)
    return VxflowConfig(service_network=v4, service_network6=v6)  # type: ignore[arg-type]


def _service_network(
    obj: dict[str, Any], version: int, config: NetworkConfig | None, underlay: Underlay
) -> IPv4Network | IPv6Network | None:
    """One family's range (`NETWORK_KEYS`): None when absent or empty."""
    name = NETWORK_KEYS[version]
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a CIDR string, got {json.dumps(value)}")
    cls = IPv4Network if version == 4 else IPv6Network
    try:
        net = cls(value)
    except ValueError as exc:
        raise ConfigError(name, f"not an IPv{version} CIDR without host bits: {value!r}") from exc
    problem = _network_problem(net, config, underlay)
    if problem:
        raise ConfigError(name, problem)
    return net


def check_vxflow_config(
    kv: KV, config: NetworkConfig | None, underlay: Underlay = ()
) -> VxflowConfig | Rejection:
    try:
        return parse_vxflow_config(kv.value, config, underlay)
    except ConfigError as exc:
        return Rejection(
            KeyKind.VXFLOW_CONFIG, kv.key, Reason.BAD_CONFIG, str(exc), kv.mod_revision
        )


def vxflow_config_to_json(vx: VxflowConfig) -> str:
    """(IPv6ServiceNetwork only when set: an IPv4-only config reads as before.)"""
    net = str(vx.service_network) if vx.service_network is not None else ""
    six = {NETWORK_KEYS[6]: str(vx.service_network6)} if vx.service_network6 else {}
    return json.dumps({"ServiceNetwork": net, **six}, separators=(",", ":"))


# -- services -------------------------------------------------------------------------


def service_name_problem(name: str) -> str | None:
    """Why `name` cannot name a service (None if it can)."""
    if SERVICE_NAME.fullmatch(name):
        return None
    return (
        f"service name {name!r} must be 1-253 lower-case letters, digits, '.' and '-', "
        "starting and ending with a letter or digit"
    )


def _int(
    obj: dict[str, Any], name: str, reason: str, lo: int, hi: int, default: int | None = None
) -> int:
    if default is not None and obj.get(name) is None:
        return default
    value = _field(obj, name, int)
    if not lo <= value <= hi:
        raise _Invalid(reason, f"{name} {value} is not in {lo}..{hi}")
    return value


def _ip(text: Any, what: str, reason: str) -> IPv4Address | IPv6Address:
    if not isinstance(text, str):
        raise _Invalid(Reason.WRONG_TYPE, f"{what} has the wrong type: {json.dumps(text)}")
    try:
        return ip_address(text)
    except ValueError as exc:
        raise _Invalid(reason, f"{what} {text!r} is not an IPv4 or IPv6 address") from exc


def _port(obj: Any) -> ServicePort:
    if not isinstance(obj, dict):
        raise _Invalid(Reason.WRONG_TYPE, f"a port is not an object: {json.dumps(obj)}")
    port = _int(obj, "Port", ServiceReason.BAD_PORT, 1, 65535)
    protocol = obj.get("Protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise _Invalid(
            ServiceReason.BAD_PROTOCOL, f"Protocol {json.dumps(protocol)} is not TCP or UDP"
        )
    target = _int(obj, "TargetPort", ServiceReason.BAD_PORT, 1, 65535, default=port)
    return ServicePort(port, protocol, target)


def _ports(obj: dict[str, Any]) -> tuple[ServicePort, ...]:
    raw = _field(obj, "Ports", list)
    if not raw:
        raise _Invalid(ServiceReason.BAD_PORT, "Ports is empty: a service serves at least one")
    if len(raw) > MAX_PORTS:
        raise _Invalid(ServiceReason.TOO_MANY, f"{len(raw)} ports: at most {MAX_PORTS}")
    ports = sorted((_port(p) for p in raw), key=lambda p: (p.protocol, p.port))
    for a, b in pairwise(ports):
        if (a.protocol, a.port) == (b.protocol, b.port):
            raise _Invalid(
                ServiceReason.DUPLICATE_PORT, f"port {a.port}/{a.protocol} is listed twice"
            )
    return tuple(ports)


def _backend(obj: Any, network: IPv4Network | IPv6Network) -> Backend:
    """A backend in `network`, the overlay of its service's family."""
    if not isinstance(obj, dict):
        raise _Invalid(Reason.WRONG_TYPE, f"a backend is not an object: {json.dumps(obj)}")
    ip = _ip(obj.get("IP"), "backend IP", ServiceReason.BAD_BACKEND)
    if ip not in network or ip in (network.network_address, network.broadcast_address):
        raise _Invalid(
            ServiceReason.BAD_BACKEND, f"backend {ip} is not an address in the overlay {network}"
        )
    weight = _int(obj, "Weight", ServiceReason.BAD_WEIGHT, 1, MAX_WEIGHT, default=1)
    return Backend(ip, weight)


def _backends(obj: dict[str, Any], network: IPv4Network | IPv6Network) -> tuple[Backend, ...]:
    raw = obj.get("Backends")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _Invalid(Reason.WRONG_TYPE, f"Backends has the wrong type: {json.dumps(raw)}")
    if len(raw) > MAX_BACKENDS:
        raise _Invalid(ServiceReason.TOO_MANY, f"{len(raw)} backends: at most {MAX_BACKENDS}")
    backends = sorted((_backend(b, network) for b in raw), key=lambda b: int(b.ip))
    for a, b in pairwise(backends):
        if a.ip == b.ip:
            raise _Invalid(ServiceReason.DUPLICATE_BACKEND, f"backend {a.ip} is listed twice")
    keys: dict[int, IPv4Address | IPv6Address] = {}
    for b in backends:
        if (other := keys.setdefault(affinity_key(b.ip), b.ip)) != b.ip:
            raise _Invalid(ServiceReason.DUPLICATE_BACKEND, f"backends {other} and {b.ip} share "
                           "their 32-bit affinity key: give one of them another address")  # fmt: skip
    return tuple(backends)


def affinity_key(ip: IPv4Address | IPv6Address) -> int:
    """The 32 bits that name a backend in a learned affinity entry (its register): an IPv4
    address itself; an IPv6 address hashed (its low bits repeat from subnet to subnet:
    host-local numbers every node's pods alike), two backends of a service never alike."""
    if ip.version == 4:
        return int(ip)
    return int.from_bytes(blake2b(ip.packed, digest_size=4).digest(), "big")


def _affinity(obj: dict[str, Any]) -> int:
    kind = obj.get("SessionAffinity", "None")
    if kind not in AFFINITIES:
        raise _Invalid(
            ServiceReason.BAD_AFFINITY,
            f'SessionAffinity {json.dumps(kind)} is not "None" or "ClientIP"',
        )
    if kind == "None":
        if obj.get("SessionAffinityTimeout") is not None:
            raise _Invalid(
                ServiceReason.BAD_AFFINITY,
                'SessionAffinityTimeout needs SessionAffinity "ClientIP"',
            )
        return 0
    return _int(obj, "SessionAffinityTimeout", ServiceReason.BAD_AFFINITY, 1,
                MAX_AFFINITY_TIMEOUT, default=DEFAULT_AFFINITY_TIMEOUT)  # fmt: skip


def _check_path(obj: dict[str, Any], kind: str) -> str:
    """HTTP's Path (default "/"): an absolute path of printable ASCII without spaces, so the
    request line the agent writes is exactly one; TCP has none."""
    raw = obj.get("Path")
    if kind == "TCP":
        if raw is not None:
            raise _Invalid(ServiceReason.BAD_HEALTH_CHECK, 'HealthCheck Path is for Type "HTTP" only')
        return ""
    if raw is None:
        return "/"
    if not isinstance(raw, str):
        raise _Invalid(Reason.WRONG_TYPE, f"HealthCheck Path has the wrong type: {json.dumps(raw)}")
    if not (raw.startswith("/") and len(raw) <= MAX_PATH and raw.isascii() and raw.isprintable()
            and " " not in raw):  # fmt: skip
        raise _Invalid(ServiceReason.BAD_HEALTH_CHECK, f"HealthCheck Path {json.dumps(raw)[:80]} "
                       f"is not a path of 1-{MAX_PATH} printable ASCII characters without "
                       "spaces starting with /")  # fmt: skip
    return raw


def _health_check(obj: dict[str, Any]) -> HealthCheck | None:
    """`HealthCheck`: every field checked (an unknown one too: a misspelt threshold must
    not quietly become its default), kubelet's defaults for those left out."""
    raw = obj.get("HealthCheck")
    if raw is None:
        return None
    reason = ServiceReason.BAD_HEALTH_CHECK
    if not isinstance(raw, dict):
        raise _Invalid(Reason.WRONG_TYPE, f"HealthCheck is not an object: {json.dumps(raw)[:80]}")
    if unknown := sorted(set(raw) - CHECK_FIELDS):
        raise _Invalid(reason, f"HealthCheck has unknown field(s) {', '.join(unknown)} "
                       f"(known: {', '.join(sorted(CHECK_FIELDS))})")  # fmt: skip
    kind = raw.get("Type")
    if kind not in CHECK_TYPES:
        raise _Invalid(reason, f'HealthCheck Type {json.dumps(kind)} is not "TCP" or "HTTP"')
    d = CHECK_DEFAULTS

    def number(name: str, hi: int, default: int | None = None) -> int:
        try:
            return _int(raw, name, reason, 1, hi, default)
        except _Invalid as bad:
            raise _Invalid(bad.reason, f"HealthCheck {bad.detail}") from None

    return HealthCheck(
        type=kind,
        port=number("Port", 65535),
        path=_check_path(raw, kind),
        period=number("PeriodSeconds", MAX_PERIOD, d["period"]),
        timeout=number("TimeoutSeconds", MAX_PERIOD, d["timeout"]),
        failure_threshold=number("FailureThreshold", MAX_THRESHOLD, d["failure_threshold"]),
        success_threshold=number("SuccessThreshold", MAX_THRESHOLD, d["success_threshold"]),
    )


def _vip(
    obj: dict[str, Any], config: NetworkConfig, vx: VxflowConfig
) -> tuple[IPv4Address | IPv6Address, IPv4Network | IPv6Network]:
    """The VIP, and the overlay of its family (where its backends must be)."""
    vip = _ip(_field(obj, "VIP", str), "VIP", ServiceReason.BAD_VIP)
    net, key, overlay = vx.network_of(vip), NETWORK_KEYS[vip.version], overlay_of(config, vip.version)
    if net is None:
        raise _Invalid(ServiceReason.NO_SERVICE_NETWORK, f"VIP {vip}: no {key} in the vxflow config: "
                       "set one with `vxflow services network CIDR`")  # fmt: skip
    if overlay is None:
        raise _Invalid(ServiceReason.BAD_VIP, f"VIP {vip}: the network config has no IPv6 overlay "
                       "(EnableIPv6) for its backends")  # fmt: skip
    if vip in overlay:
        raise _Invalid(ServiceReason.BAD_VIP, f"VIP {vip} lies inside the overlay {overlay}")
    if vip not in net:
        raise _Invalid(ServiceReason.BAD_VIP, f"VIP {vip} is outside the {key} {net}")
    if vip in (net.network_address, net.broadcast_address):
        raise _Invalid(
            ServiceReason.BAD_VIP,
            f"VIP {vip} is the {key}'s network or last address (the hairpin source)",
        )
    return vip, overlay


def _service(name: str, kv: KV, config: NetworkConfig, vx: VxflowConfig) -> Service:
    problem = service_name_problem(name)
    if problem:
        raise _Invalid(Reason.BAD_KEY, problem)
    obj = _object(kv.value, MAX_SERVICE_BYTES)
    if _field(obj, "Name", str) != name:
        raise _Invalid(Reason.BAD_KEY, f"Name {obj['Name']!r} differs from the key's {name!r}")
    if vx.service_network is None and vx.service_network6 is None:
        raise _Invalid(
            ServiceReason.NO_SERVICE_NETWORK,
            "no ServiceNetwork in the vxflow config: set one with `vxflow services network CIDR`",
        )
    vip, overlay = _vip(obj, config, vx)
    svc = Service(
        name=name,
        vip=vip,
        ports=_ports(obj),
        backends=_backends(obj, overlay),
        affinity_timeout=_affinity(obj),
        create_revision=kv.create_revision,
        health_check=_health_check(obj),
    )
    if (flows := service_flows(svc)) > MAX_SERVICE_FLOWS:
        raise _Invalid(ServiceReason.FLOW_BUDGET, f"compiles to {flows:,} flows on every node, "
                       f"more than the {MAX_SERVICE_FLOWS:,} a service may have")  # fmt: skip
    return svc


def check_service(
    kv: KV, name: str, config: NetworkConfig, vx: VxflowConfig
) -> Service | Rejection:
    """Validate one `<prefix>/vxflow/services/<name>` entry on its own."""
    try:
        return _service(name, kv, config, vx)
    except _Invalid as bad:
        return Rejection(KeyKind.SERVICE, kv.key, bad.reason, bad.detail, kv.mod_revision)


def resolve_services(
    services: Mapping[str, Service], mod_revisions: Mapping[str, int] | None = None
) -> tuple[dict[str, Service], list[Rejection]]:
    """Services (by key) that keep their VIP and fit the flow budget, and a rejection for
    each that does not.

    The older key (lower create_revision, then lower name) keeps a contested VIP and its
    share of MAX_SERVICES_FLOWS, so a new service never takes traffic or flows from one
    already serving, and every replica decides alike whatever the order it saw them in.
    """
    holder: dict[IPv4Address | IPv6Address, tuple[str, Service]] = {}
    rejected: list[Rejection] = []
    budget = MAX_SERVICES_FLOWS
    for key, svc in sorted(services.items(), key=lambda kv: (kv[1].create_revision, kv[1].name)):
        held = holder.get(svc.vip)
        if held is not None:
            reason = ServiceReason.DUPLICATE_VIP
            detail = f"VIP {svc.vip} belongs to service {held[1].name} (created earlier)"
        elif (flows := service_flows(svc)) > budget:
            reason = ServiceReason.FLOW_BUDGET
            detail = (f"its {flows:,} flows do not fit the {budget:,} left of the services' "
                      f"{MAX_SERVICES_FLOWS:,} per node (older services hold the rest)")  # fmt: skip
        else:
            holder[svc.vip] = (key, svc)
            budget -= flows
            continue
        rejected.append(
            Rejection(KeyKind.SERVICE, key, reason, detail, (mod_revisions or {}).get(key, 0))
        )
    return {key: svc for key, svc in holder.values()}, rejected


def _affinity_json(svc: Service) -> dict[str, Any]:
    if not svc.affinity_timeout:
        return {"SessionAffinity": "None"}
    return {"SessionAffinity": "ClientIP", "SessionAffinityTimeout": svc.affinity_timeout}


def health_check_to_dict(check: HealthCheck) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": check.type, "Port": check.port}
    if check.path:
        out["Path"] = check.path
    return out | {"PeriodSeconds": check.period, "TimeoutSeconds": check.timeout,
                  "FailureThreshold": check.failure_threshold,
                  "SuccessThreshold": check.success_threshold}  # fmt: skip


def service_to_dict(svc: Service) -> dict[str, Any]:
    check = {"HealthCheck": health_check_to_dict(svc.health_check)} if svc.health_check else {}
    return {
        "Name": svc.name,
        "VIP": str(svc.vip),
        "Ports": [
            {"Port": p.port, "Protocol": p.protocol, "TargetPort": p.target_port} for p in svc.ports
        ],
        "Backends": [{"IP": str(b.ip), "Weight": b.weight} for b in svc.backends],
        **_affinity_json(svc),
        **check,
    }


def service_to_json(svc: Service) -> str:
    """The canonical value vxflow writes (ports and backends in their sorted order)."""
    return json.dumps(service_to_dict(svc), separators=(",", ":"))


def services_from_input(raw: bytes | str) -> list[dict[str, Any]]:
    """What `vxflow services set` reads: one service object or a list of them."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    items: Iterable[Any] = doc if isinstance(doc, list) else [doc]
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"a service must be a JSON object, got {json.dumps(item)[:60]}")
        name = item.get("Name")
        if not isinstance(name, str):
            raise ValueError(f"a service has no Name: {json.dumps(item)[:60]}")
        out.append(item)
    return out
