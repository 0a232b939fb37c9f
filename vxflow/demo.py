"""`vxflow demo`: the seed document's walk-through, on an emulated vxflow cluster.

The seed shows a flannel cluster: the leases in etcd, a node's routes with the
overlay Network sent into the VXLAN device, pings to containers on other nodes
with ttl=63 and `tcpdump -T vxlan` showing the VNI. The demo builds the same
picture with vxflow (mininet/vxcluster.py: a private etcd, the controller, an
agent per node, pods) and checks each claim instead of only printing it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import click

REPO = Path(__file__).resolve().parents[1]
CLUSTER_MODULE = REPO / "mininet" / "vxcluster.py"
SEED_PREFIX = "/atomic.io/network"  # the seed cluster's etcd prefix


def cluster_module() -> ModuleType:
    """mininet/vxcluster.py, loaded by path: mininet/ holds scripts, never a package.

    The demo, the e2e tests and bench share this one loader, so they share one module.
    """
    module = sys.modules.get("vxcluster")
    if module is not None:
        return module
    if not CLUSTER_MODULE.exists():
        raise click.ClickException(
            "`vxflow demo` needs a vxflow source tree: it runs the emulated cluster of "
            f"mininet/vxcluster.py, which an installed package does not hold ({CLUSTER_MODULE} "
            "is missing); run it from a checkout, after scripts/setup.sh"
        )
    spec = importlib.util.spec_from_file_location("vxcluster", CLUSTER_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vxcluster"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Checks:
    """What the demo claims, each with whether it held."""

    results: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, name: str, ok: bool) -> bool:
        self.results.append((name, ok))
        click.secho(f"   {'ok ' if ok else 'FAIL'} {name}", fg="green" if ok else "red")
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for _, ok in self.results)


def _section(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


def _show(prompt: str, output: str, limit: int = 40) -> None:
    click.secho(f"{prompt}", fg="cyan")
    lines = output.rstrip().splitlines()
    for line in lines[:limit]:
        click.echo(f"   {line}")
    if len(lines) > limit:
        click.echo(f"   ... ({len(lines) - limit} more lines)")


def _run_vxflow(cluster, *args: str) -> subprocess.CompletedProcess:
    """A `vxflow` subcommand against the cluster's etcd, as an operator would run it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # eventlet's deprecation notice is noise here
    return subprocess.run(
        [sys.executable, "-m", "vxflow", *args, *cluster.etcd_flags()],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def _vxflow(cluster, *args: str) -> str:
    """Its output; a failure ends the demo."""
    res = _run_vxflow(cluster, *args)
    if res.returncode != 0:
        raise click.ClickException(f"vxflow {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def _etcdctl(command_line: str) -> str:
    """An etcdctl line exactly as the demo shows it (etcd's own client reading flannel's keys)."""
    res = subprocess.run(
        ["sh", "-c", command_line], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise click.ClickException(f"{command_line} failed: {res.stderr.strip()}")
    return res.stdout


def _ttls(ping_output: str) -> set[str]:
    return set(re.findall(r"ttl=(\d+)", ping_output))


def walk_through(cluster, checks: Checks) -> None:
    """Show and check what the seed shows, on vxflow."""
    spec = cluster.spec
    n1, n2, n3 = cluster.vxflow_nodes[:3]
    local, remote, far = cluster.pods_of(n1)[0], cluster.pods_of(n2)[0], cluster.pods_of(n3)[0]

    _section(f"etcd: the network config and the leases under {spec.prefix}")
    _show("$ vxflow config show", _vxflow(cluster, "config", "show"))
    leases = _vxflow(cluster, "leases", "list")
    _show("$ vxflow leases list", leases)
    checks.check(
        f"{len(cluster.nodes)} leases, one per node",
        all(str(n.underlay_ip) in leases for n in cluster.nodes),
    )
    raw = _etcdctl(f"{cluster.etcdctl_command}/subnets")
    _show(f"$ {cluster.etcdctl_command}/subnets", raw, limit=12)
    checks.check(
        "etcdctl shows flannel's lease keys and values",
        all(f'"PublicIP":"{n.underlay_ip}"' in raw for n in cluster.nodes),
    )

    if spec.tls:
        _section("TLS: every switch's OpenFlow session and every etcd client")
        deadline = time.monotonic() + 15  # ovs-vswitchd writes the status lazily (seconds)
        while True:
            status = n1.ovs.vsctl("--columns=target,is_connected", "list", "controller")
            if "is_connected        : true" in status or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        _show(f"{n1.name}$ ovs-vsctl --columns=target,is_connected list controller", status)
        checks.check(f"{n1.name}'s switch connected over ssl:",
                     "ssl:" in status and "is_connected        : true" in status)  # fmt: skip

    _section(f"{n1.name} (underlay {n1.underlay_ip}): the overlay is routed into the gateway port")
    routes = n1.cmd("ip route")
    _show(f"{n1.name}$ ip r", routes)
    checks.check(
        f"{spec.network} routed into vxgw0",
        re.search(rf"^{re.escape(str(spec.network))} dev vxgw0", routes, re.M) is not None,
    )

    _section("pod -> pod on another node: one router hop (ttl=63)")
    out = local.cmd(f"ping -n -c 3 -W 2 {remote.addr}")
    _show(f"{local.name} ({local.addr})$ ping -c 3 {remote.addr}", out)
    checks.check(f"{local.name} -> {remote.name}: 3 replies, ttl=63",
                 " 0% packet loss" in out and _ttls(out) == {"63"})  # fmt: skip

    _section("node -> pod on another node (ttl=63)")
    out = n1.cmd(f"ping -n -c 3 -W 2 {far.addr}")
    _show(f"{n1.name}$ ping -c 3 {far.addr}", out)
    checks.check(f"{n1.name} -> {far.name}: 3 replies, ttl=63",
                 " 0% packet loss" in out and _ttls(out) == {"63"})  # fmt: skip

    _section(f"on the wire at {n2.name}: VXLAN, vni {spec.vni}, UDP port {spec.port}")
    seen, _ = cluster.capture(n2, lambda: local.cmd(f"ping -n -c 2 -W 2 {remote.addr}"))
    _show(f"{n2.name}$ tcpdump -n -T vxlan -i eth0 udp port {spec.port}", seen)
    checks.check(f"VXLAN flags [I], vni {spec.vni}, inner ICMP {local.addr} > {remote.addr}",
                 f"vni {spec.vni}" in seen and "VXLAN, flags [I] (0x08)" in seen
                 and f"{local.addr} > {remote.addr}: ICMP echo request" in seen)  # fmt: skip


def containers(cluster, checks: Checks) -> None:
    """Containers from a real runtime (podman + runc, CNI network vxflow) ping across nodes.

    Each podman command runs exactly as shown, in its node's namespace with
    the cluster's private podman settings (mininet/vxpodman.py).
    """
    n1, n2 = cluster.vxflow_nodes[:2]
    podman = cluster.podman
    image = cluster_module().vxpodman.IMAGE
    _section("containers: podman + runc on two nodes, their network is vxflow-cni")
    click.echo(f"   (podman's settings: {podman.node_dir(n1) / 'containers.conf'}; "
               f"the network: {podman.node_dir(n1) / 'net.d'})")  # fmt: skip
    for node, name in ((n1, "web1"), (n2, "web2")):
        cid = podman.run(node, name, "sleep", "3600")
        _show(f"{node.name}$ podman run --detach --name {name} --network vxflow "
              f"--cap-add NET_RAW {image} sleep 3600", cid[:12])  # fmt: skip
    address = podman.address("web2")
    _show(f"{n1.name}$ podman exec web1 ip -4 addr show eth0",
          podman.exec("web1", "ip", "-4", "addr", "show", "eth0").stdout)  # fmt: skip
    deadline = time.monotonic() + 10  # until the agent published it and the flows landed
    while podman.exec("web1", "ping", "-c", "1", "-W", "1", address).returncode != 0:
        if time.monotonic() > deadline:
            break
    out = podman.exec("web1", "ping", "-c", "3", "-W", "2", address).stdout
    _show(f"{n1.name}$ podman exec web1 ping -c 3 -W 2 {address}", out)
    checks.check(f"container web1 on {n1.name} -> web2 on {n2.name}: 3 replies, ttl=63",
                 " 0% packet loss" in out and _ttls(out) == {"63"})  # fmt: skip
    port = n2.ovs.vsctl("--bare", "--columns=name", "find", "Interface",
                        f"external_ids:container_id={podman.names['web2']}").strip()  # fmt: skip
    for node, name in ((n1, "web1"), (n2, "web2")):
        podman.rm(name)
        click.secho(f"{node.name}$ podman rm --force --time 0 {name}", fg="cyan")
    gone = port and port not in n2.ovs.vsctl("list-ports", "br-int").split()
    checks.check(f"podman rm removed web2's port {port or '(none found)'} from {n2.name}'s br-int",
                 bool(gone))  # fmt: skip


def health(cluster, checks: Checks, timeout: float = 20) -> None:
    """`vxflow status` on the whole cluster, pods and containers included: exit 0 once every
    switch has settled (polled until `timeout`)."""
    _section("the cluster's health")
    deadline = time.monotonic() + timeout
    while (res := _run_vxflow(cluster, "status")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    _show("$ vxflow status", res.stdout + res.stderr)
    checks.check("vxflow status: healthy (exit status 0)", res.returncode == 0)


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--keep", is_flag=True,
              help="Leave the cluster up with the Mininet CLI; tear down when it exits.")  # fmt: skip
@click.option("--pods", type=click.IntRange(1, 20), default=2, show_default=True,
              help="Pods per node.")  # fmt: skip
@click.option("--prefix", default=SEED_PREFIX, show_default=True,
              help="etcd prefix of the network (the seed's).")  # fmt: skip
@click.option("--tls", is_flag=True,
              help="Secure every channel: certificates from `vxflow pki`, OpenFlow over TLS, "
                   "etcd over TLS with client certificates and a user limited to the prefix.")  # fmt: skip
def demo(keep: bool, pods: int, prefix: str, tls: bool) -> None:
    """Run the main job on one machine (as root): a 3-node emulated vxflow cluster.

    Starts a private etcd on the emulated underlay, writes the network config
    (198.19.0.0/16, SubnetLen 24, vxlan VNI 1), starts the controller and, per
    node, a private Open vSwitch and `vxflow agent`, with pods behind each
    node. Then shows and checks the seed's picture: the leases, a node's route
    of the Network into the gateway port, pod->remote pod and node->remote pod
    pings with ttl=63, and a `tcpdump -T vxlan` excerpt with the VNI; then
    containers that podman + runc start on two nodes, attached by vxflow-cni,
    ping each other (skipped, saying why, where podman cannot run); then
    `vxflow status` on it all must exit 0. Tears everything down and exits 0
    if every check held, 1 otherwise.
    """
    if os.geteuid() != 0:
        raise click.ClickException("the demo needs root (network namespaces, Open vSwitch)")
    vxcluster = cluster_module()
    lacking = vxcluster.vxpodman.missing()  # podman cannot run here at all: skip that step
    spec = vxcluster.ClusterSpec(nodes=3, pods=pods, prefix=prefix, containers=not lacking,
                                 tls=tls)  # fmt: skip
    progress: Callable[[str], None] = lambda msg: click.echo(f" .. {msg}")  # noqa: E731
    cluster = vxcluster.Cluster(spec=spec, progress=progress)
    checks = Checks()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (`&`)
        signal.signal(sig, _interrupt)
    click.secho("vxflow demo: a 3-node cluster on an emulated underlay (198.18.0.0/24)", bold=True)
    try:
        cluster.start()
        walk_through(cluster, checks)
        if lacking:
            _section("containers: skipped")
            click.echo(f"   podman cannot run on this machine: missing {', '.join(lacking)} "
                       "(scripts/setup.sh installs them)")  # fmt: skip
        else:
            containers(cluster, checks)
        health(cluster, checks)
        _section("summary")
        for name, ok in checks.results:
            click.echo(f"   {'ok ' if ok else 'FAIL'} {name}")
        if keep:
            from mininet.cli import CLI

            click.echo("\n" + cluster.cli_banner())
            CLI(cluster.net)
    except KeyboardInterrupt:
        click.echo("interrupted")
        checks.check("not interrupted", False)
    except Exception as e:  # any failure: report it, tear down, exit non-zero
        click.secho(f"demo failed: {e}", fg="red", err=True)
        checks.check("cluster came up and every step ran", False)
    finally:
        try:
            click.echo(" .. tearing down")
        finally:  # also when stdout is gone (a closed pipe): teardown never depends on it
            cluster.stop()
    if not checks.passed:
        sys.exit(1)
    click.secho("all checks passed; cluster torn down", fg="green", bold=True)
