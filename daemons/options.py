"""Command-line options the daemons share."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def parsed_by(parse: Callable[[str], object]) -> Callable[[click.Context, click.Parameter, str], str]:
    """A click callback that refuses a value `parse` raises ValueError on, with its message."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from exc
        return value

    return check


class MetricsPort(click.ParamType):
    """A TCP port; 0 or '' turns the endpoint off. (A variable set empty is unset to click:
    it leaves the default.)"""

    name = "PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            port = value
        elif str(value).strip() == "":
            return 0
        else:
            try:
                port = int(str(value), 10)
            except ValueError:
                self.fail(f"{value!r} is not a port number (0 or '' turns it off)", param, ctx)
        if not 0 <= port <= 65535:
            self.fail(f"{port} is not a port number (0-65535)", param, ctx)
        return port


def metrics_options(env_prefix: str, default: int | None, default_text: str) -> Callable[[F], F]:
    """`--metrics-port` and `--metrics-listen` (env `<env_prefix>_METRICS_PORT`, `..._LISTEN`).

    `default` None: the caller picks a port (an ephemeral one), described by `default_text`.
    """

    def decorate(f: F) -> F:
        f = click.option(
            "--metrics-listen", default="127.0.0.1", show_default=True,
            envvar=f"{env_prefix}_METRICS_LISTEN", show_envvar=True, callback=parsed_by(ip_address),
            help="Address the metrics (and status) endpoint listens on.",
        )(f)  # fmt: skip
        return click.option(
            "--metrics-port", default=default, type=MetricsPort(),
            envvar=f"{env_prefix}_METRICS_PORT", show_envvar=True,
            help="Serve Prometheus metrics on http://METRICS_LISTEN:PORT/metrics; 0 or '' = "
                 f"off.  [default: {default_text}]",
        )(f)  # fmt: skip

    return decorate
