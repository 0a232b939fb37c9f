"""The emulated cluster's parts: the underlay, node and pod classes, the topology.

Split out of mininet/vxcluster.py (which builds clusters from these); see its
docstring for the layout. Standard library and Debian's Mininet only, so `mn`
can load it on the system Python.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

try:
    from mininet.node import Host, Switch
    from mininet.topo import Topo
except ImportError as e:  # another interpreter than Debian's (e.g. pyenv's python3)
    raise ImportError(
        f"Debian's mininet is not importable from {sys.executable}: run with .venv/bin/python "
        "(scripts/setup.sh; it sees the system site-packages) or /usr/bin/python3"
    ) from e

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `mn --custom` runs us from anywhere, on the system Python
    sys.path.append(str(REPO))

from daemons.processes import stop_process  # noqa: E402
from flows.ports import pod_mac  # noqa: E402
from ovsdb.instance import OvsInstance  # noqa: E402

UNDERLAY = IPv4Network("198.18.0.0/24")
ROOT_IP = IPv4Address("198.18.0.254")
BLOCK_LEN = 27  # a run's node addresses: one /27 of the underlay (blocks 1..6)
OVERLAY = IPv4Network("198.19.0.0/16")
# a dual-stack cluster's IPv6 underlay and overlay (unique local addresses: they stay inside
# the cluster's namespaces; the root namespace has no address of them, so no route to them)
UNDERLAY6 = IPv6Network("fd00:198:18::/64")
OVERLAY6 = IPv6Network("fd00:198:19::/48")
ENDPOINT_IPV6_KEY = "vxflow-ipv6"
POD_MTU = 1450
BR_PHY = "br-phy"
BR_INT = "br-int"
ENDPOINT_MAC_KEY = "attached-mac"  # Interface external_ids the agent publishes endpoints from
ENDPOINT_IP_KEY = "vxflow-ip"
# A restarted ovs-vswitchd re-creates br-phy's carrier: the kernel has flushed its ARP
# entries and the first request, sent before the new process reads the port, is lost.
# Retried after 100 ms instead of 1 s, the switch reaches its controller in ~0.1 s
# (with the default, its connection attempt times out and backs off: 2 s; README.md).
UNDERLAY_ARP_RETRY = f"net.ipv4.neigh.{BR_PHY}.retrans_time_ms=100"


def _venv_tool(name: str) -> str:
    """A vxflow console script: from $VXFLOW_BIN if set (an installed vxflow, e.g. from its
    wheel), else the repo's venv, else whatever is on PATH."""
    if os.environ.get("VXFLOW_BIN"):
        return str(Path(os.environ["VXFLOW_BIN"]) / name)
    local = REPO / ".venv" / "bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run scripts/setup.sh")
    return found


