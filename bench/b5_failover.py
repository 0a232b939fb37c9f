"""B5 failover: SIGKILL of a controller replica -> a new lease's flow on every switch it mastered.

R replicas (default member TTL) share S real bridges in one ovs-vswitchd, every
bridge connected to every replica. Each round reads from ovs-vswitchd which
replica masters which bridge, kills one that masters some (SIGKILL, so its
membership ends only when its etcd lease runs out), puts a new lease into etcd
at once, and takes the time from the kill until that lease's flow is on every
bridge the victim mastered, from the bridges' own flow monitors. Then the victim
is started again under the same id and the round waits until every bridge
reports a master again.

Beside it, cold start in B3's shape (L leases x S bridges, every bridge
connected to every replica at once) with 1 and with 2 replicas in the same run.
Run: `python -m bench.b5_failover` (root; own namespace).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.bridges import BridgeFarm
from bench.controller_proc import ControllerProcess
from bench.etcdload import PREFIX, load, put_lease
from bench.isolation import isolate
from bench.leasegen import Cluster, cluster, lease
from bench.observer import FlowObserver
from bench.stats import summary
from controller.mastership import designated
from controller.options import DEFAULT_MEMBER_TTL
from flows.compiler import compile_node, lease_cookie
from leases.etcd_server import EtcdServer
from leases.registry import Registry

MODULE = "bench.b5_failover"
log = logging.getLogger(MODULE)


def table_size(c: Cluster, leases: int) -> int:
    """Flows of a node's full table with `leases` leases in the cluster."""
    return len(compile_node(c.config, c.leases[:2], (), c.leases[0].public_ip)) - 2 + leases


@contextlib.contextmanager
def replicas(c: Cluster, count: int, workdir: Path, ttl: int) -> Iterator[
        tuple[Registry, int, list[ControllerProcess]]]:  # fmt: skip
    """etcd loaded with `c`, and `count` controller replicas r1..rN reading it."""
    etcd = EtcdServer(data_dir=workdir / "etcd").start()
    procs: list[ControllerProcess] = []
    try:
        registry = Registry(etcd.endpoint, PREFIX)
        etcd_lease = load(registry, c.config, c.leases)
        for i in range(1, count + 1):
            proc = ControllerProcess(
                etcd.endpoint, PREFIX, workdir / f"controller-r{i}.log",
                extra_args=("--id", f"r{i}", "--member-ttl", str(ttl)),
            )  # fmt: skip
            procs.append(proc.start())
        yield registry, etcd_lease, procs
        registry.close()
    finally:
        for proc in procs:
            proc.stop()
        etcd.stop()


def wait_settled(registry: Registry, farm: BridgeFarm, procs: list[ControllerProcess],
                 timeout: float = 60) -> dict[str, ControllerProcess]:  # fmt: skip
    """Until every bridge's claim in etcd names its designated replica (of all `procs`);
    bridge name -> that replica. (etcd's claims, not ovs-vswitchd's Controller status,
    which it refreshes lazily: right after a restart it can still show the old role.)"""
    ids = {f"r{i}": p for i, p in enumerate(procs, 1)}
    want = {b.dpid: designated(b.dpid, ids) for b in farm.bridges}
    deadline = time.monotonic() + timeout
    while True:
        held = {x.datapath_id: x.controller for x in registry.snapshot().claims}
        if all(held.get(d) == m for d, m in want.items()):
            time.sleep(0.2)  # the claims' role requests and readbacks are answered by now
            return {b.name: ids[want[b.dpid]] for b in farm.bridges}
        if time.monotonic() > deadline:
            raise TimeoutError(f"claims not settled: {held} != {want}")
        time.sleep(0.1)


