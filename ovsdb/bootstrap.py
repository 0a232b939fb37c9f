"""Idempotent OVSDB bootstrap of a node's integration bridge (python-ovs IDL).

`desired_state()` is pure: (network config, lease, controller targets,
options) -> `BridgeState`. `converge()` diffs that against the IDL's replica,
applies only the differences in one transaction and returns one readable line
per change (empty: nothing to do). `bootstrap()` adds the edges: datapath
detection, the underlay MTU, and the kernel side of the gateway port.

Ownership: everything vxflow creates carries `external_ids:vxflow-owned=true`
(and `vxflow-role`). Ports without that mark are never modified or deleted; a
foreign port squatting on one of vxflow's names is an error, not adopted. On
the bridge itself only the columns and other_config/external_ids keys listed
here are managed, so keys others write (the controller's round number, an
operator's settings) survive every run.

flow-restore-wait: a planned restart of ovs-vswitchd (`ovs-ctl restart`) sets
`Open_vSwitch other_config:flow-restore-wait=true` before the new process
starts, restores the saved flows and removes it; meanwhile the new process
connects to no controller. `clear_flow_restore_wait()` removes it; the agent
calls it where a restart left it behind (see `Agent._flow_restore_wait`).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

import ovs.db.idl
from ovs.db.idl import Transaction

from flows.ipv6 import dual_stack, gateway6
from flows.ports import (
    GATEWAY_OFPORT,
    GATEWAY_PORT,
    TUNNEL6_OFPORT,
    TUNNEL6_PORT,
    TUNNEL_OFPORT,
    TUNNEL_PORT,
    gateway_mac,
)
from leases.controllers import capped
from leases.model import Lease, Member, NetworkConfig, datapath_id_for
from leases.subnet_env import overlay_mtu
from ovsdb.gateway import GatewaySpec, KernelState, converge_gateway
from ovsdb.idl import refresh, run_once
from ovsdb.iproute import link_holding

log = logging.getLogger(__name__)

OWNER_KEY = "vxflow-owned"
ROLE_KEY = "vxflow-role"
DEFAULT_BRIDGE = "br-int"
DEFAULT_CONTROLLER = "tcp:127.0.0.1:6653"
PROTOCOLS = ("OpenFlow13", "OpenFlow14")
DATAPATH_TYPES = ("auto", "system", "netdev")
TUNNEL_KEYS = ("flow", "vni")
KERNEL_DATAPATH_MODULE = Path("/sys/module/openvswitch")
FLOW_RESTORE_WAIT = "flow-restore-wait"
# OVS retries an unreachable controller with a backoff doubling up to max_backoff (default
# 8 s): after a controller restart or a failover the switch could wait that long. 1 s is
# the least OVS accepts; the connection attempt itself costs nothing while it fails.
CONTROLLER_MAX_BACKOFF_MS = 1000
# The switch's side of a dead controller connection: with nothing received for this long it
# sends an echo request, and gives up after as long again. 5 s is OVS's default and also the
# least it honours: lib/rconn.c raises any shorter interval to 5 s (0 would turn the probe
# off). Set explicitly so that a bridge another tool made with a longer one is brought back.
# The controller probes the connection itself (VXFLOW_ECHO_INTERVAL), and a node whose
# liveness record goes is probed at once, so failover does not wait for this.
CONTROLLER_INACTIVITY_PROBE_MS = 5000


class BootstrapError(RuntimeError):
    """The bridge cannot be converged (conflict, invalid input, failed transaction)."""


@dataclass(frozen=True)
class SslSpec:
    """The node's OVS SSL table (`ovs-vsctl set-ssl KEY CERT CA`): what ovs-vswitchd
    presents to an `ssl:` controller and the CA it verifies the controller with."""

    private_key: str
    certificate: str
    ca_cert: str


@dataclass(frozen=True)
class BootstrapOptions:
    """Node-local choices that are not in etcd.

    `tunnel_key`: "flow" lets the controller's flows set and match tun_id
    (the VNI) per flow — what vxflow's compiler emits; "vni" pins the port's
    key to the config's VNI. `underlay_mtu` is the MTU of the PublicIP's
    interface (the overlay MTU is 50 less unless Backend.MTU is set).
    """

    bridge: str = DEFAULT_BRIDGE
    datapath_type: str = "auto"
    tunnel_key: str = "flow"
    underlay_mtu: int = 1500
    ssl: SslSpec | None = None  # required by `ssl:` controller targets


@dataclass(frozen=True)
class PortSpec:
    """One vxflow-owned port with its single interface of the same name."""

    name: str
    role: str
    type: str
    ofport_request: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    mac: str | None = None
    mtu_request: int | None = None


@dataclass(frozen=True)
class BridgeState:
    """Everything vxflow manages on one node's bridge, plus the gateway's kernel side."""

    name: str
    datapath_type: str
    fail_mode: str
    protocols: tuple[str, ...]
    controllers: tuple[str, ...]
    other_config: tuple[tuple[str, str], ...]
    ports: tuple[PortSpec, ...]
    gateway: GatewaySpec
    ssl: SslSpec | None = None


def controller_targets(explicit: Iterable[str], members: Iterable[Member]) -> tuple[str, ...]:
    """The bridge's controllers: the targets given, plus the advertised address of every
    controller replica that counts (`leases.controllers.capped`) from etcd;
    DEFAULT_CONTROLLER only when there is neither."""
    targets = set(explicit) | {m.address for m in capped(members)[0]}
    return tuple(sorted(targets)) or (DEFAULT_CONTROLLER,)


def desired_state(
    config: NetworkConfig,
    lease: Lease,
    controllers: tuple[str, ...],
    options: BootstrapOptions,
    service_routes: tuple[IPv4Network | IPv6Network, ...] | None = None,
) -> BridgeState:
    """The bridge this node must have. Pure; `options.datapath_type` must be resolved.

    `service_routes`: the ServiceNetwork and IPv6ServiceNetwork (if any) to route into the
    gateway port (IPv6's on a dual-stack node only); None when the caller does not know
    them (no etcd): vxflow's service routes are left alone.
    """
    if options.datapath_type not in ("system", "netdev"):
        raise ValueError(
            f"datapath_type must be resolved to system or netdev, got {options.datapath_type!r}"
        )
    if options.tunnel_key not in TUNNEL_KEYS:
        raise ValueError(f"tunnel_key must be one of {TUNNEL_KEYS}, got {options.tunnel_key!r}")
    if not lease.subnet.subnet_of(config.network):
        raise ValueError(f"lease {lease.subnet} is outside Network {config.network}")
    if not controllers:
        raise ValueError("at least one controller target is required")
    if options.ssl is None and any(t.startswith("ssl:") for t in controllers):
        raise BootstrapError(  # an operator's fix, also when the target came from etcd
            "an ssl: controller target (given, or a replica's in etcd) needs the switch's "
            "key, certificate and CA: --ssl-privkey, --ssl-cert, --ssl-ca-cert"
        )
    six = dual_stack(config, lease)
    mtu = overlay_mtu(config, options.underlay_mtu, six)
    key = "flow" if options.tunnel_key == "flow" else str(config.backend.vni)

    def tunnel_port(name: str, ofport: int, local_ip: object) -> PortSpec:
        return PortSpec(
            name=name,
            role="tunnel",
            type="vxlan",
            ofport_request=ofport,
            options=(
                ("dst_port", str(config.backend.port)),
                ("key", key),
                ("local_ip", str(local_ip)),
                ("remote_ip", "flow"),
            ),
        )

    tunnels = [tunnel_port(TUNNEL_PORT, TUNNEL_OFPORT, lease.public_ip)]
    if six:  # IPv6 over the IPv6 underlay: a port of its own (flannel's flannel-v6.<VNI>)
        tunnels.append(tunnel_port(TUNNEL6_PORT, TUNNEL6_OFPORT, lease.public_ipv6))
    gateway_port = PortSpec(
        name=GATEWAY_PORT,
        role="gateway",
        type="internal",
        ofport_request=GATEWAY_OFPORT,
        mac=gateway_mac(lease.subnet),
        mtu_request=mtu,
    )
    local = PortSpec(name=options.bridge, role="local", type="internal")
    return BridgeState(
        name=options.bridge,
        datapath_type=options.datapath_type,
        fail_mode="secure",
        protocols=PROTOCOLS,
        controllers=tuple(sorted(set(controllers))),
        other_config=(
            ("datapath-id", f"{datapath_id_for(lease.public_ip):016x}"),
            ("disable-in-band", "true"),
        ),
        ports=(local, *tunnels, gateway_port),
        gateway=GatewaySpec(
            ifname=GATEWAY_PORT,
            address=IPv4Interface(f"{lease.gateway}/{lease.subnet.prefixlen}"),
            mtu=mtu,
            route=config.network,
            service_routes=None if service_routes is None else tuple(
                n for n in service_routes if n.version == 4 or six),
            address6=IPv6Interface(f"{gateway6(lease)}/{lease.ipv6_subnet.prefixlen}")
            if six else None,
            route6=config.ipv6.network if six else None,
        ),
        ssl=options.ssl,
    )


# -- reading the IDL ---------------------------------------------------------
def _get(row, column: str, default=None):
    """A column's value; a row inserted in this transaction has no unset columns yet."""
    try:
        return getattr(row, column)
    except AttributeError:
        return default


def _norm(value):
    if isinstance(value, dict):
        return sorted(value.items())
    if isinstance(value, list | tuple | set):
        return sorted(value)
    return value


def _fmt(value) -> str:
    if isinstance(value, list) and len(value) <= 1:
        return str(value[0]) if value else "(unset)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(value.items())) + "}"
    return str(value)


