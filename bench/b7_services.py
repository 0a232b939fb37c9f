"""B7 services: the data path through a VIP against straight to the pod, and how fast a
backend change reaches every switch, against B2's lease event in the same run.

- `dataplane`: an emulated cluster (mininet/vxcluster.py: 2 vxflow nodes, one pod
  each). The pod on n2 serves iperf3 and mininet/namesrv.py; a service maps a VIP
  to it. Rounds alternate VIP / pod IP: `iperf3 -J -t T` (TCP throughput), then N
  sequential TCP connections, each answered with one line (connection rate). The
  direct path is measured with the service in place (its reply hooks too).
- `control`: S netdev bridges in one ovs-vswitchd (B2's setup, L leases) with one
  service of K backends. Alternately, R times each: a new lease (B2's event: until
  every bridge's flow monitor reports the flow) and one backend added to or taken
  from the service (until every bridge forwards the group-mod, OFPT_REQUESTFORWARD,
  which ovs-vswitchd sends in the pass that commits it). Both from the etcd put.

Run: `python -m bench.b7_services` (root). The control part runs in a network
namespace of its own (bench/isolation.py); the data plane builds its Mininet
cluster in the root namespace, as B4 does (per-run underlay block and tag).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.b2_convergence import LeaseWatcher, RealSwitches
from bench.b4_dataplane import iperf
from bench.cluster_env import environment
from bench.etcdload import put_lease
from bench.isolation import isolate
from bench.leasegen import cluster, lease
from bench.stats import median, summary
from flows.services import group_id
from leases.model import Backend, Service, ServicePort
from leases.services import service_to_json
from vxflow.demo import cluster_module

MODULE = "bench.b7_services"
log = logging.getLogger(MODULE)
SERVICE_NETWORK = IPv4Network("198.20.0.0/16")
VIP = "198.20.0.10"
NAME_PORT = 8080
IPERF_PORT = 5201
NAMESRV = str(Path(__file__).resolve().parents[1] / "mininet" / "namesrv.py")
GOAL_THROUGHPUT_RATIO = 0.8
GOAL_P99_OVER_B2_S = 0.005


# -- the data plane ----------------------------------------------------------------------


def _connections(client, address: str, count: int) -> dict[str, Any]:
    out = subprocess.run(
        ["mnexec", "-a", str(client.pid), sys.executable, NAMESRV, "connect", address,
         str(NAME_PORT), str(count)],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} of {count} connections to {address} failed")
    return {"connections": count, "seconds": result["seconds"],
            "per_s": count / result["seconds"]}  # fmt: skip


def dataplane(rounds: int, seconds: int, connections: int) -> dict[str, Any]:
    from leases.registry import Registry

    vx = cluster_module()
    spec = vx.ClusterSpec(nodes=2, pods=1)
    samples: dict[str, dict[str, list]] = {k: {"iperf": [], "connect": []} for k in ("vip", "pod")}
    with vx.Cluster(spec, progress=log.info) as c:
        client, backend = (c.pods_of(n)[0] for n in c.vxflow_nodes)
        server = backend.popen([sys.executable, NAMESRV, "serve", backend.name, str(NAME_PORT)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            if server.stdout.readline().strip() != "listening":
                raise RuntimeError("the name server did not start")
            with Registry(c.etcd_endpoint, spec.prefix) as registry:
                registry.set_service_network(str(SERVICE_NETWORK))
                registry.put_service({
                    "Name": "bench", "VIP": VIP, "Backends": [{"IP": str(backend.addr)}],
                    "Ports": [{"Port": IPERF_PORT}, {"Port": NAME_PORT}],
                })  # fmt: skip
            _wait_reachable(client, VIP)
            targets = {"vip": VIP, "pod": str(backend.addr)}
            for address in targets.values():  # warm both paths before measuring
                _connections(client, address, 20)
            for i in range(rounds):
                for kind, address in targets.items():
                    samples[kind]["iperf"].append(iperf(client, backend, seconds, address))
                    samples[kind]["connect"].append(_connections(client, address, connections))
                    log.info("round %d %s: %.0f Mbit/s, %.0f connections/s", i + 1, kind,
                             samples[kind]["iperf"][-1]["received_bps"] / 1e6,
                             samples[kind]["connect"][-1]["per_s"])  # fmt: skip
        finally:
            server.kill()
            server.wait()
    s: dict[str, Any] = {
        kind: {
            "tcp_bps_median": median([r["received_bps"] for r in x["iperf"]]),
            "connections_per_s_median": median([r["per_s"] for r in x["connect"]]),
        }
        for kind, x in samples.items()
    }
    s["throughput_ratio_vip_over_pod"] = s["vip"]["tcp_bps_median"] / s["pod"]["tcp_bps_median"]
    s["connection_rate_ratio_vip_over_pod"] = (
        s["vip"]["connections_per_s_median"] / s["pod"]["connections_per_s_median"]
    )
    s["throughput_goal_met"] = s["throughput_ratio_vip_over_pod"] >= GOAL_THROUGHPUT_RATIO
    return {"rounds": rounds, "iperf_seconds": seconds, "connections_per_round": connections,
            "samples": samples, "summary": s}  # fmt: skip


def _wait_reachable(client, address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _connections(client, address, 1)
            return
        except (RuntimeError, subprocess.CalledProcessError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- the control plane -------------------------------------------------------------------


def _service(backends: int, extra: bool) -> Service:
    """The bench's service: one TCP port on `backends` (+1 if `extra`) backends, each the
    .10 of one of the cluster's lease subnets (flow fields only: no traffic here)."""
    chosen = [lease(i).subnet.network_address + 10 for i in range(backends + int(extra))]
    return Service("bench", SERVICE_NETWORK.network_address + 10,
                   (ServicePort(80, "TCP", NAME_PORT),), tuple(Backend(ip) for ip in chosen))  # fmt: skip