def failover(switches: int, leases: int, count: int, kills: int, ttl: int) -> dict[str, Any]:
    c = cluster(leases)
    out: dict[str, Any] = {"switches": switches, "leases": leases, "replicas": count,
                           "member_ttl_s": ttl, "kills": kills}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vxflow-bench-") as tmp, \
            replicas(c, count, Path(tmp), ttl) as (registry, etcd_lease, procs), \
            BridgeFarm(list(c.leases[:switches])) as farm, \
            FlowObserver({b.name: b.mgmt_socket for b in farm.bridges}, monitor=True) as obs:  # fmt: skip
        farm.set_controller([p.target for p in procs])
        obs.wait_flow_count({b.name: table_size(c, leases) for b in farm.bridges}, timeout=120)
        samples, moved = [], []
        for k in range(kills):
            held = wait_settled(registry, farm, procs)
            masters = [p for p in procs if p in held.values()]
            victim = masters[k % len(masters)]  # each replica with switches in turn
            theirs = [name for name, proc in held.items() if proc is victim]
            new = lease(leases + k)
            before = obs.added_counts()
            killed = time.monotonic()
            victim.stop(signal.SIGKILL)
            put_lease(registry, new, etcd_lease)
            landed = obs.wait_added({n: before[n] + 1 for n in theirs}, timeout=ttl + 30)
            if wrong := [n for n in theirs if obs.added(n, before[n])[0][1] != lease_cookie(new)]:
                raise RuntimeError(f"a flow other than {new.subnet}'s landed first on {wrong}")
            samples.append(max(landed.values()) - killed)
            moved.append(len(theirs))
            log.info("kill %d: %s mastered %d bridges; new lease on all of them after %.3fs",
                     k + 1, victim.target, len(theirs), samples[-1])  # fmt: skip
            victim.start()
        wait_settled(registry, farm, procs)
    out["kill_to_flow_s"] = summary(samples)
    out["samples_s"] = samples
    out["bridges_per_victim"] = summary(moved)
    out["goal_s"] = ttl + 1
    return out


def cold_start(switches: int, leases: int, count: int, ttl: int) -> dict[str, Any]:
    """B3's shape with `count` replicas: seconds until every bridge holds its full table."""
    c = cluster(leases)
    with tempfile.TemporaryDirectory(prefix="vxflow-bench-") as tmp, \
            replicas(c, count, Path(tmp), ttl) as (registry, _lease, procs), \
            BridgeFarm(list(c.leases[:switches])) as farm, \
            FlowObserver({b.name: b.mgmt_socket for b in farm.bridges}) as obs:  # fmt: skip
        want = table_size(c, leases)
        t0 = time.monotonic()
        farm.set_controller([p.target for p in procs])
        reached = obs.wait_flow_count({b.name: want for b in farm.bridges}, timeout=300,
                                      interval=0.01)  # fmt: skip
        took = max(reached.values()) - t0
        cpu = [p.cpu_seconds() for p in procs]
        held = wait_settled(registry, farm, procs)
    share = [sum(proc is p for proc in held.values()) for p in procs]
    log.info("cold start %dx%d with %d replica(s): %.3fs", leases, switches, count, took)
    return {"switches": switches, "leases": leases, "replicas": count, "converged_s": took,
            "controller_cpu_s": cpu, "mastered": share}  # fmt: skip


@click.command()
@click.option("--switches", "-s", default=20, show_default=True, help="Bridges (failover).")
@click.option("--leases", default=100, show_default=True, help="Leases before the first kill.")
@click.option("--replicas", "count", default=3, show_default=True, help="Controller replicas.")
@click.option("--kills", default=20, show_default=True, help="Replicas killed, one per round.")
@click.option(
    "--member-ttl",
    "ttl",
    default=DEFAULT_MEMBER_TTL,
    show_default=True,
    help="The replicas' --member-ttl (the default is the controller's).",
)
@click.option(
    "--cold",
    default="1000x50",
    show_default=True,
    metavar="LEASESxSWITCHES",
    help="Cold-start shape run with 1 and with 2 replicas; '' skips it.",
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the JSON (default bench/results).",
)
def main(switches: int, leases: int, count: int, kills: int, ttl: int, cold: str,
         results_dir: Path | None) -> None:  # fmt: skip
    """B5: from SIGKILL of a controller replica to a new lease's flow on every switch it
    mastered (p50/p99), and cold start with 1 and 2 replicas side by side.

    Needs root; runs in a network namespace of its own. Writes b5_failover.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result: dict[str, Any] = {"failover": failover(switches, leases, count, kills, ttl)}
    if cold:
        cold_leases, cold_switches = (int(x) for x in cold.split("x"))
        result["cold_start"] = [cold_start(cold_switches, cold_leases, n, ttl) for n in (1, 2)]
    path = report.save("b5_failover", MODULE, result, results_dir)
    f = result["failover"]
    click.echo(f"failover (R={count}, TTL {ttl}s, S={switches}): kill -> flow p50 "
               f"{f['kill_to_flow_s']['p50']:.3f}s p99 {f['kill_to_flow_s']['p99']:.3f}s "
               f"(goal <= {f['goal_s']}s, n={f['kill_to_flow_s']['n']})")  # fmt: skip
    for run in result.get("cold_start", ()):
        click.echo(f"cold start {run['leases']}x{run['switches']} with {run['replicas']} "
                   f"replica(s): {run['converged_s']:.3f}s")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
