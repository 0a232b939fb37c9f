"""`vxflow services ...`: virtual services load-balanced in the flows, and their range."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from leases.cli_options import echo_table, echo_total, etcd_options, open_registry, operator_errors
from leases.errors import ServiceRejected
from leases.keys import KeyKind
from leases.model import Service
from leases.services import service_to_dict, services_from_input

EXAMPLE = """\b
Example FILE (one object, or a list of them):
  {"Name": "web", "VIP": "10.96.0.10",
   "Ports": [{"Port": 80, "Protocol": "TCP", "TargetPort": 8080}],
   "Backends": [{"IP": "198.19.1.254", "Weight": 2}, {"IP": "198.19.2.254"}],
   "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 600}
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
    """
    with open_registry(**etcd) as registry:
        if cidr is None:
            vx = registry.get_vxflow_config(registry.get_config())
            click.echo(str(vx.service_network) if vx.service_network else "(none: no services)")
            return
        vx = registry.set_service_network(cidr)
        key = registry.keys.vxflow_config
    click.echo(f"wrote {key}: ServiceNetwork {vx.service_network}")
    if vx.service_network is not None and vx.service_network.is_global:
        click.echo(f"warning: {vx.service_network} is public address space: pods can no "
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
    return f"VIP {svc.vip} ports {ports}, {len(svc.backends)} backend(s){affinity}"


@services.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people, json for scripts.")  # fmt: skip
@etcd_options
@operator_errors
def list_services(output: str, **etcd: Any) -> None:
    """List valid services with their backends; rejected ones with their reasons."""
    with open_registry(**etcd) as registry:
        snap = registry.snapshot(report=False)  # listed below, not logged
        registry.require_config(snap)
    rejected = snap.rejected_of(KeyKind.SERVICE, KeyKind.VXFLOW_CONFIG)
    if output == "json":
        doc: dict[str, Any] = {
            "revision": snap.revision,
            "ServiceNetwork": str(snap.vxflow.service_network or ""),
            "services": [service_to_dict(s) for s in snap.services],
            "rejected": [r.to_dict() for r in rejected],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    lines = [("NAME", "VIP", "PORTS", "BACKENDS", "AFFINITY")]
    for s in snap.services:
        lines.append((
            s.name, str(s.vip),
            ",".join(f"{p.port}/{p.protocol}->{p.target_port}" for p in s.ports),
            ",".join(f"{b.ip}" + (f"*{b.weight}" if b.weight != 1 else "") for b in s.backends)
            or "(none: dropped)",
            f"ClientIP {s.affinity_timeout}s" if s.affinity_timeout else "-",
        ))  # fmt: skip
    echo_table(lines)
    network = snap.vxflow.service_network or "none"
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
