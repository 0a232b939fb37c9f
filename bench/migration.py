"""The migration scenario the e2e test (tests/test_e2e_migrate.py) and B12 share: a TCP
stream and a 100 pps ping to each pod of a flannel-style node while `vxflow migrate` and
`vxflow migrate --rollback` run on it, and the longest gap of each during each run.

Here rather than in tests/ because a benchmark never imports tests/.
"""

from __future__ import annotations

import itertools
import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VXFLOW = str(Path(sys.executable).parent / "vxflow")
STREAM = str(Path(__file__).resolve().parents[1] / "mininet" / "tcp_stream.py")
PORT = 5001


def background(cmd: list[str], stem: Path) -> str:
    """A shell line that starts `cmd` in the background, its output to STEM.log and its PID
    to STEM.pid (what a migration's --start-agent and --start-flanneld run), unless the
    process STEM.pid names runs: as `systemctl start`, run again it starts no second one
    (a --rollback that finishes an interrupted undo may run --start-flanneld again)."""
    return (f"{{ [ -s {stem}.pid ] && kill -0 $(cat {stem}.pid) 2>/dev/null; }} || "
            f"{{ {shlex.join(cmd)} >> {stem}.log 2>&1 < /dev/null & echo $! > {stem}.pid; }}")


def stop_command(pidfile: Path) -> str:
    """A shell line that stops the process of `pidfile` and waits until it is gone."""
    return (f"kill $(cat {pidfile}); while kill -0 $(cat {pidfile}) 2>/dev/null; do "
            "sleep 0.1; done")


def stop_by_pidfile(path: Path, timeout: float = 10) -> None:
    """Stop the process whose PID a shell wrote to `path` (one a command the test handed on
    started in the background); nothing if there is no such file."""
    if not path.exists():
        return
    pid = path.read_text().strip()
    subprocess.run(["kill", "-TERM", pid], capture_output=True)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        subprocess.run(["kill", "-KILL", pid], capture_output=True)


def pod_link(pod) -> tuple[list[str], str]:
    """A pod's IPv4 addresses and MAC, as its kernel has them."""
    link = json.loads(pod.cmd("ip -j addr show dev eth0"))[0]
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                  if a["family"] == "inet"), link["address"]  # fmt: skip


def longest_gap(times: list[float], since: float, until: float) -> float:
    """The longest pause between two samples in `times` that spans part of [since, until]."""
    return max((b - a for a, b in itertools.pairwise(times) if b >= since and a <= until),
               default=float("inf"))  # fmt: skip


@dataclass(frozen=True)
class Window:
    """When one `vxflow migrate` ran: monotonic (the stream's clock) and wall (ping's -D)."""

    what: str
    mono: tuple[float, float]
    wall: tuple[float, float]


@dataclass
class StreamResult:
    """One stream's record: what its server logged, its client's exit and its ping's log."""

    name: str
    pod: str
    client_rc: int
    client_out: str
    lines: list[str]
    ping: str

    @property
    def rows(self) -> list[list[str]]:
        return [line.split() for line in self.lines if line and line[0].isdigit()]

    @property
    def received(self) -> list[float]:
        return [float(t) for t, _ in self.rows]

    @property
    def stamps(self) -> list[float]:
        return [float(line[1:line.index("]")]) for line in self.ping.splitlines()
                if "bytes from" in line]  # fmt: skip

    @property
    def reset(self) -> str | None:
        """Why the stream broke, or None if it closed cleanly."""
        if self.client_rc == 0 and self.lines[-2:] == ["end", ""]:
            return None
        return self.client_out.strip() or (self.lines[-2] if len(self.lines) > 1 else "no data")

    def gaps(self, window: Window) -> dict[str, float]:
        """The longest TCP and ping gap (s) spanning part of `window`."""
        return {"tcp_s": longest_gap(self.received, *window.mono),
                "ping_s": longest_gap(self.stamps, *window.wall)}  # fmt: skip

    def ping_summary(self) -> str:
        """ping's own count: `N packets transmitted, M received, L% packet loss`."""
        return next((line.split(", time")[0] for line in self.ping.splitlines()
                     if "packets transmitted" in line), "no summary")  # fmt: skip


