"""B6 pod attach latency: vxflow-cni's ADD, and from ADD to the first ping answered across nodes,
beside the plain `bridge` + `host-local` plugins' ADD (what flannel's CNI plugin delegates to).

The cluster is mininet/vxcluster.py's (2 vxflow nodes with agent and
controller, one Mininet pod each). Per container, alternating:

- vxflow: a fresh netns; `vxflow-cni` ADD run inside node n1 (as a runtime
  runs it: CNI_* environment, the conflist entry on stdin, host-local in
  CNI_PATH); at once a ping from the pod on n2 to the new address, every
  2 ms (`ping -D -i 0.002 -c 1 -w 5`): reachable = the timestamp of its first
  reply. ADD time is the plugin process's wall time. Then DEL (timed), the
  netns removed.
- bridge: the same ADD/DEL of Debian's `bridge` plugin with the delegate
  configuration flannel's CNI plugin writes for kube-flannel's default
  (isGateway, isDefaultGateway, hairpinMode, mtu, host-local with the node's
  subnet and a route to the Network), in a host namespace of its own.

Also the floor of any Python plugin: `vxflow-cni` answering VERSION (the
interpreter's start plus the spec module). Goals (BENCHMARKS.md): vxflow ADD
<= 2x bridge ADD (p50), ADD -> reachable from another node p99 <= 150 ms.
Mininet builds in the root namespace (per-run underlay /27 and tag), so this
one is not run in bench/isolation.py's namespace. Run: `python -m bench.b6_attach`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.stats import summary
from leases.subnet_env import read_subnet_env
from vxflow.demo import cluster_module

MODULE = "bench.b6_attach"
log = logging.getLogger(MODULE)
CNI_PATH = "/usr/lib/cni"
VXFLOW_CNI = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "vxflow-cni"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.M)
STEP = re.compile(r"\b(ovsdb|ipam|veth|port) ([\d.]+) ms")


def plugin(exe: str, command: str, netns_of_host: str, conf: dict, container: str,
           netns: str) -> tuple[float, dict | None, str]:  # fmt: skip
    """Run a CNI plugin as a runtime would, inside the host namespace; (seconds, result, log)."""
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH,
           "VXFLOW_CNI_LOG_LEVEL": "debug"}  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(["nsenter", f"--net={netns_of_host}", exe], input=json.dumps(conf),
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{exe} {command} failed: {res.stdout.strip()} {res.stderr.strip()}")
    return took, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


def netns(name: str) -> str:
    subprocess.run(["ip", "netns", "add", name], check=True)
    return f"/var/run/netns/{name}"


def confs(cluster, node, workdir: Path) -> tuple[dict, dict]:
    """vxflow's conflist entry for `node`, and the bridge delegate flannel would write."""
    env = read_subnet_env(cluster.subnet_env_path(node))
    vxflow = {
        "cniVersion": "1.0.0", "name": "b6vxflow", "type": "vxflow",
        "ovsdb": node.ovs.db_target, "subnetFile": str(cluster.subnet_env_path(node)),
        "dataDir": str(workdir / "vxflow-data"), "isDefaultGateway": True,
        "ipam": {"dataDir": str(workdir / "vxflow-ipam")},
    }  # fmt: skip
    bridge = {  # flannel's doCmdAdd + getDelegateIPAM on kube-flannel's {"hairpinMode", "isDefaultGateway"}
        "cniVersion": "1.0.0", "name": "b6bridge", "type": "bridge", "bridge": "cni0",
        "hairpinMode": True, "isDefaultGateway": True, "isGateway": True, "ipMasq": False,
        "mtu": env.mtu,
        "ipam": {"type": "host-local", "dataDir": str(workdir / "bridge-ipam"),
                 "ranges": [[{"subnet": str(env.subnet.network)}]],
                 "routes": [{"dst": str(env.network)}]},
    }  # fmt: skip
    return vxflow, bridge


def reachable_at(watcher, address: str, timeout: float = 5) -> float:
    """Wall-clock time of the first reply to a 2 ms ping train from `watcher` to `address`."""
    out = watcher.cmd(f"ping -D -n -i 0.002 -c 1 -w {timeout:.0f} {address}")
    m = REPLY.search(out)
    if m is None:
        raise RuntimeError(f"{address} not reachable from {watcher.name} in {timeout}s: {out[-300:]}")
    return float(m[1])