def control(switches: int, leases: int, backends: int, repeat: int, gap: float) -> dict[str, Any]:
    c = cluster(leases)
    out: dict[str, Any] = {"switches": switches, "leases": leases, "backends": backends,
                           "repetitions": repeat}  # fmt: skip
    with environment(c) as env:
        registry = env.registry
        registry.set_service_network(str(SERVICE_NETWORK))
        key = registry.keys.service("bench")
        registry.etcd.put(key, service_to_json(_service(backends, extra=False)))
        gid = group_id(SERVICE_NETWORK, _service(backends, False), 0)
        sw = RealSwitches(env, switches, groups=True)
        watcher = LeaseWatcher(env)
        try:
            out["switch"] = sw.label
            out["initial_sync_s"] = sw.initial_sync()
            lease_lat, group_lat = [], []
            for i in range(repeat):
                new = lease(leases + i)
                before = sw.before()
                t0 = time.monotonic()
                put_lease(registry, new, env.etcd_lease)
                lease_lat.append(max(sw.landed(new, before)) - t0)
                watcher.wait(new.subnet)
                time.sleep(gap)
                before_groups = sw.obs.group_mod_counts()
                t0 = time.monotonic()
                registry.etcd.put(key, service_to_json(_service(backends, extra=i % 2 == 0)))
                landed = sw.obs.wait_group_mods({n: k + 1 for n, k in before_groups.items()}, 30)
                wrong = {n for n in landed if sw.obs.group_mods(n)[-1][1] != gid}
                if wrong:
                    raise RuntimeError(f"another group than {gid} changed on {sorted(wrong)[:5]}")
                group_lat.append(max(landed.values()) - t0)
                time.sleep(gap)
        finally:
            watcher.close()
            sw.close()
    out["lease_latency_s"] = summary(lease_lat)
    out["group_latency_s"] = summary(group_lat)
    out["lease_samples_s"], out["group_samples_s"] = lease_lat, group_lat
    out["p99_group_minus_lease_s"] = out["group_latency_s"]["p99"] - out["lease_latency_s"]["p99"]
    out["goal_met"] = out["p99_group_minus_lease_s"] <= GOAL_P99_OVER_B2_S
    return out


