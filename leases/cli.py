"""`vxflow leases ...` and `vxflow config ...`: inspect leases, show and set the network config."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from leases.cli_options import echo_table, echo_total, etcd_options, open_registry, operator_errors
from leases.config import config_to_json, ipv6_notice
from leases.errors import ConfigMissing
from leases.etcd_v2 import LeaseCopy, apply_import, plan_import
from leases.keys import KeyKind
from leases.model import Lease, NetworkConfig, subnet_key
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
            detail = f": {snap.rejected[0].detail if snap.rejected else 'missing'}"
            note = registry.missing_config_note(snap)
            raise ConfigMissing(
                f"no valid network config at {registry.keys.config}{note or detail}"
            )
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
                    **({"IPv6Subnet": str(lease.ipv6_subnet)} if lease.ipv6_subnet else {}),
                    "Key": registry.keys.lease(lease.subnet, lease.ipv6_subnet),
                    **json.loads(lease_to_json(lease)),
                    "TTL": ttl,
                }
                for lease, ttl in rows
            ],
            "rejected": [r.to_dict() for r in rejected],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        # the IPv6 columns only when a lease has an IPv6 half: IPv4-only output is as before
        dual = any(lease.ipv6_subnet for lease, _ in rows)
        six = ("IPV6-SUBNET", "PUBLIC-IPV6", "VTEP-MAC-V6") if dual else ()
        lines = [("SUBNET", "PUBLIC-IP", "VTEP-MAC", *six, "VNI", "TTL")] + [
            (
                str(lease.subnet),
                str(lease.public_ip),
                lease.vtep_mac,
                *(_v6_columns(lease) if dual else ()),
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
    click.echo(f"wrote {key}: {_summary(cfg)}")
    if notice := ipv6_notice(cfg):
        click.echo(f"note: {notice}")


def _v6_columns(lease: Lease) -> tuple[str, ...]:
    """A lease's IPv6 half for the table ("-" for an IPv4-only lease among dual-stack ones)."""
    six = (lease.ipv6_subnet, lease.public_ipv6, lease.vtep_mac_v6)
    return tuple("-" if v is None else str(v) for v in six)


def _summary(cfg: NetworkConfig) -> str:
    six = ""
    if cfg.ipv6 is not None:
        six = (
            f", IPv6Network {cfg.ipv6.network}, /{cfg.ipv6.subnet_len} subnets "
            f"{subnet_key(cfg.ipv6.subnet_min)}..{subnet_key(cfg.ipv6.subnet_max)}"
        )
    return (
        f"Network {cfg.network}, /{cfg.subnet_len} subnets "
        f"{subnet_key(cfg.subnet_min)}..{subnet_key(cfg.subnet_max)}{six}, VNI {cfg.backend.vni}"
    )


@config.command("import-v2")
@click.option(
    "--with-leases",
    is_flag=True,
    help="Also copy every valid lease under <prefix>/subnets/, each bound to an etcd lease "
    "with the TTL it had left (reservations: no TTL); invalid entries are listed and skipped.",
)
@click.option("--dry-run", is_flag=True, help="Print what it would write, and write nothing.")
@click.option("--force", is_flag=True, help="Replace a different config in the v3 store.")
@etcd_options
@operator_errors
def import_v2(with_leases: bool, dry_run: bool, force: bool, **etcd: Any) -> None:
    """Copy a network config from etcd's v2 store into the v3 store vxflow reads.

    flannel before v0.14 (and `ETCDCTL_API=2 etcdctl mk`, or curl to /v2/keys)
    kept the config and leases in etcd's v2 store, which the v3 API does not
    see. The config is validated as `config set` does; a different config in
    v3 is only replaced with --force. The v2 store is left as it is: nodes of
    a flannel of that era keep reading it, and do not see leases in v3 (nor
    vxflow nodes theirs): after the import, upgrade flannel to a v3 release or
    move the node to vxflow.
    """
    with open_registry(**etcd) as registry:
        plan = plan_import(registry, with_leases=with_leases, force=force)
        key = registry.keys.config
        click.echo(f"etcd's v2 store holds {key}: {_summary(plan.config)}")
        for skip in plan.skipped:
            click.echo(f"skipped {skip.key}: {skip.why}")

        def copied(copy: LeaseCopy, ok: bool) -> None:
            what = "reservation" if copy.ttl is None else "lease"
            ttl = "no TTL" if copy.ttl is None else f"TTL {copy.ttl}s"
            verb = (
                "would copy" if dry_run else "copied" if ok else "not copied (v3 got it meanwhile)"
            )
            click.echo(f"{verb} {what} {copy.lease.subnet} of {copy.lease.public_ip}, {ttl}")

        if dry_run:
            for copy in plan.copies:
                copied(copy, True)
        else:
            apply_import(registry, plan, copied)
    if not plan.write_config:
        click.echo(f"the v3 store holds an equal {key}: left as it is")
    elif plan.replaces:
        click.echo(f"{'would replace' if dry_run else 'replaced'} the v3 store's different {key}")
    else:
        click.echo(f"{'would write' if dry_run else 'wrote'} {key} to the v3 store")
    if plan.not_read:
        click.echo(f"{plan.not_read} entries under the v2 store's subnets/ not copied "
                   "(--with-leases copies the valid ones)")  # fmt: skip
