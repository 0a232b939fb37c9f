"""Options and error handling shared by every vxflow command that talks to etcd.

The option names and environment variables are flanneld's, so an existing
flanneld configuration carries over unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from leases.config import ConfigError
from leases.errors import RegistryError
from leases.etcd_client import parse_endpoints
from leases.keys import Keys
from leases.model import FLANNEL_DEFAULT_PREFIX
from leases.registry import DEFAULT_ENDPOINTS, Registry

F = TypeVar("F", bound=Callable[..., Any])


def _check_endpoints(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_endpoints(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def _check_prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        Keys(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def etcd_options(f: F) -> F:
    """Add `--etcd-endpoints` and `--etcd-prefix` (passed as etcd_endpoints, etcd_prefix)."""
    f = click.option(
        "--etcd-prefix",
        envvar="FLANNELD_ETCD_PREFIX",
        default=FLANNEL_DEFAULT_PREFIX,
        show_default=True,
        show_envvar=True,
        callback=_check_prefix,
        help="etcd prefix of the flannel network (the seed's cluster uses /atomic.io/network).",
    )(f)
    return click.option(
        "--etcd-endpoints",
        envvar="FLANNELD_ETCD_ENDPOINTS",
        default=DEFAULT_ENDPOINTS,
        show_default=True,
        show_envvar=True,
        callback=_check_endpoints,
        help="Comma-separated etcd client URLs.",
    )(f)


def open_registry(etcd_endpoints: str, etcd_prefix: str) -> Registry:
    return Registry(etcd_endpoints, etcd_prefix)


def operator_errors(f: F) -> F:
    """Turn registry and config errors into a one-line message and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (RegistryError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
