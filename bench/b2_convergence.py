"""B2 convergence: one new lease in etcd -> its flow on every switch.

S switches hold full tables of a cluster of L leases; then, R times, one new
lease is put into etcd and the time until every switch has the new lease's
flows (its route and its tunnel-ingress check) is taken from the switch side.
Leases accumulate (L, L+1, ... L+R-1). Real switches are measured over plain
TCP and over TLS (`--transport`), each with its own controller and etcd.

- `real`: S netdev bridges in one ovs-vswitchd; each bridge's flow monitor
  reports the ADDED flow (cookie checked) in the main-loop pass that commits
  it and answers the controller's barrier.
- `stand-in`: S bench/standin.py switches (NOT OVS): the time each first
  answers a barrier while holding the new flow. This is the controller's (and
  etcd's) share alone, without one ovs-vswitchd serving all S bridges; one
  process serves them all, or `--standin-procs N` deal them over N.

With `--dual-stack` every lease has an IPv6 half (bench/leasegen.py): a lease is then
four flows per switch (its IPv6 route and check too), and a lease has landed when all
four have.

Also recorded: when the benchmark's own etcd watch heard of the lease (the
etcd share), the spread between the first and the last switch, and the CPU
time per event of the controller, of the process(es) serving all S switches
(ovs-vswitchd or the stand-ins) and of this one (which reads the real
bridges' flow monitors).
Run: `python -m bench.b2_convergence` (root; own namespace).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.bridges import BridgeFarm
from bench.cluster_env import Env, connect_and_converge, environment
from bench.controller_proc import cpu_seconds
from bench.etcdload import PREFIX, put_lease
from bench.isolation import isolate
from bench.leasegen import cluster, lease
from bench.observer import FlowObserver
from bench.standin import StandInFleet
from bench.stats import summary
from flows.compiler import lease_cookie
from flows.ports import TUNNEL_OFPORT, TUNNEL_PORT
from leases.events import LeaseAdded
from leases.model import Lease, datapath_id_for
from leases.registry import Registry

PORTS = [(TUNNEL_OFPORT, TUNNEL_PORT)]

MODULE = "bench.b2_convergence"
log = logging.getLogger(MODULE)


class RealSwitches:
    """S netdev bridges; a flow has landed when the bridge's flow monitor reports it."""

    label = "Open vSwitch (netdev bridges, one ovs-vswitchd)"

    def __init__(self, env: Env, switches: int, groups: bool = False) -> None:
        self.env = env
        self.stack = contextlib.ExitStack()
        self.farm = self.stack.enter_context(BridgeFarm(list(env.cluster.leases[:switches])))
        if env.controller.pki is not None:
            self.farm.use_tls(env.controller.pki)
        sockets = {b.name: b.mgmt_socket for b in self.farm.bridges}
        self.obs = self.stack.enter_context(FlowObserver(sockets, monitor=True, groups=groups))
        self.pids = [self.farm.ovs.pids()["ovs-vswitchd"]]  # serves all S bridges

    def initial_sync(self) -> float:
        return connect_and_converge(self.env, self.farm, self.obs, timeout=300)

    def before(self) -> dict[str, int]:
        return self.obs.added_counts()

    def landed(self, new: Lease, before: dict[str, int]) -> list[float]:
        per_lease = self.env.cluster.flows_per_lease
        landed = self.obs.wait_added({name: n + per_lease for name, n in before.items()}, timeout=30)
        wrong = [name for name in landed if self.obs.added(name, -1)[0][1] != lease_cookie(new)]
        if wrong:
            raise RuntimeError(f"a flow other than {new.subnet}'s landed first on {wrong[:5]}")
        return list(landed.values())

    def final_counts(self) -> list[int]:
        return list(self.obs.flow_counts().values())

    def close(self) -> None:
        self.stack.close()


class StandInSwitches:
    """S stand-ins (bench/standin.py, NOT OVS): the controller's side without the switch's."""

    label = "stand-in (bench/standin.py, not OVS)"

    def __init__(self, env: Env, switches: int, procs: int = 1) -> None:
        self.env = env
        self.size = env.table_size()
        self.dpids = [datapath_id_for(x.public_ip) for x in env.cluster.leases[:switches]]
        self.fleet = StandInFleet("127.0.0.1", env.controller.port,
                                  dict.fromkeys(self.dpids, self.size), PORTS, procs).start()  # fmt: skip
        self.pids = self.fleet.pids  # serve the S stand-ins between them

    def initial_sync(self) -> float:
        self.fleet.go()
        return self.fleet.wait_converged(timeout=300) - self.fleet.started

    def before(self) -> dict[int, int]:
        return dict.fromkeys(self.dpids, self.size)

    def landed(self, new: Lease, before: dict[int, int]) -> list[float]:
        self.size += self.env.cluster.flows_per_lease
        targets = {d: n + self.env.cluster.flows_per_lease for d, n in before.items()}
        return list(self.fleet.table_reached(targets, 30).values())

    def final_counts(self) -> list[int]:
        self.report = self.fleet.stop()
        return [s["flows"] for s in self.report.values()]

    def close(self) -> None:
        self.fleet.stop()


class LeaseWatcher:
    """The bench's own etcd watch: when a watcher (like the controller's) hears of a lease."""

    def __init__(self, env: Env) -> None:
        self.seen: dict[IPv4Network, float] = {}
        self.cond = threading.Condition()
        self.registry = Registry(env.etcd.endpoint, PREFIX)
        self.watch = self.registry.watch(since=self.registry.snapshot(), callback=self._event)

    def _event(self, event) -> None:
        if isinstance(event, LeaseAdded):
            with self.cond:
                self.seen[event.lease.subnet] = time.monotonic()
                self.cond.notify_all()

    def wait(self, subnet: IPv4Network, timeout: float = 10) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: subnet in self.seen, timeout):
                raise TimeoutError(f"the bench's watch never saw {subnet}")
            return self.seen[subnet]

    def close(self) -> None:
        self.watch.stop()
        self.registry.close()


