"""B7 drift repair: a hand-made change on a live switch -> the controller's repair landed.

One real bridge holds its full table (L leases); then, T times, an operator's
`ovs-ofctl` changes it, cycling through four changes: one remote lease's
route deleted, a stray flow added, a route's actions modified in place, and
the whole table deleted (`del-flows`). Both ends are taken from the switch
side, by the bench's own flow monitor on the bridge's management socket
(bench/observer.py): from the update reporting the hand-made change to the
update reporting the controller's repair of it (for the whole table: the
last flow back). Audits are off, so only the flow monitor can trigger a
repair. Goal: p99 <= 1 s.

Run: `python -m bench.b7_drift_repair` (root; own namespace).
"""

from __future__ import annotations

import logging
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
from flows.compiler import compile_node, lease_cookie
from flows.flow import Flow, Table, to_ofctl

MODULE = "bench.b7_drift_repair"
log = logging.getLogger(MODULE)
STRAY_COOKIE = 0x51
KINDS = ("route deleted", "stray flow added", "route modified", "whole table deleted")


def match_text(f: Flow) -> str:
    """`table=..,priority=..,<match>`: how ovs-ofctl names the entry (no cookie, no actions)."""
    return to_ofctl(f).split(",", 1)[1].rsplit(" actions=", 1)[0]


class Trial:
    """One hand-made change on `bridge` and when the switch reported it and its repair."""

    def __init__(self, farm: BridgeFarm, obs: FlowObserver, table: list[Flow]) -> None:
        self.farm, self.obs = farm, obs
        self.bridge = farm.bridges[0].name
        self.table = table
        self.routes = [f for f in table if f.table == Table.ROUTE and f.priority == 100
                       and any(f.cookie == lease_cookie(x) for x in farm.leases[1:])] or [
            f for f in table if f.table == Table.ROUTE]  # fmt: skip

    def ofctl(self, *args: str) -> None:
        assert self.farm.ovs is not None
        self.farm.ovs.ofctl(*args)

    def run(self, kind: str, i: int, timeout: float = 10) -> float:
        start = self.obs.event_count(self.bridge)
        wait = self.obs.wait_event
        name = self.bridge
        if kind == "whole table deleted":
            self.ofctl("del-flows", name)
            first, t0 = wait(name, start, lambda e, c: e == of.FME_REMOVED, timeout)
            seen = first
            for _ in self.table:  # every flow reported added again
                seen, t1 = wait(name, seen + 1, lambda e, c: e == of.FME_ADDED, timeout)
            return t1 - t0
        route = self.routes[i % len(self.routes)]
        cookie = route.cookie
        if kind == "route deleted":
            self.ofctl("del-flows", "--strict", name, match_text(route))
            changed: Callable[[int, int], bool] = lambda e, c: e == of.FME_REMOVED and c == cookie  # noqa: E731
        elif kind == "route modified":
            self.ofctl("mod-flows", "--strict", name, f"{match_text(route)},actions=drop")
            changed = lambda e, c: e == of.FME_MODIFIED and c == cookie  # noqa: E731
        else:
            cookie = STRAY_COOKIE
            self.ofctl("add-flow", name, f"table=0,priority=500,cookie={cookie:#x},actions=drop")
            changed = lambda e, c: e == of.FME_ADDED and c == cookie  # noqa: E731
        at, t0 = wait(name, start, changed, timeout)
        _, t1 = wait(name, at + 1, lambda e, c: c == cookie, timeout)  # the repair's update
        return t1 - t0


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
        for i in range(tries):
            kind = KINDS[i % len(KINDS)]
            took = trial.run(kind, i)
            samples[kind].append(took)
            log.info("try %d (%s): repaired %.2f ms after the change", i + 1, kind, took * 1e3)
            obs.wait_flow_count({trial.bridge: len(table)}, timeout=10)
            time.sleep(gap)
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
    """B7: time from a hand-made change on a switch to the controller's repair landed.

    Needs root; runs in a network namespace of its own. Writes b7_drift_repair.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(leases, tries, gap)
    path = report.save("b7_drift_repair", MODULE, result, Path(results_dir) if results_dir else None)
    r = result["repair_s"]
    click.echo(f"repair p50 {report.ms(r['p50'])}  p99 {report.ms(r['p99'])}  max "
               f"{report.ms(r['max'])}  (n={r['n']}; goal p99 <= 1 s: "
               f"{'met' if result['goal_met'] else 'NOT met'})")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
