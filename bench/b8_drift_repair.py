"""B8 drift repair: a hand-made change on a live switch -> the controller's repair landed.

One real bridge holds its full table (L leases); then, T times, an operator
changes it by hand over the bridge's management socket (what `ovs-ofctl`
does), cycling through four changes: one remote lease's route deleted, a
stray flow added, a route's actions replaced, and the whole table deleted
(`del-flows`). Measured from sending the hand-made flow-mod to the switch's
report of the controller's repair (for the whole table: of the last flow
back), the report coming from the bench's own flow monitor on the bridge
(bench/observer.py). The start is taken before the switch has even seen the
change, so the figure errs long, never short. Audits are off, so only the
flow monitor can trigger a repair. Goal: p99 <= 1 s.

Run: `python -m bench.b8_drift_repair` (root; own namespace).
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bench import ofwire as of
from bench import report
from bench.bridges import BridgeFarm
from bench.cluster_env import connect_and_converge, environment
from bench.isolation import isolate
from bench.leasegen import cluster
from bench.observer import FlowObserver
from bench.stats import summary
from controller import ofwire
from flows.compiler import compile_node
from flows.flow import Flow, Owner, Table, flow, owner_of

MODULE = "bench.b8_drift_repair"
log = logging.getLogger(MODULE)
STRAY_COOKIE = 0x51
KINDS = ("route deleted", "stray flow added", "route modified", "whole table deleted")


class Operator:
    """An OpenFlow 1.4 connection to the bridge's management socket, as `ovs-ofctl` opens."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.sendall(of.message(of.OFP14, of.HELLO, 1))
        self.xid = 1

    def send(self, flow_mod: Callable[[int], bytes]) -> float:
        """Send one flow-mod and its barrier; the time just before sending."""
        self.xid += 2
        data = flow_mod(self.xid) + ofwire.encode_barrier(self.xid + 1)
        self._drain()
        sent = time.monotonic()
        self.sock.sendall(data)
        return sent

    def _drain(self) -> None:
        """Read what the switch sent meanwhile (hello, barrier replies): never let it pile up."""
        self.sock.setblocking(False)
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def delete_all(xid: int) -> bytes:
    """OFPFC_DELETE of every flow in every table (`ovs-ofctl del-flows BRIDGE`)."""
    body = struct.pack("!QQBBHHHIIIH2x", 0, 0, of.OFPTT_ALL, of.FC_DELETE, 0, 0, 0,
                       0xFFFFFFFF, of.OFPP_ANY, of.OFPG_ANY, 0) + of.EMPTY_MATCH  # fmt: skip
    return of.message(of.OFP14, of.FLOW_MOD, xid, body)


class Trial:
    """One hand-made change on the bridge and how long until the switch reported its repair."""

    def __init__(self, farm: BridgeFarm, obs: FlowObserver, table: list[Flow]) -> None:
        self.obs = obs
        self.bridge = farm.bridges[0].name
        self.operator = Operator(farm.bridges[0].mgmt_socket)
        self.table = table
        self.routes = [f for f in table if f.table == Table.ROUTE
                       and (owner_of(f.cookie) or (None,))[0] is Owner.LEASE]  # fmt: skip
        self.stray = flow(Table.CLASSIFY, 500, {}, (), STRAY_COOKIE)

    def run(self, kind: str, i: int, timeout: float = 10) -> float:
        start = self.obs.event_count(self.bridge)
        wait = self.obs.wait_event
        name, send = self.bridge, self.operator.send
        if kind == "whole table deleted":
            t0 = send(delete_all)
            seen = start
            for _ in self.table:  # every flow reported added again
                seen, t1 = wait(name, seen, lambda e, c: e == of.FME_ADDED, timeout)
                seen += 1
            return t1 - t0
        route = self.routes[i % len(self.routes)]
        if kind == "route deleted":  # reported REMOVED, repaired ADDED
            target, command, change = route, ofwire.OFPFC_DELETE_STRICT, of.FME_REMOVED
        elif kind == "route modified":  # its actions now drop: MODIFIED, then re-added
            target = Flow(route.table, route.priority, route.match, (), route.cookie)
            command, change = of.FC_MODIFY_STRICT, of.FME_MODIFIED
        else:  # reported ADDED, repaired REMOVED
            target, command, change = self.stray, ofwire.OFPFC_ADD, of.FME_ADDED
        t0 = send(lambda xid: ofwire.encode_flow_mod(target, command, xid))
        cookie = target.cookie
        at, _ = wait(name, start, lambda e, c: e == change and c == cookie, timeout)
        _, t1 = wait(name, at + 1, lambda e, c: c == cookie, timeout)  # the repair
        return t1 - t0

    def close(self) -> None:
        self.operator.close()


def measure(leases: int, tries: int, gap: float) -> dict[str, Any]:
    c = cluster(leases)
    out: dict[str, Any] = {"leases": leases, "tries": tries}
    with environment(c) as env, BridgeFarm(list(c.leases[:1])) as farm, FlowObserver(
        {b.name: b.mgmt_socket for b in farm.bridges}, monitor=True
    ) as obs:
        out["initial_sync_s"] = connect_and_converge(env, farm, obs, timeout=120)
        table = sorted(compile_node(c.config, c.leases, (), c.leases[0].public_ip),
                       key=lambda f: (f.table, -f.priority))  # fmt: skip
        out["flows"] = len(table)
        trial = Trial(farm, obs, table)
        samples: dict[str, list[float]] = {k: [] for k in KINDS}
        try:
            for i in range(tries):
                kind = KINDS[i % len(KINDS)]
                took = trial.run(kind, i)
                samples[kind].append(took)
                log.info("try %d (%s): repaired %.2f ms after the change", i + 1, kind, took * 1e3)
                obs.wait_flow_count({trial.bridge: len(table)}, timeout=10)
                time.sleep(gap)
        finally:
            trial.close()
    everything = [x for xs in samples.values() for x in xs]
    out["repair_s"] = summary(everything)
    out["by_kind"] = {k: summary(xs) for k, xs in samples.items() if xs}
    out["samples_s"] = samples
    out["goal_p99_s"] = 1.0
    out["goal_met"] = out["repair_s"]["p99"] <= 1.0
    return out


@click.command()
@click.option("--leases", default=100, show_default=True,
              help="Leases in the cluster (the bridge's table: one route each plus its base).")
@click.option("--tries", default=50, show_default=True, help="Hand-made changes, cycling kinds.")
@click.option("--gap", default=0.2, show_default=True, help="Seconds between tries.")
@click.option("--results-dir", type=click.Path(), default=None,
              help="Where to write the JSON (default bench/results).")
def main(leases: int, tries: int, gap: float, results_dir: str | None) -> None:
    """B8: time from a hand-made change on a switch to the controller's repair landed.

    Needs root; runs in a network namespace of its own. Writes b8_drift_repair.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(leases, tries, gap)
    path = report.save("b8_drift_repair", MODULE, result, Path(results_dir) if results_dir else None)
    r = result["repair_s"]
    click.echo(f"repair p50 {report.ms(r['p50'])}  p99 {report.ms(r['p99'])}  max "
               f"{report.ms(r['max'])}  (n={r['n']}; goal p99 <= 1 s: "
               f"{'met' if result['goal_met'] else 'NOT met'})")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