def owned(row) -> bool:
    return _get(row, "external_ids", {}).get(OWNER_KEY) == "true"


def by_name(idl: ovs.db.idl.Idl, table: str, name: str):
    return next((r for r in idl.tables[table].rows.values() if r.name == name), None)


def root_row(idl: ovs.db.idl.Idl):
    return next(iter(idl.tables["Open_vSwitch"].rows.values()), None)


def detect_datapath_type(idl: ovs.db.idl.Idl) -> str:
    """`system` when the kernel module is loaded and vswitchd supports it, else `netdev`."""
    root = root_row(idl)
    types = _get(root, "datapath_types", []) if root is not None else []
    if KERNEL_DATAPATH_MODULE.exists() and (not types or "system" in types):
        return "system"
    return "netdev"


# -- planning changes into a transaction --------------------------------------
class _Plan:
    """Writes differences into `txn` and records a readable line for each."""

    def __init__(self, idl: ovs.db.idl.Idl, txn: Transaction) -> None:
        self.idl, self.txn = idl, txn
        self.changes: list[str] = []
        self._created: set[int] = set()  # rows inserted here: their "create" line says it all

    def note(self, row, line: str) -> None:
        if id(row) not in self._created:
            self.changes.append(line)

    def ensure(self, row, column: str, want, what: str) -> None:
        have = _get(row, column)
        if _norm(have) != _norm(want):
            self.note(row, f"{what} {column}: {_fmt(have)} -> {_fmt(want)}")
            setattr(row, column, want)

    def ensure_keys(self, row, column: str, want: dict[str, str], what: str) -> None:
        have = _get(row, column, {})
        for key, value in sorted(want.items()):
            if have.get(key) != value:
                self.note(row, f"{what} {column}:{key}: {have.get(key, '(unset)')} -> {value}")
                row.setkey(column, key, value)

    def insert(self, table: str, name: str | None = None):
        row = self.txn.insert(self.idl.tables[table])
        self._created.add(id(row))
        if name is not None:
            row.name = name
        return row


