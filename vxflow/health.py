"""The cluster's health, from etcd and the controller replicas' status pages (pure).

`assess()` takes what `vxflow status` gathered (a registry snapshot, each
lease's TTL left, each replica's status page or why it could not be read) and
returns a `Report`: the network config, every node (lease, TTL, switch,
master and generation, flows desired and installed, last sync, drift
repairs), every service's backends (ready, unready by its health check, on a
DOWN node), the controllers, the rejected etcd entries, the problems, and what
cannot be told (unknown). A report without problems is healthy, whatever is
unknown: a replica run without a status page, or whose page is served on
another host's loopback, is not itself a fault (PROBLEMS and UNKNOWN below
are the rule `vxflow status --help` prints); `render()` is its one screen of
text.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any
from urllib.parse import urlsplit

from flows.direct import direct_leases
from leases.health import split_backends
from leases.keys import KeyKind
from leases.liveness import node_down
from leases.model import datapath_id_for
from leases.state import Snapshot
from leases.validate import Reason

Page = dict[str, Any] | str  # a replica's status page, or why there is none

PROBLEMS = (
    "no valid network config (one problem: the replicas wait for it to register)",
    "no controller replica registered (with a valid config)",
    "a replica whose membership has lapsed",
    "a replica whose status page, served on an address other than loopback, cannot be read",
    "a node DOWN: its agent publishes pods, its liveness record is gone and its switch is "
    "not connected to any replica that answered (its backends are out of every service)",
    "a node whose switch is not connected to any replica that answered, has no master, or "
    "holds flows that differ from the desired ones",
    "a switch connected without a valid lease",
    "a service with backends none of which serves (each unready by its health check or on "
    "a DOWN node): new connections to it fail",
    "a rejected etcd entry",
)
UNKNOWN = (
    "a replica run with --metrics-port 0 (no status page)",
    "a replica whose page is served on loopback and cannot be read here, or answers as "
    "another replica (it runs on another host: run `vxflow status` there, or give it a "
    "reachable --metrics-listen)",
    "while no replica's page was read: the nodes' switches",
)


@dataclass
class Node:
    public_ip: str
    subnet: str
    ttl: int | None  # seconds left on the lease; None: a reservation (no TTL)
    pods: int
    alive: bool = False  # its liveness record is in etcd
    down: bool = False  # leases.liveness.node_down, with the replicas that answered
    master: str | None = None  # the replica holding the switch's claim in etcd
    generation: int | None = None  # the claim's revision: the switch's generation_id
    connected_to: list[str] = field(default_factory=list)  # replicas the switch is connected to
    ipv6_subnet: str | None = None  # a dual-stack lease's IPv6 subnet
    in_sync: bool | None = None  # None: no master reported it
    flows_installed: int | None = None
    flows_desired: int | None = None
    flows_differing: int | None = None
    last_sync: float | None = None
    drift_repairs: int | None = None
    last_error: str = ""
    drop_meter_refused: bool = False  # its policy drops are not logged (they still drop)
    # DirectRouting: the peers' PublicIPs (and PublicIPv6s) routed to directly
    direct: list[str] = field(default_factory=list)


@dataclass
class ServiceState:
    """A service's backends by whether they take new connections."""

    name: str
    vip: str
    ready: list[str]
    unready: list[str]  # by its health check's verdicts
    down: list[str]  # on a DOWN node


@dataclass
class Controller:
    id: str
    address: str
    status: str  # its status URL ("": not served)
    masters: int  # switches whose claim it holds
    connected: int | None = None  # switches connected to it (None: its page was not read)
    error: str = ""  # why its page could not be read (a problem, or unknown: see assess)


