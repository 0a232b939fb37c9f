"""B11 data-path failover: a node crash, and a backend's failed health check -> its
backend gone from every switch's groups.

An emulated cluster (mininet/vxcluster.py: 3 vxflow nodes, one pod each, agents with
their default 2 s liveness record). mininet/namesrv.py serves in the pods on n2 and n3;
one service has both as backends, with a TCP HealthCheck (PeriodSeconds 1,
FailureThreshold 2 by default). Two kinds of tries, N of each:

- crash: the pod on n1 opens a new connection to the VIP every 1/RATE s while n3's agent
  and ovs-vswitchd are killed -9 (a power loss: no FIN). Measured from the kill to the
  moment the group of every switch still up (n1's, n2's) holds n2's backend only (their
  `dump-groups`, polled), and the connections that failed per crash. Then n3 comes back
  (ovs-vswitchd, its underlay address, its agent) and the try waits until every switch
  holds both backends again.
- check: the server process in n3's pod is killed (pod and node up). Measured from the
  kill to the moment every switch's group (n3's too) holds n2's backend only; then the
  server is started again and the try waits until both are back.

The reference is Kubernetes: a dead node's endpoints go after node-monitor-grace-period
(~40 s by default), during which a client at RATE loses about 40 x RATE / 2 of its new
connections (half go to the dead backend); a failed readiness probe takes
PeriodSeconds x FailureThreshold, plus the endpoint's way to kube-proxy.

Run: `python -m bench.b11_failover` (root).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.stats import summary
from flows.services import group_id
from leases.registry import Registry
from vxflow.demo import cluster_module

MODULE = "bench.b11_failover"
log = logging.getLogger(MODULE)
SERVICE_NETWORK = IPv4Network("198.20.0.0/16")
VIP = "198.20.0.11"
PORT = 8080
NAMESRV = str(Path(__file__).resolve().parents[1] / "mininet" / "namesrv.py")
KUBERNETES_NODE_GRACE_S = 40.0  # node-monitor-grace-period's default


def group_backends(node, gid: int) -> set[str] | None:
    """The backends in group `gid` on `node`'s br-int (None: no such group)."""
    for line in node.ovs.ofctl("dump-groups", "br-int").splitlines():
        if f"group_id={gid}," in line:
            return set(re.findall(r"nat\(dst=([\d.]+):", line))
    return None


