"""Emulated vxflow clusters on Mininet: the one place the cluster logic lives.

`mininet/cluster.py` (the script and `mn --custom`), `vxflow demo`, the e2e
tests and the benchmarks all build clusters through `Cluster`. Everything here
runs with the standard library, Debian's Mininet and the repository's
standard-library-only helpers (etcd server, OVS instance, process stopping),
so `mn`, on the system Python, can load it; vxflow's own daemons (`vxflow controller`,
`vxflow agent`, the flannel-style daemon) run as processes from the venv.

Layout, after the verified recipe of docs/architecture.md ("Test and demo topology"):

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

Modules: this file (the spec and the cluster's lifecycle), mininet/vxnodes.py
(underlay, node and pod classes, topology), mininet/vxchecks.py (pings,
connectivity, captures), mininet/vxcontrollers.py (the controller replicas). Every process is started by us and stopped by PID; `Cluster.stop()` undoes
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
import logging
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT_METRICS_PORT = 9474  # with ClusterSpec.agent_metrics: each agent's, on its node's 127.0.0.1
for _path in (HERE, HERE.parent):  # the sibling modules, and the repository's packages
    if str(_path) not in sys.path:  # (`mn --custom` runs us on the system Python, from anywhere)
        sys.path.append(str(_path))

import vxpodman  # noqa: E402
from mininet.link import Link  # noqa: E402
from mininet.log import setLogLevel  # noqa: E402
from mininet.net import Mininet  # noqa: E402
from mininet.node import Host  # noqa: E402
from mininet.util import ensureRoot, rlimitTestAndSet  # noqa: E402
from vxchecks import ClusterChecks  # noqa: E402
from vxcontrollers import Replica  # noqa: E402
from vxnodes import (  # noqa: E402
    BR_INT,
    ENDPOINT_IP_KEY,
    ENDPOINT_IPV6_KEY,
    ENDPOINT_MAC_KEY,
    OVERLAY,
    POD_MTU,
    ROOT_IP,
    UNDERLAY,
    UNDERLAY6,
    FlannelNode,
    Pod,
    ProcessHost,
    UnderlayBridge,
    VxflowNode,
    VxflowTopo,
    _venv_tool,
    default_tag,
    run_root,
    underlay_ipv6,
)
from vxpodman import Podman  # noqa: E402

from leases.etcd_server import EtcdServer, EtcdUser, ServerTLS  # noqa: E402

# etcd's user and passwords of an emulated cluster with `tls` (throwaway, on the command line)
ETCD_USER, ETCD_PASSWORD, ETCD_ROOT_PASSWORD = "vxflow", "emulation-only", "emulation-root"

__all__ = ["Cluster", "ClusterSpec", "FlannelNode", "Pod", "UnderlayBridge", "VxflowNode",
           "VxflowTopo"]  # fmt: skip

# -- the cluster ---------------------------------------------------------------


def init_mininet() -> None:
    """Mininet's own first-use setup (`Mininet.init`), less its host-wide sysctls.

    Its `fixLimits()` raises the machine's TCP buffer limits, ARP cache and route
    table sizes, file and pty maximums, and never puts them back: the host's TCP
    then behaves differently for everything after the cluster is gone. A cluster
    of this size needs none of it; only this process's limits are raised."""
    if Mininet.inited:
        return
    ensureRoot()
    rlimitTestAndSet(resource.RLIMIT_NPROC, 8192)
    rlimitTestAndSet(resource.RLIMIT_NOFILE, 16384)
    Mininet.inited = True


