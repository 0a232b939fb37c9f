"""B2 convergence: one new lease in etcd -> its flow on every switch.

S real bridges (one ovs-vswitchd) hold full tables of a cluster of L leases;
then, R times, one new lease is put into etcd and the time until every bridge
has the new flow is taken from the switch side: each bridge's flow monitor
reports the ADDED flow (cookie checked) in the main-loop pass that commits it
and answers the controller's barrier. Leases accumulate (L, L+1, ... L+R-1).
Run: `python -m bench.b2_convergence` (root; own namespace).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.bridges import BridgeFarm
from bench.cluster_env import connect_and_converge, environment
from bench.etcdload import put_lease
from bench.isolation import isolate
from bench.leasegen import cluster, lease
from bench.observer import FlowObserver
from bench.stats import summary
from flows.compiler import lease_cookie

MODULE = "bench.b2_convergence"
log = logging.getLogger(MODULE)


def measure(switches: int, leases: int, repeat: int, gap: float) -> dict:
    c = cluster(leases)
    out: dict[str, Any] = {"switches": switches, "leases": leases, "repetitions": repeat}
    with environment(c) as env, BridgeFarm(list(c.leases[:switches])) as farm, \
            FlowObserver({b.name: b.mgmt_socket for b in farm.bridges}, monitor=True) as obs:  # fmt: skip
        out["initial_sync_s"] = connect_and_converge(env, farm, obs, timeout=300)
        log.info("S=%d: %d bridges hold %d flows each after %.2fs", switches, switches,
                 env.table_size(), out["initial_sync_s"])  # fmt: skip
        latencies, spreads = [], []
        for i in range(repeat):
            new = lease(leases + i)
            before = obs.added_counts()
            t0 = time.monotonic()
            put_lease(env.registry, new, env.etcd_lease)
            landed = obs.wait_added({b.name: before[b.name] + 1 for b in farm.bridges}, timeout=30)
            wrong = [b.name for b in farm.bridges if obs.added(b.name)[-1][1] != lease_cookie(new)]
            if wrong:
                raise RuntimeError(f"rep {i}: unexpected flow landed first on {wrong[:5]}")
            latencies.append(max(landed.values()) - t0)
            spreads.append(max(landed.values()) - min(landed.values()))
            time.sleep(gap)
        counts = obs.flow_counts()
        want = env.table_size(extra_leases=repeat)
        out["final_tables_ok"] = all(n == want for n in counts.values())
        if not out["final_tables_ok"]:
            raise RuntimeError(f"final tables differ from {want} flows: {sorted(set(counts.values()))}")
        out["latency_s"] = summary(latencies)
        out["spread_s"] = summary(spreads)
        out["samples_s"] = latencies
    return out


@click.command()
@click.option("--switches", "-s", multiple=True, type=int, default=(10, 50, 100),
              show_default=True, help="Switch counts to measure (repeatable).")
@click.option("--leases", default=1000, show_default=True, help="Leases present before the first new one.")
@click.option("--repeat", default=200, show_default=True, help="New leases per switch count.")
@click.option("--gap", default=0.02, show_default=True, help="Seconds between new leases.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None)
def main(switches: tuple[int, ...], leases: int, repeat: int, gap: float,
         results_dir: Path | None) -> None:  # fmt: skip
    """B2: latency from one new lease in etcd to its flow on every switch."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = [measure(s, leases, repeat, gap) for s in switches]
    path = report.save("b2_convergence", MODULE, {"runs": runs}, results_dir)
    for r in runs:
        lat = r["latency_s"]
        click.echo(f"S={r['switches']:4d}  p50 {report.ms(lat['p50'])}  p99 {report.ms(lat['p99'])}"
                   f"  max {report.ms(lat['max'])}  (n={lat['n']})")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
