"""`vxflow migrate`: turn a running flannel (vxlan backend) node into a vxflow node in place.

Design. The command runs on the node with flanneld's own settings (flags, FLANNELD_*
variables, `--sysconfig`, resolved as `vxflow agent` resolves them, ovsdb/cli.py) and
has three parts:

- `observe()` (I/O, read only): the network config and the leases in etcd, the subnet
  file, `flannel.<VNI>` (its local address and its routes), the CNI bridge (cni0: its
  gateway address and MAC, its ports), the bridge's FDB and neighbour table, the
  host-local store of the flannel CNI network and that network's conflist, and whether
  OVSDB answers. A source that cannot be read is one line in `Observation.errors`.
- `plan()` (pure): the failed checks (each one line), or else the steps in order.
  Each pod's MAC is what the bridge learned behind its veth (the FDB), its IP the
  neighbour entry of that MAC on cni0: what is really there, not what a file says;
  the host-local store only adds the allocations to carry over.
- `Migration` (I/O): carries the steps out in order, one line each. A step that fails
  is named with its reason, then it and every step before it are undone in reverse,
  one line each: the node is a flannel node again (flanneld, started again, takes its
  lease and flannel.<VNI> back). With OVSDB gone midway the kernel side is undone all
  the same (the veths back on cni0, the gateway port's address removed) and what is
  left in OVSDB is one line each, listed in the state file: the next run or `--rollback`
  removes it first (else ovs-vswitchd, its OVSDB back, takes a veth on cni0 into
  br-int). The state file holds its `Record` (the steps, how many are done, cni0 as it
  was, the pods, their sysctls, the CNI config) from before the first step, written
  again (tmp + rename) as each step is done, and before a step changes what its undo needs
  (the conflist's text, a veth's sysctls, ...): a re-run finds an interrupted (killed)
  migration there and resumes at its first step not done (each step may be carried out
  again: what it finds done it leaves, the switched conflist included).
- `Undo.roll_back()` (`--rollback`): a finished migration undone from that record, in
  the order that keeps the pods' gap short: flanneld first, cni0 with its MAC, the agent
  stopped and its bridge deleted, the pods back on cni0 at once, a gratuitous ARP so a
  pod that took the switch's gateway MAC meanwhile takes cni0's again. An interrupted
  migration's record is undone as a failed step is: its steps done, and the one it was
  in, in reverse. The VtepMAC comes back too: flanneld keeps a VXLAN device it finds
  with the same VNI, local address and port, and its MAC (else it makes one with a new
  random MAC). So before flanneld starts, flannel.<VNI> gets its recorded MAC back, or
  is re-created with it (down, no address) if it is gone; flanneld's lease then names
  the VtepMAC of before, and peers' entries for it are what they were.

The steps, in the order that keeps the pods reachable (what the plan prints):

0. with ip-masq (FLANNEL_IPMASQ=true) first: vxflow's table (ovsdb/ipmasq.py, the agent's)
   beside flanneld's iptables rules, while flanneld still runs: masquerade never stops.
1. fence flanneld: nothing may renew its lease or re-create flannel.<VNI> and its
   entries afterwards; the kernel keeps forwarding as flannel meanwhile.
2. take the lease over: `Registry.acquire` with this PublicIP claims the key that
   already carries it (same key and subnet; the value is rewritten by a compare on
   its revision, so the key is never deleted and the subnet is never free). The
   VtepMAC becomes vxflow's (flanneld's was the random one of its device): vxflow peers
   follow the lease at once, flannel peers as flanneld does on a lease change (a watch:
   at once; the emulation's too, woken by its own watch). flannel.<VNI> takes the new
   MAC just before, so that it takes in what a peer sends once it follows; a peer still
   on the old MAC meanwhile loses what it sends until it follows.
3. the agent starts (`vxflow agent`, as the node will run it): it holds the lease it
   finds (the same etcd lease while the TTLs agree) and brings up br-int with the
   gateway port on the subnet's .1. The pods' ARP entry for .1 still names cni0's MAC:
   vxflow's pipeline classifies a pod's packets by port, MAC and source IP
   (flows/family.py), never by the destination MAC, so they are routed as before, and
   the pod's next ARP refresh is answered by the switch with the gateway port's MAC.
   Neither cni0's MAC nor the pods' caches need changing.
4. ip-masq stays as it was: the agent's subnet file must say what FLANNEL_IPMASQ said; with
   ip-masq, flanneld's FLANNEL-POSTRTG rules (fenced, it restores them no more) are recorded
   in the state file, then removed (ovsdb/flannel_masq.py). Undone (and rolled back) in
   reverse: they are back before vxflow's table goes.
5. each pod's host-side veth moves from cni0 to br-int as a vxflow pod port
   (`attached-mac`, `vxflow-ip`: the observed MAC and IP); the agent publishes it.
6. flannel.<VNI> goes (with it its routes, neighbour and FDB entries), then cni0,
   empty now.
7. the host-local allocations are carried into vxflow-cni's network, with every
   observed pod IP, so a later pod never gets an address in use.
8. the CNI conflist switches to vxflow-cni.

IPv4-only nodes: a dual-stack node (FLANNEL_IPV6_SUBNET in its subnet file, or a dual-stack
lease) is refused up front, in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TypeVar

from cni.client import DEFAULT_SOCKET
from cni.config import DEFAULT_DATA_DIR
from cni.veth import INERT, make_inert
from daemons.processes import ended, start_time
from flows.ports import GATEWAY_PORT, vtep_mac_for
from leases.config import ConfigError
from leases.errors import RegistryError
from leases.model import LEASE_TTL_SECONDS, Lease, NetworkConfig
from leases.registry import Registry
from leases.subnet_env import SubnetEnv, read_subnet_env
from ovsdb import flannel_masq
from ovsdb import idl as ovsidl
from ovsdb.bootstrap import DEFAULT_BRIDGE
from ovsdb.idl import OvsdbError
from ovsdb.ipmasq import IpMasq, IpMasqError
from ovsdb.iproute import IprouteError, ip, ip_batch, ip_json, run
from ovsdb.plug import COLUMNS as PLUG_COLUMNS
from ovsdb.plug import PlugError, add_port, interface, pod_external_ids, wait_ofport

T = TypeVar("T")

DEFAULT_CNI_BRIDGE = "cni0"  # flannel's CNI plugin's bridge
DEFAULT_CNI_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_STATE_FILE = Path("/var/lib/vxflow/migrate.json")
DEFAULT_CNI_NETWORKS_DIR = Path("/var/lib/cni/networks")  # host-local's store, one dir a network
_HOST_LOCAL_OWN = {"lock"}  # host-local's files in a network's directory that are no address


@dataclass(frozen=True)
class Link:
    """A kernel interface as observed: its MAC, IPv4 addresses, MTU; a VXLAN device's local
    IP, UDP port and underlay device (what re-creating flannel.<VNI> as it was needs)."""

    name: str
    mac: str
    addresses: tuple[IPv4Interface, ...] = ()
    local: IPv4Address | None = None
    mtu: int = 0
    port: int | None = None
    dev: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "mac": self.mac, "addresses": [str(a) for a in self.addresses],
                "local": str(self.local) if self.local else None, "mtu": self.mtu,
                "port": self.port, "dev": self.dev}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Link:
        return cls(d["name"], d["mac"], tuple(IPv4Interface(a) for a in d["addresses"]),
                   IPv4Address(d["local"]) if d.get("local") else None, int(d.get("mtu", 0)),
                   d.get("port"), d.get("dev"))  # fmt: skip


@dataclass(frozen=True)
class FdbEntry:
    """A MAC the bridge learned behind one of its ports."""

    mac: str
    port: str


@dataclass(frozen=True)
class Neighbour:
    ip: IPv4Address
    mac: str


@dataclass(frozen=True)
class PodPort:
    """A pod as it hangs on the CNI bridge: its host-side veth, IP and MAC."""

    port: str
    ip: IPv4Address
    mac: str


@dataclass(frozen=True)
class Observation:
    """What `observe()` found on the node (plain values: `plan()` is pure)."""

    public_ip: IPv4Address
    subnet_file: Path
    cni_bridge: str = DEFAULT_CNI_BRIDGE
    config: NetworkConfig | None = None
    leases: tuple[Lease, ...] = ()
    subnet_env: SubnetEnv | None = None
    vxlan: Link | None = None  # flannel.<VNI>
    vxlan_routes: int = 0  # routes through flannel.<VNI>
    bridge: Link | None = None  # cni0
    bridge_ports: tuple[str, ...] = ()
    fdb: tuple[FdbEntry, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    conflist: Path | None = None  # the flannel CNI network's conflist
    network_name: str | None = None  # its name: host-local's directory
    allocations: tuple[IPv4Address, ...] = ()  # host-local's allocated addresses
    flanneld_pid: int | None = None  # the process to stop, if given
    flanneld_command: str | None = None  # its command line; None: no such process
    errors: tuple[str, ...] = ()  # a source that could not be read (etcd, OVSDB), one line each


class Kind(StrEnum):
    """What a step does (`Migration` carries each kind out)."""

    VXFLOW_MASQ = "vxflow-masq"
    FENCE = "fence"
    LEASE = "lease"
    AGENT = "agent"
    MASQ = "masq"
    MOVE = "move"
    VXLAN = "vxlan"
    BRIDGE = "bridge"
    ALLOCATIONS = "allocations"
    CONFLIST = "conflist"


@dataclass(frozen=True)
class Step:
    """One step of the migration, as the plan prints it; `pod`: the one a move is for."""

    kind: Kind
    name: str
    detail: str
    pod: PodPort | None = None

    def line(self, number: int) -> str:
        return f"{number}. {self.name}: {self.detail}"


@dataclass
class Plan:
    """Either `problems` (a failed check each; nothing may be done) or `steps`."""

    problems: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    pods: list[PodPort] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        if self.problems:
            return [f"check failed: {p}" for p in self.problems]
        return [step.line(i) for i, step in enumerate(self.steps, 1)]


# -- the pure plan ---------------------------------------------------------------------


def _the_one(found: list[T], problems: list[str], none: str, many: str) -> T | None:
    """The one value in `found`; else None, and the problem (`none` or `many`) noted."""
    if len(found) == 1:
        return found[0]
    problems.append(many if found else none)
    return None


def pods_on_bridge(
    ports: Iterable[str], fdb: Iterable[FdbEntry], neighbours: Iterable[Neighbour],
    subnet: IPv4Network,
) -> tuple[list[PodPort], list[str]]:  # fmt: skip
    """Each port's pod from what the bridge learned (its MAC) and the neighbour table (the
    IP of that MAC in `subnet`); the ports that cannot be told, one problem line each."""
    macs: dict[str, set[str]] = {}
    for entry in fdb:
        macs.setdefault(entry.port, set()).add(entry.mac.lower())
    ips: dict[str, set[IPv4Address]] = {}
    for n in neighbours:
        if n.ip in subnet:
            ips.setdefault(n.mac.lower(), set()).add(n.ip)
    pods, problems = [], []
    for port in sorted(ports):
        learned = sorted(macs.get(port, ()))
        mac = _the_one(learned, problems, f"{port}: the bridge learned no MAC behind it (a "
                       "silent pod: make it send, e.g. ping it from the node, and run again)",
                       f"{port}: the bridge learned {len(learned)} MACs behind it "
                       f"({', '.join(learned)}): not one pod's port")  # fmt: skip
        if mac is None:
            continue
        found = sorted(ips.get(mac, ()))
        ip = _the_one(found, problems, f"{port} ({mac}): no neighbour entry on the bridge gives "
                      f"its IP in {subnet} (ping it from the node, and run again)",
                      f"{port} ({mac}): {len(found)} IPs in the neighbour table "
                      f"({', '.join(map(str, found))})")  # fmt: skip
        if ip is not None:
            pods.append(PodPort(port, ip, mac))
    seen: dict[IPv4Address, str] = {}
    for pod in pods:
        if pod.ip in seen:
            problems.append(f"{pod.ip} is on two ports: {seen[pod.ip]} and {pod.port}")
        seen[pod.ip] = pod.port
    return pods, problems


def _own_lease(obs: Observation, subnet: IPv4Network, problems: list[str]) -> Lease | None:
    lease = next((le for le in obs.leases if le.subnet == subnet), None)
    if lease is None:
        problems.append(f"etcd holds no lease for {subnet} (the subnet file's): flanneld's "
                        "lease expired or was deleted")  # fmt: skip
    elif lease.public_ip != obs.public_ip:
        problems.append(f"the lease for {subnet} belongs to {lease.public_ip}, not to this "
                        f"node ({obs.public_ip})")  # fmt: skip
        return None
    return lease


DUAL_STACK = "a dual-stack flannel node: vxflow migrate moves IPv4-only nodes"


def _dual_stack(obs: Observation) -> str | None:
    """The one line that refuses a dual-stack node (its subnet file or its lease says so),
    before any other check: nothing else about such a node matters."""
    env = obs.subnet_env
    if env is not None and env.ipv6_subnet is not None:
        return f"{obs.subnet_file} has FLANNEL_IPV6_SUBNET={env.ipv6_subnet}: {DUAL_STACK}"
    subnet = env.subnet.network if env is not None else None
    dual = next((le for le in obs.leases if le.subnet == subnet and le.ipv6_subnet), None)
    return f"etcd's lease {dual.label}: {DUAL_STACK}" if dual else None


def _check_links(obs: Observation, config: NetworkConfig, gateway: IPv4Interface,
                 problems: list[str]) -> None:  # fmt: skip
    device = f"flannel.{config.backend.vni}"
    if obs.vxlan is None:
        problems.append(f"{device}: no such device (is this a flannel vxlan node?)")
    elif obs.vxlan.local != obs.public_ip:
        problems.append(f"{device} sends from {obs.vxlan.local}, not from this node's "
                        f"PublicIP {obs.public_ip}")  # fmt: skip
    if obs.bridge is None:
        problems.append(f"{obs.cni_bridge}: no such bridge (flannel's CNI bridge; --cni-bridge)")
    elif gateway not in obs.bridge.addresses:
        problems.append(f"{obs.cni_bridge} does not hold the gateway {gateway}")


def plan(obs: Observation) -> Plan:
    """The checks, then the steps (pure). Any failed check: no steps."""
    if dual := _dual_stack(obs):
        return Plan(problems=[dual])
    result = Plan(problems=list(obs.errors))
    config, env = obs.config, obs.subnet_env
    if env is None:
        result.problems.append(f"{obs.subnet_file}: missing or malformed (flanneld's subnet "
                               "file; --subnet-file)")  # fmt: skip
    if config is None or env is None:
        return result
    if env.network != config.network:
        result.problems.append(f"{obs.subnet_file} says FLANNEL_NETWORK={env.network}, etcd's "
                               f"config {config.network}")  # fmt: skip
    subnet = env.subnet.network
    lease = _own_lease(obs, subnet, result.problems)
    _check_links(obs, config, env.subnet, result.problems)
    pods, problems = pods_on_bridge(obs.bridge_ports, obs.fdb, obs.neighbours, subnet)
    result.problems += problems
    if obs.flanneld_pid is not None and obs.flanneld_command is None:
        result.problems.append(f"--flanneld-pid {obs.flanneld_pid}: no such process")
    elif obs.flanneld_pid is not None and "flannel" not in obs.flanneld_command:
        result.problems.append(f"--flanneld-pid {obs.flanneld_pid} is not flanneld: "
                               f"{obs.flanneld_command}")  # fmt: skip
    if lease is None or not result.ok:
        return result
    result.pods = pods
    result.steps = _steps(obs, config, env, lease, pods)
    return result


def _steps(obs: Observation, config: NetworkConfig, env: SubnetEnv, lease: Lease,
           pods: list[PodPort]) -> list[Step]:  # fmt: skip
    device, bridge, gateway = f"flannel.{config.backend.vni}", obs.cni_bridge, env.subnet
    vtep = vtep_mac_for(obs.public_ip)
    vtep_change = "VtepMAC unchanged" if vtep == lease.vtep_mac else \
        f"VtepMAC {lease.vtep_mac} -> {vtep}"  # fmt: skip
    carried = sorted({*obs.allocations, *(pod.ip for pod in pods)})
    allocations = (f"{len(carried)} address(es) from host-local's {obs.network_name} kept for "
                   f"vxflow-cni, which takes the network over: {', '.join(map(str, carried))}"
                   if obs.network_name else "no flannel CNI network found: nothing to carry")
    masq = (f"on, as FLANNEL_IPMASQ=true: the agent's subnet file must say the same; "
            f"flanneld's {flannel_masq.CHAIN} rules recorded, then removed (vxflow's table "
            "masquerades)") if env.ipmasq else \
        "off, as FLANNEL_IPMASQ=false: the agent's subnet file must say the same"  # fmt: skip
    pid = f" (PID {obs.flanneld_pid})" if obs.flanneld_pid is not None else ""
    handover = [Step(Kind.VXFLOW_MASQ, "put vxflow's ip-masq in place", f"table ip vxflow with "
                     f"flannel's masquerade rules for {config.network} and {lease.subnet}, beside "
                     f"flanneld's {flannel_masq.CHAIN}: masquerade never stops")] \
        if env.ipmasq else []  # fmt: skip
    return [
        *handover,
        Step(Kind.FENCE, "fence flanneld", f"stop it{pid}: nothing renews {lease.subnet} or re-creates {device} "
                               "afterwards"),
        Step(Kind.LEASE, "take the lease over", f"{lease.key_name} for {obs.public_ip}, same key and "
                                    f"subnet, under the agent's etcd lease ({vtep_change})"),
        Step(Kind.AGENT, "start the agent", f"it holds {lease.subnet} and brings up br-int with the gateway "
                                f"port on {gateway}; the pods' ARP entry for {gateway.ip} "
                                f"({obs.bridge.mac}) keeps routing"),
        Step(Kind.MASQ, "keep ip-masq", masq),
        *(Step(Kind.MOVE, f"move {pod.port}", f"pod {pod.ip} {pod.mac} from {bridge} to br-int as a "
                                   "vxflow pod port; its endpoint published", pod)
          for pod in pods),
        Step(Kind.VXLAN, f"remove {device}", f"with its {obs.vxlan_routes} route(s) and its neighbour and "
                                 "FDB entries"),
        Step(Kind.BRIDGE, f"remove {bridge}", "once no port is left on it"),
        Step(Kind.ALLOCATIONS, "carry the allocations over", allocations),
        Step(Kind.CONFLIST, "switch the CNI config", f"{obs.conflist} to vxflow-cni" if obs.conflist else
             "no flannel conflist found: nothing to switch"),
    ]  # fmt: skip


# -- observing the node -----------------------------------------------------------------


def _link(name: str) -> Link | None:
    try:
        found = ip_json("-d", "addr", "show", "dev", name)
    except IprouteError:  # no such device
        return None
    if not found:
        return None
    info = found[0]
    vxlan = info.get("linkinfo", {}).get("info_data", {})
    local = vxlan.get("local")
    return Link(
        name=name,
        mac=info.get("address", ""),
        addresses=tuple(IPv4Interface(f"{a['local']}/{a['prefixlen']}")
                        for a in info.get("addr_info", []) if a.get("family") == "inet"),
        local=IPv4Address(local) if local else None,
        mtu=int(info.get("mtu", 0)),
        port=vxlan.get("port"),
        dev=vxlan.get("link"),
    )


def _bridge_state(bridge: str) -> tuple[tuple[str, ...], tuple[FdbEntry, ...], tuple[Neighbour, ...]]:
    """The bridge's ports, the MACs it learned behind them, its neighbour table (IPv4)."""
    ports = tuple(link["ifname"] for link in ip_json("link", "show", "master", bridge))
    fdb = tuple(
        FdbEntry(e["mac"], e["ifname"])
        for e in ip_json_bridge("fdb", "show", "br", bridge)
        if e.get("ifname") in ports and e.get("state") != "permanent" and "self" not in
        e.get("flags", [])
    )  # fmt: skip
    neighbours = tuple(
        Neighbour(IPv4Address(n["dst"]), n["lladdr"])
        for n in ip_json("-4", "neigh", "show", "dev", bridge)
        if n.get("lladdr") and "FAILED" not in n.get("state", [])
    )  # fmt: skip
    return ports, fdb, neighbours


