"""`vxflow status`: the whole cluster on one screen, and an exit status for health checks.

Reads etcd (config, leases with their TTL left, endpoints, controller
replicas and switch claims, rejected entries) and every replica's status page
(its URL is in the replica's etcd entry; see controller/status.py), then
prints `vxflow.health`'s report.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import click

from leases.cli_options import etcd_options, open_registry
from leases.errors import RegistryError
from leases.model import Member
from vxflow.health import PROBLEMS, UNKNOWN, Page, assess, render

EXIT_PROBLEMS = 1
EXIT_UNKNOWN = 3


class EtcdUnreadable(click.ClickException):
    exit_code = EXIT_UNKNOWN


MAX_PAGE_BYTES = 16 * 1024 * 1024  # a replica's page: some 300 bytes per switch it serves


def fetch_page(member: Member, timeout: float, limit: int = MAX_PAGE_BYTES) -> Page:
    """A replica's status page, or why it could not be read (one line). The URL is any
    member's word: the page is read for `timeout` seconds and `limit` bytes at most."""
    if not member.status:
        return ""
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(member.status, timeout=timeout) as reply:
            data = bytearray()
            while chunk := reply.read1(65536):
                data += chunk
                if len(data) > limit:
                    raise ValueError(f"the page is larger than {limit:,} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the page was not read in {timeout:g}s")
            return json.loads(data)
    except (OSError, ValueError) as exc:
        return f"{member.status}: {exc}"


def _items(lines: tuple[str, ...]) -> str:
    return "".join(textwrap.fill(line, 78, initial_indent="- ", subsequent_indent="  ") + "\n"
                   for line in lines)  # fmt: skip


_HELP = f"""Show the cluster: network config, every node (lease, TTL left, switch connected,
its master and generation_id, flows installed/desired, last sync, drift repairs,
pods), the controller replicas and the rejected etcd entries.

\b
Exit status: 0 no problem (things unknown are listed, and do not count);
1 at least one problem (each is listed); 3 etcd could not be read (the
state is unknown).

\b
Problems:
{_items(PROBLEMS)}
\b
Unknown, not problems:
{_items(UNKNOWN)}
A replica's switches are known from its status page, which it serves by
default on an ephemeral loopback port and names in its etcd entry.
"""


@click.command(help=_HELP)
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text for people, json for scripts.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds to wait for each controller replica's status page.")
@etcd_options
def status(output: str, timeout: float, **etcd: str) -> None:
    try:
        with open_registry(**etcd) as registry:
            snap = registry.snapshot(report=False)  # the report lists them
            ttls = {str(lease.subnet): None if lease.etcd_lease_id is None
                    else max(registry.time_to_live(lease), 0) for lease in snap.leases}  # fmt: skip
            note = registry.missing_config_note(snap)
    except RegistryError as exc:
        raise EtcdUnreadable(str(exc)) from exc
    with ThreadPoolExecutor(max_workers=8) as pool:
        pages = dict(zip((m.id for m in snap.members),
                         pool.map(lambda m: fetch_page(m, timeout), snap.members), strict=True))  # fmt: skip
    report = assess(snap, ttls, pages, note)
    report.taken = time.time()  # everything read: what it says is true as of now
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(render(report))
    sys.exit(0 if report.healthy else EXIT_PROBLEMS)
