"""Backends' health-check verdicts in etcd (pure): what the agents publish, what is unready.

    <prefix>/vxflow/health/<subnet-key>/<ip>/<service>
        {"IP": "10.20.3.5", "Service": "web", "Ready": false}

The agent of the node whose subnet holds the backend probes it as the service's
`HealthCheck` says (ovsdb/prober.py) and writes its verdict here, bound to the node's
subnet lease as its endpoints are (so it goes with the lease; a reservation has none);
it deletes the record when the backend or the check goes. A backend serves a service
unless a record says it is not ready: one not judged yet (a new agent, a check just
added), or on a node whose agent does not probe, is left in service, so adding a check
never takes out a backend that is fine; a verdict counts only while its service has a
HealthCheck. A record whose backend lies outside the subnet its key names is rejected
(it could only be another node's word). An IPv6 backend (of an IPv6 service) is a pod of a
dual-stack node: its key names the node's IPv4 subnet, and its verdict counts only while
that subnet's lease holds the address in its IPv6 subnet (`counts`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Network

from leases.config import IPAddress
from leases.keys import KV, KeyKind
from leases.model import Lease, Readiness, Service
from leases.services import service_name_problem
from leases.validate import Reason, Rejection, _field, _Invalid, _object, node_key


def _readiness(name: str, kv: KV) -> Readiness:
    subnet, ip, service = node_key(name, "health", "<service>", v6=True)
    if ip.version == 4 and ip not in subnet:  # (an IPv6 one: `counts`, with the lease)
        raise _Invalid(Reason.BAD_KEY, f"backend {ip} is not in the key's subnet {subnet}")
    if problem := service_name_problem(service):
        raise _Invalid(Reason.BAD_KEY, problem)
    obj = _object(kv.value)
    if _field(obj, "IP", str) != str(ip) or _field(obj, "Service", str) != service:
        raise _Invalid(Reason.BAD_KEY, f"IP {obj['IP']!r} or Service {obj['Service']!r} differs "
                       "from the key's")  # fmt: skip
    ready = obj.get("Ready")
    if not isinstance(ready, bool):
        raise _Invalid(Reason.WRONG_TYPE, f"Ready is not true or false: {json.dumps(ready)}")
    return Readiness(subnet, ip, service, ready, kv.lease)


def check_readiness(kv: KV, name: str) -> Readiness | Rejection:
    """Validate one `<prefix>/vxflow/health/<name>` entry (bound to its node's lease, or to
    none where the node holds a reservation, as its endpoints)."""
    try:
        return _readiness(name, kv)
    except _Invalid as bad:
        return Rejection(KeyKind.HEALTH, kv.key, bad.reason, bad.detail, kv.mod_revision)


def readiness_to_json(record: Readiness) -> str:
    return json.dumps({"IP": str(record.ip), "Service": record.service, "Ready": record.ready},
                      separators=(",", ":"))  # fmt: skip


def holds(lease: Lease | None, ip: IPAddress) -> bool:
    """Whether the node of `lease` holds `ip`: in its subnet, or in its IPv6 subnet."""
    if lease is None:
        return False
    subnet = lease.subnet if ip.version == 4 else lease.ipv6_subnet
    return subnet is not None and ip in subnet


def counts(record: Readiness, leases: Mapping[IPv4Network, Lease]) -> bool:
    """Whether a verdict counts: an IPv4 backend's key names its subnet (checked when read);
    an IPv6 backend's names only its node's IPv4 subnet, so its verdict counts only while
    that subnet's lease (in `leases`, by subnet) holds the address."""
    return record.ip.version == 4 or holds(leases.get(record.node_subnet), record.ip)


def unready_by_service(
    records: Iterable[Readiness], leases: Mapping[IPv4Network, Lease]
) -> dict[str, frozenset[IPAddress]]:
    """The backends each service must not send new connections to (by service name)."""
    out: dict[str, set[IPAddress]] = {}
    for r in records:
        if not r.ready and counts(r, leases):
            out.setdefault(r.service, set()).add(r.ip)
    return {name: frozenset(ips) for name, ips in out.items()}


def unready_of(
    service: Service, unready: dict[str, frozenset[IPAddress]]
) -> frozenset[IPAddress]:
    """The backends of `service` that verdicts call unready: none without a HealthCheck (a
    record left from a check since removed counts for nothing)."""
    if service.health_check is None:
        return frozenset()
    return unready.get(service.name, frozenset())


def ready_only(service: Service, unready: dict[str, frozenset[IPAddress]]) -> Service:
    """`service` without the backends verdicts call unready (itself when none is)."""
    out = unready_of(service, unready)
    if not out:
        return service
    return replace(service, backends=tuple(b for b in service.backends if b.ip not in out))


def split_backends(
    service: Service, unready: dict[str, frozenset[IPAddress]]
) -> tuple[list[IPAddress], list[IPAddress]]:
    """The service's backends as (ready, unready) by the verdicts, in the service's order."""
    out = unready_of(service, unready)
    ready = [b.ip for b in service.backends if b.ip not in out]
    return ready, [b.ip for b in service.backends if b.ip in out]