def ip_json_bridge(*args: str) -> list[dict]:
    """`bridge -j ARGS` (iproute2's bridge tool), as ip_json."""
    out = run("bridge", "-j", *args)
    return json.loads(out) if out.strip() else []


def flannel_conflist(conf_dir: Path) -> tuple[Path | None, str | None]:
    """The conflist (or single .conf) whose plugins include `flannel`, and its network name."""
    for path in sorted(conf_dir.glob("*.conf*")) if conf_dir.is_dir() else ():
        try:
            conf, plugins = cni_config(path.read_text())
        except (OSError, StepFailed):
            continue
        if any(p.get("type") == "flannel" for p in plugins):
            return path, conf.get("name")
    return None, None


def host_local_allocations(directory: Path) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses host-local recorded as allocated in one network's directory."""
    found = []
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.name in _HOST_LOCAL_OWN or path.name.startswith("last_reserved_ip"):
            continue
        try:
            found.append(IPv4Address(path.name))
        except ValueError:
            continue
    return tuple(sorted(found))


def command_line(pid: int) -> str | None:
    """A running process's command line (None: no such process, or it has ended)."""
    if ended(pid):
        return None
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return None


def cni_config(text: str) -> tuple[dict, list[dict]]:
    """A conflist (or a single .conf) and its plugins; StepFailed if it is no CNI config."""
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise StepFailed(f"not a CNI config: {exc}") from exc
    plugins = conf.get("plugins", [conf]) if isinstance(conf, dict) else None
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        raise StepFailed("not a CNI config: no list of plugins")
    return conf, plugins