@dataclass
class ClusterSpec:
    """What to build. Defaults: 3 vxflow nodes x 2 pods; flannel's default prefix and
    the seed's config shape on test addresses (198.19.0.0/16, /24 leases, VNI 1, 8472)."""

    nodes: int = 3
    pods: int = 2
    flannel_nodes: int = 0
    network: IPv4Network = OVERLAY
    # dual stack: flannel's EnableIPv6 with this IPv6Network (e.g. vxnodes.OVERLAY6); the nodes
    # get IPv6 underlay addresses (UNDERLAY6), the agents --public-ipv6, the pods both families
    ipv6_network: IPv6Network | None = None
    subnet_len: int = 24
    vni: int = 1
    port: int = 8472
    prefix: str = "/coreos.com/network"
    tag: str = field(default_factory=default_tag)
    flannel_lease_ttl: int | None = None  # seconds; None: flannel's 24 h
    agent_lease_ttl: int | None = None  # seconds; None: flannel's 24 h
    ip_masq: bool = False  # agents and flannel-style daemons run with --ip-masq
    containers: bool = False  # a private podman whose CNI network on each node is vxflow-cni
    controllers: int = 1  # controller replicas (c1, c2, ...)
    member_ttl: int | None = None  # the replicas' --member-ttl; None: the default
    tls: bool = False  # OpenFlow over TLS, etcd over TLS with client certificates and auth
    # the seed's keyspace: etcd serves v2, the config and a lease per vxflow node start in
    # its v2 store (as flannel before v0.14 left them) and `vxflow config import-v2
    # --with-leases` moves them into v3 before any daemon starts
    from_v2: bool = False
    direct_routing: bool = False  # the config's Backend.DirectRouting (flannel's option)
    flannel_direct_routing: bool = True  # False: flannel-style nodes ignore it (an old flanneld)
    agent_metrics: bool = False  # agents serve their metrics on AGENT_METRICS_PORT (node's loopback)
    # the replicas' extra options, last on their command line (e.g. ("--log-policy-drops",))
    controller_options: tuple[str, ...] = ()


