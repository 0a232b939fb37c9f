"""ADD, DEL, CHECK, STATUS and GC: the steps, their order, and how each is undone.

ADD writes who the pod is on its port (ovsdb/pods.py's external_ids
`vxflow-namespace`, `vxflow-pod`, `vxflow-labels`), what network policy
selects: the name and namespace from CNI_ARGS `K8S_POD_NAME` and
`K8S_POD_NAMESPACE` (kubelet passes both; podman 4 passes the container's name
as `K8S_POD_NAME` and forwards its own environment's CNI_ARGS, so
`CNI_ARGS=K8S_POD_NAMESPACE=shop podman run --name web ...` names the pod
shop/web; no namespace is `default`), the labels from the configuration's
`args.cni.labels`. No runtime passes a pod spec's named container ports
(`runtimeConfig.portMappings` carries host ports, without names):
`vxflow pods ports` publishes them. An identity Kubernetes would refuse (a
name with `_` or capitals, such as podman's generated ones) fails the ADD
before anything is changed (code 4 for CNI_ARGS, 7 for the labels).

ADD checks everything it can before it changes anything (subnet.env, the
netns, OVSDB and the bridge, that the attachment is new), then takes each
step with its undo registered first: the attachment record, the address
(IPAM DEL is registered before IPAM ADD, as the spec asks of a failed
delegate), the veth pair (made while the IPAM plugin runs; its container
end gets MAC, address and routes once IPAM answered), the OVSDB port; ADD
returns once the port has its ofport. The container end is configured
before the port is added, not while ovs-vswitchd opens it: in the agent's
CNI server that overlap was slower (B6: the agent's loop, reacting to the
new port, competes for the GIL). Any failure runs the undos in reverse, so
a failed ADD leaves no veth, no address, no port and no record.

DEL does every step it can even when one fails (the port, the veth, the
address), keeps the record until all succeeded and then reports the first
failure: the runtime retries, and every step is idempotent. The port goes
first, and an address is never released while a port may still claim it:
if the port could not be removed (OVSDB unreachable), DEL keeps the address
and the record and answers "try again later"; ADD's undo does the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, Protocol

import ovs.db.idl

from cni import attachments, ipam, veth
from cni.config import DEFAULT_IPAM, GC_KEYS, NetConf, delegate_ipam, ipam_request, pod_mtu
from cni.spec import CniError, ErrorCode, Interface, Invocation, Result, Route
from flows.ports import pod_mac
from leases.labels import PolicyInvalid
from leases.pods import pod_identity
from leases.subnet_env import SubnetEnv, parse_subnet_env
from ovsdb import idl as ovsidl
from ovsdb import plug
from ovsdb.iproute import IprouteError
from ovsdb.pods import DEFAULT_NAMESPACE, identity_external_ids

log = logging.getLogger("vxflow-cni")
OVSDB_TIMEOUT = 5.0  # seconds to connect and get the first snapshot
VSWITCHD_TIMEOUT = 3.0  # seconds STATUS waits for ovs-vswitchd to apply a change
DEFAULTS = {4: IPv4Network("0.0.0.0/0"), 6: IPv6Network("::/0")}
POD_NAME_ARG, POD_NAMESPACE_ARG = "K8S_POD_NAME", "K8S_POD_NAMESPACE"  # CNI_ARGS (kubelet's)


def load_subnet_env(conf: NetConf) -> SubnetEnv:
    """flannel's subnet.env; CniError 11 while it does not exist yet (the agent writes it)."""
    path = conf.subnet_file
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CniError(ErrorCode.TRY_AGAIN_LATER, f"{path} does not exist yet",
                       "the vxflow agent writes it once this node holds a lease and its "
                       "bridge is ready; try again later") from None  # fmt: skip
    except OSError as exc:
        raise CniError(ErrorCode.IO_FAILURE, f"cannot read {path}", str(exc)) from exc
    try:
        return parse_subnet_env(text)
    except ValueError as exc:
        raise CniError(ErrorCode.DECODING_FAILURE, f"malformed {path}", str(exc)) from exc


class Links(Protocol):
    """How the veth is made: the module cni.veth (`ip`), or cni.netlink.Netlink."""

    def create(self, pair: veth.Pair) -> str: ...

    def configure(self, pair: veth.Pair, end: veth.ContainerEnd) -> None: ...