def measure(containers: int) -> dict[str, Any]:
    vx = cluster_module()
    spec = vx.ClusterSpec(nodes=2, pods=1)
    samples: dict[str, list[float]] = {key: [] for key in (
        "vxflow_add_s", "vxflow_reachable_s", "vxflow_del_s", "vxflow_ovsdb_s", "vxflow_ipam_s",
        "vxflow_veth_s",
        "vxflow_port_s", "bridge_add_s", "bridge_del_s", "version_s")}  # fmt: skip
    with vx.Cluster(spec, progress=log.info) as cluster:
        n1, n2 = cluster.vxflow_nodes
        watcher = cluster.pods_of(n2)[0]
        workdir = cluster.workdir / "b6"
        workdir.mkdir()
        vxflow_conf, bridge_conf = confs(cluster, n1, workdir)
        node_ns = f"/proc/{n1.pid}/ns/net"
        tag = cluster.spec.tag
        bridge_host = netns(f"{tag}-b6h")
        made = [f"{tag}-b6h"]
        try:
            for i in range(containers):
                name = f"{tag}-b6c{i}"
                sandbox = netns(name)
                made.append(name)
                t0 = time.time()
                took, result, stderr = plugin(str(VXFLOW_CNI), "ADD", node_ns, vxflow_conf,
                                              name, sandbox)  # fmt: skip
                address = result["ips"][0]["address"].split("/")[0]
                samples["vxflow_reachable_s"].append(reachable_at(watcher, address) - t0)
                samples["vxflow_add_s"].append(took)
                for step, ms in STEP.findall(stderr):  # the plugin's own account of its ADD
                    samples[f"vxflow_{step}_s"].append(float(ms) / 1e3)
                samples["vxflow_del_s"].append(
                    plugin(str(VXFLOW_CNI), "DEL", node_ns, vxflow_conf, name, sandbox)[0])  # fmt: skip
                subprocess.run(["ip", "netns", "del", made.pop()], check=True)

                name = f"{tag}-b6b{i}"
                sandbox = netns(name)
                made.append(name)
                exe = f"{CNI_PATH}/bridge"
                samples["bridge_add_s"].append(
                    plugin(exe, "ADD", bridge_host, bridge_conf, name, sandbox)[0])
                samples["bridge_del_s"].append(
                    plugin(exe, "DEL", bridge_host, bridge_conf, name, sandbox)[0])
                subprocess.run(["ip", "netns", "del", made.pop()], check=True)

                t0 = time.perf_counter()
                subprocess.run([str(VXFLOW_CNI)], input=b"{}", env={**os.environ,
                               "CNI_COMMAND": "VERSION"}, capture_output=True, check=True)  # fmt: skip
                samples["version_s"].append(time.perf_counter() - t0)
                log.info("%d/%d: vxflow ADD %.1f ms, reachable %.1f ms; bridge ADD %.1f ms",
                         i + 1, containers, samples["vxflow_add_s"][-1] * 1e3,
                         samples["vxflow_reachable_s"][-1] * 1e3,
                         samples["bridge_add_s"][-1] * 1e3)  # fmt: skip
        finally:
            for name in reversed(made):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
    stats = {key: summary(values) for key, values in samples.items()}
    ratio = stats["vxflow_add_s"]["p50"] / stats["bridge_add_s"]["p50"]
    return {
        "containers": containers,
        "samples": samples,
        "stats": stats,
        "summary": {
            "add_ratio_p50_vxflow_over_bridge": ratio,
            "add_goal_met": ratio <= 2.0,
            "reachable_p99_s": stats["vxflow_reachable_s"]["p99"],
            "reachable_goal_met": stats["vxflow_reachable_s"]["p99"] <= 0.150,
        },
    }


@click.command()
@click.option("--containers", default=50, show_default=True, help="Attachments per plugin.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(containers: int, results_dir: Path | None) -> None:
    """B6: pod attach latency, vxflow-cni vs the bridge plugin (CNI ADD, ADD -> reachable).

    Needs root; builds a Mininet cluster (2 vxflow nodes, one pod each) and
    namespaces of its own. Writes b6_attach.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(containers)
    path = report.save("b6_attach", MODULE, result, results_dir)
    st, s = result["stats"], result["summary"]
    for key, label in (("vxflow_add_s", "vxflow-cni ADD"), ("bridge_add_s", "bridge ADD"),
                       ("vxflow_reachable_s", "ADD -> reachable"),
                       ("version_s", "vxflow-cni VERSION")):  # fmt: skip
        click.echo(f"{label:20s} p50 {report.ms(st[key]['p50'])}  p99 {report.ms(st[key]['p99'])}")
    click.echo(f"ADD ratio vxflow/bridge (p50) {s['add_ratio_p50_vxflow_over_bridge']:.2f} "
               f"(goal <= 2: {'met' if s['add_goal_met'] else 'NOT met'}); reachable p99 "
               f"{report.ms(s['reachable_p99_s'])} (goal <= 150 ms: "
               f"{'met' if s['reachable_goal_met'] else 'NOT met'})")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