def _cpu(pids: list[int]) -> float:
    return sum(map(cpu_seconds, pids))


def measure(kind: str, switches: int, leases: int, repeat: int, gap: float,
            transport: str = "tcp", audit_interval: float = 0, dual: bool = False,
            standin_procs: int = 1) -> dict:  # fmt: skip
    c = cluster(leases, dual=dual)
    out: dict[str, Any] = {"kind": kind, "switches": switches, "leases": leases,
                           "repetitions": repeat, "transport": transport,
                           "audit_interval": audit_interval, "dual_stack": dual,
                           "flows_per_lease": c.flows_per_lease}  # fmt: skip
    with environment(c, tls=transport == "tls", audit_interval=audit_interval) as env:
        if kind == "real":
            sw: RealSwitches | StandInSwitches = RealSwitches(env, switches)
        else:
            sw = StandInSwitches(env, switches, standin_procs)
            out["standin_procs"] = len(sw.pids)
        watcher = LeaseWatcher(env)
        try:
            out["switch"] = sw.label
            out["initial_sync_s"] = sw.initial_sync()
            log.info("%s S=%d: every switch holds %d flows after %.2fs", kind, switches,
                     env.table_size(), out["initial_sync_s"])  # fmt: skip
            latencies, spreads, heard = [], [], []
            # where the CPU goes per event: the controller, the switches' process(es) and
            # this one (the real switches' flow monitors are read here)
            pids = {"controller": [env.controller.pid], "switches": sw.pids,
                    "bench": [os.getpid()]}  # fmt: skip
            cpu0 = {name: _cpu(each) for name, each in pids.items()}
            for i in range(repeat):
                new = lease(leases + i, dual=dual)
                before = sw.before()
                t0 = time.monotonic()
                put_lease(env.registry, new, env.etcd_lease)
                landed = sw.landed(new, before)
                latencies.append(max(landed) - t0)
                spreads.append(max(landed) - min(landed))
                heard.append(watcher.wait(new.subnet) - t0)
                time.sleep(gap)
            out["cpu_ms_per_event"] = {name: (_cpu(each) - cpu0[name]) * 1e3 / repeat
                                       for name, each in pids.items()}  # fmt: skip
            counts = sw.final_counts()
        finally:
            watcher.close()
            sw.close()
        want = env.table_size(extra_leases=repeat)
        out["final_tables_ok"] = all(n == want for n in counts)
        if not out["final_tables_ok"]:
            raise RuntimeError(f"final tables differ from {want} flows: {sorted(set(counts))}")
    out["latency_s"] = summary(latencies)
    out["spread_s"] = summary(spreads)
    out["etcd_watch_s"] = summary(heard)
    out["samples_s"] = latencies
    return out


@click.command()
@click.option("--switches", "-s", multiple=True, type=int, default=(10, 50, 100),
              show_default=True, help="Switch counts to measure (repeatable).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["real", "stand-in"]),
              default=("real", "stand-in"), show_default=True,
              help="Real OVS bridges and/or stand-ins (the controller's share alone).")
@click.option("--transport", "transports", multiple=True, type=click.Choice(["tcp", "tls"]),
              default=("tcp", "tls"), show_default=True,
              help="OpenFlow transport(s) for real switches (stand-ins speak TCP only).")
@click.option("--leases", default=1000, show_default=True, help="Leases present before the first new one.")
@click.option("--repeat", default=200, show_default=True, help="New leases per switch count.")
@click.option("--gap", default=0.02, show_default=True, help="Seconds between new leases.")
@click.option("--audit-interval", default=0.0, show_default=True, type=click.FloatRange(0),
              help="The controller's periodic audit (its --audit-interval); 0: off, so "
                   "that only the events are measured.")
@click.option("--dual-stack", "dual", is_flag=True,
              help="Dual-stack leases (EnableIPv6): each lease is 4 flows per switch, not 2.")
@click.option("--standin-procs", type=click.IntRange(1), default=1, show_default=True,
              help="Deal the stand-ins round-robin over this many processes (their CPU "
                   "per event is summed). Real switches ignore it.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(switches: tuple[int, ...], kinds: tuple[str, ...], transports: tuple[str, ...],
         leases: int, repeat: int, gap: float, audit_interval: float, dual: bool,
         standin_procs: int, results_dir: Path | None) -> None:  # fmt: skip
    """B2: latency from one new lease in etcd to its flow on every switch.

    Needs root; runs in a network namespace of its own. Writes b2_convergence.json
    (--dual-stack: b2_convergence_dualstack.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = [
        measure(k, s, leases, repeat, gap, t, audit_interval, dual, standin_procs)
        for k in kinds
        for t in (transports if k == "real" else ("tcp",))
        for s in switches
    ]
    name = "b2_convergence_dualstack" if dual else "b2_convergence"
    path = report.save(name, MODULE, {"runs": runs}, results_dir)
    for r in runs:
        lat = r["latency_s"]
        cpu = "  ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_event"].items())
        click.echo(f"{r['kind']:8s} {r['transport']:3s} S={r['switches']:4d}  p50 {report.ms(lat['p50'])}  p99 {report.ms(lat['p99'])}"
                   f"  max {report.ms(lat['max'])}  (n={lat['n']});  CPU ms per event: {cpu}")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