def _marks(role: str) -> dict[str, str]:
    return {OWNER_KEY: "true", ROLE_KEY: role}


def _plan_bridge(plan: _Plan, state: BridgeState):
    idl = plan.idl
    root = root_row(idl)
    if root is None:
        root = plan.insert("Open_vSwitch")
        plan.changes.append("Open_vSwitch: create the root row")
    bridge = by_name(idl, "Bridge", state.name)
    what = f"bridge {state.name}"
    if bridge is None:
        bridge = plan.insert("Bridge", state.name)
        root.addvalue("bridges", bridge)
        plan.changes.append(
            f"{what}: create ({state.datapath_type}, fail_mode {state.fail_mode}, "
            f"{','.join(state.protocols)}, {dict(state.other_config)})"
        )
    plan.ensure_keys(bridge, "external_ids", _marks("integration"), what)
    plan.ensure(bridge, "datapath_type", state.datapath_type, what)
    plan.ensure(bridge, "fail_mode", [state.fail_mode], what)
    plan.ensure(bridge, "protocols", list(state.protocols), what)
    plan.ensure_keys(bridge, "other_config", dict(state.other_config), what)
    have = {c.target: c for c in _get(bridge, "controller", [])}
    rows = []
    for target in state.controllers:
        row = have.get(target)
        if row is None:
            row = plan.insert("Controller")
            row.target = target
        plan.ensure(row, "max_backoff", [CONTROLLER_MAX_BACKOFF_MS], f"controller {target}")
        plan.ensure(row, "inactivity_probe", [CONTROLLER_INACTIVITY_PROBE_MS],
                    f"controller {target}")  # fmt: skip
        rows.append(row)
    if sorted(have) != list(state.controllers):
        plan.note(
            bridge, f"{what} controller: {sorted(have) or '(none)'} -> {list(state.controllers)}"
        )
        bridge.controller = rows
    return bridge


