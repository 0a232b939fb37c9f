"""Emulated vxflow clusters on Mininet: the one place the cluster logic lives.

`mininet/cluster.py` (the script and `mn --custom`), `vxflow demo`, the e2e
tests and the benchmarks all build clusters through `Cluster`. Everything here
runs with the standard library, Debian's Mininet and the repository's
standard-library-only helpers (etcd server, OVS instance, process stopping),
so `mn`, on the system Python, can load it; vxflow's own daemons (`vxflow controller`,
`vxflow agent`, the flannel-style daemon) run as processes from the venv.

Layout, after ARCHITECTURE.md's verified recipe:

- underlay 198.18.0.0/24: a Linux bridge in the root namespace (iproute2, no
  OVS there) named by the run's tag. The root namespace holds 198.18.0.254/32
  on it plus a route for this run's /27 block of node addresses only, so
  concurrent runs (each with their own bridge and .254) never steal each
  other's replies. etcd and the controller listen on 198.18.0.254.
- vxflow node: a Mininet host with a private ovsdb-server/ovs-vswitchd
  (ovsdb/instance.py via `mnexec -a PID`), `br-phy` (netdev) holding eth0 and
  the underlay address, and `vxflow agent`, which bootstraps br-int, holds the
  lease and writes subnet.env. Pods are Mininet hosts whose veth the cluster
  adds to br-int with the external_ids the agent publishes endpoints from.
- flannel-style node: a Mininet host running mininet/flannel_node.py, which
  holds a flannel-format lease and programs a kernel VXLAN device
  `flannel.<VNI>` as flannel's vxlan backend does; its pods hang off a
  cni0-like Linux bridge.

Every process is started by us and stopped by PID; `Cluster.stop()` undoes
everything (also after a failure half-way through `start()`).

From other code (tests, bench), load this file with `vxflow.demo.cluster_module()`:

    vx = cluster_module()
    with vx.Cluster(vx.ClusterSpec(nodes=2, pods=1, tag="vxb1")) as cluster:
        a, b = cluster.pods_of(cluster.vxflow_nodes[0])[0], cluster.pods[-1]
        a.cmd(f"ping -c 3 {b.addr}")   # Mininet hosts: .cmd(), .pid, .name
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

try:
    from mininet.link import Link
    from mininet.log import setLogLevel
    from mininet.net import Mininet
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

from leases.etcd_server import EtcdServer, free_loopback_port  # noqa: E402
from ovsdb.instance import OvsInstance  # noqa: E402
from vxflow.processes import stop_process  # noqa: E402

UNDERLAY = IPv4Network("198.18.0.0/24")
ROOT_IP = IPv4Address("198.18.0.254")
BLOCK_LEN = 27  # a run's node addresses: one /27 of the underlay (blocks 1..6)
OVERLAY = IPv4Network("198.19.0.0/16")
POD_MTU = 1450
BR_PHY = "br-phy"
BR_INT = "br-int"
ENDPOINT_MAC_KEY = "attached-mac"  # Interface external_ids the agent publishes endpoints from
ENDPOINT_IP_KEY = "vxflow-ip"


def _venv_tool(name: str) -> str:
    """A vxflow console script: the repo's venv first, else whatever is on PATH."""
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


def pod_mac(ip: IPv4Address) -> str:
    """0a:58 + the IPv4 address, as Kubernetes' bridge CNI derives pod MACs."""
    return ":".join(f"{b:02x}" for b in (0x0A, 0x58, *ip.packed))


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


class VxflowNode(ProcessHost):
    """A cluster node: private OVS, br-phy with the underlay address, `vxflow agent`."""

    underlay_ip: IPv4Address  # set by the cluster from the underlay's block

    def __init__(self, name: str, **params) -> None:
        super().__init__(name, **params)
        self.ovs: OvsInstance | None = None

    def start_ovs(self, workdir: Path) -> OvsInstance:
        """ovsdb-server + ovs-vswitchd in this host; br-phy takes eth0 and the underlay IP."""
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
        self.sh(f"ip link set {BR_PHY} up")
        return self.ovs

    def dump_flows(self, bridge: str = BR_INT) -> list[str]:
        """The flows of `bridge`, without the counters (stable for comparison)."""
        assert self.ovs is not None
        out = self.ovs.ofctl("--no-stats", "dump-flows", bridge)
        return [line.strip() for line in out.splitlines() if "actions=" in line]

    def stop_daemons(self) -> None:
        super().stop_daemons()
        if self.ovs is not None:
            self.ovs.stop(remove_files=False)


class FlannelNode(ProcessHost):
    """A flannel-style node: kernel VXLAN programmed from etcd by mininet/flannel_node.py."""

    underlay_ip: IPv4Address  # set by the cluster from the underlay's block