def switched_conflist(text: str, settings: Settings, bridge: str) -> str:
    """What the flannel conflist `text` becomes: same network name, its flannel plugin
    replaced by vxflow-cni's (the agent's --cni-socket, --cni-data-dir, host-local's store),
    the other plugins kept. StepFailed if it holds no flannel plugin."""
    old, plugins = cni_config(text)
    flannel = next((p for p in plugins if p.get("type") == "flannel"), None)
    if flannel is None or "name" not in old:
        raise StepFailed("the CNI config names no flannel plugin (or no network)")
    delegate = flannel.get("delegate")
    vxflow = {"type": "vxflow", "ovsdb": settings.ovsdb, "bridge": bridge,
              "subnetFile": str(settings.subnet_file), "agentSocket": settings.cni_socket,
              "dataDir": str(settings.cni_data_dir),
              "isDefaultGateway": isinstance(delegate, dict) and bool(delegate.get("isDefaultGateway")),
              "ipam": {"type": "host-local", "dataDir": str(settings.cni_networks_dir)}}  # fmt: skip
    new = {"cniVersion": old.get("cniVersion", "0.3.1"), "name": old["name"],
           "plugins": [vxflow if p is flannel else p for p in plugins]}  # fmt: skip
    return json.dumps(new, indent=2) + "\n"


