"""B6 pod attach latency: vxflow's CNI ADD, and from ADD to the first ping answered across nodes,
beside the plain `bridge` + `host-local` plugins' ADD (what flannel's CNI plugin delegates to).

The cluster is mininet/vxcluster.py's (2 vxflow nodes with agent and
controller, one Mininet pod each). Per container, in turn:

- fast: the `vxflow` executable that `vxflow-cni install` writes (the thin
  client, cni/client.py), whose call node n1's agent runs (cni/server.py);
- in-process: `vxflow-cni` itself, the full plugin in its own process;

each in a fresh netns, ADD run inside node n1 as a runtime runs it (CNI_*
environment, the conflist entry on stdin, host-local in CNI_PATH); at once a
ping from the pod on n2 to the new address, every 2 ms (`ping -D -i 0.002
-c 1 -w 5`): reachable = the timestamp of its first reply. ADD time is the
plugin process's wall time. Then DEL (timed), the netns removed.
- bridge: the same ADD/DEL of Debian's `bridge` plugin with the delegate
  configuration flannel's CNI plugin writes for kube-flannel's default
  (isGateway, isDefaultGateway, hairpinMode, mtu, host-local with the node's
  subnet and a route to the Network), in a host namespace of its own.

Also each path's floor, VERSION: the fast client's start-up plus a round
trip to the agent; `vxflow-cni`'s interpreter start plus the spec module;
and below those `nsenter` running `/bin/true`, and the venv's bare
interpreter (`python -IS`, exiting at once), the least a Python client costs.
Goals (BENCHMARKS.md), judged on the fast path: ADD <= 2x bridge ADD (p50),
ADD -> reachable from another node p99 <= 150 ms. Mininet builds in the root
namespace (per-run underlay /27 and tag), so this one is not run in
bench/isolation.py's namespace. Run: `python -m bench.b6_attach`.
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
STEP = re.compile(r"\b(ovsdb|ipam|veth|port|container|ofport|served by the agent in) ([\d.]+) ms")


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
        "agentSocket": str(cluster.cni_socket_path(node)),
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


PATHS = ("fast", "inproc")  # the installed client served by the agent; vxflow-cni in-process
STEPS = ("ovsdb", "ipam", "veth", "port", "container", "ofport")
SERVED = "served by the agent in"  # the server's own time for a call (fast path only)


def install_client(workdir: Path) -> str:
    """`vxflow-cni install DIR`, as the README has it; the fast executable's path."""
    folder = workdir / "bin"
    folder.mkdir()
    subprocess.run([str(VXFLOW_CNI), "install", str(folder)], check=True, capture_output=True)
    return str(folder / "vxflow")


FLOORS = {  # what every call of a path pays before its own work (B6 wraps each in nsenter)
    "nsenter_floor_s": ["/bin/true"],
    "python_floor_s": [str(VXFLOW_CNI.parent / "python"), "-IS", "-c", "import posix; posix._exit(0)"],
}


def floor_call(argv: list[str], netns_of_host: str) -> float:
    """Wall time of `argv` run as B6 runs a plugin (inside the host namespace), doing nothing."""
    t0 = time.perf_counter()
    subprocess.run(["nsenter", f"--net={netns_of_host}", *argv], check=True)
    return time.perf_counter() - t0