def until_groups(nodes, gid: int, want: set[str], timeout: float = 60) -> float:
    """When (time.time()) every one of `nodes` first held exactly `want` in group `gid`."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        while group_backends(node, gid) != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: group {gid} never held {sorted(want)}")
            time.sleep(0.01)
    return time.time()


def serve(pod) -> subprocess.Popen:
    server = subprocess.Popen(["mnexec", "-a", str(pod.pid), sys.executable, NAMESRV, "serve",
                               pod.name, str(PORT)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    if server.stdout.readline().strip() != "listening":
        raise RuntimeError(f"the server in {pod.name} did not start")
    return server


def stream(client, seconds: float, rate: int) -> subprocess.Popen:
    return subprocess.Popen(["mnexec", "-a", str(client.pid), sys.executable, NAMESRV, "stream",
                             VIP, "80", str(seconds), str(rate)], stdout=subprocess.PIPE, text=True)  # fmt: skip


class Bench:
    """The cluster with its servers and service, and one try of each kind."""

    def __init__(self, cluster, period: int, failures: int, rate: int) -> None:
        self.cluster = cluster
        self.rate = rate
        self.n1, self.n2, self.n3 = cluster.vxflow_nodes
        self.client, self.pod2, self.pod3 = (cluster.pods_of(n)[0] for n in cluster.vxflow_nodes)
        self.servers = {p.name: serve(p) for p in (self.pod2, self.pod3)}
        self.both = {str(self.pod2.addr), str(self.pod3.addr)}
        self.check = {"Type": "TCP", "Port": PORT, "PeriodSeconds": period, "TimeoutSeconds": 1,
                      "FailureThreshold": failures, "SuccessThreshold": 1}  # fmt: skip
        with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
            registry.set_service_network(str(SERVICE_NETWORK))
            service = registry.put_service({
                "Name": "b11", "VIP": VIP, "Ports": [{"Port": 80, "TargetPort": PORT}],
                "Backends": [{"IP": str(p.addr)} for p in (self.pod2, self.pod3)],
                "HealthCheck": self.check,
            })  # fmt: skip
        self.gid = group_id(SERVICE_NETWORK, service, 0)
        until_groups(cluster.vxflow_nodes, self.gid, self.both)
        self.underlay = self.n3.sh("ip -4 -o addr show dev br-phy").split()[3]

    def close(self) -> None:
        for server in self.servers.values():
            server.kill()
            server.wait()

    def crash(self, settle: float) -> dict[str, float]:
        seconds = 1.5 + settle
        client = stream(self.client, seconds, self.rate)
        time.sleep(1.5)
        crashed = time.time()
        self.n3.stop_proc("agent", signal.SIGKILL)
        self.n3.ovs.stop_process("ovs-vswitchd", kill=True)
        gone = until_groups((self.n1, self.n2), self.gid, {str(self.pod2.addr)})
        results = json.loads(client.communicate(timeout=seconds + 60)[0])
        failed = [t for t, answer in results if answer is None]
        self.n3.ovs.start_vswitchd()
        self.n3.sh(f"ip addr replace {self.underlay} dev br-phy && ip link set br-phy up")
        self.cluster.start_agent(self.n3)
        until_groups(self.cluster.vxflow_nodes, self.gid, self.both, timeout=120)
        return {"gone_s": gone - crashed, "failed": float(len(failed)),
                "last_failed_s": max(failed) - crashed if failed else 0.0}  # fmt: skip

    def failed_check(self) -> dict[str, float]:
        server = self.servers[self.pod3.name]
        server.kill()
        server.wait()
        killed = time.time()
        gone = until_groups(self.cluster.vxflow_nodes, self.gid, {str(self.pod2.addr)})
        self.servers[self.pod3.name] = serve(self.pod3)
        restarted = time.time()
        back = until_groups(self.cluster.vxflow_nodes, self.gid, self.both)
        return {"gone_s": gone - killed, "back_s": back - restarted}


def measure(crashes: int, checks: int, period: int, failures: int, rate: int,
            settle: float) -> dict[str, Any]:  # fmt: skip
    vx = cluster_module()
    samples: dict[str, list[dict[str, float]]] = {"crash": [], "check": []}
    with vx.Cluster(spec=vx.ClusterSpec(nodes=3, pods=1)) as cluster:
        bench = Bench(cluster, period, failures, rate)
        try:
            for i in range(crashes):
                x = bench.crash(settle)
                samples["crash"].append(x)
                log.info("crash %d: backend gone from every switch's group %.0f ms after the "
                         "kill; %d new connections failed, the last %.0f ms after", i + 1,
                         x["gone_s"] * 1e3, x["failed"], x["last_failed_s"] * 1e3)  # fmt: skip
            for i in range(checks):
                x = bench.failed_check()
                samples["check"].append(x)
                log.info("check %d: backend gone %.0f ms after its server died, back %.0f ms "
                         "after its restart", i + 1, x["gone_s"] * 1e3, x["back_s"] * 1e3)  # fmt: skip
        finally:
            bench.close()
    out: dict[str, Any] = {
        "crashes": crashes, "checks": checks, "rate_per_s": rate,
        "health_check": bench.check, "samples": samples,
        "reference": {"kubernetes_node_grace_s": KUBERNETES_NODE_GRACE_S,
                      "kubernetes_failed_per_crash": KUBERNETES_NODE_GRACE_S * rate / 2,
                      "kubernetes_check_s": period * failures},
    }  # fmt: skip
    for kind, xs in samples.items():
        out[kind] = {key: summary([x[key] for x in xs]) for key in (xs[0] if xs else {})}
    return out


@click.command()
@click.option("--crashes", default=20, show_default=True, help="Node crashes to measure.")
@click.option("--checks", default=20, show_default=True, help="Failed health checks to measure.")
@click.option("--period", default=1, show_default=True, help="The check's PeriodSeconds.")
@click.option("--failures", default=2, show_default=True, help="The check's FailureThreshold.")
@click.option("--rate", default=5, show_default=True,
              help="New connections per second to the VIP during a crash.")
@click.option("--settle", default=6.0, show_default=True,
              help="Seconds of new connections after each crash.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(crashes: int, checks: int, period: int, failures: int, rate: int, settle: float,
         results_dir: Path | None) -> None:  # fmt: skip
    """B11: a node crash and a failed health check -> the backend gone from every switch's
    groups (p50/p99), and new connections failed per crash, beside Kubernetes' ~40 s.

    Needs root. Writes b11_failover.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(crashes, checks, period, failures, rate, settle)
    path = report.save("b11_failover", MODULE, result, results_dir)
    for kind in ("crash", "check"):
        if gone := result[kind].get("gone_s"):
            click.echo(f"{kind:6s} backend gone from every switch: p50 {report.ms(gone['p50'])} "
                       f"p99 {report.ms(gone['p99'])}")  # fmt: skip
    if failed := result["crash"].get("failed"):
        click.echo(f"new connections failed per crash: p50 {failed['p50']:.0f}, max "
                   f"{failed['max']:.0f} (Kubernetes: ~{KUBERNETES_NODE_GRACE_S * rate / 2:.0f})")
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