def is_switched(text: str, settings: Settings) -> bool:
    """`text` is a conflist `switched_conflist` wrote for these settings: no flannel plugin,
    a vxflow one with this agentSocket and dataDir."""
    try:
        _, plugins = cni_config(text)
    except StepFailed:
        return False
    ours = {"type": "vxflow", "agentSocket": settings.cni_socket,
            "dataDir": str(settings.cni_data_dir)}  # fmt: skip
    return not any(p.get("type") == "flannel" for p in plugins) and \
        any(ours.items() <= p.items() for p in plugins)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Where to look (flanneld's settings, resolved by the command)."""

    public_ip: IPv4Address
    subnet_file: Path
    ovsdb: str
    cni_bridge: str = DEFAULT_CNI_BRIDGE
    cni_conf_dir: Path = DEFAULT_CNI_CONF_DIR
    cni_networks_dir: Path = DEFAULT_CNI_NETWORKS_DIR
    flanneld_pid: int | None = None
    state_file: Path = DEFAULT_STATE_FILE  # a finished migration's record, for --rollback
    cni_socket: str = DEFAULT_SOCKET  # the agent's --cni-socket, the conflist's agentSocket
    cni_data_dir: Path = DEFAULT_DATA_DIR  # vxflow-cni's records, the conflist's dataDir


def observe(settings: Settings, registry: Registry) -> Observation:
    """Everything `plan()` needs, read from etcd, OVSDB, the kernel and files; changes nothing."""
    errors: list[str] = []
    config, leases = None, ()
    try:
        config = registry.get_config()
        leases = tuple(registry.list_leases())
    except (RegistryError, ConfigError) as exc:
        errors.append(f"etcd: {exc}")
    try:
        ovsidl.fetch_schema(settings.ovsdb)
    except ovsidl.OvsdbUnavailable as exc:
        errors.append(f"OVSDB: {exc}")
    vxlan, routes = None, 0
    if config is not None:
        device = f"flannel.{config.backend.vni}"
        vxlan = _link(device)
        routes = len(ip_json("-4", "route", "show", "dev", device)) if vxlan else 0
    bridge = _link(settings.cni_bridge)
    ports, fdb, neighbours = _bridge_state(settings.cni_bridge) if bridge else ((), (), ())
    conflist, name = flannel_conflist(settings.cni_conf_dir)
    return Observation(
        public_ip=settings.public_ip,
        subnet_file=settings.subnet_file,
        cni_bridge=settings.cni_bridge,
        config=config,
        leases=leases,
        subnet_env=read_subnet_env(settings.subnet_file),
        vxlan=vxlan,
        vxlan_routes=routes,
        bridge=bridge,
        bridge_ports=ports,
        fdb=fdb,
        neighbours=neighbours,
        conflist=conflist,
        network_name=name,
        allocations=host_local_allocations(settings.cni_networks_dir / name) if name else (),
        flanneld_pid=settings.flanneld_pid,
        flanneld_command=command_line(settings.flanneld_pid) if settings.flanneld_pid else None,
        errors=tuple(errors),
    )


# -- carrying the plan out ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What carrying the plan out (or rolling it back) needs besides what was observed."""

    start_flanneld: str  # a shell command that starts flanneld again (rolling back)
    stop_agent: str  # a shell command that stops the agent again (rolling back)
    flanneld_pid: int = 0  # the flanneld to stop (migrating)
    start_agent: str = ""  # a shell command that starts this node's `vxflow agent` (migrating)
    bridge: str = DEFAULT_BRIDGE
    timeout: float = 60.0  # for flanneld to stop, the agent to be up, the endpoints


class StepFailed(RuntimeError):
    """A step of the migration failed; the message names it and why."""


class FlanneldRuns(StepFailed):
    """The fenced flanneld outlived the undo's wait: flanneld is not started beside it, and
    the state file is kept (once it ends, nothing renews the lease)."""


def wait_until(what: str, done: Callable[[], T], timeout: float, pause: float = 0.05) -> T:
    """`done()`'s first true answer, asked every `pause` s; TimeoutError "`what` within
    `timeout`s" if there is none by then."""
    deadline = time.monotonic() + timeout
    while not (result := done()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f}s")
        time.sleep(pause)
    return result


def runs(pid: int, start: int | None) -> bool:
    """The process `pid` that started at `start` still runs, not another that took its PID
    since (whatever its command line: `vxflow agent --subnet-file /run/flannel/subnet.env`
    names flannel too)."""
    return start is not None and start_time(pid) == start


def set_mac(device: str, mac: str) -> None:
    """`device`'s MAC changed, its permanent neighbour entries kept: the kernel flushes
    them all on a change of address (flanneld's own, one per peer, included)."""
    kept = ip_json("neigh", "show", "dev", device, "nud", "permanent")
    ip("link", "set", device, "address", mac)
    for entry in kept:
        if "lladdr" in entry:
            ip("neigh", "replace", entry["dst"], "lladdr", entry["lladdr"], "dev", device,
               "nud", "permanent")  # fmt: skip


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (a temporary file beside it, renamed), directories made;
    durable once it returns: the data synced before the rename (a crash never leaves an
    empty or partial record, or conflist, under the name), the directory after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def announce(ifname: str, mac: str, address: IPv4Address) -> None:
    """Two gratuitous ARP requests for `address` at `mac`, broadcast out of `ifname`: a
    neighbour holding an entry for it takes the new MAC (Linux: also with arp_accept off)."""
    sha = bytes.fromhex(mac.replace(":", ""))
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sha, address.packed, bytes(6),
                      address.packed)  # fmt: skip
    frame = b"\xff" * 6 + sha + struct.pack("!H", 0x0806) + arp
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for _ in range(2):
            sock.send(frame)