class Traffic:
    """A TCP stream and a 100 pps ping from each source pod to each target pod, running
    until stop(); each stream on its own port, its logs in `workdir`."""

    def __init__(self, sources: list, pods: list, workdir: Path) -> None:
        self.workdir = workdir
        self.stop_file = workdir / "stop"
        self.streams = [(f"{src.name}->{pod.name}", src, pod, PORT + i)
                        for i, src in enumerate(sources) for pod in pods]  # fmt: skip
        self.servers = [pod.popen([sys.executable, STREAM, "server", str(port),
                                   str(self._log(name))])
                        for name, _src, pod, port in self.streams]  # fmt: skip
        time.sleep(0.5)
        self.clients = [src.popen([sys.executable, STREAM, "client", str(pod.addr), str(port),
                                   str(self.stop_file)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                        for _name, src, pod, port in self.streams]  # fmt: skip
        self.pings = [src.popen(["ping", "-n", "-D", "-i", "0.01", str(pod.addr)],
                                stdout=self._log(name, ".ping").open("wb"),
                                stderr=subprocess.STDOUT)
                      for name, src, pod, _port in self.streams]  # fmt: skip

    def _log(self, name: str, suffix: str = "") -> Path:
        return self.workdir / f"{name.replace('->', '-')}{suffix}"

    def stop(self) -> list[StreamResult]:
        """End every stream cleanly and every ping; what each recorded."""
        self.stop_file.touch()
        outputs = [c.communicate(timeout=60)[0].decode() for c in self.clients]
        for ping in self.pings:
            ping.send_signal(signal.SIGINT)
        for proc in (*self.pings, *self.servers):
            proc.wait(timeout=30)
        return [StreamResult(name, pod.name, client.returncode, out,
                             self._log(name).read_text().split("\n"),
                             self._log(name, ".ping").read_text())
                for (name, _src, pod, _port), client, out
                in zip(self.streams, self.clients, outputs, strict=True)]  # fmt: skip


def flannel_cni_state(workdir: Path, first_pod) -> tuple[Path, Path]:
    """flannel's CNI side as kube-flannel leaves it: its conflist, and host-local's store
    holding `first_pod`'s address (the other pod's is found on the bridge); (conf dir, store)."""
    conf_dir, store = workdir / "net.d", workdir / "networks" / "cbr0"
    conf_dir.mkdir()
    store.mkdir(parents=True)
    (conf_dir / "10-flannel.conflist").write_text(json.dumps({
        "name": "cbr0", "cniVersion": "0.3.1",
        "plugins": [{"type": "flannel", "delegate": {"isDefaultGateway": True}},
                    {"type": "portmap", "capabilities": {"portMappings": True}}]}))  # fmt: skip
    (store / str(first_pod.addr)).write_text("container-1\r\neth0")
    return conf_dir, store


class Migrator:
    """`vxflow migrate` and `--rollback` on a flannel-style `node` of a running emulated
    cluster, with flanneld's settings, the agent and flanneld started in the background
    (their logs and PIDs in `workdir`); prepare() first."""

    def __init__(self, cluster, node, workdir: Path) -> None:
        self.cluster, self.node, self.workdir = cluster, node, workdir
        self.agent_pid, self.flanneld_pid = workdir / "agent.pid", workdir / "flanneld.pid"
        self.windows: list[Window] = []

    def prepare(self, pods: list) -> tuple[Path, Path]:
        """OVS installed beside flanneld, the bridge and the node knowing each pod, flannel's
        CNI state; (conf dir, host-local store)."""
        self.node.start_ovs(self.cluster.node_dir(self.node) / "ovs")
        self.cluster.wait_connected()
        for pod in pods:  # the bridge learns each pod's MAC, the node its neighbour entry
            pod.cmd(f"ping -c 1 -W 1 {pod.ip_if.network.network_address + 1}")
        self.conf_dir, self.store = flannel_cni_state(self.workdir, pods[0])
        return self.conf_dir, self.store

    def flags(self) -> list[str]:
        node, cluster = self.node, self.cluster
        return [*cluster.etcd_flags(str(node.underlay_ip)), "--public-ip", str(node.underlay_ip),
                "--subnet-file", str(cluster.subnet_env_path(node)), "--ovsdb",
                node.ovs.db_target, "--stop-agent", stop_command(self.agent_pid),
                "--start-flanneld", background(cluster.flannel_cmd(node), self.flanneld_pid.with_suffix("")),
                "--cni-conf-dir", str(self.conf_dir),
                "--cni-networks-dir", str(self.store.parent),
                "--cni-socket", str(cluster.cni_socket_path(node)),
                "--cni-data-dir", str(self.workdir / "cni"),
                "--state-file", str(self.workdir / "migrate.json")]  # fmt: skip

    def run(self, what: str, *args: str) -> subprocess.CompletedProcess:
        """`vxflow migrate ARGS` on the node, its window recorded; raises if it failed."""
        mono, wall = time.monotonic(), time.time()
        res = subprocess.run(["mnexec", "-a", str(self.node.pid), VXFLOW, "migrate", *args,
                              *self.flags()], capture_output=True, text=True, timeout=180)  # fmt: skip
        self.windows.append(Window(what, (mono, time.monotonic()), (wall, time.time())))
        if res.returncode:
            raise RuntimeError(f"vxflow migrate {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res

    def migrate(self) -> subprocess.CompletedProcess:
        """flanneld is the cluster's own at first, then the one the last rollback started."""
        pid = (self.flanneld_pid.read_text().strip() if self.flanneld_pid.exists()
               else str(self.node.procs["flannel"].pid))  # fmt: skip
        return self.run("migrate", "--flanneld-pid", pid, "--start-agent",
                        background(self.cluster.agent_cmd(self.node), self.agent_pid.with_suffix("")))

    def rollback(self) -> subprocess.CompletedProcess:
        return self.run("rollback", "--rollback")

    def close(self) -> None:
        """Stop the agent and the flanneld a migration or rollback started."""
        stop_by_pidfile(self.agent_pid)
        stop_by_pidfile(self.flanneld_pid)


def gap_rows(results: list[StreamResult], windows: list[Window]) -> list[dict[str, Any]]:
    """Per window and per stream: the longest TCP and ping gap (s)."""
    return [{"what": w.what, "stream": r.name, "pod": r.pod, **r.gaps(w)}
            for w in windows for r in results]  # fmt: skip
