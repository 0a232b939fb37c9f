"""`vxflow leases ...` and `vxflow config ...`: inspect leases, show and set the network config."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from leases.cli_options import echo_table, echo_total, etcd_options, open_registry, operator_errors
from leases.config import config_to_json
from leases.errors import ConfigMissing
from leases.keys import KeyKind
from leases.model import subnet_key
from leases.validate import lease_to_json


@click.group()
def leases() -> None:
    """Subnet leases held by nodes (flannel's and vxflow's alike)."""


@leases.command("list")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts (flannel's value fields plus Subnet, Key, TTL).",
)
@etcd_options
@operator_errors
def list_leases(output: str, **etcd: Any) -> None:
    """List valid leases with their remaining TTL, and the rejected leases with their
    reasons (counted in the summary)."""
    with open_registry(**etcd) as registry:
        snap = registry.snapshot(report=False)  # listed below, not logged
        rejected = snap.rejected_of(KeyKind.LEASE)
        if snap.config is None:
            detail = snap.rejected[0].detail if snap.rejected else "missing"
            raise ConfigMissing(f"no valid network config at {registry.keys.config}: {detail}")
        rows = []
        for lease in snap.leases:
            ttl = registry.time_to_live(lease) if lease.etcd_lease_id is not None else None
            rows.append((lease, ttl))
    if output == "json":
        doc: dict[str, Any] = {
            "revision": snap.revision,
            "leases": [
                {
                    "Subnet": str(lease.subnet),
                    "Key": registry.keys.lease(lease.subnet),
                    **json.loads(lease_to_json(lease)),
                    "TTL": ttl,
                }
                for lease, ttl in rows
            ],
            "rejected": [r.to_json() for r in rejected],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        header = ("SUBNET", "PUBLIC-IP", "VTEP-MAC", "VNI", "TTL")
        lines = [header] + [
            (
                str(lease.subnet),
                str(lease.public_ip),
                lease.vtep_mac,
                str(lease.vni),
                "reserved" if ttl is None else f"{ttl}s",
            )
            for lease, ttl in rows
        ]
        echo_table(lines)
        echo_total(f"{len(rows)} lease(s) at revision {snap.revision}", rejected)


@click.group()
def config() -> None:
    """The network config at <prefix>/config (flannel's JSON)."""


@config.command("show")
@click.option("--raw", is_flag=True, help="Print the stored text instead of the parsed config.")
@etcd_options
@operator_errors
def show(raw: bool, **etcd: Any) -> None:
    """Print the config with flannel's defaults filled in (fails if missing or invalid)."""
    with open_registry(**etcd) as registry:
        if raw:
            click.echo(registry.get_config_raw().decode("utf-8", "replace"))
        else:
            click.echo(json.dumps(json.loads(config_to_json(registry.get_config())), indent=2))


@config.command("set")
@click.argument("file", type=click.File("rb"))
@etcd_options
@operator_errors
def set_config(file: IO[bytes], **etcd: Any) -> None:
    """Validate FILE (flannel's config JSON; - for stdin) and store it at <prefix>/config."""
    raw = file.read()
    with open_registry(**etcd) as registry:
        cfg = registry.set_config(raw)
        key = registry.keys.config
    click.echo(
        f"wrote {key}: Network {cfg.network}, /{cfg.subnet_len} subnets "
        f"{subnet_key(cfg.subnet_min)}..{subnet_key(cfg.subnet_max)}, VNI {cfg.backend.vni}"
    )