_FAILURES = (StepFailed, RegistryError, IprouteError, PlugError, OvsdbError, OSError,
             ovsidl.OvsdbUnavailable, TimeoutError, subprocess.SubprocessError, IpMasqError,
             flannel_masq.FlannelMasqError)


def _nftables() -> IpMasq:
    """vxflow's ip-masq tables (StepFailed if python3-nftables is missing)."""
    try:
        return IpMasq()
    except ImportError as exc:
        raise StepFailed(f"python3-nftables is not importable: {exc}") from exc


def _container(pod: PodPort) -> str:
    """The container id a moved pod's port carries (its runtime's is not known here)."""
    return f"flannel-{pod.port}"


@dataclass
class Record:
    """The migration's plan, how far it got (`done`: the steps done), and what undoing it
    needs of the node as it was. The state file holds it from the first step on, written
    again as each step is done: what a re-run resumes and `--rollback` undoes. What a step
    is about to change that its undo needs (flanneld's rules, a veth's sysctls, the
    host-local files it adds, the conflist's text, the agent's start) is written there
    before the change: a run killed after the change, before the step is recorded done,
    leaves it for the re-run or the rollback."""

    vni: int
    subnet: IPv4Network
    bridge: Link  # cni0 as it was: its MAC is the pods' ARP entry for the gateway
    pods: list[PodPort]
    vxlan: Link | None = None  # flannel.<VNI> as it was: its MAC is the lease's VtepMAC
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)  # a moved port's, by path
    written: list[str] = field(default_factory=list)  # host-local files added
    conflist: str | None = None  # the flannel conflist's path and text, as they were
    conflist_text: str | None = None
    ipmasq: bool = False  # flanneld's FLANNEL_IPMASQ
    network: str | None = None  # the flannel CNI network's name: host-local's directory
    flanneld_pid: int = 0  # the flanneld the fence stops (0: not known)
    flanneld_start: int | None = None  # its start_time, recorded before SIGTERM (None: not yet)
    overlay: IPv4Network | None = None  # the config's Network: the masquerade rules' (ipmasq)
    flannel_masq: list[str] = field(default_factory=list)  # flanneld's rules, as removed
    agent_started: float | None = None  # when --start-agent ran (None: not yet)
    steps: list[Step] = field(default_factory=list)
    done: int = 0  # steps[:done] are done
    rolling_back: bool = False  # a failed step's rollback began: only --rollback may go on

    @property
    def finished(self) -> bool:
        return self.done == len(self.steps)

    def to_json(self) -> str:
        return json.dumps({
            "vni": self.vni, "subnet": str(self.subnet),
            "bridge": self.bridge.to_dict(),
            "vxlan": self.vxlan.to_dict() if self.vxlan else None,
            "pods": [{"port": p.port, "ip": str(p.ip), "mac": p.mac} for p in self.pods],
            "sysctls": self.sysctls, "written": self.written, "conflist": self.conflist,
            "conflist_text": self.conflist_text, "ipmasq": self.ipmasq, "network": self.network,
            "flanneld_pid": self.flanneld_pid, "flanneld_start": self.flanneld_start,
            "overlay": str(self.overlay) if self.overlay else None,
            "flannel_masq": self.flannel_masq, "agent_started": self.agent_started,
            "steps": [{"kind": st.kind.value, "name": st.name, "detail": st.detail,
                       "pod": st.pod.port if st.pod else None} for st in self.steps],
            "done": self.done, "rolling_back": self.rolling_back,
        }, indent=2)  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Record:
        """ValueError (KeyError and TypeError included) if it is not a record."""
        d = json.loads(text)
        pods = [PodPort(p["port"], IPv4Address(p["ip"]), p["mac"]) for p in d["pods"]]
        by_port = {pod.port: pod for pod in pods}
        steps = [Step(Kind(st["kind"]), st["name"], st["detail"],
                      by_port[st["pod"]] if st["pod"] else None) for st in d["steps"]]  # fmt: skip
        done = int(d["done"])
        return cls(
            vni=int(d["vni"]), subnet=IPv4Network(d["subnet"]),
            bridge=Link.from_dict(d["bridge"]),
            pods=pods,
            vxlan=Link.from_dict(d["vxlan"]) if d.get("vxlan") else None,
            sysctls=dict(d["sysctls"]), written=list(d["written"]), conflist=d["conflist"],
            conflist_text=d["conflist_text"], ipmasq=bool(d["ipmasq"]), network=d["network"],
            flanneld_pid=int(d.get("flanneld_pid", 0)), flanneld_start=d.get("flanneld_start"),
            overlay=IPv4Network(d["overlay"]) if d.get("overlay") else None,
            flannel_masq=list(d.get("flannel_masq", [])),
            agent_started=d["agent_started"] if "agent_started" in d else
            _started_before(steps[:done]),
            steps=steps, done=done, rolling_back=bool(d.get("rolling_back", False)),
        )  # fmt: skip


def _started_before(done: list[Step]) -> float | None:
    """`agent_started` of a record the previous release wrote (it kept none): a time long
    past (0, the epoch: not when) if its agent step is done, so a rollback stops the agent,
    which would else renew the lease beside flanneld and rebuild br-int; else None."""
    return 0.0 if any(step.kind is Kind.AGENT for step in done) else None


LEFTOVERS = "left_in_ovsdb"  # a state file's only key after an undo OVSDB did not answer


def vsctl(ovsdb: str, args: Iterable[str]) -> None:
    run("ovs-vsctl", f"--db={ovsdb}", "--timeout=10", *args)


def remove_leftovers(settings: Settings, say: Callable[[str], None], dry_run: bool = False) -> bool:
    """If the state file lists only what an undo left in OVSDB, remove that (one line
    each) and the file; True if it did (with `dry_run`: says what it would remove, and
    changes nothing). StepFailed, nothing else done, if OVSDB still does not answer."""
    try:
        found = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(found, dict) or set(found) != {LEFTOVERS}:
        return False
    for args in found[LEFTOVERS]:
        command = f"ovs-vsctl {' '.join(args)}"
        if dry_run:
            say(f"first: what a rollback left in OVSDB ({settings.state_file}): {command}")
            continue
        try:
            vsctl(settings.ovsdb, args)
        except (IprouteError, subprocess.SubprocessError) as exc:
            raise StepFailed(f"{settings.state_file} lists what a rollback left in OVSDB; "
                             f"removing it failed: {exc}") from exc  # fmt: skip
        say(f"removed what a rollback left in OVSDB: {command}")
    if not dry_run:
        settings.state_file.unlink()
    return True