def _plan_ssl(plan: _Plan, spec: SslSpec) -> None:
    """The Open_vSwitch row's SSL settings (one per ovs-vswitchd: every bridge's `ssl:`
    controllers use them). Kept when no longer asked for: other bridges may need them."""
    root = root_row(plan.idl)
    rows = _get(root, "ssl", []) if root is not None else []
    row = rows[0] if rows else None
    if row is None:
        row = plan.insert("SSL")
        root.ssl = [row]
        plan.changes.append(
            f"ssl: create (key {spec.private_key}, certificate {spec.certificate}, "
            f"CA {spec.ca_cert})"
        )
    for column in ("private_key", "certificate", "ca_cert"):
        plan.ensure(row, column, getattr(spec, column), "ssl")


def _plan_port(plan: _Plan, bridge, spec: PortSpec) -> None:
    idl = plan.idl
    what = f"port {spec.name}"
    port = by_name(idl, "Port", spec.name)
    if port is not None and not owned(port):
        if spec.role == "local":
            return  # the bridge's own port, made by whoever made the bridge: leave it
        raise BootstrapError(
            f"port {spec.name} exists but was not created by vxflow "
            f"(no external_ids:{OWNER_KEY}=true); remove it or rename it, vxflow will not touch it"
        )
    if port is None:
        iface = plan.insert("Interface", spec.name)
        port = plan.insert("Port", spec.name)
        port.interfaces = [iface]
        bridge.addvalue("ports", port)
        detail = [spec.type, *(f"{k}={v}" for k, v in spec.options)]
        if spec.ofport_request:
            detail.append(f"ofport_request={spec.ofport_request}")
        if spec.mac:
            detail.append(f"mac={spec.mac}")
        if spec.mtu_request:
            detail.append(f"mtu_request={spec.mtu_request}")
        plan.changes.append(f"{what}: create ({', '.join(detail)})")
    else:
        if port not in _get(bridge, "ports", []):
            for other in idl.tables["Bridge"].rows.values():
                if port in other.ports:
                    other.delvalue("ports", port)
            bridge.addvalue("ports", port)
            plan.changes.append(f"{what}: move to bridge {bridge.name}")
        iface = next((i for i in port.interfaces if i.name == spec.name), None)
        if iface is None or len(port.interfaces) != 1:
            iface = iface or plan.insert("Interface", spec.name)
            port.interfaces = [iface]
            plan.changes.append(f"{what}: reset to its single interface {spec.name}")
    plan.ensure_keys(port, "external_ids", _marks(spec.role), what)
    what = f"interface {spec.name}"
    plan.ensure_keys(iface, "external_ids", _marks(spec.role), what)
    plan.ensure(iface, "type", spec.type, what)
    plan.ensure(iface, "options", dict(spec.options), what)
    if spec.role != "local":
        plan.ensure(iface, "ofport_request", [spec.ofport_request], what)
        plan.ensure(iface, "mac", [spec.mac] if spec.mac else [], what)
        plan.ensure(iface, "mtu_request", [spec.mtu_request] if spec.mtu_request else [], what)


def _plan_prune(plan: _Plan, bridge, state: BridgeState) -> None:
    """Delete vxflow-owned ports that are no longer desired (never anyone else's)."""
    wanted = {p.name for p in state.ports}
    for port in _get(bridge, "ports", []):
        if owned(port) and port.name not in wanted:
            bridge.delvalue("ports", port)
            plan.changes.append(f"port {port.name}: delete (vxflow-owned, no longer desired)")


def plan_changes(idl: ovs.db.idl.Idl, txn: Transaction, state: BridgeState) -> list[str]:
    """Write into `txn` what differs from `state`; return the readable changes."""
    plan = _Plan(idl, txn)
    bridge = _plan_bridge(plan, state)
    if state.ssl is not None:
        _plan_ssl(plan, state.ssl)
    for spec in state.ports:
        _plan_port(plan, bridge, spec)
    _plan_prune(plan, bridge, state)
    return plan.changes


def converge(
    idl: ovs.db.idl.Idl, state: BridgeState, dry_run: bool = False, attempts: int = 5
) -> list[str]:
    """Apply the OVSDB differences in one transaction; return them (dry run: only plan)."""
    for _ in range(attempts):
        txn = Transaction(idl)
        txn.add_comment("vxflow bootstrap")
        changes = plan_changes(idl, txn, state)
        if dry_run or not changes:
            txn.abort()
            return changes
        status = txn.commit_block()
        if status in (Transaction.SUCCESS, Transaction.UNCHANGED):
            for line in changes:
                log.info("ovsdb: %s", line)
            return changes
        if status != Transaction.TRY_AGAIN:
            raise BootstrapError(f"OVSDB transaction failed: {txn.get_error()}")
        run_once(idl, timeout=0.5)  # our view was stale (or the session dropped): refresh
    raise BootstrapError(f"OVSDB transaction still conflicting after {attempts} attempts")