@click.command()
@click.option("--part", "parts", multiple=True, type=click.Choice(["dataplane", "control"]),
              default=("dataplane", "control"), show_default=True)
@click.option("--rounds", default=3, show_default=True, help="Data plane: alternating VIP/pod rounds.")
@click.option("--seconds", default=5, show_default=True, help="Data plane: iperf3 duration per round.")
@click.option("--connections", default=300, show_default=True,
              help="Data plane: sequential TCP connections per round.")
@click.option("--switches", "-s", default=50, show_default=True, help="Control: bridges.")
@click.option("--leases", default=1000, show_default=True, help="Control: leases before the first new one.")
@click.option("--backends", default=10, show_default=True, help="Control: the service's backends.")
@click.option("--repeat", default=100, show_default=True,
              help="Control: new leases, and as many backend changes, alternating.")
@click.option("--gap", default=0.02, show_default=True, help="Control: seconds between events.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(parts: tuple[str, ...], rounds: int, seconds: int, connections: int, switches: int,
         leases: int, backends: int, repeat: int, gap: float, results_dir: Path | None) -> None:  # fmt: skip
    """B7: services: TCP throughput and connection rate through a VIP vs to the pod, and a
    backend change to every switch vs a new lease (B2), in one run.

    Needs root. Writes b7_services.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result: dict[str, Any] = {}
    if "control" in parts:  # in a namespace of its own (a child process)
        args = ["--switches", str(switches), "--leases", str(leases), "--backends",
                str(backends), "--repeat", str(repeat), "--gap", str(gap)]  # fmt: skip
        result["control"] = _isolated_control(args)
    if "dataplane" in parts:
        result["dataplane"] = dataplane(rounds, seconds, connections)
    path = report.save("b7_services", MODULE, result, results_dir)
    if "dataplane" in result:
        s = result["dataplane"]["summary"]
        click.echo(f"through the VIP / to the pod: TCP {s['throughput_ratio_vip_over_pod']:.2f} "
                   f"({s['vip']['tcp_bps_median'] / 1e6:,.0f} / {s['pod']['tcp_bps_median'] / 1e6:,.0f} Mbit/s), "
                   f"connections {s['connection_rate_ratio_vip_over_pod']:.2f} "
                   f"({s['vip']['connections_per_s_median']:,.0f} / {s['pod']['connections_per_s_median']:,.0f} /s)")  # fmt: skip
    if "control" in result:
        c = result["control"]
        click.echo(f"S={c['switches']}: backend change p99 {report.ms(c['group_latency_s']['p99'])}, "
                   f"new lease p99 {report.ms(c['lease_latency_s']['p99'])} "
                   f"(difference {report.ms(c['p99_group_minus_lease_s'])}, goal <= 5 ms)")  # fmt: skip
    click.echo(f"results: {path}")


def _isolated_control(args: list[str]) -> dict[str, Any]:
    """The control part in a private network namespace: `python -m bench.b7_services
    control-only ...` re-run by bench/isolation.py, its result handed back as JSON."""
    out = subprocess.run([sys.executable, "-m", MODULE, "--control-only", *args],
                         capture_output=True, text=True, timeout=3600)  # fmt: skip
    sys.stderr.write(out.stderr)
    if out.returncode:
        raise click.ClickException(f"the control part failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--control-only", is_flag=True, required=True, hidden=True)
@click.option("--switches", type=int, required=True)
@click.option("--leases", type=int, required=True)
@click.option("--backends", type=int, required=True)
@click.option("--repeat", type=int, required=True)
@click.option("--gap", type=float, required=True)
def control_only(control_only: bool, switches: int, leases: int, backends: int, repeat: int,
                 gap: float) -> None:  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    click.echo(json.dumps(control(switches, leases, backends, repeat, gap)))


if __name__ == "__main__":
    if "--control-only" in sys.argv:
        rc = isolate(MODULE)
        sys.exit(control_only() if rc is None else rc)
    main()