@dataclass
class Cluster(ClusterChecks):
    """A running emulated cluster: etcd, the controller replicas, agents, pods.

    Use as a context manager, or `start()` then `stop()` in a finally.
    `progress` receives one line per slow step (the demo and the script print it).
    """

    spec: ClusterSpec = field(default_factory=ClusterSpec)
    progress: Callable[[str], None] = lambda _msg: None
    workdir: Path | None = None
    net: Mininet | None = None
    etcd: EtcdServer | None = None
    replicas: list[Replica] = field(default_factory=list)
    podman: Podman | None = None
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
        return f"{self.etcd.scheme}://{ROOT_IP}:{self.etcd.client_port}"

    @property
    def controller_target(self) -> str:
        """The first replica's: agents are given it, and learn the others from etcd."""
        return self.replicas[0].target

    def pki(self, name: str = "") -> Path:
        """The cluster's certificate directory (with `spec.tls`), or a file in it."""
        assert self.workdir is not None
        return self.workdir / "pki" / name

    @property
    def etcdctl_command(self) -> str:
        """The etcdctl line that shows this cluster's keys from the host (Debian's etcd-client)."""
        tls = ""
        if self.spec.tls:
            tls = (f" --cacert {self.pki('ca.pem')} --cert {self.pki('controller.pem')} "
                   f"--key {self.pki('controller-key.pem')} --user {ETCD_USER}:{ETCD_PASSWORD}")  # fmt: skip
        return (f"ETCDCTL_API=3 etcdctl --endpoints {self.etcd_endpoint}{tls} "
                f"get --prefix {self.spec.prefix}")  # fmt: skip

    def cli_hints(self) -> list[str]:
        """What to try at the mininet> prompt (the interactive tests type each one as shown)."""
        a, b = self.nodes[:2]
        return [
            f"{self.pods_of(a)[0].name} ping -c 3 {self.pods_of(b)[0].name}",
            f"{a.name} ip r",
            f"{b.name} tcpdump -n -T vxlan -i eth0",
            "nodes",
        ]

    def vxflow_commands(self) -> list[str]:
        """The vxflow CLI on this cluster, from the host: `status`, a `trace` from the first
        node's pod to the second node's, `flows diff` of the first node's switch (the
        interactive tests run each as printed)."""
        a, b = self.vxflow_nodes[:2]
        src, dst = self.pods_of(a)[0], self.pods_of(b)[0]
        vxflow, etcd = _venv_tool("vxflow"), shlex.join(self.etcd_flags("controller"))
        ovs = " ".join(f"--ovs {n.underlay_ip}={n.ovs.vswitchd_ctl}" for n in (a, b))
        return [
            f"{vxflow} status {etcd}",
            f"{vxflow} trace {src.ip_if.ip} {dst.ip_if.ip} {ovs} {etcd}",
            f"{vxflow} flows diff --node {a.underlay_ip} --switch "
            f"unix:{a.ovs.mgmt_socket(BR_INT)} {etcd}",
        ]

    def cli_banner(self) -> str:
        """Printed before the Mininet CLI opens: the hints above, the etcdctl line and the
        vxflow CLI's lines for this cluster."""
        tried = ", ".join(f"`{hint}`" for hint in self.cli_hints())
        return (
            f"The cluster stays up. At the mininet> prompt try {tried} (Ctrl-C ends tcpdump); "
            f"`exit` tears it down.\nFrom another shell on the host, its etcd keys: "
            f"{self.etcdctl_command}\nand the vxflow CLI on it (work dir {self.workdir}):\n"
            + "\n".join(f"  {line}" for line in self.vxflow_commands())
        )

    def node_dir(self, node: Host) -> Path:
        assert self.workdir is not None
        path = self.workdir / node.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def subnet_env_path(self, node: Host) -> Path:
        return self.node_dir(node) / "subnet.env"

    def cni_socket_path(self, node: Host) -> Path:
        """The node agent's CNI socket (nodes share the file system: one path each)."""
        return self.node_dir(node) / "cni.sock"

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
        # Mininet's logger prints through its own handler; passed on to the root logger's
        # too (vxflow's), every command's output at the prompt came out twice
        logging.getLogger("mininet").propagate = False
        self.progress(
            f"building topology: {spec.nodes} vxflow + {spec.flannel_nodes} flannel-style "
            f"nodes, {spec.pods} pods each (tag {spec.tag})"
        )
        topo = VxflowTopo(spec.nodes, spec.pods, spec.flannel_nodes, tag=spec.tag)
        init_mininet()
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
            if spec.ipv6_network is not None:
                node.underlay_ip6 = underlay_ipv6(address)
        self.progress(f"starting etcd on {ROOT_IP}" + (" (TLS, auth)" if spec.tls else ""))
        self.etcd = EtcdServer(host=str(ROOT_IP), data_dir=self.workdir / "etcd",
                               tls=self.make_pki() if spec.tls else None,
                               enable_v2=spec.from_v2).start()  # fmt: skip
        if spec.tls:  # one user whose role holds the network's prefix only
            self.etcd.enable_auth(ETCD_ROOT_PASSWORD,
                                  [EtcdUser(ETCD_USER, ETCD_PASSWORD, spec.prefix + "/")])  # fmt: skip
        self.write_config()
        if self.vxflow_nodes:
            self.progress(f"starting {spec.controllers} controller replica(s) on {ROOT_IP}")
            ttl = ("--member-ttl", str(spec.member_ttl)) if spec.member_ttl else ()
            tls = (("--ctl-privkey", str(self.pki("controller-key.pem")),
                    "--ctl-cert", str(self.pki("controller.pem")),
                    "--ca-certs", str(self.pki("ca.pem"))) if spec.tls else ())  # fmt: skip
            for i in range(1, spec.controllers + 1):
                replica = Replica(f"c{i}", self.workdir / f"controller-c{i}.log",
                                  (*ttl, *tls, *spec.controller_options), tls=spec.tls)  # fmt: skip
                self.replicas.append(replica.start(self.etcd_flags()))
        for node in self.vxflow_nodes:
            self.progress(f"{node.name}: starting ovsdb-server, ovs-vswitchd, vxflow agent")
            node.start_ovs(self.node_dir(node) / "ovs")
            node.sh("sysctl -qw net.ipv4.ip_forward=1")  # it routes pods' traffic that leaves
            if node.underlay_ip6 is not None and spec.direct_routing:  # IPv6's direct routes too
                node.sh("sysctl -qw net.ipv6.conf.all.forwarding=1")
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
        if spec.containers:
            self.start_podman()

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
        self.stop_podman()  # CNI DEL needs the nodes' OVS: containers go first
        for node in self.nodes:
            node.stop_daemons()
        for replica in self.replicas:
            replica.stop()
        if self.etcd is not None:
            self.etcd.stop(remove_data=True)
            self.etcd = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- components -------------------------------------------------------------
    def make_pki(self) -> ServerTLS:
        """The cluster's CA and certificates, made with `vxflow pki` as an operator would."""
        d, vxflow = str(self.pki()), _venv_tool("vxflow")
        run_root(vxflow, "pki", "init", d)
        run_root(vxflow, "pki", "server", d, "etcd", "--ip", str(ROOT_IP), "--ip", "127.0.0.1")
        run_root(vxflow, "pki", "server", d, "controller", "--ip", str(ROOT_IP))
        run_root(vxflow, "pki", "node", d, *(str(n.underlay_ip) for n in self.nodes))
        return ServerTLS(self.pki("etcd.pem"), self.pki("etcd-key.pem"), self.pki("ca.pem"))

    def tls_flags(self, who: str) -> list[str]:
        """etcd TLS and credential flags for a client holding certificate `who` (a node's
        PublicIP, or "controller"); empty without TLS. The emulation's throwaway password
        goes on the command line; a real node would use FLANNELD_ETCD_PASSWORD."""
        if not self.spec.tls:
            return []
        stem = who if who == "controller" else f"node-{who}"
        return [
            "--etcd-cafile", str(self.pki("ca.pem")),
            "--etcd-certfile", str(self.pki(f"{stem}.pem")),
            "--etcd-keyfile", str(self.pki(f"{stem}-key.pem")),
            "--etcd-username", ETCD_USER, "--etcd-password", ETCD_PASSWORD,
        ]  # fmt: skip

    def write_config(self) -> None:
        """`<prefix>/config` in flannel's format, through `vxflow config set`; with
        `from_v2`, into etcd's v2 store with the nodes' `v2_leases`, then imported."""
        spec = self.spec
        config = json.dumps({
            "Network": str(spec.network),
            "SubnetLen": spec.subnet_len,
            "Backend": {"Type": "vxlan", "VNI": spec.vni, "Port": spec.port,
                        **({"DirectRouting": True} if spec.direct_routing else {})},
            **({"EnableIPv6": True, "IPv6Network": str(spec.ipv6_network)}
               if spec.ipv6_network is not None else {}),
        })  # fmt: skip
        vxflow, flags = _venv_tool("vxflow"), self.etcd_flags("controller")
        if not spec.from_v2:
            run_root(vxflow, "config", "set", *flags, "-", input=config)
            return
        assert self.etcd is not None
        self.etcd.v2_put(f"{spec.prefix}/config", config)
        for i, (node, subnet) in enumerate(self.v2_leases().items(), start=1):
            lease = {"PublicIP": str(node.underlay_ip), "BackendType": "vxlan",
                     "BackendData": {"VtepMAC": f"02:5e:ed:00:00:{i:02x}"}}  # fmt: skip
            self.etcd.v2_put(f"{spec.prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}",
                             json.dumps(lease), ttl=24 * 3600)  # fmt: skip
        self.progress("importing the config and leases from etcd's v2 store")
        run_root(vxflow, "config", "import-v2", "--with-leases", *flags)

    def v2_leases(self) -> dict[VxflowNode, IPv4Network]:
        """With `from_v2`: the subnet each vxflow node held under the seed's flannel (the
        11th subnet on, so not what a fresh pick would likely give)."""
        subnets = self.spec.network.subnets(new_prefix=self.spec.subnet_len)
        return dict(zip(self.vxflow_nodes, itertools.islice(subnets, 10, None), strict=False))

    def restart_controller(self, index: int = 0) -> None:
        """Stop a replica and start it again on the same port (its switches reconnect)."""
        replica = self.replicas[index]
        replica.stop()
        replica.start(self.etcd_flags())

    def agent_cmd(self, node: VxflowNode) -> list[str]:
        assert node.ovs is not None
        return [
            _venv_tool("vxflow"), "agent", *self.etcd_flags(str(node.underlay_ip)),
            "--public-ip", str(node.underlay_ip), "--ovsdb", node.ovs.db_target,
            *(["--public-ipv6", str(node.underlay_ip6)] if node.underlay_ip6 else []),
            "--controller", self.controller_target, "--datapath-type", "netdev",
            *(["--ssl-privkey", str(self.pki(f"node-{node.underlay_ip}-key.pem")),
               "--ssl-cert", str(self.pki(f"node-{node.underlay_ip}.pem")),
               "--ssl-ca-cert", str(self.pki("ca.pem"))] if self.spec.tls else []),
            "--subnet-file", str(self.subnet_env_path(node)),
            "--cni-socket", str(self.cni_socket_path(node)),
            *(["--subnet-lease-ttl", str(ttl)] if (ttl := self.spec.agent_lease_ttl) else []),
            *(["--ip-masq"] if self.spec.ip_masq else []),
            *(["--metrics-port", str(AGENT_METRICS_PORT)] if self.spec.agent_metrics else []),
        ]  # fmt: skip

    def etcd_flags(self, who: str = "controller") -> list[str]:
        """The `vxflow` CLI flags that point a command at this cluster's etcd and prefix
        (as `who`, see tls_flags)."""
        return ["--etcd-endpoints", self.etcd_endpoint, "--etcd-prefix", self.spec.prefix,
                *self.tls_flags(who)]  # fmt: skip

    def start_podman(self) -> Podman:
        """A private podman whose `vxflow` network on each node is that node's vxflow-cni."""
        if lacking := vxpodman.missing():
            raise RuntimeError(f"podman cannot run here: missing {', '.join(lacking)} "
                               "(scripts/setup.sh installs them)")  # fmt: skip
        self.progress("setting up podman (runc, CNI backend, vxflow-cni on every node)")
        self.podman = Podman(self.workdir / "podman").setup()
        for node in self.vxflow_nodes:
            self.podman.add_node(node, node.ovs.db_target, self.subnet_env_path(node),
                                 self.cni_socket_path(node))  # fmt: skip
        return self.podman

    def stop_podman(self) -> None:
        """Remove the containers we started (by id); report what could not be removed."""
        podman, self.podman = self.podman, None
        for error in podman.stop() if podman else ():
            print(f"cleanup: podman: {error}", file=sys.stderr)

    def start_agent(self, node: VxflowNode) -> None:
        node.spawn("agent", self.agent_cmd(node), self.node_dir(node) / "agent.log")

    def stop_agent(self, node: VxflowNode) -> None:
        node.stop_proc("agent")

    def stop_flannel(self, node: FlannelNode) -> None:
        """Stop the flannel-style daemon; like flanneld it keeps its lease until the TTL ends."""
        node.stop_proc("flannel")

    def flannel_cmd(self, node: FlannelNode) -> list[str]:
        """The flannel-style daemon's command line for `node`."""
        cmd = [
            _venv_tool("python"), str(Path(__file__).with_name("flannel_node.py")),
            *self.etcd_flags(str(node.underlay_ip)),
            "--public-ip", str(node.underlay_ip), "--iface", "eth0",
            "--subnet-file", str(self.subnet_env_path(node)),
        ]  # fmt: skip
        if self.spec.flannel_lease_ttl:
            cmd += ["--subnet-lease-ttl", str(self.spec.flannel_lease_ttl)]
        if not self.spec.flannel_direct_routing:
            cmd.append("--no-direct-routing")
        if self.spec.ip_masq:  # flanneld's masquerade rules, in iptables
            cmd.append("--ip-masq")
        if node.underlay_ip6 is not None:  # flanneld's dual stack: flannel-v6.<VNI> too
            cmd += ["--public-ipv6", str(node.underlay_ip6)]
        return cmd

    def start_flannel(self, node: FlannelNode) -> None:
        cmd = self.flannel_cmd(node)
        node.sh(f"ip addr add {node.underlay_ip}/{UNDERLAY.prefixlen} dev eth0")
        if node.underlay_ip6 is not None:
            node.sh(f"ip -6 addr add {node.underlay_ip6}/{UNDERLAY6.prefixlen} dev eth0 nodad")
            node.sh("sysctl -qw net.ipv6.conf.all.forwarding=1")
        node.sh("ethtool -K eth0 tx off && ip link set eth0 up")
        node.sh("sysctl -qw net.ipv4.ip_forward=1")  # it routes between cni0 and flannel.<VNI>
        node.spawn("flannel", cmd, self.node_dir(node) / "flannel.log")

    def warm_underlay_arp(self) -> None:
        """Userspace tunnels resolve remote VTEPs from ARP (IPv6: neighbour advertisements)
        snooped on br-phy: warm it."""
        for node in self.vxflow_nodes:
            for peer in self.nodes:
                if peer is not node:
                    node.cmd(f"ping -c 1 -W 1 {peer.underlay_ip}")
                    if node.underlay_ip6 and getattr(peer, "underlay_ip6", None):
                        node.cmd(f"ping -c 1 -W 1 {peer.underlay_ip6}")

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

    def ipv6_subnet(self, node: Host) -> IPv6Network | None:
        """A dual-stack node's IPv6 subnet, from its subnet.env (written with the IPv4 one)."""
        if self.spec.ipv6_network is None:
            return None
        env = self.subnet_env(node)
        if "FLANNEL_IPV6_SUBNET" not in env:
            raise RuntimeError(f"{node.name}: a dual-stack cluster, but no FLANNEL_IPV6_SUBNET")
        return IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network

    def subnet_env(self, node: Host) -> dict[str, str]:
        text = self.subnet_env_path(node).read_text()
        return dict(line.strip().split("=", 1) for line in text.splitlines() if "=" in line)

    def attach_pods(self, node: Host, subnet: IPv4Network, timeout: float) -> None:
        """Give each pod the lease's last addresses (.254, .253, ... of a /24), plug its veth
        into the node's bridge. Containers get theirs from the bottom, through host-local."""
        six = self.ipv6_subnet(node)
        # a dual-stack node's pods fit the IPv6 underlay (leases/subnet_env.overlay_mtu)
        mtu = int(self.subnet_env(node)["FLANNEL_MTU"]) if six else POD_MTU
        for i, pod in enumerate(self.pods_of(node), start=1):
            pod.attach(IPv4Interface(f"{subnet.broadcast_address - i}/{subnet.prefixlen}"),
                       IPv6Interface(f"{six.broadcast_address - i}/{six.prefixlen}")
                       if six else None, mtu)  # fmt: skip
            port = pod.name  # the node-side veth is named after the pod
            node.sh(f"ip link set {port} mtu {mtu} up && ethtool -K {port} tx off")
            if isinstance(node, VxflowNode):
                # the userspace datapath serves the port: the node's kernel must stay off it
                # (no ARP replies, no forwarding, no IPv6), as vxflow-cni does (cni/veth.py)
                node.sh(f"sysctl -qw net.ipv4.conf.{port}.arp_ignore=8 "
                        f"net.ipv4.conf.{port}.forwarding=0 net.ipv6.conf.{port}.disable_ipv6=1")  # fmt: skip
                self._wait_bridge(node, timeout)
                node.ovs.vsctl(
                    "--may-exist", "add-port", BR_INT, port, "--", "set", "Interface", port,
                    f"external_ids:{ENDPOINT_MAC_KEY}=\"{pod.mac}\"",
                    f"external_ids:{ENDPOINT_IP_KEY}=\"{pod.addr}\"",
                    *([f"external_ids:{ENDPOINT_IPV6_KEY}=\"{pod.addr6}\""] if six else []),
                )  # fmt: skip
            else:
                self._ensure_cni0(node, subnet, six)
                node.sh(f"ip link set {port} master cni0")

    @staticmethod
    def _ensure_cni0(node: FlannelNode, subnet: IPv4Network, six: IPv6Network | None) -> None:
        """The CNI bridge of a flannel node: the gateway address (.1, and the IPv6 subnet's
        first) on a Linux bridge."""
        if "cni0" in node.cmd("ip -o link show cni0 2>/dev/null"):
            return
        node.sh("ip link add cni0 type bridge")
        node.sh(f"ip addr add {subnet.network_address + 1}/{subnet.prefixlen} dev cni0")
        if six is not None:
            node.sh(f"ip -6 addr add {six.network_address + 1}/{six.prefixlen} dev cni0 nodad")
        node.sh(f"ip link set cni0 mtu {POD_MTU} up")

    @staticmethod
    def _wait_bridge(node: VxflowNode, timeout: float) -> None:
        """The agent's bootstrap creates br-int; pods can be plugged in only after it."""
        deadline = time.monotonic() + timeout
        while BR_INT not in node.ovs.vsctl("list-br").split():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: the agent did not create {BR_INT}")
            time.sleep(0.2)