@dataclass(frozen=True)
class Kept:
    """What a long-lived caller keeps between calls: the agent's CNI server sets it in its
    thread (KEPT); unset, each call connects to OVSDB and runs `ip`, as a plugin process must."""

    ovsdb: ovsidl.Connections
    links: Links  # cni/veth.py's steps through a kept netlink socket


KEPT: ContextVar[Kept | None] = ContextVar("kept", default=None)


@contextmanager
def ovsdb(conf: NetConf, code: int = ErrorCode.TRY_AGAIN_LATER) -> Iterator[ovs.db.idl.Idl]:
    kept = KEPT.get()
    try:
        if kept:
            idl = kept.ovsdb.get(conf.ovsdb)
        else:
            idl = ovsidl.connect(conf.ovsdb, timeout=OVSDB_TIMEOUT, columns=plug.COLUMNS)
    except ovsidl.OvsdbUnavailable as exc:
        raise CniError(code, "OVSDB is not reachable", str(exc)) from exc
    try:
        yield idl
    except BaseException as exc:
        if kept:  # whatever failed (a transaction, the session), the next call starts afresh
            kept.ovsdb.discard(conf.ovsdb)
        if isinstance(exc, ovsidl.OvsdbUnavailable):  # went away mid-call, did not come back
            raise CniError(code, "OVSDB is not reachable", str(exc)) from exc
        raise
    finally:
        if not kept:
            idl.close()