@dataclass
class Report:
    revision: int
    config: dict[str, Any] | None
    nodes: list[Node]
    controllers: list[Controller]
    rejected: list[dict[str, str]]
    problems: list[str]
    unknown: list[str] = field(default_factory=list)  # what cannot be told: not problems
    services: list[ServiceState] = field(default_factory=list)
    taken: float = 0.0  # when all was read (time.time(), `vxflow status`): the report's "as of"

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def assess(
    snap: Snapshot, ttls: dict[str, int | None], pages: dict[str, Page], config_note: str = ""
) -> Report:
    """`ttls` by lease subnet (str), `pages` by replica id; `config_note`: what to add to a
    missing config (where etcd's v2 store holds one, see leases.etcd_v2.config_note)."""
    problems: list[str] = []
    config = None
    if snap.config is None:
        # one problem: where etcd's v2 store holds the config, that; else the config's
        # rejection is its detail, not another problem
        why = config_note or "".join(
            f": {r.key}: {r.detail}" for r in snap.rejected_of(KeyKind.CONFIG)[:1])
        problems.append(f"no valid network config{why} (controller replicas register only "
                        "once there is one)")  # fmt: skip
    else:
        c = snap.config
        config = {"network": str(c.network), "subnet_len": c.subnet_len,
                  "vni": c.backend.vni, "port": c.backend.port, "mtu": c.backend.mtu,
                  "direct_routing": c.backend.direct_routing}  # fmt: skip
    read = {rid: p for rid, p in pages.items() if isinstance(p, dict) and p.get("member") == rid}
    switches = _switches(read)  # datapath-id -> [(replica id, its entry)]
    claims = {c.datapath_id: c for c in snap.claims}
    nodes = []
    alive, reachable = snap.alive(), snap.direct()
    for lease in snap.leases:
        dpid = datapath_id_for(lease.public_ip)
        node = Node(str(lease.public_ip), str(lease.subnet), ttls.get(str(lease.subnet)),
                    len(snap.endpoints_of(lease.subnet)))  # fmt: skip
        if lease.ipv6_subnet is not None:
            node.ipv6_subnet = str(lease.ipv6_subnet)
        claim = claims.get(dpid)
        if claim is not None:
            node.master, node.generation = claim.controller, claim.generation
        entries = switches.pop(dpid, [])
        node.connected_to = sorted(rid for rid, _ in entries)
        node.alive = lease.public_ip in alive
        if snap.config is not None:  # the controller's decision (flows/direct.py)
            named = reachable.get(lease.public_ip) or frozenset()
            peers = direct_leases(snap.config, lease, snap.leases, named)
            node.direct = [str(a) for p in peers for a in (p.public_ip, p.public_ipv6)
                           if a in named and (a.version == 4 or lease.ipv6_subnet)]  # fmt: skip
        node.down = bool(read) and node_down(node.pods > 0, node.alive, bool(node.connected_to))
        master = next((e for _, e in entries if e["role"] == "master"), None)
        if master is not None:
            _take_master(node, master)
        problems += _node_problems(node, bool(read), len(read) < len(pages))
        nodes.append(node)
    services = _services(snap, [n for n in nodes if n.down])
    for svc in services:
        if not svc.ready and (svc.unready or svc.down):
            problems.append(f"service {svc.name} ({svc.vip}): none of its "
                            f"{len(svc.unready) + len(svc.down)} backends serves ("
                            + _backends_out(svc) + "): new connections to it fail")  # fmt: skip
    for dpid, entries in sorted(switches.items()):
        ip = entries[0][1]["node"]
        problems.append(f"switch of {ip} ({dpid:016x}) is connected but its node holds no "
                        "valid lease: it has only the table-miss drops")  # fmt: skip
    controllers = []
    unknown: list[str] = []
    for member in snap.members:
        page = pages.get(member.id, "")
        masters = sum(c.controller == member.id for c in snap.claims)
        ctl = Controller(member.id, member.address, member.status, masters)
        if member.id in read:
            ctl.connected = len(page["switches"])
            if not page.get("member_valid", True):
                problems.append(f"controller {member.id}: its membership has lapsed (it does "
                                "not write to switches)")  # fmt: skip
        else:
            ctl.error, is_problem = _unread(member.status, page)
            (problems if is_problem else unknown).append(f"controller {member.id}: {ctl.error}")
        controllers.append(ctl)
    if snap.leases and not read and snap.members:
        unknown.append("the nodes' switches (no replica's status page was read)")
    if not snap.members and snap.config is not None:
        problems.append("no controller replica is registered")
    rejected = [r.to_dict() for r in snap.rejected if r.reason != Reason.NO_CONFIG]
    problems += [f"rejected {r['kind']} {r['key']}: {r['detail']} [{r['reason']}]"
                 for r in rejected if r["kind"] != KeyKind.CONFIG]  # fmt: skip
    return Report(snap.revision, config, nodes, controllers, rejected, problems, unknown,
                  services=services)  # fmt: skip


