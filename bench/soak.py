"""Soak: a controller under churn for a long while; do its resources stay flat?

Two real OVS bridges hold their nodes' tables throughout while, every
`--period` seconds, one change is written to etcd, drawn (seeded) from: a
node's lease written or removed (a pool of `--pool` nodes beyond the two),
a pod endpoint added or removed on a bridged node (`PODS` addresses each), a service (VIP, one port,
a bridged node's pods as backends) rewritten or removed. Every second a
hostile peer connects to the OpenFlow port, in turn sending garbage, a HELLO
and then silence, or a HELLO and an error message shorter than its body, and
hangs up.

Every `--interval` seconds the controller's RSS and open file descriptors
(/proc), the metric series it serves (sample lines of /metrics) and its
green threads (its `/threads` page) are sampled, with the switches it holds
(both, throughout, or the soak exits 1). The samples of the first
`--warmup` seconds are left out; of the rest, each figure is flat when the
median of the last quarter exceeds the median of the first quarter by at
most its slack (`SLACK`: absolute, and relative to the first quarter's),
and, for the RSS, its least-squares slope stays under 2 MiB per hour (the
slope is reported for every figure).

Measures flatness, not speed, so a shared machine is acceptable.
Run: `python -m bench.soak --duration 1800` (root; own namespace).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from itertools import cycle
from pathlib import Path
from typing import Any

import click

from bench import ofwire as of
from bench import report
from bench.bridges import BridgeFarm
from bench.controller_proc import ControllerProcess
from bench.etcdload import PREFIX, load
from bench.isolation import isolate
from bench.leasegen import cluster
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.model import Endpoint, Lease
from leases.registry import Registry
from leases.validate import lease_to_json

MODULE = "bench.soak"
log = logging.getLogger(MODULE)
SERVICE_NETWORK = "172.30.0.0/16"  # outside the synthetic overlay (10.0.0.0/7) and underlay
SERVICES = 8  # names soak-0 .. soak-7
PODS = 40  # addresses per bridged node that pods come and go on
# figure -> (absolute slack, slack relative to the first quarter's median, the steepest
# slope per hour still flat, or None: a count that moves in steps, judged by its growth)
SLACK = {
    "rss_kib": (8192, 0.10, 2048.0),  # a slow leak stays inside the slack for a long while
    "fds": (4, 0.0, None),
    "series": (10, 0.0, None),
    "green_threads": (5, 0.0, None),
}


@dataclass
class Hostile:
    """A peer that connects to the OpenFlow port every second and misbehaves."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter = field(default_factory=Counter)

    def run(self) -> None:
        hello = of.message(of.OFP14, of.HELLO, 1)
        # an OFPT_ERROR whose header says 10 bytes: shorter than its type and code need
        short_error = struct.pack("!BBHIH", of.OFP14, of.ERROR, 10, 2, 1)
        kinds = cycle((("garbage", None), ("silent", hello), ("malformed", hello + short_error)))
        while not self.stop.wait(1.0):
            kind, data = next(kinds)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(os.urandom(64) if data is None else data)
                    with contextlib.suppress(OSError):  # its hello, or it hangs up
                        sock.recv(4096)
                self.counts[kind] += 1
            except OSError:
                self.counts["refused"] += 1