class Pod(Host):
    """A pod: one veth (eth0), MTU 1450, TX offload off; address set once the lease is known."""

    def attach(self, ip: IPv4Interface) -> None:
        self.ip_if = ip
        self.cmd(f"ip link set eth0 address {pod_mac(ip.ip)} mtu {POD_MTU} up")
        self.setIP(str(ip.ip), ip.network.prefixlen)  # Mininet's CLI resolves pod names with it
        self.cmd(f"ip route add default via {ip.network.network_address + 1}")
        self.cmd("ethtool -K eth0 tx off")

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


# -- the cluster ---------------------------------------------------------------


@dataclass
class ClusterSpec:
    """What to build. Defaults: 3 vxflow nodes x 2 pods; flannel's default prefix and
    the seed's config shape on test addresses (198.19.0.0/16, /24 leases, VNI 1, 8472)."""

    nodes: int = 3
    pods: int = 2
    flannel_nodes: int = 0
    network: IPv4Network = OVERLAY
    subnet_len: int = 24
    vni: int = 1
    port: int = 8472
    prefix: str = "/coreos.com/network"
    tag: str = field(default_factory=default_tag)
    flannel_lease_ttl: int | None = None  # seconds; None: flannel's 24 h
    agent_lease_ttl: int | None = None  # seconds; None: flannel's 24 h


