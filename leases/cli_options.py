"""Options and error handling shared by every vxflow command that talks to etcd.

The option names and environment variables are flanneld's, so an existing
flanneld configuration carries over unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from daemons.options import parsed_by
from leases.config import ConfigError
from leases.errors import RegistryError
from leases.etcd_client import EtcdAccess, parse_endpoints
from leases.keys import Keys
from leases.model import FLANNEL_DEFAULT_PREFIX
from leases.registry import DEFAULT_ENDPOINTS, Registry
from leases.validate import Rejection

F = TypeVar("F", bound=Callable[..., Any])


# flanneld's TLS and credential options: (name, help); each reads FLANNELD_ETCD_<NAME>
_FILE_OPTIONS = (
    ("cafile", "CA certificate(s) to verify etcd's server certificate (default: the system's)."),
    ("certfile", "Client certificate for etcd's --client-cert-auth (with --etcd-keyfile)."),
    ("keyfile", "Private key of --etcd-certfile."),
)
ACCESS_PARAMS = tuple(f"etcd_{name}" for name in ("cafile", "certfile", "keyfile", "username",
                                                   "password"))  # fmt: skip


def etcd_access(params: Mapping[str, Any]) -> EtcdAccess:
    """The EtcdAccess of a command's etcd_* parameters (a one-line error if inconsistent or
    a file is missing: checked here, as values may also come from --sysconfig)."""
    for name, _ in _FILE_OPTIONS:
        path = params.get(f"etcd_{name}")
        if path and not Path(path).is_file():
            raise click.ClickException(f"--etcd-{name} {path}: no such file")
    try:
        return EtcdAccess(**{n.removeprefix("etcd_"): params.get(n) or None for n in ACCESS_PARAMS})
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def etcd_options(f: F) -> F:
    """Add `--etcd-endpoints`, `--etcd-prefix` and flanneld's TLS/credential options.

    They arrive as etcd_endpoints, etcd_prefix, etcd_cafile, etcd_certfile,
    etcd_keyfile, etcd_username, etcd_password: pass them on with
    `open_registry(**etcd)`.
    """
    f = click.option(
        "--etcd-password",
        envvar="FLANNELD_ETCD_PASSWORD",
        show_envvar=True,
        help="Password of --etcd-username (prefer the variable: flags show in ps).",
    )(f)
    f = click.option(
        "--etcd-username",
        envvar="FLANNELD_ETCD_USERNAME",
        show_envvar=True,
        help="etcd user, when etcd's auth is enabled (its role must grant the prefix).",
    )(f)
    for name, text in reversed(_FILE_OPTIONS):
        f = click.option(
            f"--etcd-{name}",
            envvar=f"FLANNELD_ETCD_{name.upper()}",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help=text,
        )(f)
    f = click.option(
        "--etcd-prefix",
        envvar="FLANNELD_ETCD_PREFIX",
        default=FLANNEL_DEFAULT_PREFIX,
        show_default=True,
        show_envvar=True,
        callback=parsed_by(Keys),
        help="etcd prefix of the flannel network (the seed's cluster uses /atomic.io/network).",
    )(f)
    return click.option(
        "--etcd-endpoints",
        envvar="FLANNELD_ETCD_ENDPOINTS",
        default=DEFAULT_ENDPOINTS,
        show_default=True,
        show_envvar=True,
        callback=parsed_by(parse_endpoints),
        help="Comma-separated etcd client URLs.",
    )(f)


def etcd_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The etcd_* entries of a command's parameters (what `open_registry` takes)."""
    return {k: v for k, v in params.items() if k.startswith("etcd_")}


def open_registry(etcd_endpoints: str, etcd_prefix: str, **access: Any) -> Registry:
    """A Registry from a command's etcd options (`open_registry(**etcd)`)."""
    return Registry(etcd_endpoints, etcd_prefix, access=etcd_access(access))


def operator_errors(f: F) -> F:
    """Turn registry and config errors into a one-line message and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (RegistryError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def echo_table(lines: list[tuple[str, ...]]) -> None:
    """Rows (the first one the header) in left-aligned columns two spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())



def echo_total(summary: str, rejected: list[Rejection]) -> None:
    """A listing's last lines: its total with the rejected count, then one line for each
    rejected entry (on stdout, whatever the log level)."""
    click.echo(f"{summary}; {len(rejected)} rejected" + (":" if rejected else ""))
    for r in rejected:
        click.echo(f"rejected {r.kind.value} {r}")
