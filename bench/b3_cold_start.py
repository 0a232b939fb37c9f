"""B3 cold start at scale: L leases x S switches, from nothing to every table full.

The controller is started on etcd holding L leases and is ready (a probe
switch got its full table, then left); then all S switches are pointed at it
at once and the clock runs until every one holds its full table of
L-1 remote-lease flows + its base pipeline.

- `real`: S real netdev bridges in one ovs-vswitchd, or dealt round-robin over
  `--vswitchds N` (each node of a real cluster runs its own; one process does
  the work of all S in turn); a table is full when a flow-count poll (every
  10 ms) shows it. Each ovs-vswitchd's CPU is recorded; the switch CPU is their sum.
- `stand-in`: S instances of bench/standin.py (NOT Open vSwitch: a minimal
  OpenFlow switch answering handshake, flow stats, flow-mods, bundles,
  barriers) for switch counts real OVS cannot hold here; a table is full at
  the first barrier the stand-in answers while holding it. One process serves
  them all, or `--standin-procs N` deal them over N (each node of a real
  cluster runs its own switch); the processes' CPU is recorded and summed.

Reported (median of --repeat cold starts, each with fresh etcd, controller and
switches): time to full convergence, flow-mods/s (S x table / time),
controller CPU seconds and peak RSS, and the controller's memory per installed
flow: its peak RSS less its RSS when ready (leases loaded, no switch
connected), over S x table (the worst of the cold starts).
With `--dual-stack` every lease has an IPv6 half (bench/leasegen.py), so a full table
holds 4 flows per remote lease instead of 2.
Run: `python -m bench.b3_cold_start`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.bridges import BridgeFarm
from bench.cluster_env import Env, connect_and_converge, environment
from bench.controller_proc import cpu_seconds
from bench.isolation import isolate
from bench.leasegen import cluster
from bench.netns import MAX_CHILDREN, add_hub
from bench.observer import FlowObserver
from bench.standin import StandInFleet
from bench.stats import median
from flows.ports import TUNNEL_OFPORT, TUNNEL_PORT
from leases.model import datapath_id_for

MODULE = "bench.b3_cold_start"
log = logging.getLogger(MODULE)
PORTS = [(TUNNEL_OFPORT, TUNNEL_PORT)]


def wait_ready(env: Env, timeout: float = 300) -> float:
    """Seconds until a probe stand-in (the cluster's last node, not a measured switch)
    gets its full table: the controller has loaded the leases. The probe then leaves."""
    probe = env.cluster.leases[-1]
    fleet = StandInFleet(env.controller.listen, env.controller.port,
                         {datapath_id_for(probe.public_ip): env.table_size()}, PORTS).start()  # fmt: skip
    try:
        fleet.go()
        return fleet.wait_converged(timeout) - fleet.started
    finally:
        fleet.stop()


def run_real(env: Env, switches: int, timeout: float, vswitchds: int = 1) -> dict[str, Any]:
    with BridgeFarm(list(env.cluster.leases[:switches]), vswitchds=vswitchds) as farm, \
            FlowObserver({b.name: b.mgmt_socket for b in farm.bridges}) as obs:  # fmt: skip
        pids = farm.switch_pids()
        cpu0, switch0 = env.controller.cpu_seconds(), [cpu_seconds(p) for p in pids]
        took = connect_and_converge(env, farm, obs, timeout)
        each = [cpu_seconds(p) - c for p, c in zip(pids, switch0, strict=True)]
        return {"converged_s": took, "controller_cpu_s": env.controller.cpu_seconds() - cpu0,
                "switch_cpu_s": sum(each), "switch_cpu_s_each": each}  # fmt: skip


def run_standin(env: Env, switches: int, timeout: float, procs: int = 1) -> dict[str, Any]:
    want = env.table_size()
    expected = {datapath_id_for(x.public_ip): want for x in env.cluster.leases[:switches]}
    fleet = StandInFleet(env.controller.listen, env.controller.port, expected, PORTS, procs)
    try:
        fleet.start()
        cpu0, fleet0 = env.controller.cpu_seconds(), [cpu_seconds(p) for p in fleet.pids]
        info = fleet.go()
        if info["connect_failures"]:
            raise RuntimeError(f"stand-ins failed to connect: {info['connect_failures'][:3]}")
        took = fleet.wait_converged(timeout) - fleet.started
        cpu = env.controller.cpu_seconds() - cpu0
        each = [cpu_seconds(p) - c for p, c in zip(fleet.pids, fleet0, strict=True)]
    finally:
        per_switch = fleet.stop()
    unsupported = {k: v for s in per_switch.values() for k, v in s["unsupported"].items()}
    # (the processes serving the stand-ins: where the time goes when not the controller)
    return {"converged_s": took, "controller_cpu_s": cpu, "standin_procs": len(each),
            "standin_cpu_s": sum(each), "standin_cpu_s_each": each,
            "standin_unsupported": unsupported,
            "flow_mods_received": sum(s["flow_mods"] for s in per_switch.values()),
            # dropped by the controller (its handshake deadline or echo probe missed: the
            # stand-ins' processes starved of CPU) and connected again
            "standin_reconnects": sum(s["reconnects"] for s in per_switch.values())}  # fmt: skip


def measure_once(kind: str, leases: int, switches: int, timeout: float, dual: bool = False,
                 vswitchds: int = 1, standin_procs: int = 1) -> dict[str, Any]:  # fmt: skip
    c = cluster(leases, dual=dual)
    spread = kind == "real" and vswitchds > 1  # (the stand-ins keep to loopback)
    with environment(c, listen=add_hub() if spread else "127.0.0.1") as env:
        ready = wait_ready(env)
        empty = env.controller.memory_kib()["VmRSS"]  # leases loaded, no switch connected
        log.info("controller ready with %d leases (probe synced in %.2fs), RSS %d MiB",
                 leases, ready, empty // 1024)  # fmt: skip
        if kind == "real":
            out = run_real(env, switches, timeout, vswitchds)
            out["vswitchds"] = vswitchds
        else:
            out = run_standin(env, switches, timeout, standin_procs)
        want = env.table_size()
        out.update({
            "switch": f"Open vSwitch (netdev bridges, {_count(vswitchds)} ovs-vswitchd)"
            if kind == "real" else "stand-in (bench/standin.py, not OVS)",
            "kind": kind, "leases": leases, "switches": switches, "flows_per_switch": want,
            "dual_stack": dual, "flows_per_lease": c.flows_per_lease,
            "flows_total": want * switches, "probe_sync_s": ready,
            "controller_memory_kib": env.controller.memory_kib(),
            "controller_ready_rss_kib": empty,
        })  # fmt: skip
        out["flow_mods_per_s"] = out["flows_total"] / out["converged_s"]
        grown = out["controller_memory_kib"]["VmHWM"] - empty
        out["controller_bytes_per_flow"] = grown * 1024 / out["flows_total"]
    log.info("%s L=%d S=%d: %.3fs", kind, leases, switches, out["converged_s"])
    return out


def _count(n: int) -> str:
    return "one" if n == 1 else str(n)


def measure(kind: str, leases: int, switches: int, timeout: float, repeat: int,
            dual: bool = False, vswitchds: int = 1, standin_procs: int = 1) -> dict[str, Any]:  # fmt: skip
    """`repeat` cold starts (fresh etcd, controller and switches each); medians."""
    reps = [measure_once(kind, leases, switches, timeout, dual, vswitchds, standin_procs)
            for _ in range(repeat)]  # fmt: skip
    out = {k: reps[0][k] for k in ("switch", "kind", "leases", "switches", "flows_per_switch",
                                   "flows_total", "dual_stack", "flows_per_lease",
                                   "vswitchds", "standin_procs") if k in reps[0]}  # fmt: skip
    for key in ("converged_s", "controller_cpu_s", "switch_cpu_s", "standin_cpu_s"):
        if key in reps[0]:
            out[key] = median([r[key] for r in reps])
    out["flow_mods_per_s"] = out["flows_total"] / out["converged_s"]
    out["controller_rss_peak_kib"] = max(r["controller_memory_kib"]["VmHWM"] for r in reps)
    out["controller_bytes_per_flow"] = max(r["controller_bytes_per_flow"] for r in reps)
    out["reps"] = reps
    return out


def _configs(spec: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """`real:1000x50` -> ("real", 1000, 50)."""
    out = []
    for item in spec:
        kind, _, size = item.partition(":")
        leases, _, switches = size.partition("x")
        if kind not in ("real", "stand-in") or not leases.isdigit() or not switches.isdigit():
            raise click.BadParameter(f"{item!r}: want real:LxS or stand-in:LxS")
        out.append((kind, int(leases), int(switches)))
    return out


# Real bridges up to 500 (one ovs-vswitchd held 500 here; at 1,000 more than half never got
# a flow within 600 s), the stand-in beyond.
DEFAULT_RUNS = ("real:1000x10", "real:1000x50", "real:1000x100", "real:1000x200", "real:1000x500",
                "real:5000x10", "real:5000x50", "stand-in:1000x50", "stand-in:1000x1000",
                "stand-in:5000x200")  # fmt: skip


@click.command()
@click.option("--run", "runs", multiple=True, default=DEFAULT_RUNS, show_default=True,
              help="KIND:LEASESxSWITCHES, KIND real or stand-in (repeatable).")
@click.option("--repeat", default=3, show_default=True, help="Cold starts per configuration.")
@click.option("--timeout", default=600.0, show_default=True,
              help="Seconds a cold start may take before the run fails.")
@click.option("--dual-stack", "dual", is_flag=True,
              help="Dual-stack leases (EnableIPv6): 4 flows per remote lease, not 2.")
@click.option("--vswitchds", type=click.IntRange(1, MAX_CHILDREN + 1), default=1,
              show_default=True,
              help="Real runs: deal the S bridges round-robin over this many ovs-vswitchd "
                   "(each extra one in a child network namespace, reaching the controller "
                   "over a veth pair in 198.18.0.0/24); at most S. Stand-in runs ignore it.")
@click.option("--standin-procs", type=click.IntRange(1), default=1, show_default=True,
              help="Stand-in runs: deal the S stand-ins round-robin over this many processes "
                   "(their CPU is recorded and summed). Real runs ignore it.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(runs: tuple[str, ...], repeat: int, timeout: float, dual: bool, vswitchds: int,
         standin_procs: int, results_dir: Path | None) -> None:  # fmt: skip
    """B3: cold start of S switches onto L leases; convergence, flow-mods/s, controller cost.

    Needs root; runs in a network namespace of its own. Writes b3_cold_start.json
    (--dual-stack: b3_cold_start_dualstack.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configs = _configs(runs)
    for kind, _, switches in configs:
        if kind == "real" and vswitchds > switches:
            raise click.BadParameter(f"{vswitchds} ovs-vswitchd for {switches} switches: at most "
                                     "one per switch", param_hint="--vswitchds")  # fmt: skip
    results = [measure(kind, leases, switches, timeout, repeat, dual, vswitchds, standin_procs)
               for kind, leases, switches in configs]  # fmt: skip
    name = "b3_cold_start_dualstack" if dual else "b3_cold_start"
    path = report.save(name, MODULE, {"runs": results}, results_dir)
    for r in results:
        click.echo(f"{r['kind']:8s} L={r['leases']:5d} S={r['switches']:4d}  {r['converged_s']:.3f}s"
                   f"  {r['flow_mods_per_s']:,.0f} flow-mods/s  cpu {r['controller_cpu_s']:.2f}s"
                   + (f"  switch cpu {r['switch_cpu_s']:.2f}s over {r['vswitchds']} ovs-vswitchd"
                      if "switch_cpu_s" in r else "")
                   + (f"  stand-in cpu {r['standin_cpu_s']:.2f}s over {r['standin_procs']} "
                      "processes" if "standin_cpu_s" in r else "")
                   + f"  rss peak {r['controller_rss_peak_kib'] / 1024:.0f} MiB"
                   f" ({r['controller_bytes_per_flow']:.0f} B per flow above ready)"
                   f"  (median of {len(r['reps'])})")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
