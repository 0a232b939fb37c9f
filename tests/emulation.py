"""Emulated nodes for integration tests: namespaces, an underlay, pods.

Follows the verified recipe in docs/architecture.md: each node is a network
namespace with a private OVS (ovsdb/instance.py); `br-phy` (netdev) holds the
node's eth0 and its underlay address; pods are namespaces joined to the node's
br-int by veth with TX checksum offload off. Every name carries a per-run tag
so parallel runs never collide, and everything made is recorded and undone by
`Underlay.destroy()`, also after a failed test. `emulated_cluster()` gives the e2e
tests a whole Mininet cluster (mininet/vxcluster.py) under the same run's tag.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from ovsdb.instance import OvsInstance
from vxflow.demo import cluster_module

UNDERLAY = "198.18.0.0/24"
ROOT_UNDERLAY_IP = IPv4Address("198.18.0.254")
NODE_BLOCK = "198.18.0.0/27"  # add_node() indexes 1..30
TAG_PREFIX = "vxt"  # every namespace and root-namespace link the tests make starts with it


def run_tag() -> str:
    """This test run's tag: one per process, so parallel runs never share a name."""
    return f"{TAG_PREFIX}{os.getpid() % 0xFFFF:04x}"


def sh(*cmd: str, netns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command (inside `netns` if given) and return stdout; raise with stderr on failure."""
    full = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    res = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def offload_off(ifname: str, netns: str | None = None) -> None:
    """Userspace datapath and kernel VXLAN drop packets with offloaded TX checksums."""
    sh("ethtool", "-K", ifname, "tx", "off", netns=netns)


@dataclass
class Pod:
    netns: str
    ip: IPv4Interface
    mac: str
    port: str  # host-side veth name inside the node namespace
    ofport: int = 0

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return sh(*cmd, netns=self.netns, check=check, timeout=timeout)


@dataclass
class Node:
    """An emulated node: namespace + private OVS + br-phy with the underlay address."""

    netns: str
    underlay_ip: IPv4Address
    ovs: OvsInstance
    pods: list[Pod] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return sh(*cmd, netns=self.netns, check=check, timeout=timeout)


@dataclass
class Underlay:
    """A Linux bridge in the root namespace joining emulated nodes (198.18.0.0/24)."""

    tag: str = field(default_factory=run_tag)
    workdir: Path | None = None
    nodes: list[Node] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def bridge(self) -> str:
        return f"{self.tag}-u"

    def create(self) -> Underlay:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        # .254/32 plus a route for the test nodes' block only: Mininet clusters
        # (mininet/vxcluster.py) claim the other /27 blocks beside a test run, and a
        # second test run fails here, clearly, instead of taking this one's replies
        # (and leaves no bridge behind).
        try:
            sh("ip", "addr", "add", f"{ROOT_UNDERLAY_IP}/32", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            sh("ip", "route", "add", NODE_BLOCK, "dev", self.bridge, "src", str(ROOT_UNDERLAY_IP))
        except RuntimeError:
            self.destroy()
            raise
        return self

    def _netns(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
        return ns

    def add_netns(self, name: str) -> str:
        """An empty namespace `<tag>-<name>` (lo up), removed by destroy(); its name."""
        return self._netns(name)

    def del_netns(self, ns: str) -> None:
        """Remove a namespace made here before destroy() (a container that went away)."""
        sh("ip", "netns", "del", ns)
        self._namespaces.remove(ns)

    def add_node(self, index: int | None = None, with_ovs: bool = True) -> Node:
        """A node at 198.18.0.<index> with eth0 on the underlay bridge."""
        index = index or next(self._counter)
        ns = self._netns(f"n{index}")
        ip = IPv4Address(f"198.18.0.{index}")
        root_end = f"{self.tag}-n{index}"
        sh("ip", "link", "add", root_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._links.append(root_end)
        sh("ip", "link", "set", root_end, "master", self.bridge, "up")
        offload_off(root_end)
        offload_off("eth0", netns=ns)
        sh("ip", "link", "set", "eth0", "up", netns=ns)
        workdir = (self.workdir / f"n{index}") if self.workdir else None
        ovs = OvsInstance(name=f"{self.tag}-n{index}", workdir=workdir, netns=ns)
        node = Node(netns=ns, underlay_ip=ip, ovs=ovs)
        self.nodes.append(node)
        if with_ovs:
            ovs.start()
            self._setup_br_phy(node)
        else:
            sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", netns=ns)
        return node

    @staticmethod
    def _setup_br_phy(node: Node) -> None:
        """Userspace VXLAN needs the underlay address on an OVS bridge (br-phy)."""
        node.ovs.vsctl(
            "add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
            "--", "add-port", "br-phy", "eth0",
        )  # fmt: skip
        node.run("ip", "addr", "add", f"{node.underlay_ip}/24", "dev", "br-phy")
        node.run("ip", "link", "set", "br-phy", "up")
        # the kernel's ARP entries go with br-phy's carrier when ovs-vswitchd restarts, and
        # the first request is lost: retry it in 100 ms, not 1 s (as mininet/vxnodes.py)
        node.run("sysctl", "-qw", "net.ipv4.neigh.br-phy.retrans_time_ms=100")

    def add_pod(self, node: Node, ip: str, mac: str, bridge: str = "br-int") -> Pod:
        """A pod namespace joined to `bridge` on `node` by veth (MTU 1450, offload off)."""
        n = len(node.pods) + 1
        ns = self._netns(f"{node.netns.rsplit('-', 1)[1]}p{n}")
        port = f"p{n}"
        iface = IPv4Interface(ip)
        node.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        pod = Pod(netns=ns, ip=iface, mac=mac, port=port)
        pod.run("ip", "link", "set", "eth0", "address", mac, "mtu", "1450", "up")
        pod.run("ip", "addr", "add", str(iface), "dev", "eth0")
        pod.run("ip", "route", "add", "default", "via", str(iface.network.network_address + 1))
        node.run("ip", "link", "set", port, "mtu", "1450", "up")
        offload_off("eth0", netns=ns)
        offload_off(port, netns=node.netns)
        node.ovs.vsctl("add-port", bridge, port)
        pod.ofport = int(node.ovs.vsctl("get", "Interface", port, "ofport").strip())
        node.pods.append(pod)
        return pod

    def destroy(self) -> list[str]:
        """Undo everything, in reverse; return the errors met (never raise mid-cleanup)."""
        errors: list[str] = []
        for node in reversed(self.nodes):
            try:
                node.ovs.stop()
            except Exception as e:  # cleanup must go on
                errors.append(f"{node.netns}: {e}")
        for ns in reversed(self._namespaces):
            res = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if res.returncode:
                errors.append(f"netns {ns}: {res.stderr.strip()}")
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.nodes.clear()
        self._namespaces.clear()
        self._links.clear()
        return errors


@contextmanager
def emulated_cluster(suffix: str, **spec: Any) -> Iterator[Any]:
    """A started mininet/vxcluster.py `Cluster` of `ClusterSpec(**spec)`, tagged
    `run_tag() + suffix` (the leftover check finds what it leaves), stopped after.

    `Cluster` undoes a start that fails half-way, and stops on leaving the block,
    whether the body (a test, or a module's fixture at teardown) passed or raised.
    """
    vx = cluster_module()
    with vx.Cluster(spec=vx.ClusterSpec(tag=f"{run_tag()}{suffix}", **spec)) as running:
        yield running
