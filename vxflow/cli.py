"""The `vxflow` command: one click group; each package contributes its commands."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from ipaddress import ip_address
from urllib.parse import urlsplit

import click

from vxflow import logs

# eventlet imports pyOpenSSL, when it is installed, only to recognise its exceptions
# (eventlet/greenio/base.py). Debian's python3-openssl, seen through the system
# site-packages that Mininet's module needs, then adds ~0.07 s (with the cryptography it
# loads) to the start of every command. Nothing in vxflow uses pyOpenSSL (TLS is the
# standard library's ssl), so that optional import is declined.
sys.modules.setdefault("OpenSSL", None)
# os-ken's eventlet hub is a deliberate choice (see docs/architecture.md); eventlet's
# import-time deprecation banner would otherwise greet every command.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

# (module, attribute) of each subcommand; a module owns its own options.
_COMMANDS = (
    ("leases.cli", "leases"),
    ("leases.cli", "config"),
    ("leases.services_cli", "services"),
    ("vxflow.explain", "policies"),  # leases.policy_cli's group, with `explain` added
    ("leases.policy_cli", "namespaces"),
    ("vxflow.pods", "pods"),
    ("ovsdb.cli", "bootstrap"),
    ("ovsdb.cli", "agent"),
    ("ovsdb.cli", "migrate"),
    ("controller.cli", "controller"),
    ("controller.cli", "flows"),
    ("vxflow.demo", "demo"),
    ("vxflow.pki", "pki"),
    ("vxflow.status", "status"),
    ("vxflow.trace", "trace"),
)

# Commands that run os-ken's eventlet hub. It must monkey-patch before anything imports
# ssl (requests does, for etcd): an SSL context made after a late patch recurses forever.
_GREEN = {"controller"}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when it is used (os-ken and OVS imports are slow)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({name for _, name in _COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module, name in _COMMANDS:
            if name == cmd_name:
                return getattr(importlib.import_module(module), name)
        return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vxflow", prog_name="vxflow")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="VXFLOW_LOG_LEVEL",
    show_envvar=True,
)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    show_default=True,
    envvar="VXFLOW_LOG_FORMAT",
    show_envvar=True,
    help="json: one JSON object per line (time, level, logger, message and the record's "
    "fields such as event, node, reason).",
)
def cli(log_level: str, log_format: str) -> None:
    """vxflow: flannel-compatible VXLAN overlay programmed by an OpenFlow controller."""
    logs.setup(log_level, log_format)


def _subcommand(args: list[str]) -> str | None:
    """The subcommand an argument list runs (after the group's own options)."""
    it = iter(args)
    for arg in it:
        if arg in ("--log-level", "--log-format"):
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _resolves_no_names(args: list[str]) -> bool:
    """Whether the command an argument list runs will look up no host name in a green
    thread: it runs none (not a _GREEN command), or every etcd endpoint it is given (on its
    command line or in FLANNELD_ETCD_ENDPOINTS, read before click parses them) is an IP
    address. Neither given: the default, 127.0.0.1."""
    if _subcommand(args) not in _GREEN:
        return True
    endpoints = os.environ.get("FLANNELD_ETCD_ENDPOINTS", "")
    for arg, value in zip(args, [*args[1:], ""], strict=True):
        if arg == "--etcd-endpoints":
            endpoints = value
        elif arg.startswith("--etcd-endpoints="):
            endpoints = arg.partition("=")[2]
    try:
        for url in filter(None, endpoints.split(",")):
            ip_address(urlsplit(url.strip()).hostname or "")
    except ValueError:
        return False
    return True


def main() -> None:
    if _resolves_no_names(sys.argv[1:]):
        # etcd3gw imports eventlet (through futurist), whose green socket module loads a
        # whole DNS resolver (dnspython: ~0.1-0.2 s of every command's start). Only green
        # threads use it, and only the _GREEN commands run any; of those, a controller
        # whose etcd endpoints are IP addresses resolves no name (a name would then be
        # looked up blocking the hub: such a controller keeps it). Read once, at that
        # import. A controller this command starts (the demo's) inherits it.
        os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    if _subcommand(sys.argv[1:]) in _GREEN:
        from os_ken.lib import hub

        # as osken-manager does first thing (threads apart: patched with the rest at once,
        # an SSL context recurses forever), then threads, which its main() patches only
        # after logging and click have made their locks: eventlet reported those at every
        # start ("RLock(s) were not greened")
        hub.patch(thread=False)
        hub.patch(thread=True)
    cli()