def _quietly(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """An undo step: it must not stop the others, so its failure is only logged."""
    try:
        fn(*args)
    except Exception as exc:  # every undo must run
        log.error("undoing %s failed: %s", what, exc)


class _Steps:
    """How long each step of an ADD took (logged at debug level: where the time goes)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.took: list[tuple[str, float]] = []

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.took.append((step, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds * 1e3:.1f} ms" for step, seconds in self.took)


@dataclass
class _PortUndo:
    """ADD's undo of the port: the address (and the record DEL releases it from) stay while
    a port that could not be removed may still claim it."""

    idl: ovs.db.idl.Idl
    bridge: str
    host: str
    container_id: str
    ifname: str
    sent: bool = False  # an insert of the port was committed (its outcome may be unknown)
    stuck: bool = False

    def sending(self) -> None:
        self.sent = True

    def remove(self) -> None:
        if not self.sent:
            return
        try:
            plug.unplug(self.idl, self.bridge, self.host, self.container_id, self.ifname)
        except Exception as exc:  # every other undo must run
            self.stuck = True
            log.error("undoing the port %s failed: %s", self.host, exc)

    def unless_stuck(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        if self.stuck:
            log.error("keeping %s of %s/%s: its port may still claim the address; "
                      "the runtime's DEL releases it", what, self.container_id, self.ifname)  # fmt: skip
            return
        _quietly(what, fn, *args)


Gateways = dict[int, IPv4Address | IPv6Address]  # the next hop of each family's routes


def _addresses(
    allocated: Result, env: SubnetEnv
) -> tuple[IPv4Interface, IPv6Interface | None, Gateways]:
    """The IPv4 address vxflow routes and, on a dual-stack node (FLANNEL_IPV6_SUBNET), the
    IPv6 one, with each family's gateway (the subnet's first address by default)."""
    v4 = [i for i in allocated.ips if i.address.version == 4]
    v6 = [i for i in allocated.ips if i.address.version == 6]
    six = env.ipv6_subnet
    if len(v4) != 1 or len(v6) != (1 if six else 0):
        want = "one IPv4 address" + (" and one IPv6 address" if six else "")
        raise CniError(ErrorCode.INVALID_CONFIG, f"IPAM must return exactly {want}",
                       f"got {[str(i.address) for i in allocated.ips]}")  # fmt: skip
    gateways: Gateways = {4: v4[0].gateway or env.subnet.ip}
    _pod_address(v4[0].address.ip, env.subnet.network, (env.subnet.network.broadcast_address,))
    if six is None:
        return v4[0].address, None, gateways
    _pod_address(v6[0].address.ip, six.network, ())
    gateways[6] = v6[0].gateway or six.ip
    return v4[0].address, v6[0].address, gateways


def _pod_address(ip: IPv4Address | IPv6Address, subnet: IPv4Network | IPv6Network,
                 also: tuple) -> None:  # fmt: skip
    """CniError unless `ip` is a pod address of `subnet` (not its first two, nor `also`)."""
    if ip not in subnet or ip in (subnet.network_address, subnet.network_address + 1, *also):
        raise CniError(ErrorCode.INVALID_CONFIG, f"IPAM address {ip} is not a pod address "
                       f"of this node's subnet {subnet}", "the agent would not publish it")  # fmt: skip


@contextmanager
def _veth_errors() -> Iterator[None]:
    try:
        yield
    except veth.VethExists as exc:
        raise CniError(ErrorCode.ALREADY_EXISTS, "interface exists already", str(exc)) from exc
    except (IprouteError, OSError) as exc:
        raise CniError(ErrorCode.SETUP_FAILED, "setting up the veth pair failed",
                       str(exc)) from exc  # fmt: skip


@contextmanager
def _port_errors(host: str, bridge: str) -> Iterator[None]:
    try:
        yield
    except plug.AddressClaimed as exc:
        raise CniError(ErrorCode.ADDRESS_CLAIMED, f"adding port {host} to {bridge} refused",
                       f"{exc}; the two IPAM configurations do not know of each other") from exc  # fmt: skip
    except plug.PlugError as exc:
        raise CniError(ErrorCode.SETUP_FAILED, f"adding port {host} to {bridge} failed",
                       str(exc)) from exc  # fmt: skip


# Why a second attachment is refused rather than made (spec: one per interface name is allowed).
ONE_INTERFACE = (
    "both addresses would be in the node's one subnet: the container's connected and overlay "
    "routes would send the second interface's replies out of the first, where the agent's "
    "spoof guard (in_port, MAC, address) drops them"
)


def _netns_or_error(inv: Invocation) -> None:
    """CniError 4 unless CNI_NETNS is a network namespace (before anything uses it)."""
    problem = veth.netns_problem(inv.netns_here)
    if problem:
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "CNI_NETNS is not a network namespace",
                       problem)  # fmt: skip


def pod_name(name: str) -> str:
    """`name` as a pod name: podman passes its container's name, whose syntax allows capitals
    and '_' (its generated names are `happy_turing`), so those are lowered and turned into '-';
    a name kubelet passes is a pod name already and stays as it is."""
    return name.lower().replace("_", "-")


def pod_ids(inv: Invocation, conf: NetConf) -> dict[str, str]:
    """The pod's identity as its port's external_ids (none for a pod nobody named); CniError
    4 (CNI_ARGS) or 7 (args.cni.labels) for one Kubernetes would refuse."""
    args = dict(inv.args)
    name, namespace = args.get(POD_NAME_ARG) or None, args.get(POD_NAMESPACE_ARG) or None
    name = None if name is None else pod_name(name)
    if name is None:
        if namespace is not None or conf.labels:
            given = f"{POD_NAMESPACE_ARG}={namespace}" if namespace else "args.cni.labels"
            raise CniError(ErrorCode.INVALID_ENVIRONMENT if namespace else ErrorCode.INVALID_CONFIG,
                           f"{given} without CNI_ARGS {POD_NAME_ARG}",
                           "a pod nobody named cannot be selected by a policy")  # fmt: skip
        return {}
    try:
        pod = pod_identity(namespace or DEFAULT_NAMESPACE, name, dict(conf.labels))
    except PolicyInvalid as exc:
        if exc.field.startswith("labels"):
            raise CniError(ErrorCode.INVALID_CONFIG, "invalid args.cni.labels",
                           exc.message) from exc  # fmt: skip
        arg = POD_NAME_ARG if exc.field == "name" else POD_NAMESPACE_ARG
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, f"CNI_ARGS {arg} is not a Kubernetes name",
                       exc.message) from exc  # fmt: skip
    return identity_external_ids(pod)


def add(inv: Invocation, conf: NetConf, environ: Mapping[str, str]) -> Result:
    steps = _Steps()
    identity = pod_ids(inv, conf)  # before anything is changed
    env = load_subnet_env(conf)
    _netns_or_error(inv)
    host = attachments.host_ifname(inv.container_id, inv.ifname)
    request = ipam_request(conf, delegate_ipam(conf, env))
    with ovsdb(conf) as idl, ExitStack() as undo:
        datapath = plug.bridge_datapath_type(idl, conf.bridge)
        if datapath is None:
            raise CniError(ErrorCode.TRY_AGAIN_LATER, f"bridge {conf.bridge} does not exist yet",
                           "the vxflow agent creates it; try again later")  # fmt: skip
        if veth.host_link_exists(host) or plug.pod_ports(
            idl, conf.bridge, host, inv.container_id, inv.ifname
        ):
            raise CniError(ErrorCode.ALREADY_EXISTS,
                           f"attachment {inv.container_id}/{inv.ifname} exists already",
                           f"host interface or port {host}; DEL it first")  # fmt: skip
        attached = plug.container_ifnames(idl, conf.bridge, inv.container_id)
        if attached:
            raise CniError(ErrorCode.ALREADY_EXISTS,
                           f"container {inv.container_id} is attached to {conf.bridge} already "
                           f"(as {', '.join(attached)}); vxflow gives a container one interface",
                           ONE_INTERFACE)  # fmt: skip
        record = attachments.Attachment(inv.container_id, inv.ifname, inv.netns, host, request)
        try:
            attachments.save(conf.data_dir, conf.name, record)
        except OSError as exc:
            raise CniError(ErrorCode.IO_FAILURE, f"cannot record the attachment in {conf.data_dir}",
                           str(exc)) from exc  # fmt: skip
        port = _PortUndo(idl, conf.bridge, host, inv.container_id, inv.ifname)
        undo.callback(port.unless_stuck, "the attachment record", attachments.remove,
                      conf.data_dir, conf.name, inv.container_id, inv.ifname)  # fmt: skip
        undo.callback(port.unless_stuck, "the address", ipam.call, "DEL", request, inv, environ)
        steps.done("ovsdb")
        pending = ipam.start("ADD", request, inv, environ)
        undo.callback(pending.finish)  # before its address is released
        pair = veth.Pair(host=host, netns=inv.netns_here, ifname=inv.ifname,
                         mtu=pod_mtu(conf, env), userspace_datapath=datapath == "netdev")  # fmt: skip
        undo.callback(_quietly, "the veth pair", veth.delete, host)
        kept = KEPT.get()
        links: Links = kept.links if kept else veth
        with _veth_errors():  # while IPAM runs
            host_mac = links.create(pair)
        steps.done("veth")
        allocated = pending.result()
        steps.done("ipam")
        address, address6, gateways = _addresses(allocated, env)
        if conf.is_default_gateway:
            missing = [v for v in gateways
                       if not any(r.dst == DEFAULTS[v] for r in allocated.routes)]  # fmt: skip
            allocated = replace(allocated, routes=(
                *allocated.routes, *(Route(DEFAULTS[v], gateways[v]) for v in missing)))
        if stray := [str(r.dst) for r in allocated.routes if r.dst.version not in gateways]:
            raise CniError(ErrorCode.INVALID_CONFIG, f"IPAM routes {stray} are of a family this "
                           "node has no address of", "an IPv6 route needs a dual-stack node")  # fmt: skip
        end = veth.ContainerEnd(
            mac=pod_mac(address.ip), address=address, address6=address6,
            routes=tuple((r.dst, r.gw or gateways[r.dst.version]) for r in allocated.routes),
        )  # fmt: skip
        with _veth_errors():
            links.configure(pair, end)  # before the port: see the module's docstring
        steps.done("container")
        undo.callback(port.remove)
        ids = {**plug.pod_external_ids(end.mac, str(address.ip), inv.container_id, inv.ifname,
                                       str(address6.ip) if address6 else None),
               **identity}  # fmt: skip
        with _port_errors(host, conf.bridge):
            plug.add_port(idl, conf.bridge, host, ids, port.sending)
        steps.done("port")
        with _port_errors(host, conf.bridge):
            plug.wait_ofport(idl, host)
        steps.done("ofport")
        undo.pop_all()
    log.debug("ADD %s/%s %s: %s", inv.container_id, inv.ifname, address, steps)
    interfaces = (Interface(host, host_mac), Interface(inv.ifname, end.mac, inv.netns, pair.mtu))
    result = allocated.with_interfaces(interfaces, 1)
    if conf.dns:
        result = replace(result, dns=conf.dns)
    return result.after(conf.prev_result) if conf.prev_result else result


def _current_request(conf: NetConf) -> dict[str, Any] | None:
    """The IPAM request ADD would make now (DEL of an attachment without a record)."""
    try:
        return ipam_request(conf, delegate_ipam(conf, load_subnet_env(conf)))
    except CniError as exc:
        log.warning("no record of this attachment and no subnet.env (%s): "
                    "no address to release", exc)  # fmt: skip
        return None


def delete(inv: Invocation, conf: NetConf, environ: Mapping[str, str]) -> None:
    host = attachments.host_ifname(inv.container_id, inv.ifname)
    record = attachments.load(conf.data_dir, conf.name, inv.container_id, inv.ifname)
    errors: list[CniError] = []
    try:
        with ovsdb(conf) as idl:
            plug.unplug(idl, conf.bridge, host, inv.container_id, inv.ifname)
    except CniError as exc:
        errors.append(exc)
    except ovsidl.OvsdbError as exc:
        errors.append(CniError(ErrorCode.TRY_AGAIN_LATER, f"removing port {host} failed", str(exc)))
    veth.delete(host)  # the container's end goes with it; a gone netns took both already
    if errors:  # the port may still claim the address: keep it (and the record) for the retry
        log.warning("DEL %s/%s: keeping the address until port %s is removed",
                    inv.container_id, inv.ifname, host)  # fmt: skip
        raise errors[0]
    request = record.ipam_request if record else _current_request(conf)
    if request is not None:
        ipam.call("DEL", request, inv, environ)
    attachments.remove(conf.data_dir, conf.name, inv.container_id, inv.ifname)


def _check_problems(inv: Invocation, conf: NetConf) -> list[str]:
    """How the attachment differs from prevResult (empty: it is as the chain left it).

    prevResult is the chain's final result, so a later chained plugin's changes
    (tuning's MTU or MAC, a route it added or dropped) are no difference: the
    container end is compared with prevResult, as the reference plugins do
    (containernetworking/plugins pkg/ip: every prevResult route by its
    destination anywhere in the container, its gateway only where one is
    given), and the port with what vxflow itself wrote.
    """
    prev = conf.prev_result
    assert prev is not None
    index = next((n for n, i in enumerate(prev.interfaces)
                  if i.name == inv.ifname and i.sandbox == inv.netns), None)  # fmt: skip
    if index is None:
        return [f"prevResult has no interface {inv.ifname} in {inv.netns}"]
    want_mac = prev.interfaces[index].mac
    ips = [ip.address for ip in prev.ips if ip.interface == index]
    families = sorted(a.version for a in ips)
    if families not in ([4], [4, 6]):
        return [f"prevResult has addresses {[str(a) for a in ips]} on {inv.ifname}, vxflow "
                "makes one IPv4 address (and on a dual-stack node one IPv6 address)"]
    address = next(a for a in ips if a.version == 4)
    address6 = next((a for a in ips if a.version == 6), None)
    host = attachments.host_ifname(inv.container_id, inv.ifname)
    problems = []
    with ovsdb(conf) as idl:
        ports = [p.name for p in plug.pod_ports(idl, conf.bridge, host, inv.container_id,
                                                inv.ifname)]  # fmt: skip
        row = plug.interface(idl, host)
        if ports != [host] or row is None:
            problems.append(f"port {host} is not on {conf.bridge} (ports found: {ports})")
        else:
            if not row.ofport or row.ofport[0] < 1:
                problems.append(f"port {host} has no ofport ({row.error or 'no error given'})")
            want = plug.pod_external_ids(pod_mac(address.ip), str(address.ip),
                                         inv.container_id, inv.ifname,
                                         str(address6.ip) if address6 else None)  # fmt: skip
            have = {k: row.external_ids.get(k) for k in want}
            if have != want:
                problems.append(f"port {host} external_ids {have}, expected {want}")
    if not veth.host_link_exists(host):
        problems.append(f"host interface {host} is missing")
    link = veth.container_link(inv.netns_here, inv.ifname)
    if link is None:
        return [*problems, f"interface {inv.ifname} is missing from {inv.netns}"]
    if want_mac and link.mac != want_mac.lower():
        problems.append(f"{inv.ifname} has MAC {link.mac}, expected {want_mac}")
    if not link.up:
        problems.append(f"{inv.ifname} is down")
    problems += [f"{inv.ifname} lacks address {a}" for a in ips if a not in link.addresses]
    for route in prev.routes:
        found = {gw for dst, gw in link.routes if dst == route.dst}
        if not found or (route.gw and route.dst.prefixlen and route.gw not in found):
            via = f" via {route.gw}" if route.gw else ""
            problems.append(f"{inv.netns} lacks route {route.dst}{via}")
    return problems


def check(inv: Invocation, conf: NetConf, environ: Mapping[str, str]) -> None:
    if conf.prev_result is None:
        raise CniError(ErrorCode.INVALID_CONFIG, "CHECK needs prevResult",
                       "the runtime passes the result of the ADD")  # fmt: skip
    _netns_or_error(inv)
    record = attachments.load(conf.data_dir, conf.name, inv.container_id, inv.ifname)
    if record is None:
        raise CniError(ErrorCode.CHECK_FAILED, "no record of this attachment",
                       f"{inv.container_id}/{inv.ifname} in {conf.data_dir}")  # fmt: skip
    problems = _check_problems(inv, conf)
    if problems:
        raise CniError(ErrorCode.CHECK_FAILED, "the attachment is not as ADD made it",
                       "; ".join(problems))  # fmt: skip
    request = {**record.ipam_request, "prevResult": conf.raw["prevResult"]}
    ipam.call("CHECK", request, inv, environ)


def _forward(command: str, conf: NetConf, inv: Invocation, environ: Mapping[str, str],
             request: Mapping[str, Any]) -> None:  # fmt: skip
    """STATUS and GC reach the IPAM plugin only if it speaks 1.1.0 (Debian 12's speak 1.0.0)."""
    plugin = str(request["ipam"].get("type", DEFAULT_IPAM))
    if ipam.supports(plugin, conf.cni_version, inv, environ):
        ipam.call(command, {**request, "cniVersion": conf.cni_version}, inv, environ)


def status(inv: Invocation, conf: NetConf, environ: Mapping[str, str]) -> None:
    """Whether ADD can work now: subnet.env, OVSDB, the bridge, ovs-vswitchd applying
    OVSDB's configuration (without it a port gets no ofport), and the IPAM plugin. CNI_PATH
    is optional for STATUS: without it the IPAM plugin is not looked for."""
    try:
        env = load_subnet_env(conf)
        request = ipam_request(conf, delegate_ipam(conf, env))
        with ovsdb(conf) as idl:
            if plug.bridge_datapath_type(idl, conf.bridge) is None:
                raise CniError(ErrorCode.NOT_AVAILABLE, f"bridge {conf.bridge} does not exist yet")
            if not plug.vswitchd_serves(idl, timeout=VSWITCHD_TIMEOUT):
                raise CniError(ErrorCode.NOT_AVAILABLE, "ovs-vswitchd is not serving "
                               f"{conf.ovsdb}", f"it applied no change within "
                               f"{VSWITCHD_TIMEOUT:g} s: a pod's port would get no ofport")  # fmt: skip
        if inv.path:
            ipam.find(str(request["ipam"].get("type", DEFAULT_IPAM)), inv)
    except CniError as exc:
        raise CniError(ErrorCode.NOT_AVAILABLE, exc.msg, exc.details) from exc
    except ovsidl.OvsdbError as exc:
        raise CniError(ErrorCode.NOT_AVAILABLE, "OVSDB refused a change", str(exc)) from exc
    if inv.path:
        _forward("STATUS", conf, inv, environ, request)


def gc(inv: Invocation, conf: NetConf, environ: Mapping[str, str]) -> None:
    """DEL every recorded attachment of this network that the runtime no longer lists.

    Without a list (neither GC key) nothing is known to be stale: GC then
    deletes nothing, and says so, rather than read it as "nothing is in use".
    """
    valid = conf.valid_attachments
    if valid is None:
        log.warning("gc: the configuration lists no attachments (neither %s): deleting "
                    "nothing", " nor ".join(GC_KEYS))  # fmt: skip
        return
    errors = []
    for stale in attachments.recorded(conf.data_dir, conf.name):
        if (stale.container_id, stale.ifname) in valid:
            continue
        log.warning("gc: removing stale attachment %s/%s", stale.container_id, stale.ifname)
        gone = replace(inv, container_id=stale.container_id, ifname=stale.ifname,
                       netns=stale.netns)  # fmt: skip
        try:
            delete(gone, conf, environ)
        except CniError as exc:
            errors.append(exc)
    listed = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
    try:
        request = ipam_request(conf, delegate_ipam(conf, load_subnet_env(conf)))
        _forward("GC", conf, inv, environ, {**request, **dict.fromkeys(GC_KEYS, listed)})
    except CniError as exc:
        errors.append(exc)
    if errors:
        first = errors[0]
        raise CniError(first.code, f"gc: {len(errors)} step(s) failed; first: {first.msg}",
                       first.details)  # fmt: skip


COMMANDS: dict[str, Callable[[Invocation, NetConf, Mapping[str, str]], Result | None]] = {
    "ADD": add,
    "DEL": delete,
    "CHECK": check,
    "STATUS": status,
    "GC": gc,
}
