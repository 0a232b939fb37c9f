"""Checks on a running emulated cluster: pings, connectivity, captures (a Cluster mixin)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

from mininet.node import Host
from vxnodes import Pod, VxflowNode


class ClusterChecks:
    """What tests and the demo ask of a cluster; needs `pods`, `nodes`, `pods_of`, `spec`
    (and `replicas`, `restart_controller` to restart a controller)."""

    def ping(self, src: Host, dst: IPv4Address | str, count: int = 1, wait: float = 1) -> str:
        return src.cmd(f"ping -n -c {count} -W {wait} {dst}")

    def reachable(self, src: Host, dst: IPv4Address | str) -> bool:
        return " 0% packet loss" in self.ping(src, dst)

    def wait_connected(self, timeout: float = 60) -> float:
        """Until the first pod of every node pings every pod of every other node.

        So every node sends and every pod (its endpoint published, its flows
        in place) answers; returns the seconds it took.
        """
        start = time.monotonic()
        pending = [
            (pods[0], b)
            for node in self.nodes
            if (pods := self.pods_of(node))
            for other in self.nodes
            if other is not node
            for b in self.pods_of(other)
        ]
        while pending:
            pending = [(a, b) for a, b in pending if not self.reachable(a, b.addr)]
            if pending and time.monotonic() - start > timeout:
                names = ", ".join(f"{a.name}->{b.name}" for a, b in pending)
                raise RuntimeError(f"no overlay connectivity after {timeout:.0f}s: {names}")
        return time.monotonic() - start

    def controller_connected(self, node: VxflowNode) -> bool:
        """Whether the node's br-int holds an OpenFlow connection to the controller now."""
        out = node.ovs.vsctl("--columns=is_connected", "--bare", "list", "Controller")
        return "true" in out.split()

    def wait_controller_connected(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.controller_connected(n) for n in self.vxflow_nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"switches not connected to the controller after {timeout}s")
            time.sleep(0.2)

    def restart_controller_connected(self, index: int = 0, timeout: float = 30) -> None:
        """A new process for controller replica `index` on its port, and every switch
        connected again."""
        old = self.replicas[index].proc.pid
        self.restart_controller(index)
        if self.replicas[index].proc.pid == old:
            raise RuntimeError("the controller was not restarted")
        self.wait_controller_connected(timeout)

    def capture(
        self, node: Host, action: Callable[[], str], count: int = 4, timeout: float = 15
    ) -> tuple[str, str]:
        """tcpdump -T vxlan on the node's underlay port while `action` runs.

        Returns (capture, action's result); the capture starts listening first
        and ends after `count` packets or `timeout` seconds.
        """
        cmd = ["tcpdump", "-l", "-n", "-i", "eth0", "-c", str(count), "-T", "vxlan",
               f"udp port {self.spec.port}"]  # fmt: skip
        dump = subprocess.Popen(
            ["mnexec", "-a", str(node.pid), *cmd],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for line in dump.stderr:  # "listening on eth0 ...": it is capturing now
                if line.startswith("listening on"):
                    break
            result = action()
            try:
                seen, _ = dump.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:  # fewer packets than `count`: show what came
                dump.terminate()
                seen, _ = dump.communicate()
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.communicate()
        return seen, result

    def pairs(self) -> Iterator[tuple[Pod, Pod]]:
        for a in self.pods:
            for b in self.pods:
                if a is not b:
                    yield a, b