def version_call(exe: str, netns_of_host: str, conf: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(["nsenter", f"--net={netns_of_host}", exe], input=json.dumps(conf).encode(),
                   env={**os.environ, "CNI_COMMAND": "VERSION"}, capture_output=True, check=True)  # fmt: skip
    return time.perf_counter() - t0


def measure(containers: int) -> dict[str, Any]:
    vx = cluster_module()
    spec = vx.ClusterSpec(nodes=2, pods=1)
    keys = [f"{path}_{what}_s" for path in PATHS for what in ("add", "reachable", "del", *STEPS)]
    keys += ["fast_served_s", "bridge_add_s", "bridge_del_s", "fast_version_s",
             "inproc_version_s", *FLOORS]
    samples: dict[str, list[float]] = {key: [] for key in keys}
    with vx.Cluster(spec, progress=log.info) as cluster:
        n1, n2 = cluster.vxflow_nodes
        watcher = cluster.pods_of(n2)[0]
        workdir = cluster.workdir / "b6"
        workdir.mkdir()
        vxflow_conf, bridge_conf = confs(cluster, n1, workdir)
        exes = {"fast": install_client(workdir), "inproc": str(VXFLOW_CNI)}
        node_ns = f"/proc/{n1.pid}/ns/net"
        tag = cluster.spec.tag
        bridge_host = netns(f"{tag}-b6h")
        made = [f"{tag}-b6h"]
        try:
            for i in range(containers):
                for path in PATHS:
                    name = f"{tag}-b6{path[0]}{i}"
                    sandbox = netns(name)
                    made.append(name)
                    t0 = time.time()
                    took, result, stderr = plugin(exes[path], "ADD", node_ns, vxflow_conf,
                                                  name, sandbox)  # fmt: skip
                    address = result["ips"][0]["address"].split("/")[0]
                    samples[f"{path}_reachable_s"].append(reachable_at(watcher, address) - t0)
                    samples[f"{path}_add_s"].append(took)
                    for step, ms in STEP.findall(stderr):  # the plugin's own account of its ADD
                        key = "served" if step == SERVED else step
                        samples[f"{path}_{key}_s"].append(float(ms) / 1e3)
                    samples[f"{path}_del_s"].append(
                        plugin(exes[path], "DEL", node_ns, vxflow_conf, name, sandbox)[0])  # fmt: skip
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

                for path in PATHS:
                    samples[f"{path}_version_s"].append(version_call(exes[path], node_ns,
                                                                     vxflow_conf))  # fmt: skip
                for key, argv in FLOORS.items():
                    samples[key].append(floor_call(argv, node_ns))
                log.info("%d/%d: ADD fast %.1f ms, in-process %.1f ms, bridge %.1f ms; "
                         "reachable fast %.1f ms", i + 1, containers,
                         samples["fast_add_s"][-1] * 1e3, samples["inproc_add_s"][-1] * 1e3,
                         samples["bridge_add_s"][-1] * 1e3,
                         samples["fast_reachable_s"][-1] * 1e3)  # fmt: skip
        finally:
            for name in reversed(made):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
    stats = {key: summary(values) for key, values in samples.items() if values}
    bridge = stats["bridge_add_s"]["p50"]
    ratio = stats["fast_add_s"]["p50"] / bridge
    return {
        "containers": containers,
        "samples": samples,
        "stats": stats,
        "summary": {
            "add_ratio_p50_fast_over_bridge": ratio,
            "add_ratio_p50_inproc_over_bridge": stats["inproc_add_s"]["p50"] / bridge,
            "add_goal_met": ratio <= 2.0,
            "reachable_p99_s": stats["fast_reachable_s"]["p99"],
            "reachable_goal_met": stats["fast_reachable_s"]["p99"] <= 0.150,
        },
    }


@click.command()
@click.option("--containers", default=50, show_default=True, help="Attachments per plugin.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(containers: int, results_dir: Path | None) -> None:
    """B6: pod attach latency, vxflow's CNI (agent-served and in-process) vs the bridge plugin.

    Needs root; builds a Mininet cluster (2 vxflow nodes, one pod each) and
    namespaces of its own. Writes b6_attach.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(containers)
    path = report.save("b6_attach", MODULE, result, results_dir)
    st, s = result["stats"], result["summary"]
    for key, label in (("fast_add_s", "fast ADD"), ("inproc_add_s", "in-process ADD"),
                       ("bridge_add_s", "bridge ADD"), ("fast_reachable_s", "fast ADD -> reachable"),
                       ("fast_version_s", "fast VERSION"), ("inproc_version_s", "in-process VERSION")):  # fmt: skip
        click.echo(f"{label:22s} p50 {report.ms(st[key]['p50'])}  p99 {report.ms(st[key]['p99'])}")
    click.echo(f"ADD ratio fast/bridge (p50) {s['add_ratio_p50_fast_over_bridge']:.2f} "
               f"(goal <= 2: {'met' if s['add_goal_met'] else 'NOT met'}); reachable p99 "
               f"{report.ms(s['reachable_p99_s'])} (goal <= 150 ms: "
               f"{'met' if s['reachable_goal_met'] else 'NOT met'})")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
