"""B12 live migration: the data-path gap per pod while `vxflow migrate` turns a flannel
node into a vxflow node, and while `vxflow migrate --rollback` turns it back.

The e2e test's scenario (tests/test_e2e_migrate.py, shared through bench/migration.py),
built once: an emulated cluster of two vxflow nodes and two flannel-style nodes, two pods
each; a TCP stream (a numbered line every 10 ms) and a 100 pps ping to each pod of the
first flannel node from a pod of a vxflow node and from a pod of the other flannel node.
Under that same traffic, N rounds of migrate then rollback on that node. Per round, per
run and per stream: the longest pause between two received lines and between two ping
replies that spans part of the run. A stream that breaks is reported as a reset (the goal
is none, and gaps <= 1 s).

Run: `python -m bench.b12_migrate` (root).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click

from bench import report
from bench.migration import Migrator, Traffic, gap_rows
from bench.stats import summary
from vxflow.demo import cluster_module

MODULE = "bench.b12_migrate"
log = logging.getLogger(MODULE)
SETTLE_S = 3.0  # traffic between runs, so that each run's gaps are its own
GOAL_S = 1.0


def measure(migrations: int, workdir: Path) -> dict[str, Any]:
    vx = cluster_module()
    spec = vx.ClusterSpec(nodes=2, pods=2, flannel_nodes=2)
    with vx.Cluster(spec=spec) as cluster:
        node, peer = cluster.flannel_nodes
        pods = cluster.pods_of(node)
        sources = [cluster.pods_of(cluster.vxflow_nodes[0])[0], cluster.pods_of(peer)[0]]
        migrator = Migrator(cluster, node, workdir)
        migrator.prepare(pods)
        traffic = Traffic(sources, pods, workdir)
        try:
            time.sleep(SETTLE_S)
            for i in range(migrations):
                for run in (migrator.migrate, migrator.rollback):
                    run()
                    log.info("round %d: %s in %.2f s", i + 1, migrator.windows[-1].what,
                             migrator.windows[-1].mono[1] - migrator.windows[-1].mono[0])  # fmt: skip
                    time.sleep(SETTLE_S)
        finally:
            results = traffic.stop()
            migrator.close()
    rounds = [{"round": i // 2 + 1, **row}
              for i, window in enumerate(migrator.windows)
              for row in gap_rows(results, [window])]  # fmt: skip
    out: dict[str, Any] = {
        "migrations": migrations, "settle_s": SETTLE_S, "goal_s": GOAL_S,
        "streams": [r.name for r in results],
        "resets": {r.name: r.reset for r in results if r.reset},
        "runs_s": {what: summary([w.mono[1] - w.mono[0] for w in migrator.windows
                                  if w.what == what]) for what in ("migrate", "rollback")},
        "rounds": [{k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                    for k, v in row.items()} for row in rounds],
    }  # fmt: skip
    for what in ("migrate", "rollback"):
        for kind in ("tcp_s", "ping_s"):
            gaps = [row[kind] for row in rounds if row["what"] == what]
            finite = [g for g in gaps if math.isfinite(g)]
            out.setdefault(what, {})[kind] = summary(finite) if finite else None
            out[what][f"{kind}_no_sample"] = len(gaps) - len(finite)
    out["goal_met"] = not out["resets"] and all(
        out[what][kind] and out[what][kind]["max"] <= GOAL_S and not out[what][f"{kind}_no_sample"]
        for what in ("migrate", "rollback") for kind in ("tcp_s", "ping_s"))  # fmt: skip
    return out


@click.command()
@click.option("--migrations", default=10, show_default=True,
              help="Rounds of migrate then rollback on the same node, under the same traffic.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(migrations: int, results_dir: Path | None) -> None:
    """B12: the longest TCP stream and ping gap per pod while `vxflow migrate` and
    `vxflow migrate --rollback` run (p50/p99/max over the rounds), and any stream reset.

    Needs root. Writes b12_migrate.json."""
    if migrations < 1:
        raise click.BadParameter("must be at least 1", param_hint="--migrations")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with TemporaryDirectory(prefix="b12-") as tmp:
        result = measure(migrations, Path(tmp))
    path = report.save("b12_migrate", MODULE, result, results_dir)
    for what in ("migrate", "rollback"):
        for kind, label in (("tcp_s", "TCP"), ("ping_s", "ping")):
            if gap := result[what][kind]:
                click.echo(f"{what:8s} longest {label:4s} gap per pod: p50 {report.ms(gap['p50'])} "
                           f"p99 {report.ms(gap['p99'])} max {report.ms(gap['max'])}")  # fmt: skip
    click.echo(f"stream resets: {len(result['resets'])}")
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