@dataclass
class Cluster:
    """A running emulated cluster: etcd, one controller, agents, pods.

    Use as a context manager, or `start()` then `stop()` in a finally.
    `progress` receives one line per slow step (the demo and the script print it).
    """

    spec: ClusterSpec = field(default_factory=ClusterSpec)
    progress: Callable[[str], None] = lambda _msg: None
    workdir: Path | None = None
    net: Mininet | None = None
    etcd: EtcdServer | None = None
    controller_port: int = 0
    _controller: subprocess.Popen | None = None
    _own_workdir: bool = False

    # -- views ------------------------------------------------------------------
    @property
    def vxflow_nodes(self) -> list[VxflowNode]:
        return [h for h in self.net.hosts if isinstance(h, VxflowNode)] if self.net else []

    @property
    def flannel_nodes(self) -> list[FlannelNode]:
        return [h for h in self.net.hosts if isinstance(h, FlannelNode)] if self.net else []

    @property
    def nodes(self) -> list[ProcessHost]:
        return [*self.vxflow_nodes, *self.flannel_nodes]

    def pods_of(self, node: Host) -> list[Pod]:
        return [
            h for h in self.net.hosts if isinstance(h, Pod) and h.name.startswith(node.name + "p")
        ]

    @property
    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in self.pods_of(n)]

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None
        return f"http://{ROOT_IP}:{self.etcd.client_port}"

    @property
    def controller_target(self) -> str:
        return f"tcp:{ROOT_IP}:{self.controller_port}"

    @property
    def etcdctl_command(self) -> str:
        """The etcdctl line that shows this cluster's keys from the host (Debian's etcd-client)."""
        return f"ETCDCTL_API=3 etcdctl --endpoints {self.etcd_endpoint} get --prefix {self.spec.prefix}"

    def cli_hints(self) -> list[str]:
        """What to try at the mininet> prompt (the interactive tests type each one as shown)."""
        a, b = self.nodes[:2]
        return [
            f"{self.pods_of(a)[0].name} ping -c 3 {self.pods_of(b)[0].name}",
            f"{a.name} ip r",
            f"{b.name} tcpdump -n -T vxlan -i eth0",
            "nodes",
        ]

    def cli_banner(self) -> str:
        """Printed before the Mininet CLI opens: the hints above and the etcdctl line."""
        tried = ", ".join(f"`{hint}`" for hint in self.cli_hints())
        return (
            f"The cluster stays up. At the mininet> prompt try {tried} (Ctrl-C ends tcpdump); "
            f"`exit` tears it down.\nFrom another shell on the host, its etcd keys: "
            f"{self.etcdctl_command}"
        )

    def node_dir(self, node: Host) -> Path:
        assert self.workdir is not None
        path = self.workdir / node.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def subnet_env_path(self, node: Host) -> Path:
        return self.node_dir(node) / "subnet.env"

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> Cluster:
        """Build the topology and bring every component up; undo it all on failure."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        spec = self.spec
        # "output" is the level Mininet's CLI prints command results at: anything
        # quieter silences every command typed at the mininet> prompt
        setLogLevel("output")
        self.progress(
            f"building topology: {spec.nodes} vxflow + {spec.flannel_nodes} flannel-style "
            f"nodes, {spec.pods} pods each (tag {spec.tag})"
        )
        topo = VxflowTopo(spec.nodes, spec.pods, spec.flannel_nodes, tag=spec.tag)
        self.net = Mininet(topo=topo, controller=None, link=Link, build=False, autoSetMacs=False)
        self.net.build()
        self.net.start()
        self.start_services(timeout)

    def start_services(self, timeout: float = 90) -> None:
        """Everything above the plumbing, on an already built and started `net`.

        Split out so `mn --custom` (which builds the net itself) can call it.
        """
        spec = self.spec
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"vxflow-{spec.tag}-"))
            self._own_workdir = True
        underlay = next(s for s in self.net.switches if isinstance(s, UnderlayBridge))
        for node, address in zip(self.nodes, underlay.node_addresses(), strict=False):
            node.underlay_ip = address
        self.progress(f"starting etcd on {ROOT_IP}")
        self.etcd = EtcdServer(host=str(ROOT_IP), data_dir=self.workdir / "etcd").start()
        self.write_config()
        if self.vxflow_nodes:
            self.progress(f"starting the controller on {ROOT_IP}")
            self.start_controller()
        for node in self.vxflow_nodes:
            self.progress(f"{node.name}: starting ovsdb-server, ovs-vswitchd, vxflow agent")
            node.start_ovs(self.node_dir(node) / "ovs")
            self.start_agent(node)
        for node in self.flannel_nodes:
            self.progress(f"{node.name}: starting the flannel-style daemon")
            self.start_flannel(node)
        self.warm_underlay_arp()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            subnet = self.wait_subnet(node, deadline - time.monotonic())
            self.progress(f"{node.name}: lease {subnet}")
            self.attach_pods(node, subnet, deadline - time.monotonic())
        self.progress("waiting for the overlay to converge")
        took = self.wait_connected(deadline - time.monotonic())
        self.progress(f"overlay converged ({took:.1f}s)")

    def stop(self) -> None:
        """Stop everything we started, by PID, in reverse; never raises."""
        try:
            self.stop_services()
        finally:
            if self.net is not None:
                try:
                    self.net.stop()
                except Exception as e:  # report, and still remove what we can
                    print(f"cleanup: mininet: {e!r}", file=sys.stderr)
                self.net = None
            # a bridge a failed build left behind, unknown to Mininet
            run_root("ip", "link", "del", self.spec.tag, check=False)

    def stop_services(self) -> None:
        """Stop every daemon we started (nodes' first, then controller and etcd), keep the net.

        Used alone when someone else (`mn`) owns the Mininet net; removes the
        work dir if we made it.
        """
        for node in self.nodes:
            node.stop_daemons()
        self.stop_controller()
        if self.etcd is not None:
            self.etcd.stop(remove_data=True)
            self.etcd = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- components -------------------------------------------------------------
    def write_config(self) -> None:
        """`<prefix>/config` in flannel's format, through `vxflow config set`."""
        spec = self.spec
        config = {
            "Network": str(spec.network),
            "SubnetLen": spec.subnet_len,
            "Backend": {"Type": "vxlan", "VNI": spec.vni, "Port": spec.port},
        }
        run_root(_venv_tool("vxflow"), "config", "set", *self.etcd_flags(), "-",
                 input=json.dumps(config))  # fmt: skip

    def start_controller(self, port: int = 0) -> None:
        """`vxflow controller` in the root namespace on 198.18.0.254 (`port` 0: a free one)."""
        self.controller_port = port or free_loopback_port()
        log_path = self.workdir / "controller.log"
        with open(log_path, "ab") as out:
            self._controller = subprocess.Popen(
                [
                    _venv_tool("vxflow"), "controller", *self.etcd_flags(),
                    "--listen", str(ROOT_IP), "--port", str(self.controller_port),
                ],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self._listening(self.controller_port):
            if self._controller.poll() is not None:
                raise RuntimeError(f"controller exited; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"controller not listening after 30s; see {log_path}")
            time.sleep(0.2)

    @staticmethod
    def _listening(port: int) -> bool:
        out = run_root("ss", "-Hltn", f"sport = :{port}", check=False)
        return bool(out.strip())

    def stop_controller(self) -> None:
        proc, self._controller = self._controller, None
        stop_process(proc)

    def restart_controller(self) -> None:
        """Stop the controller and start a new one on the same port (switches reconnect)."""
        self.stop_controller()
        self.start_controller(self.controller_port)

    def agent_cmd(self, node: VxflowNode) -> list[str]:
        assert node.ovs is not None
        return [
            _venv_tool("vxflow"), "agent", *self.etcd_flags(),
            "--public-ip", str(node.underlay_ip), "--ovsdb", node.ovs.db_target,
            "--controller", self.controller_target, "--datapath-type", "netdev",
            "--subnet-file", str(self.subnet_env_path(node)),
            *(["--subnet-lease-ttl", str(ttl)] if (ttl := self.spec.agent_lease_ttl) else []),
        ]  # fmt: skip

    def etcd_flags(self) -> list[str]:
        """The `vxflow` CLI flags that point a command at this cluster's etcd and prefix."""
        return ["--etcd-endpoints", self.etcd_endpoint, "--etcd-prefix", self.spec.prefix]

    def start_agent(self, node: VxflowNode) -> None:
        node.spawn("agent", self.agent_cmd(node), self.node_dir(node) / "agent.log")

    def stop_agent(self, node: VxflowNode) -> None:
        node.stop_proc("agent")

    def stop_flannel(self, node: FlannelNode) -> None:
        """Stop the flannel-style daemon; like flanneld it keeps its lease until the TTL ends."""
        node.stop_proc("flannel")

    def start_flannel(self, node: FlannelNode) -> None:
        cmd = [
            _venv_tool("python"), str(Path(__file__).with_name("flannel_node.py")),
            *self.etcd_flags(),
            "--public-ip", str(node.underlay_ip), "--iface", "eth0",
            "--subnet-file", str(self.subnet_env_path(node)),
        ]  # fmt: skip
        if self.spec.flannel_lease_ttl:
            cmd += ["--subnet-lease-ttl", str(self.spec.flannel_lease_ttl)]
        node.sh(f"ip addr add {node.underlay_ip}/{UNDERLAY.prefixlen} dev eth0")
        node.sh("ethtool -K eth0 tx off && ip link set eth0 up")
        node.sh("sysctl -qw net.ipv4.ip_forward=1")  # it routes between cni0 and flannel.<VNI>
        node.spawn("flannel", cmd, self.node_dir(node) / "flannel.log")

    def warm_underlay_arp(self) -> None:
        """Userspace tunnels resolve remote VTEPs from ARP snooped on br-phy: warm it."""
        for node in self.vxflow_nodes:
            for peer in self.nodes:
                if peer is not node:
                    node.cmd(f"ping -c 1 -W 1 {peer.underlay_ip}")

    def wait_subnet(self, node: Host, timeout: float) -> IPv4Network:
        """The node's lease, from the subnet.env its agent (or flannel daemon) writes."""
        path = self.subnet_env_path(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                env = dict(
                    line.split("=", 1) for line in path.read_text().splitlines() if "=" in line
                )
                if "FLANNEL_SUBNET" in env:
                    return IPv4Interface(env["FLANNEL_SUBNET"].strip()).network
            proc = next(iter(getattr(node, "procs", {}).values()), None)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{node.name}: daemon exited; see {self.node_dir(node)}")
            time.sleep(0.2)
        raise RuntimeError(f"{node.name}: no lease after {timeout:.0f}s; see {self.node_dir(node)}")

    def attach_pods(self, node: Host, subnet: IPv4Network, timeout: float) -> None:
        """Give each pod .2, .3, ... of the lease and plug its veth into the node's bridge."""
        for i, pod in enumerate(self.pods_of(node), start=2):
            pod.attach(IPv4Interface(f"{subnet.network_address + i}/{subnet.prefixlen}"))
            port = pod.name  # the node-side veth is named after the pod
            node.sh(f"ip link set {port} mtu {POD_MTU} up && ethtool -K {port} tx off")
            if isinstance(node, VxflowNode):
                self._wait_bridge(node, timeout)
                node.ovs.vsctl(
                    "--may-exist", "add-port", BR_INT, port, "--", "set", "Interface", port,
                    f"external_ids:{ENDPOINT_MAC_KEY}=\"{pod.mac}\"",
                    f"external_ids:{ENDPOINT_IP_KEY}=\"{pod.addr}\"",
                )  # fmt: skip
            else:
                self._ensure_cni0(node, subnet)
                node.sh(f"ip link set {port} master cni0")

    @staticmethod
    def _ensure_cni0(node: FlannelNode, subnet: IPv4Network) -> None:
        """The CNI bridge of a flannel node: the gateway address (.1) on a Linux bridge."""
        if "cni0" in node.cmd("ip -o link show cni0 2>/dev/null"):
            return
        node.sh("ip link add cni0 type bridge")
        node.sh(f"ip addr add {subnet.network_address + 1}/{subnet.prefixlen} dev cni0")
        node.sh(f"ip link set cni0 mtu {POD_MTU} up")

    @staticmethod
    def _wait_bridge(node: VxflowNode, timeout: float) -> None:
        """The agent's bootstrap creates br-int; pods can be plugged in only after it."""
        deadline = time.monotonic() + timeout
        while BR_INT not in node.ovs.vsctl("list-br").split():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: the agent did not create {BR_INT}")
            time.sleep(0.2)

    # -- checks ----------------------------------------------------------------
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