def read_record(path: Path) -> Record:
    """A migration's record, finished or not (StepFailed, one line, if there is none)."""
    try:
        return Record.from_json(path.read_text())
    except OSError as exc:
        raise StepFailed(f"no migration recorded in {path}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise StepFailed(f"{path} is not a migration's record: {exc!r}") from exc


class Undo:
    """Undoes the steps of a migration, from its `Record` (each undo also one that failed
    half-way), one line each through `say`."""

    def __init__(self, settings: Settings, run: Run, registry: Registry, record: Record,
                 say: Callable[[str], None]) -> None:  # fmt: skip
        self.settings, self.run, self.registry = settings, run, registry
        self.record, self.say = record, say
        self.leftovers: list[list[str]] = []  # the ovs-vsctl commands OVSDB did not answer

    def roll_back(self) -> None:
        """A finished migration undone, in the order that keeps the pods' gap short:
        flanneld first (flannel.<VNI> ready while the switch still carries the pods),
        cni0, the agent stopped, at once the pods back on cni0 and its bridge deleted,
        then the agent's endpoints, the pods told cni0's MAC, the CNI config as it was. With
        ip-masq, flanneld's rules are back before flanneld starts, and vxflow's table goes
        once the agent (which would restore it) stopped: masquerade never stops."""
        masq = self.record.ipmasq
        steps = [
            *([(f"put flanneld's {flannel_masq.CHAIN} back", self._flannel_masq_back)] if masq
              else []),
            ("start flanneld", self._start_flanneld),
            (f"re-create {self.record.bridge.name}", self._bridge_back),
            ("stop the agent", self._stop_agent),
            *([("remove vxflow's ip-masq table", self._vxflow_masq_off)] if masq else []),
            *((f"move {pod.port} back", lambda pod=pod: self._move_back(pod))
              for pod in self.record.pods),
            (f"delete {self.run.bridge}", self._delete_bridge),
            ("delete the agent's endpoints", self._delete_endpoints),
            (f"announce {self.record.bridge.name}'s MAC", self._announce),
            ("restore the allocations", self._allocations_back),
            ("restore the CNI config", self._conflist_back),
        ]  # fmt: skip
        for number, (name, action) in enumerate(steps, 1):
            self.say(f"{number}. {name}")
            try:
                action()
            except _FAILURES as exc:
                raise StepFailed(f"rollback step {number} ({name}) failed: {exc}") from exc
        self._forget()

    def _forget(self) -> None:
        """The record removed: the node is flannel again. What an undo left in OVSDB (it did
        not answer) stays in the state file, for the next run or --rollback to remove first:
        ovs-vswitchd would otherwise take a pod's veth, back on cni0, into br-int again."""
        if self.leftovers:
            write_atomically(self.settings.state_file,
                             json.dumps({LEFTOVERS: self.leftovers}, indent=2))  # fmt: skip
        else:
            self.settings.state_file.unlink(missing_ok=True)

    # -- rolling back: each undoes one step, also one that failed half-way ----------------

    def _shell(self, command: str) -> None:
        subprocess.run(command, shell=True, check=True, timeout=self.run.timeout,
                       stdin=subprocess.DEVNULL)  # fmt: skip

    def _start_flanneld(self) -> None:
        """flanneld again, on flannel.<VNI> as it was: it takes its lease back with the
        VtepMAC it had, and brings the device up with its entries. Once the flanneld the
        fence sent SIGTERM ended (it may take longer than --timeout): two would fight over
        the lease and the device. FlanneldRuns if it still runs after --timeout more."""
        pid, start = self.record.flanneld_pid, self.record.flanneld_start
        try:
            wait_until(f"flanneld (PID {pid}) did not end", lambda: not runs(pid, start),
                       self.run.timeout)  # fmt: skip
        except TimeoutError as exc:
            raise FlanneldRuns(f"{exc}: not started again beside it, and once it ends nothing "
                               f"renews the lease; {self.settings.state_file} kept: run "
                               "--rollback once it has ended") from exc  # fmt: skip
        self._vtep_back()
        self._shell(self.run.start_flanneld)
        device = f"flannel.{self.record.vni}"
        wait_until(f"flanneld brought no {device} up",
                   lambda: any(link["ifname"] == device and "UP" in link["flags"]
                               for link in ip_json("link", "show")), self.run.timeout)  # fmt: skip
        if self.record.vxlan is not None:
            wait_until(f"flanneld's lease names no VtepMAC {self.record.vxlan.mac}",
                       self._vtep_leased, self.run.timeout)  # fmt: skip

    def _vtep_leased(self) -> bool:
        """The node's lease names flannel.<VNI>'s recorded MAC (etcd away a moment: not yet)."""
        try:
            leases = self.registry.list_leases()
        except RegistryError:
            return False
        return any(lease.subnet == self.record.subnet and lease.vtep_mac == self.record.vxlan.mac
                   for lease in leases)  # fmt: skip

    def _vtep_back(self) -> None:
        """flannel.<VNI> with its own MAC again, re-created (down, no address: flanneld's to
        set) if it is gone. flanneld keeps a VXLAN device it finds with the same VNI, local
        address and port, and with it its MAC: the lease names the VtepMAC of before."""
        was = self.record.vxlan
        if was is None:  # a record from before the device was recorded: flanneld picks one
            return
        if _link(was.name) is not None:
            set_mac(was.name, was.mac)
            return
        ip("link", "add", was.name, "address", was.mac, "mtu", str(was.mtu), "type", "vxlan",
           "id", str(self.record.vni), "local", str(was.local), "nolearning",
           *(("dstport", str(was.port)) if was.port else ()),
           *(("dev", was.dev) if was.dev else ()))  # fmt: skip

    def _stop_agent(self) -> None:
        """--stop-agent, once --start-agent ran (a run killed before that started none)."""
        if self.record.agent_started is not None:
            self._shell(self.run.stop_agent)

    def _flannel_masq_back(self) -> None:
        """flanneld's masquerade rules as recorded, before vxflow's table goes."""
        flannel_masq.put_back(self.record.flannel_masq)

    def _vxflow_masq_off(self) -> None:
        _nftables().remove()

    def _delete_bridge(self) -> None:
        """The agent's bridge, with the tunnel port that took the node's VXLAN traffic
        (flannel.<VNI> gets it from now on) and the gateway port. After the pods are back
        on cni0: a packet for a pod that reached the kernel first would leave an ARP
        request unanswered, and the next comes 1 s later."""
        if not self._vsctl(self.run.bridge, "--if-exists", "del-br", self.run.bridge):
            # the gateway port stays in ovs-vswitchd: cni0 alone holds the gateway now
            ip("addr", "flush", "dev", GATEWAY_PORT, check=False)
            ip("link", "set", GATEWAY_PORT, "down", check=False)

    def _vsctl(self, what: str, *args: str) -> bool:
        """`ovs-vsctl ARGS`; if OVSDB does not answer (it went away midway), one line says
        that `what` is left in it, and False: the kernel side is undone all the same."""
        try:
            vsctl(self.settings.ovsdb, args)
        except (IprouteError, subprocess.SubprocessError) as exc:
            self.say(f"{what} left in OVSDB: {exc}")
            self.leftovers.append(list(args))
            return False
        return True

    def _delete_endpoints(self) -> None:
        """The endpoints the agent published (bound to the lease's etcd lease, which
        flanneld may keep: they would outlive the agent)."""
        for endpoint in self.registry.list_endpoints(self.record.subnet):
            self.registry.delete_endpoint(endpoint)

    def _undo_agent(self) -> None:
        self._stop_agent()
        self._delete_bridge()
        self._delete_endpoints()

    def _move_back(self, pod: PodPort) -> None:
        self._vsctl(pod.port, "--if-exists", "del-port", self.run.bridge, pod.port)
        for path, value in self.record.sysctls.pop(pod.port, {}).items():
            Path(path).write_text(value)
        ip("link", "set", pod.port, "master", self.record.bridge.name)

    def _bridge_back(self) -> None:
        """cni0 again, with its MAC (the pods' ARP entry for the gateway), its address, up.
        Each part is converged, not only made with the device: an undo killed once it made
        cni0, before its address or its `up`, left a cni0 that its re-run (--rollback)
        must finish (else the pods, back on it, reach no gateway)."""
        bridge = self.record.bridge
        if _link(bridge.name) is None:
            ip("link", "add", bridge.name, "address", bridge.mac, "type", "bridge")
        ip_batch([*(f"addr replace {address} dev {bridge.name}" for address in bridge.addresses),
                  f"link set {bridge.name} up"])  # fmt: skip

    def _allocations_back(self) -> None:
        for path in self.record.written:
            Path(path).unlink(missing_ok=True)

    def _conflist_back(self) -> None:
        """The flannel conflist as it was, if it was switched or is gone (a switch that
        failed left it as it was: rewriting it would fail alike on a read-only directory,
        or race the runtime reading it)."""
        if self.record.conflist is None or self.record.conflist_text is None:
            return
        path = Path(self.record.conflist)
        try:
            same = path.read_text() == self.record.conflist_text
        except FileNotFoundError:  # deleted since: written back all the same
            same = False
        if not same:
            write_atomically(path, self.record.conflist_text)

    def _announce(self) -> None:
        """A gratuitous ARP for the gateway from cni0: a pod whose entry for it names the
        switch's gateway MAC (it refreshed it while migrated) takes cni0's again."""
        bridge = self.record.bridge
        announce(bridge.name, bridge.mac, self.record.subnet.network_address + 1)


class Migration(Undo):
    """Carries a recorded plan out from its first step not done, one line each through
    `say`; the state file is written again (atomically) as each step is done."""

    def __init__(self, settings: Settings, run: Run, registry: Registry, record: Record,
                 say: Callable[[str], None]) -> None:  # fmt: skip
        super().__init__(settings, run, registry, record, say)
        self._idl = None

    @classmethod
    def planned(cls, settings: Settings, run: Run, registry: Registry, obs: Observation,
                result: Plan, say: Callable[[str], None]) -> Migration:  # fmt: skip
        """The migration of `result`, nothing done yet."""
        record = Record(obs.config.backend.vni, obs.subnet_env.subnet.network, obs.bridge,
                        result.pods, vxlan=obs.vxlan, conflist=str(obs.conflist) if obs.conflist else None,
                        ipmasq=obs.subnet_env.ipmasq, network=obs.network_name,
                        flanneld_pid=run.flanneld_pid, overlay=obs.config.network,
                        steps=result.steps)  # fmt: skip
        return cls(settings, run, registry, record, say)

    @property
    def idl(self):
        """The node's OVSDB, connected at the first move (also the first of a re-run)."""
        if self._idl is None:
            self._idl = ovsidl.connect(self.settings.ovsdb, columns=PLUG_COLUMNS)
        return self._idl

    def carry_out(self) -> None:
        """Every step not done yet, in order, each recorded once done; if one fails, undo it
        and every step before, in reverse (flanneld, started again, takes its lease and
        flannel.<VNI> back), remove the record, then raise StepFailed naming it."""
        try:
            self._save()
        except OSError as exc:
            raise StepFailed(f"cannot record the migration in {self.settings.state_file}: "
                             f"{exc}; nothing done") from exc  # fmt: skip
        try:
            for number, step in enumerate(self.record.steps, 1):
                if number <= self.record.done:
                    continue
                self.say(step.line(number))
                try:
                    self._do(step)
                    self.record.done = number
                    self._save()
                except _FAILURES as exc:
                    why = f"step {number} ({step.name}) failed: {exc}"
                    self.say(f"{why}; rolling back")
                    # a run killed while it undoes must not be resumed as a migration (its
                    # record would name steps done that are undone): --rollback finishes it
                    self.record.rolling_back = True
                    with contextlib.suppress(OSError):  # (then it is resumed, as before)
                        self._save()
                    try:
                        self._roll_back(number)
                    except OSError as kept:  # the record not removed: said with the failure
                        raise StepFailed(f"{why}; rolled back, but {self.settings.state_file} "
                                         f"still records the migration ({kept}): delete it "
                                         "before vxflow migrate runs again, which would resume "
                                         "it") from exc  # fmt: skip
                    raise StepFailed(f"{why}; rolled back") from exc
        finally:
            if self._idl is not None:
                self._idl.close()

    def _save(self) -> None:
        """The record written to the state file (a temporary file renamed): before a step
        changes what its undo needs to know (the original kept there), and once it is done."""
        write_atomically(self.settings.state_file, self.record.to_json())

    def roll_back(self) -> None:
        """A finished migration undone as `Undo.roll_back`; one interrupted (killed) midway:
        its steps done, and the one it was in, undone in reverse."""
        if self.record.finished:
            super().roll_back()
        else:
            self._roll_back(self.record.done + 1)

    def _roll_back(self, upto: int) -> None:
        """Undo steps 1..`upto` in reverse, one line each (an undo that fails is said and
        skipped), then remove the record: the node is a flannel node again. Pods that were
        moved are told cni0's MAC, as a rollback tells them (one that refreshed its entry
        for the gateway on br-int took the switch's, which cni0 does not take in). If the
        fenced flanneld still runs, the rest is undone all the same, then StepFailed, the
        record kept: --rollback does it again once flanneld has ended."""
        still: FlanneldRuns | None = None
        for number, step in reversed(list(enumerate(self.record.steps[:upto], 1))):
            undo = self._undo(step)
            if undo is None:
                continue
            self.say(f"undo {number}. {step.name}")
            try:
                undo()
            except FlanneldRuns as exc:
                still = exc
            except _FAILURES as exc:
                self.say(f"undo {number}. {step.name} failed: {exc}")
        if any(step.kind is Kind.MOVE for step in self.record.steps[:upto]):
            try:
                self._announce()
            except OSError as exc:  # (cni0 not back: its undo failed, said above)
                self.say(f"announcing {self.record.bridge.name}'s MAC failed: {exc}")
        if still is not None:
            raise StepFailed(f"rollback incomplete: {still}") from still
        self._forget()

    def _undo(self, step: Step) -> Callable[[], None] | None:
        """What undoes `step` (None: nothing to; the lease and flannel.<VNI> are flanneld's
        to take back when it starts; without ip-masq, keeping it changed nothing)."""
        return {
            Kind.VXFLOW_MASQ: self._vxflow_masq_off,
            Kind.MASQ: self._flannel_masq_back if self.record.ipmasq else None,
            Kind.FENCE: self._start_flanneld, Kind.AGENT: self._undo_agent,
            Kind.MOVE: lambda: self._move_back(step.pod), Kind.BRIDGE: self._bridge_back,
            Kind.ALLOCATIONS: self._allocations_back, Kind.CONFLIST: self._conflist_back,
        }.get(step.kind)  # fmt: skip

    def _do(self, step: Step) -> None:
        {
            Kind.VXFLOW_MASQ: self._vxflow_masq,
            Kind.FENCE: self._fence, Kind.LEASE: self._take_lease, Kind.AGENT: self._agent,
            Kind.MASQ: self._masq, Kind.MOVE: lambda: self._move(step.pod),
            Kind.VXLAN: self._remove_vxlan, Kind.BRIDGE: self._remove_bridge,
            Kind.ALLOCATIONS: self._allocations, Kind.CONFLIST: self._conflist,
        }[step.kind]()  # fmt: skip

    def _fence(self) -> None:
        """flanneld stopped, its PID and start time recorded before SIGTERM: the undo waits
        for that process to end. One stopped already (a re-run), its PID ended or taken by
        another process since, is left alone."""
        if self.record.flanneld_start is None:  # else recorded by a run this one resumes
            pid = self.run.flanneld_pid
            self.record.flanneld_pid, self.record.flanneld_start = pid, start_time(pid)
            self._save()
        pid, start = self.record.flanneld_pid, self.record.flanneld_start
        if runs(pid, start):
            os.kill(pid, signal.SIGTERM)
        wait_until(f"flanneld (PID {pid}) did not stop", lambda: not runs(pid, start),
                   self.run.timeout)  # fmt: skip

    def _take_lease(self) -> None:
        subnet, public_ip = self.record.subnet, self.settings.public_ip
        vtep = vtep_mac_for(public_ip)
        if self.record.vxlan is not None and _link(self.record.vxlan.name) is not None:
            # peers follow the lease to vxflow's VtepMAC: flannel.<VNI> takes what they send
            # until it goes (the switch's tunnel port matches no MAC)
            set_mac(self.record.vxlan.name, vtep)
        # flannel's TTL: flanneld's etcd lease is kept; an agent with another
        # --subnet-lease-ttl binds the key to its own at once (a compare on its revision)
        lease = self.registry.acquire(public_ip, vtep, previous_subnet=subnet,
                                      ttl=LEASE_TTL_SECONDS)  # fmt: skip
        if lease.subnet != subnet:
            self.registry.release(lease)
            raise StepFailed(f"etcd gave {lease.subnet} for {public_ip}, not {subnet}; released it")

    def _agent_up(self) -> bool:
        """The agent wrote its subnet file (lease held, br-int up) since --start-agent ran
        (flanneld, fenced, writes it no more)."""
        path, started = self.settings.subnet_file, self.record.agent_started
        return started is not None and path.exists() and path.stat().st_mtime >= started

    def _agent(self) -> None:
        """--start-agent, its time recorded first: a re-run finds the agent up and leaves it
        (else it runs the command again, which must start no second agent, as `systemctl
        start`), the undo knows there is one to stop."""
        if self._agent_up():
            return
        self.record.agent_started = time.time()
        self._save()
        subprocess.run(self.run.start_agent, shell=True, check=True, timeout=self.run.timeout,
                       stdin=subprocess.DEVNULL)  # fmt: skip
        wait_until("the agent wrote no subnet file (lease held, br-int up)", self._agent_up,
                   self.run.timeout)  # fmt: skip

    def _vxflow_masq(self) -> None:
        """vxflow's table (the agent's, which it keeps once up) beside flanneld's rules."""
        _nftables().ensure(self.record.overlay, self.record.subnet)

    def _masq(self) -> None:
        """The agent masquerades as flanneld did; with ip-masq, flanneld's rules (fenced, it
        restores them no more) are recorded, the record written, then they are removed."""
        env = read_subnet_env(self.settings.subnet_file)
        if env is None:
            raise StepFailed(f"the agent's {self.settings.subnet_file} is missing or unreadable: "
                             "its FLANNEL_IPMASQ cannot be checked against flanneld's")  # fmt: skip
        if env.ipmasq != self.record.ipmasq:
            raise StepFailed(f"the agent's {self.settings.subnet_file} says FLANNEL_IPMASQ="
                             f"{str(env.ipmasq).lower()}, flanneld's said "
                             f"{str(self.record.ipmasq).lower()} (--ip-masq)")  # fmt: skip
        if not self.record.ipmasq:
            return
        if not self.record.flannel_masq:  # else recorded by a run this one resumes
            self.record.flannel_masq = flannel_masq.rules()
            self._save()
        flannel_masq.remove(self.record.flannel_masq)

    def _move(self, pod: PodPort) -> None:
        """The veth off cni0, its sysctls recorded (in the state file, before they change: a
        re-run would read the inert ones) and made inert, then a pod port of br-int."""
        ip("link", "set", pod.port, "nomaster")
        if pod.port not in self.record.sysctls:  # else recorded by a run this one resumes
            self.record.sysctls[pod.port] = {str(path): path.read_text().strip() for path in (
                Path(f"/proc/sys/net/{family}/conf/{pod.port}/{key}") for family, key, _ in INERT)}  # fmt: skip
            self._save()
        make_inert(pod.port)
        if interface(self.idl, pod.port) is None:  # else added already: a re-run
            add_port(self.idl, self.run.bridge, pod.port,
                     pod_external_ids(pod.mac, str(pod.ip), _container(pod), "eth0"))  # fmt: skip
        wait_ofport(self.idl, pod.port)

    def _published(self) -> bool:
        published = {ep.ip for ep in self.registry.list_endpoints(self.record.subnet)}
        return all(pod.ip in published for pod in self.record.pods)

    def _remove_vxlan(self) -> None:
        wait_until("the agent published not every pod's endpoint", self._published, self.run.timeout)
        if _link(device := f"flannel.{self.record.vni}") is not None:  # gone: a re-run
            ip("link", "del", device)

    def _remove_bridge(self) -> None:
        bridge = self.record.bridge.name
        if _link(bridge) is None:  # gone already: a re-run
            return
        if left := [link["ifname"] for link in ip_json("link", "show", "master", bridge)]:
            raise StepFailed(f"{bridge} still holds {', '.join(left)}")
        ip("link", "del", bridge)

    def _allocations(self) -> None:
        """host-local's files (`<container id>\\r\\n<ifname>`, as its disk store writes them)
        for the pods it does not list: vxflow-cni takes the network over under its name."""
        if self.record.network is None:
            return
        store = self.settings.cni_networks_dir / self.record.network
        store.mkdir(parents=True, exist_ok=True)
        missing = {pod: path for pod in self.record.pods if not (path := store / str(pod.ip)).exists()}
        if new := [str(path) for path in missing.values() if str(path) not in self.record.written]:
            self.record.written += new  # recorded before written: the undo removes them
            self._save()
        for pod, path in missing.items():
            path.write_text(f"{_container(pod)}\r\neth0")

    def _conflist(self) -> None:
        """The flannel conflist becomes vxflow-cni's (`switched_conflist`), its text recorded
        in the state file first: the undo (also of a run killed once it wrote the new one)
        puts it back from there. A re-run finds it switched and leaves it."""
        if self.record.conflist is None:
            return
        path = Path(self.record.conflist)
        text = path.read_text()
        if self.record.conflist_text is None:  # else recorded by a run this one resumes
            if is_switched(text, self.settings):  # by a run that recorded no original
                return
            self.record.conflist_text = text
            self._save()
        new = switched_conflist(self.record.conflist_text, self.settings, self.run.bridge)
        if text != new:
            write_atomically(path, new)