@dataclass
class Churn:
    """One change to etcd per call, drawn from leases, endpoints and services."""

    registry: Registry
    bridged: list[Lease]  # the nodes whose switches are connected
    pool: list[Lease]  # nodes whose leases come and go
    rng: random.Random
    etcd_lease: int
    counts: Counter = field(default_factory=Counter)
    _leased: set[int] = field(default_factory=set)  # indexes into pool
    _pods: dict[IPv4Address, Endpoint] = field(default_factory=dict)

    def step(self) -> None:
        kind = self.rng.choice(("lease", "lease", "endpoint", "endpoint", "service"))
        getattr(self, f"_{kind}")()

    def _lease(self) -> None:
        i = self.rng.randrange(len(self.pool))
        lease = self.pool[i]
        key = self.registry.keys.lease(lease.subnet)
        if i in self._leased:
            self.registry.etcd.delete(key)
            self._leased.discard(i)
            self.counts["lease_removed"] += 1
        else:
            self.registry.etcd.put(key, lease_to_json(lease), lease=self.etcd_lease)
            self._leased.add(i)
            self.counts["lease_added"] += 1

    def _endpoint(self) -> None:
        node = self.rng.choice(self.bridged)
        host = self.rng.randrange(2, 2 + PODS)
        ip = node.subnet.network_address + host
        if ip in self._pods:
            self.registry.delete_endpoint(self._pods.pop(ip))
            self.counts["endpoint_removed"] += 1
        else:
            ep = Endpoint(node.subnet, ip, f"02:00:{ip.packed.hex(':')}", 100 + host, f"p{host}")
            self.registry.put_endpoint(ep, node)
            self._pods[ip] = ep
            self.counts["endpoint_added"] += 1

    def _service(self) -> None:
        n = self.rng.randrange(SERVICES)
        name = f"soak-{n}"
        backends = self.rng.sample(sorted(self._pods), min(len(self._pods), 3))
        if not backends or self.rng.random() < 0.3:
            self.registry.delete_service(name)
            self.counts["service_removed"] += 1
            return
        self.registry.put_service({
            "Name": name, "VIP": f"172.30.0.{10 + n}", "Ports": [{"Port": 80, "TargetPort": 8080}],
            "Backends": [{"IP": str(ip)} for ip in backends],
        })  # fmt: skip
        self.counts["service_written"] += 1


def sample(controller: ControllerProcess, metrics_port: int) -> dict[str, float]:
    """The controller's RSS, open fds, metric series and green threads now."""
    base = f"http://127.0.0.1:{metrics_port}"
    text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    threads = json.loads(urllib.request.urlopen(f"{base}/threads", timeout=30).read())
    switches = re.search(r"^vxflow_controller_switches (\S+)$", text, re.M)
    return {
        "switches": float(switches.group(1)) if switches else 0.0,
        "rss_kib": controller.memory_kib()["VmRSS"],
        "fds": len(os.listdir(f"/proc/{controller.pid}/fd")),
        "series": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
        "green_threads": threads["green"],
    }


def slope_per_hour(times: list[float], values: list[float]) -> float:
    """Least-squares slope of `values` over `times` (seconds), per hour."""
    if len(times) < 2:
        return 0.0
    mt, mv = statistics.fmean(times), statistics.fmean(values)
    var = sum((t - mt) ** 2 for t in times)
    return 0.0 if not var else 3600 * sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / var


def judge(samples: list[dict[str, float]], warmup: float) -> dict[str, dict[str, Any]]:
    """Per figure: first and last quarter's medians (after the warm-up), max, slope per
    hour, and whether it is flat (see the module doc)."""
    kept = [s for s in samples if s["t"] >= warmup]
    if len(kept) < 4:
        raise ValueError(f"{len(kept)} samples after the warm-up: too few to judge (at least 4)")
    quarter = len(kept) // 4
    out = {}
    for name, (absolute, relative, steepest) in SLACK.items():
        values = [s[name] for s in kept]
        first, last = statistics.median(values[:quarter]), statistics.median(values[-quarter:])
        slope = slope_per_hour([s["t"] for s in kept], values)
        out[name] = {
            "first": first, "last": last, "max": max(values), "growth": last - first,
            "slope_per_hour": slope,
            "flat": last - first <= max(absolute, relative * first)
            and (steepest is None or slope <= steepest),
        }  # fmt: skip
    return out