def _services(snap: Snapshot, down: list[Node]) -> list[ServiceState]:
    """Each service's backends: on a DOWN node, else unready by its check, else ready."""
    subnets = [ip_network(s) for n in down for s in (n.subnet, n.ipv6_subnet) if s]
    unready = snap.unready()
    out = []
    for svc in snap.services:
        ready, checked_out = split_backends(svc, unready)
        gone = {b.ip for b in svc.backends if any(b.ip in s for s in subnets)}
        out.append(ServiceState(svc.name, str(svc.vip),
                                [str(ip) for ip in ready if ip not in gone],
                                [str(ip) for ip in checked_out if ip not in gone],
                                [str(b.ip) for b in svc.backends if b.ip in gone]))  # fmt: skip
    return out


def _backends_out(svc: ServiceState) -> str:
    parts = []
    if svc.unready:
        parts.append(f"{len(svc.unready)} unready by its health check")
    if svc.down:
        parts.append(f"{len(svc.down)} on a DOWN node")
    return ", ".join(parts)


def _unread(url: str, page: Page) -> tuple[str, bool]:
    """Why a replica's page was not read, and whether that is a problem (see UNKNOWN)."""
    if not url:
        return ("status unknown: no status page (it runs with --metrics-port 0; without it, "
                "it serves one)", False)  # fmt: skip
    why = f"{url} answers as replica {page.get('member')!r}" if isinstance(page, dict) else page
    host = urlsplit(url).hostname or ""
    try:
        loopback = ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return (f"status unknown: {why} (served on its host's loopback: run `vxflow status` "
                "there, or give it a reachable --metrics-listen)", False)  # fmt: skip
    return f"status page unreadable: {why}", True


def _switches(pages: dict[str, dict[str, Any]]) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    out: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for rid, page in sorted(pages.items()):
        for entry in page["switches"]:
            out.setdefault(int(entry["datapath_id"], 16), []).append((rid, entry))
    return out


def _take_master(node: Node, entry: dict[str, Any]) -> None:
    node.in_sync = entry.get("in_sync")
    node.flows_installed = entry.get("flows_installed")
    node.flows_desired = entry.get("flows_desired")
    node.flows_differing = entry.get("flows_differing")
    node.last_sync = entry.get("last_sync")
    node.drift_repairs = entry.get("drift_repairs")
    node.last_error = entry.get("last_error", "")
    node.drop_meter_refused = bool(entry.get("drop_meter_refused"))


def _node_problems(node: Node, any_read: bool, some_unread: bool) -> list[str]:
    where = f"node {node.public_ip} ({node.subnet})"
    if not any_read:
        return []  # nothing to say about switches: the controllers' problems say why
    seen = "any controller that answered" if some_unread else "any controller"
    if node.down:
        return [f"{where} is DOWN: no liveness record and its switch is not connected to "
                f"{seen}; its backends are out of every service"]  # fmt: skip
    if not node.connected_to:
        return [f"{where}: its switch is not connected to {seen} (node or ovs-vswitchd down?)"]
    if node.in_sync is None:
        return [f"{where}: its switch has no master (connected to {', '.join(node.connected_to)})"]
    problems = []
    if node.flows_differing:
        why = f"; last refused: {node.last_error}" if node.last_error else ""
        problems.append(f"{where}: {node.flows_differing} flows differ from the desired "
                        f"{node.flows_desired}{why}")  # fmt: skip
    if node.drop_meter_refused:
        problems.append(f"{where}: its switch refused the meter of logged policy drops "
                        "(`--log-policy-drops`): its drops are not logged, they still drop "
                        "(the meter is tried again when it reconnects)")  # fmt: skip
    return problems