def run_root(*cmd: str, check: bool = True, input: str | None = None) -> str:
    """A command in the root namespace; raise with its stderr on failure."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, input=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


_clusters = itertools.count()


def default_tag() -> str:
    """A name prefix unique to this cluster: every root-namespace link carries it.

    "vxm" + this process (4 hex digits) + a per-process counter (1 hex digit),
    short enough for Mininet's `<tag>-ethNN` names (15 characters at most).
    """
    return f"vxm{os.getpid() % 0xFFFF:04x}{next(_clusters) % 16:x}"


def block_network(block: int) -> IPv4Network:
    return IPv4Network((int(UNDERLAY.network_address) + 32 * block, BLOCK_LEN))


def claim_block(dev: str) -> int:
    """Route the first free /27 (blocks 1..6) of the underlay to `dev`; return its number.

    The kernel refuses a second route to the same prefix, so adding it is the
    claim: two clusters starting at once never get the same block.
    """
    for block in range(1, 7):
        res = subprocess.run(
            ["ip", "route", "add", str(block_network(block)), "dev", dev, "src", str(ROOT_IP)],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if res.returncode == 0:
            return block
        if "File exists" not in res.stderr:
            raise RuntimeError(f"routing the underlay to {dev} failed: {res.stderr.strip()}")
    raise RuntimeError("all underlay blocks 198.18.0.32-223 are in use by other clusters")


# -- Mininet node classes ----------------------------------------------------


class UnderlayBridge(Switch):
    """A Linux bridge in the root namespace (iproute2; no OVS, no brctl needed).

    It carries the root's 198.18.0.254/32 and a route for this run's /27 only.
    """

    def __init__(self, name: str, **params) -> None:
        super().__init__(name, dpid="1", **params)  # no OpenFlow here; dpid just satisfies Switch
        self.block: int | None = None  # claimed on start

    def start(self, _controllers: Sequence) -> None:
        run_root("ip", "link", "add", "name", self.name, "type", "bridge")
        for intf in self.intfList():
            if intf.name != "lo":
                run_root("ip", "link", "set", intf.name, "master", self.name, "up")
                run_root("ethtool", "-K", intf.name, "tx", "off")
        run_root("ip", "link", "set", self.name, "up")
        run_root("ip", "addr", "add", f"{ROOT_IP}/32", "dev", self.name)
        self.block = claim_block(self.name)

    def node_addresses(self) -> Iterator[IPv4Address]:
        """The underlay addresses of this cluster's nodes: its block's hosts, in order."""
        assert self.block is not None, "the bridge claims its block when it starts"
        return block_network(self.block).hosts()

    def stop(self, deleteIntfs: bool = True) -> None:
        run_root("ip", "link", "del", self.name, check=False)
        super().stop(deleteIntfs)


class ProcessHost(Host):
    """A Mininet host that runs daemons inside its namespaces and stops them by PID."""

    def __init__(self, name: str, **params) -> None:
        super().__init__(name, **params)
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, key: str, cmd: Sequence[str], log_path: Path) -> subprocess.Popen:
        """Start `cmd` in this host's namespaces (mnexec -a PID), output to `log_path`."""
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                ["mnexec", "-a", str(self.pid), *cmd],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C at the terminal reaches us, not them
            )  # fmt: skip
        self.procs[key] = proc
        return proc

    def stop_proc(self, key: str, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        stop_process(self.procs.pop(key, None), sig, timeout)

    def stop_daemons(self) -> None:
        """Stop what we started in this host (idempotent; the host itself stays)."""
        for key in list(self.procs):
            self.stop_proc(key)

    def terminate(self) -> None:
        self.stop_daemons()
        super().terminate()

    def sh(self, cmd: str) -> str:
        """Run a shell command in the host; raise with its output if it fails."""
        out = self.cmd(f"{cmd}; echo __rc=$?")
        text, _, rc = out.rpartition("__rc=")
        if rc.strip() != "0":
            raise RuntimeError(f"{self.name}: `{cmd}` failed ({rc.strip()}): {text.strip()}")
        return text


def underlay_ipv6(ip: IPv4Address) -> IPv6Address:
    """A dual-stack node's IPv6 underlay address: UNDERLAY6 and its IPv4 one's last octet."""
    return UNDERLAY6.network_address + (int(ip) & 0xFF)


class OvsHost(ProcessHost):
    """A node that may run a private OVS, br-phy (netdev) holding eth0 and the underlay IP."""

    underlay_ip: IPv4Address  # set by the cluster from the underlay's block
    underlay_ip6: IPv6Address | None = None  # set by a dual-stack cluster

    def __init__(self, name: str, **params) -> None:
        super().__init__(name, **params)
        self.ovs: OvsInstance | None = None

    def start_ovs(self, workdir: Path) -> OvsInstance:
        """ovsdb-server + ovs-vswitchd in this host; br-phy takes eth0 and the underlay IP
        (from eth0 if it held it: a flannel-style node getting OVS)."""
        self.ovs = OvsInstance(
            name=self.name, workdir=workdir, exec_prefix=["mnexec", "-a", str(self.pid)]
        )
        self.ovs.start()  # known before it starts, so an interrupted start is still stopped
        self.sh("ethtool -K eth0 tx off && ip link set eth0 up")
        self.ovs.vsctl(
            "--may-exist", "add-br", BR_PHY, "--", "set", "bridge", BR_PHY, "datapath_type=netdev",
            "--", "--may-exist", "add-port", BR_PHY, "eth0",
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while "state" not in self.cmd(f"ip link show {BR_PHY} 2>/dev/null"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: ovs-vswitchd did not create {BR_PHY}")
            time.sleep(0.1)
        self.sh(f"ip addr replace {self.underlay_ip}/{UNDERLAY.prefixlen} dev {BR_PHY}")
        self.cmd(f"ip addr del {self.underlay_ip}/{UNDERLAY.prefixlen} dev eth0 2>/dev/null")
        if self.underlay_ip6 is not None:
            self.sh(f"sysctl -qw net.ipv6.conf.{BR_PHY}.disable_ipv6=0")
            self.sh(f"ip addr replace {self.underlay_ip6}/{UNDERLAY6.prefixlen} dev {BR_PHY} nodad")
        self.sh(f"ip link set {BR_PHY} up")
        self.sh(f"sysctl -qw {UNDERLAY_ARP_RETRY}")
        return self.ovs

    def stop_daemons(self) -> None:
        super().stop_daemons()
        if self.ovs is not None:
            self.ovs.stop(remove_files=False)


class VxflowNode(OvsHost):
    """A cluster node: private OVS, br-phy with the underlay address, `vxflow agent`."""

    def dump_flows(self, bridge: str = BR_INT) -> list[str]:
        """The flows of `bridge`, without the counters (stable for comparison)."""
        assert self.ovs is not None
        out = self.ovs.ofctl("--no-stats", "dump-flows", bridge)
        return [line.strip() for line in out.splitlines() if "actions=" in line]


class FlannelNode(OvsHost):
    """A flannel-style node: kernel VXLAN programmed from etcd by mininet/flannel_node.py
    (OVS only once `start_ovs()`: a node to be migrated to vxflow, `vxflow migrate`)."""


class Pod(Host):
    """A pod: one veth (eth0), MTU 1450, TX offload off; address set once the lease is known."""

    ip6_if: IPv6Interface | None = None  # a dual-stack pod's IPv6 address

    def attach(self, ip: IPv4Interface, ip6: IPv6Interface | None = None,
               mtu: int = POD_MTU) -> None:  # fmt: skip
        self.ip_if = ip
        self.cmd(f"ip link set eth0 address {pod_mac(ip.ip)} mtu {mtu} up")
        self.setIP(str(ip.ip), ip.network.prefixlen)  # Mininet's CLI resolves pod names with it
        self.cmd(f"ip route add default via {ip.network.network_address + 1}")
        if ip6 is not None:  # the IPv6 gateway is the subnet's first address, as IPv4's
            self.ip6_if = ip6
            self.cmd("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0")
            self.cmd(f"ip -6 addr add {ip6} dev eth0 nodad")
            self.cmd(f"ip -6 route add default via {ip6.network.network_address + 1}")
        self.cmd("ethtool -K eth0 tx off")

    @property
    def addr6(self) -> IPv6Address:
        assert self.ip6_if is not None, "a dual-stack cluster's pod"
        return self.ip6_if.ip

    @property
    def addr(self) -> IPv4Address:
        return self.ip_if.ip

    @property
    def mac(self) -> str:
        return pod_mac(self.addr)


class VxflowTopo(Topo):
    """N vxflow nodes and F flannel-style nodes, M pods each, on one underlay bridge.

    `mn --custom mininet/cluster.py --topo vxflow,NODES,PODS,FLANNEL` builds it.
    """

    def build(
        self, nodes: int = 3, pods: int = 2, flannel_nodes: int = 0,
        tag: str | None = None,
    ) -> None:  # fmt: skip
        tag = tag or default_tag()
        if nodes + flannel_nodes > 29:
            raise ValueError("at most 29 nodes fit one underlay block")
        if len(tag) > 9:
            raise ValueError(f"tag {tag!r}: at most 9 characters (links are named <tag>-ethNN)")
        underlay = self.addSwitch(tag, cls=UnderlayBridge)
        names = [(f"n{i}", VxflowNode) for i in range(1, nodes + 1)]
        names += [(f"f{i}", FlannelNode) for i in range(1, flannel_nodes + 1)]
        for name, cls in names:
            self.addHost(name, cls=cls, ip=None)
            self.addLink(name, underlay, intfName1="eth0")
            for p in range(1, pods + 1):
                pod = self.addHost(f"{name}p{p}", cls=Pod, ip=None)
                self.addLink(pod, name, intfName1="eth0", intfName2=f"{name}p{p}")