def soak(duration: float, interval: float, warmup: float, period: float, pool: int,
         seed: int) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    c = cluster(2 + pool)
    bridged, churned = list(c.leases[:2]), list(c.leases[2:])
    with tempfile.TemporaryDirectory(prefix="vxflow-soak-") as tmp:
        workdir = Path(tmp)
        etcd = EtcdServer(data_dir=workdir / "etcd").start()
        try:
            registry = Registry(etcd.endpoint, PREFIX)
            etcd_lease = load(registry, c.config, bridged)
            registry.set_service_network(SERVICE_NETWORK)
            metrics_port = free_loopback_port()
            controller = ControllerProcess(
                etcd.endpoint, PREFIX, workdir / "controller.log", audit_interval=10,
                extra_args=("--metrics-port", str(metrics_port)),
            )  # fmt: skip
            with controller, BridgeFarm(bridged) as farm:
                farm.set_controller(controller.target)
                hostile = Hostile(controller.port)
                churn = Churn(registry, bridged, churned, rng, etcd_lease)
                peer = threading.Thread(target=hostile.run, daemon=True)
                peer.start()
                samples: list[dict[str, float]] = []
                started = time.monotonic()
                next_sample = started
                try:
                    while (now := time.monotonic()) - started < duration:
                        if now >= next_sample:
                            samples.append({"t": round(now - started, 1), **sample(controller, metrics_port)})
                            log.info("sample %s", samples[-1])
                            next_sample += interval
                        churn.step()
                        time.sleep(period)
                    samples.append({"t": round(time.monotonic() - started, 1), **sample(controller, metrics_port)})
                finally:
                    hostile.stop.set()
                    peer.join(10)
                alive = controller.alive()
            registry.close()
        finally:
            etcd.stop()
    return {
        "duration_s": duration, "interval_s": interval, "warmup_s": warmup, "period_s": period,
        "pool": pool, "seed": seed, "controller_alive_at_end": alive,
        "churn": dict(churn.counts), "hostile": dict(hostile.counts),
        "load_average": os.getloadavg(), "samples": samples, "figures": judge(samples, warmup),
    }  # fmt: skip


@click.command()
@click.option("--duration", default=1800.0, show_default=True, help="Seconds of churn.")
@click.option("--interval", default=30.0, show_default=True, help="Seconds between samples.")
@click.option("--warmup", default=300.0, show_default=True,
              help="Seconds of samples left out of the judgement.")
@click.option("--period", default=0.2, show_default=True, help="Seconds between etcd changes.")
@click.option("--pool", default=50, show_default=True, help="Nodes whose leases come and go.")
@click.option("--seed", default=1, show_default=True, help="Seed of the churn's draws.")
@click.option("--results-dir", type=click.Path(), default=None,
              help="Where to write the JSON (default bench/results).")
def main(duration: float, interval: float, warmup: float, period: float, pool: int, seed: int,
         results_dir: str | None) -> None:  # fmt: skip
    """Soak: the controller under lease, endpoint and service churn and a hostile peer; are
    its RSS, open files, metric series and green threads flat?

    Needs root; runs in a network namespace of its own. Writes soak.json; exits 1 when a
    figure is not flat, a switch was not connected, or the controller died."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("leases").setLevel(logging.WARNING)  # a line per service written
    result = soak(duration, interval, warmup, period, pool, seed)
    path = report.save("soak", MODULE, result, Path(results_dir) if results_dir else None)
    for name, f in result["figures"].items():
        click.echo(f"{name}: {f['first']:g} -> {f['last']:g} (max {f['max']:g}, "
                   f"{f['slope_per_hour']:+.1f}/h): {'flat' if f['flat'] else 'NOT flat'}")  # fmt: skip
    click.echo(f"churn {result['churn']}; hostile peer {result['hostile']}")
    click.echo(f"results: {path}")
    held = all(s["switches"] == 2 for s in result["samples"] if s["t"] >= warmup)
    if not held:
        click.echo("a switch was not connected at some sample after the warm-up")
    ok = result["controller_alive_at_end"] and held and all(
        f["flat"] for f in result["figures"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
