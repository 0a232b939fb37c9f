"""Command-line options the daemons share."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _check_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        ip_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def metrics_options(env_prefix: str) -> Callable[[F], F]:
    """`--metrics-port` and `--metrics-listen` (env `<env_prefix>_METRICS_PORT`, `..._LISTEN`)."""

    def decorate(f: F) -> F:
        f = click.option(
            "--metrics-listen", default="127.0.0.1", show_default=True,
            envvar=f"{env_prefix}_METRICS_LISTEN", show_envvar=True, callback=_check_address,
            help="Address the metrics (and status) endpoint listens on.",
        )(f)  # fmt: skip
        return click.option(
            "--metrics-port", default=0, show_default=True, type=click.IntRange(0, 65535),
            envvar=f"{env_prefix}_METRICS_PORT", show_envvar=True,
            help="Serve Prometheus metrics on http://METRICS_LISTEN:PORT/metrics; 0 = off.",
        )(f)  # fmt: skip

    return decorate
