"""`vxflow services ...`: virtual services load-balanced in the flows, and their range."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from leases.cli_options import echo_table, echo_total, etcd_options, open_registry, operator_errors
from leases.errors import ServiceRejected
from leases.health import split_backends
from leases.keys import KeyKind
from leases.model import Service
from leases.services import NETWORK_KEYS, service_to_dict, services_from_input

EXAMPLE = """\b
HealthCheck (optional): each node's agent checks the backends on its node,
  Type "TCP" (the connection is accepted) or "HTTP" (GET Path answers
  200-399); Port 1-65535 (required), Path (HTTP only, default "/"),
  PeriodSeconds (default 10), TimeoutSeconds (1), FailureThreshold (3),
  SuccessThreshold (1), as kubelet's readiness probe. An unready backend
  leaves the service until it passes again; one not judged yet serves.

\b
Example FILE (one object, or a list of them):
  {"Name": "web", "VIP": "10.96.0.10",
   "Ports": [{"Port": 80, "Protocol": "TCP", "TargetPort": 8080}],
   "Backends": [{"IP": "198.19.1.254", "Weight": 2}, {"IP": "198.19.2.254"}],
   "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 600,
   "HealthCheck": {"Type": "HTTP", "Port": 8080, "Path": "/healthz",
                   "PeriodSeconds": 5, "FailureThreshold": 2}}
"""


@click.group()
def services() -> None:
    """Virtual services: a VIP:port load-balanced over backends in every node's flows."""


@services.command("network")
@click.argument("cidr", required=False)
@etcd_options
@operator_errors
def network(cidr: str | None, **etcd: Any) -> None:
    """Show or set the ServiceNetwork: the range VIPs come from (<prefix>/vxflow/config).

    It must lie outside the overlay Network and be a /12 to /30; its last
    address is the source pods see on connections to their own service.
    Every address of it is taken from the pods' reach outside the cluster, so
    use a range reserved for private use (e.g. 10.96.0.0/16): a public one is
    stored with a warning.

    An IPv6 CIDR (dual-stack network config) sets the IPv6ServiceNetwork
    instead, the range of IPv6 VIPs: a /108 to /126 outside the IPv6Network,
    e.g. fd00:96::/108. Each family keeps its own range.
    """
    with open_registry(**etcd) as registry:
        if cidr is None:
            vx = registry.get_vxflow_config(registry.get_config())
            nets = [str(n) for n in (vx.service_network, vx.service_network6) if n]
            click.echo("\n".join(nets) or "(none: no services)")
            return
        vx = registry.set_service_network(cidr)
        key = registry.keys.vxflow_config
    six = ":" in cidr
    net = vx.service_network6 if six else vx.service_network
    click.echo(f"wrote {key}: {NETWORK_KEYS[6 if six else 4]} {net}")
    if net is not None and net.is_global:
        click.echo(f"warning: {net} is public address space: pods can no "
                   "longer reach those addresses outside the cluster (what no service uses "
                   "is dropped); a range reserved for private use, such as 10.96.0.0/16, "
                   "would not take any", err=True)  # fmt: skip


@services.command("set", epilog=EXAMPLE)
@click.argument("file", type=click.File("rb"))
@etcd_options
@operator_errors
def set_services(file: IO[bytes], **etcd: Any) -> None:
    """Validate and store the service(s) in FILE (JSON; - for stdin), each under
    <prefix>/vxflow/services/<Name>, replacing a service of that name.

    A list is all or nothing: if any service in it is refused, each refusal is
    printed and none is written (exit status 1); otherwise all are written in
    one etcd transaction.
    """
    try:
        items = services_from_input(file.read())
    except ValueError as exc:
        raise click.ClickException(f"{getattr(file, 'name', '-')}: {exc}") from exc
    with open_registry(**etcd) as registry:
        try:
            written = registry.put_services(items)
        except ServiceRejected as exc:
            problems = str(exc).splitlines()
            if len(items) == 1:
                raise click.ClickException(problems[0]) from exc
            for line in problems:
                click.echo(f"rejected {line}", err=True)
            raise click.ClickException(f"{len(problems)} of {len(items)} service(s) rejected: "
                                       "none written") from exc  # fmt: skip
        for svc in written:
            click.echo(f"wrote {registry.keys.service(svc.name)}: {_summary(svc)}")


