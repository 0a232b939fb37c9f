"""B9 switch restart: ovs-vswitchd of a node restarts -> pod traffic across nodes flows again.

A two-node cluster of mininet/vxcluster.py (agents, controller, etcd); a pod
on n1 pings a pod on n2 every 10 ms (`ping -D`: each reply time-stamped)
while n1's ovs-vswitchd restarts, alternating two ways:

- crash: SIGKILL, then a plain start (what a supervisor does);
- planned: `ovs-ctl restart`'s sequence (ovsdb/instance.py): flows saved with
  OVS's ovs-save, flow-restore-wait set, the daemon stopped and started, the
  flows restored, flow-restore-wait cleared.

Per try: the time from the new process being ready (its control socket
answers) to the first reply from the other node, the outage (longest gap
between replies) and the pings lost. Goal: traffic flows again <= 1 s after
ovs-vswitchd is back. On the userspace (netdev) datapath the datapath is
inside ovs-vswitchd, so some pings are always lost while it is down.

Run: `python -m bench.b9_switch_restart` (root).
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.stats import summary
from vxflow.demo import cluster_module

MODULE = "bench.b9_switch_restart"
log = logging.getLogger(MODULE)
INTERVAL = 0.01
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)", re.M)


def one_restart(cluster, planned: bool, settle: float) -> dict[str, float]:
    n1 = cluster.vxflow_nodes[0]
    src, dst = cluster.pods_of(n1)[0], cluster.pods_of(cluster.vxflow_nodes[1])[0]
    ping = subprocess.Popen(
        ["mnexec", "-a", str(src.pid), "ping", "-n", "-D", "-i", str(INTERVAL), "-W", "1",
         str(dst.addr)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)
        stopped, ready = n1.ovs.restart_vswitchd(planned=planned)
        time.sleep(settle)
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=30)
    replies = [float(t) for t, _ in REPLY.findall(out)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    after = [t for t in replies if t > ready]
    if not after or m is None:
        raise RuntimeError(f"no reply after the restart:\n{out[-2000:]}")
    gaps = [b - a for a, b in pairwise(replies)]
    return {
        "resumed_after_ready_s": after[0] - ready,
        "down_s": ready - stopped,
        "outage_s": max(gaps),
        "lost": int(m[1]) - int(m[2]),
    }


def measure(tries: int, settle: float) -> dict[str, Any]:
    vx = cluster_module()
    spec = vx.ClusterSpec(nodes=2, pods=1)
    samples: dict[str, list[dict[str, float]]] = {"crash": [], "planned": []}
    with vx.Cluster(spec=spec) as cluster:
        for i in range(2 * tries):
            kind = ("crash", "planned")[i % 2]
            x = one_restart(cluster, kind == "planned", settle)
            samples[kind].append(x)
            log.info("%s: traffic again %.0f ms after ovs-vswitchd was back (outage %.0f ms, "
                     "%d pings lost)", kind, x["resumed_after_ready_s"] * 1e3,
                     x["outage_s"] * 1e3, x["lost"])  # fmt: skip
            cluster.wait_connected(timeout=30)
    out: dict[str, Any] = {"tries": tries, "interval_s": INTERVAL, "samples": samples}
    for kind, xs in samples.items():
        out[kind] = {key: summary([x[key] for x in xs])
                     for key in ("resumed_after_ready_s", "down_s", "outage_s", "lost")}  # fmt: skip
    out["goal_s"] = 1.0
    out["goal_met"] = all(out[k]["resumed_after_ready_s"]["max"] <= 1.0 for k in samples)
    return out


@click.command()
@click.option("--tries", default=10, show_default=True, help="Restarts of each kind.")
@click.option("--settle", default=3.0, show_default=True,
              help="Seconds of pinging after each restart.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(tries: int, settle: float, results_dir: Path | None) -> None:
    """B9: pod traffic across nodes after a node's ovs-vswitchd restarts (crash, planned).

    Needs root. Writes b9_switch_restart.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(tries, settle)
    path = report.save("b9_switch_restart", MODULE, result, results_dir)
    for kind in ("crash", "planned"):
        r = result[kind]["resumed_after_ready_s"]
        click.echo(f"{kind:8s} traffic again after ovs-vswitchd is back: p50 {report.ms(r['p50'])} "
                   f"max {report.ms(r['max'])}; pings lost p50 "
                   f"{result[kind]['lost']['p50']:.0f}")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