def _ago(t: float | None, now: float) -> str:
    return "-" if t is None else f"{max(now - t, 0):.0f}s ago"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(report: Report, now: float | None = None) -> str:
    """The report as one screen of text."""
    now = time.time() if now is None else now
    c = report.config
    lines = [
        f"network {c['network']}, /{c['subnet_len']} subnets, VXLAN VNI {c['vni']} port "
        f"{c['port']}" + (f", MTU {c['mtu']}" if c["mtu"] else "")
        + (", DirectRouting" if c.get("direct_routing") else "") + f" (etcd revision {report.revision})"
        if c else f"network: no valid config (etcd revision {report.revision})",
        "",
    ]  # fmt: skip
    rows = [("NODE", "SUBNET", "TTL", "LIVENESS", "SWITCH", "MASTER (GEN)", "FLOWS", "LAST SYNC",
             "REPAIRS", "PODS")]  # fmt: skip
    for n in report.nodes:
        switch = "connected" if n.connected_to else "disconnected"
        master = f"{n.master} ({n.generation})" if n.master else "-"
        flows = "-"
        if n.flows_installed is not None:
            flows = f"{n.flows_installed}/{n.flows_desired}"
            flows += f" ({n.flows_differing} differ)" if n.flows_differing else ""
        liveness = "DOWN" if n.down else "alive" if n.alive else "-"
        subnet = f"{n.subnet}+{n.ipv6_subnet}" if n.ipv6_subnet else n.subnet
        rows.append((n.public_ip, subnet, "reserved" if n.ttl is None else f"{n.ttl}s", liveness,
                     switch, master, flows, _ago(n.last_sync, now),
                     "-" if n.drift_repairs is None else str(n.drift_repairs), str(n.pods)))  # fmt: skip
    lines += [*_table(rows), ""]
    if c and c.get("direct_routing"):
        lines.append("DIRECT PEERS (DirectRouting: plain IP via the peer's PublicIP or "
                     "PublicIPv6, no VXLAN)")
        lines += [f"{n.public_ip} -> {', '.join(n.direct) or 'none (all VXLAN)'}"
                  for n in report.nodes]  # fmt: skip
        lines.append("")
    rows = [("CONTROLLER", "ADDRESS", "MASTERS", "CONNECTED", "STATUS")]
    for ctl in report.controllers:
        connected = "?" if ctl.connected is None else str(ctl.connected)
        rows.append((ctl.id, ctl.address or "-", str(ctl.masters), connected,
                     ctl.error or ctl.status))  # fmt: skip
    lines += _table(rows) if report.controllers else ["no controller replica registered"]
    if report.services:
        rows = [("SERVICE", "VIP", "READY", "UNREADY", "ON A DOWN NODE")]
        rows += [(svc.name, svc.vip, ",".join(svc.ready) or "-", ",".join(svc.unready) or "-",
                  ",".join(svc.down) or "-") for svc in report.services]  # fmt: skip
        lines += ["", *_table(rows)]
    if report.rejected:
        lines += ["", "REJECTED ETCD ENTRIES"]
        lines += [f"{r['kind']} {r['key']}: {r['detail']} [{r['reason']}]" for r in report.rejected]
    lines.append("")
    if report.unknown:
        lines.append(f"{len(report.unknown)} unknown (not counted as problems):")
        lines += [f"- {u}" for u in report.unknown]
    if report.healthy:
        lines.append("healthy")
    else:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"- {p}" for p in report.problems]
    return "\n".join(lines)