def _summary(svc: Service) -> str:
    ports = ",".join(f"{p.port}/{p.protocol}->{p.target_port}" for p in svc.ports)
    affinity = f", ClientIP affinity {svc.affinity_timeout}s" if svc.affinity_timeout else ""
    check = f", health check {_check(svc)}" if svc.health_check else ""
    return f"VIP {svc.vip} ports {ports}, {len(svc.backends)} backend(s){affinity}{check}"


def _check(svc: Service) -> str:
    """`HTTP 8080/healthz every 5s (2 failures, 1 success)`; "-" without a check."""
    c = svc.health_check
    if c is None:
        return "-"
    return (f"{c.type} {c.port}{c.path} every {c.period}s ({c.failure_threshold} failures, "
            f"{c.success_threshold} success{'es' if c.success_threshold > 1 else ''})")  # fmt: skip


@services.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people, json for scripts.")  # fmt: skip
@etcd_options
@operator_errors
def list_services(output: str, **etcd: Any) -> None:
    """List valid services with their backends, ready or not by their health check;
    rejected ones with their reasons.

    READY counts the backends that take new connections by the health checks'
    verdicts (`vxflow status` also leaves out those on a DOWN node); an unready
    backend is marked (unready). A service without a ready backend drops every
    connection, as one without backends.
    """
    with open_registry(**etcd) as registry:
        snap = registry.snapshot(report=False)  # listed below, not logged
        registry.require_config(snap)
    rejected = snap.rejected_of(KeyKind.SERVICE, KeyKind.VXFLOW_CONFIG)
    unready = snap.unready()
    if output == "json":
        services = []
        for s in snap.services:
            ready, out = split_backends(s, unready)
            services.append({**service_to_dict(s), "ReadyBackends": [str(ip) for ip in ready],
                             "UnreadyBackends": [str(ip) for ip in out]})  # fmt: skip
        six = snap.vxflow.service_network6
        doc: dict[str, Any] = {
            "revision": snap.revision,
            "ServiceNetwork": str(snap.vxflow.service_network or ""),
            **({NETWORK_KEYS[6]: str(six)} if six else {}),
            "services": services,
            "rejected": [r.to_dict() for r in rejected],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    lines = [("NAME", "VIP", "PORTS", "BACKENDS", "READY", "AFFINITY", "CHECK")]
    for s in snap.services:
        ready, out = split_backends(s, unready)
        lines.append((
            s.name, str(s.vip),
            ",".join(f"{p.port}/{p.protocol}->{p.target_port}" for p in s.ports),
            ",".join(f"{b.ip}" + (f"*{b.weight}" if b.weight != 1 else "")
                     + ("(unready)" if b.ip in out else "") for b in s.backends)
            or "(none: dropped)",
            f"{len(ready)}/{len(s.backends)}" + (" (none ready: dropped)"
                                                 if s.backends and not ready else ""),
            f"ClientIP {s.affinity_timeout}s" if s.affinity_timeout else "-",
            _check(s),
        ))  # fmt: skip
    echo_table(lines)
    network = snap.vxflow.service_network or "none"
    if snap.vxflow.service_network6:
        network = f"{network} and IPv6ServiceNetwork {snap.vxflow.service_network6}"
    echo_total(f"{len(snap.services)} service(s) in ServiceNetwork {network} at revision "
                 f"{snap.revision}", rejected)  # fmt: skip


@services.command("rm")
@click.argument("name")
@etcd_options
@operator_errors
def remove(name: str, **etcd: Any) -> None:
    """Remove the service NAME (its flows and groups leave every switch)."""
    with open_registry(**etcd) as registry:
        key = registry.keys.service(name)
        if not registry.delete_service(name):
            raise click.ClickException(f"no service at {key}")
    click.echo(f"removed {key}")