def with_underlay_mtu(
    options: BootstrapOptions, lease: Lease, netns: str | None = None,
    links: list[dict] | None = None,
) -> BootstrapOptions:  # fmt: skip
    """`options` with the MTU of the interface holding the PublicIP (kept if none holds it;
    `links`: `ip -j addr`'s entries, if already read)."""
    link = link_holding(lease.public_ip, netns=netns, links=links)
    if link is None:
        log.warning(
            "no interface holds PublicIP %s; assuming underlay MTU %d",
            lease.public_ip, options.underlay_mtu,
        )  # fmt: skip
        return options
    return replace(options, underlay_mtu=int(link["mtu"]))


def bootstrap(
    idl: ovs.db.idl.Idl,
    config: NetworkConfig,
    lease: Lease,
    controllers: tuple[str, ...],
    options: BootstrapOptions,
    netns: str | None = None,
    dry_run: bool = False,
    fresh: bool = False,
    service_routes: tuple[IPv4Network | IPv6Network, ...] | None = None,
) -> list[str]:
    """Resolve the node-local facts, converge OVSDB, then the gateway's kernel side
    (`service_routes`: see `desired_state`).

    `netns` runs the kernel side with `ip -n` (for callers outside the node's
    namespace, such as tests); by default it is the caller's namespace.
    `fresh`: the caller has just taken in every update (the agent's loop), so
    skip waiting for OVSDB to go quiet; a stale view only costs a retried commit.
    """
    if not fresh:
        refresh(idl)
    if options.datapath_type == "auto":
        options = replace(options, datapath_type=detect_datapath_type(idl))
    held = KernelState.read(GATEWAY_PORT, config.network, netns)  # the kernel read once
    options = with_underlay_mtu(options, lease, netns, held.links)
    state = desired_state(config, lease, controllers, options, service_routes)
    changes = converge(idl, state, dry_run=dry_run)
    # (read again after an OVSDB change: it may have made the port anew, or changed its MTU)
    kernel = converge_gateway(state.gateway, netns=netns, dry_run=dry_run,
                              held=None if changes and not dry_run else held)  # fmt: skip
    for line in kernel:
        if not dry_run:
            log.info("%s", line)
    return changes + kernel


# -- flow-restore-wait ----------------------------------------------------------
def flow_restore_wait_set(idl: ovs.db.idl.Idl) -> bool:
    root = root_row(idl)
    return root is not None and _get(root, "other_config", {}).get(FLOW_RESTORE_WAIT) == "true"


def clear_flow_restore_wait(idl: ovs.db.idl.Idl) -> bool:
    """Remove other_config:flow-restore-wait; True if it was set and is now cleared."""
    if not flow_restore_wait_set(idl):
        return False
    txn = Transaction(idl)
    root_row(idl).delkey("other_config", FLOW_RESTORE_WAIT)
    status = txn.commit_block()
    if status not in (Transaction.SUCCESS, Transaction.UNCHANGED):
        raise BootstrapError(f"clearing {FLOW_RESTORE_WAIT} failed: {txn.get_error()}")
    run_once(idl, timeout=0.2)
    if flow_restore_wait_set(idl):
        raise BootstrapError(f"{FLOW_RESTORE_WAIT} still set after clearing it")
    log.info("cleared Open_vSwitch other_config:%s", FLOW_RESTORE_WAIT)
    return True


def controller_connected(idl: ovs.db.idl.Idl, bridge: str) -> bool:
    row = by_name(idl, "Bridge", bridge)
    return row is not None and any(_get(c, "is_connected", False) for c in row.controller)


def flow_count(ovsdb_remote: str, bridge: str) -> int | None:
    """Flows in `bridge`, via its management socket beside the OVSDB socket; None if unknown.

    OVSDB does not report flow counts, so this one read goes over OpenFlow
    (`ovs-ofctl dump-aggregate` on `<rundir>/<bridge>.mgmt`).
    """
    if not ovsdb_remote.startswith("unix:"):
        return None
    mgmt = Path(ovsdb_remote[len("unix:") :]).parent / f"{bridge}.mgmt"
    res = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow14", "dump-aggregate", f"unix:{mgmt}"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    for token in res.stdout.split():
        if token.startswith("flow_count="):
            return int(token.split("=", 1)[1])
    return None
