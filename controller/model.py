"""The controller's view of the cluster, updated per registry event, and what each event touches.

Pure (no I/O). The registry already validated the entries; the compiler's own
guard (`flows.validate`) is applied again here, incrementally, so one lease
event costs work proportional to the leases it can affect, not to the cluster.
A service event touches the flows and group of that service's ports only (and
the reply hooks of its target ports), on every switch.

Node liveness is one more input to the same diff: a node DOWN by
`leases.liveness.node_down` (its agent publishes pods, its liveness record is gone, and
its switch is not connected to this replica) has its backends (those in its lease's
subnet) taken out of every service before the plan is compiled, so they leave every
select group and affinity link table, and a learned affinity entry naming one no longer
matches (its SVC_DNAT flow goes, as for a removed backend); a UDP backend's conntrack
entries are flushed. They come back when the node is UP again.

Health checks take the same path: a backend that its node's agent publishes as unready
for a service (`leases.health`) is taken out of that service alone, and comes back with
a ready verdict or when the verdict goes. A service left with no backend serving is
compiled as one without backends.

Network policy is incremental too: each switch's policy stage (flows/policy.NodeStage)
is compiled from the policies that select one of its pods only, with each rule's peers
resolved once for every switch, and kept. A policy event updates the stages of the pods
it selects (before or after); a pod's or a namespace's, those of the pods a policy
selects whose selection or peers it can alter. An update compiles again only the rules
whose inputs changed, and the flows that changed go in the switch's scope by key
(`Impact.policy_keys`), so its diff compares those alone; a stage compiled anew (the
first policy, a lease event) is compared whole, by owner.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.compiler import (
    NodeTable,
    RemoteRoutes,
    Row,
    Row6,
    base_flows,
    cookie_subnet,
    endpoint_cookie,
    endpoint_flows,
    node_table,
    route_row,
    route_row6,
    subnet_cookie,
)
from flows.direct import direct_cookie, direct_flows, direct_leases
from flows.family import family
from flows.flow import Flow, FlowKey, Owner, Table, owner_of
from flows.groups import Group, group_cookie
from flows.ipv6 import endpoint_v6_flows
from flows.policy import NodeStage, Peers, PolicyTable, RuleRef, endpoint_pod
from flows.policy_eval import Evaluator, Pod
from flows.services import (
    NET_COOKIE,
    V6_KEY,
    Flush,
    ServicePlan,
    group_id,
    hairpin_flows,
    plumbing_flows,
    port_flows,
    port_group,
    removed_udp_backends,
    reply_cookie,
    reply_hook,
    reply_ports,
    service_plan,
)
from flows.validate import V6_CLAIMS, Rejected, lease_problem, select_endpoints, v6_problem
from leases.config import ipv6_notice
from leases.events import (
    ConfigChanged,
    EndpointAdded,
    EndpointRemoved,
    Event,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
    LivenessAdded,
    LivenessRemoved,
    NamespaceAdded,
    NamespaceRemoved,
    PolicyAdded,
    PolicyRemoved,
    ReadinessAdded,
    ReadinessRemoved,
    ServiceAdded,
    ServiceRemoved,
    VxflowConfigChanged,
)
from leases.health import ready_only, unready_by_service, unready_of
from leases.liveness import node_down
from leases.model import Endpoint, Lease, NetworkConfig, Readiness, Service, VxflowConfig
from leases.policy import EGRESS, INGRESS, Namespace, NetworkPolicy, Rule
from leases.state import PAUSE_EVERY

log = logging.getLogger(__name__)
V6_REJECTED = " IPv6"  # the suffix of a rejected IPv6 half's entry in ClusterModel.rejected
PodView = tuple[Pod, IPv6Address | None]  # a pod as its node's policy stage sees it


@dataclass(frozen=True)
class Scope:
    """Which of a switch's flows a change concerns: all, or those of some owners, cookies
    and (policy flows, which share cookies) keys."""

    full: bool = False
    cookies: frozenset[int] = frozenset()
    owners: frozenset[Owner] = frozenset()  # every flow of these owner kinds
    keys: frozenset[FlowKey] = frozenset()  # the flows of these keys (a policy stage's)

    def covers(self, cookie: int) -> bool:
        if self.full or cookie in self.cookies:
            return True
        owner = owner_of(cookie)
        return owner is not None and owner[0] in self.owners

    def covers_flow(self, flow: Flow) -> bool:
        return self.covers(flow.cookie) or flow.key in self.keys

    def __or__(self, other: Scope) -> Scope:
        if self.full or other.full:
            return FULL
        if not other:  # (a switch noting an event while nothing is pending: shared as is)
            return self
        if not self:
            return other
        return Scope(False, self.cookies | other.cookies, self.owners | other.owners,
                     self.keys | other.keys)  # fmt: skip

    def __bool__(self) -> bool:
        return self.full or bool(self.cookies or self.owners or self.keys)

    @classmethod
    def of_cookies(cls, cookies: frozenset[int]) -> Scope:
        """The flows of these cookies' owners: a lease's or an endpoint's by its cookie,
        the base pipeline (several cookies, one owner) and the policy stage (compiled as a
        whole, its flows asked for by owner) whole."""
        owners = {o[0] for c in cookies if (o := owner_of(c)) is not None}
        whole = frozenset({Owner.BASE}) if Owner.BASE in owners else frozenset()
        if owners & POLICY_OWNERS:
            whole |= POLICY_OWNERS
        return cls(False, cookies, whole)


FULL = Scope(full=True)
NOTHING = Scope()
POLICY_OWNERS = frozenset({Owner.POLICY, Owner.POLICY_DROP})


@dataclass
class Impact:
    """What a batch of events changed: nodes (by PublicIP) to resync fully, and owners
    whose flows changed on every other switch."""

    all_nodes: bool = False
    full_nodes: set[IPv4Address] = field(default_factory=set)
    lease_subnets: set[IPv4Network] = field(default_factory=set)
    endpoint_nodes: set[IPv4Network] = field(default_factory=set)
    service_cookies: set[int] = field(default_factory=set)  # service ports, reply hooks
    flushes: list[Flush] = field(default_factory=list)  # removed UDP backends, every switch
    policy_nodes: set[IPv4Address] = field(default_factory=set)  # whose policy stage changed
    # whose kept policy stage changed in these flows only (by key)
    policy_keys: dict[IPv4Address, set[FlowKey]] = field(default_factory=dict)
    # one switch's own: the direct routes (flows/direct.py) its node's Direct list changed
    node_cookies: dict[IPv4Address, set[int]] = field(default_factory=dict)
    _cookies: frozenset[int] | None = field(default=None, repr=False, compare=False)
    _shared: Scope | None = field(default=None, repr=False, compare=False)

    def scope_for(self, node: IPv4Address, own_subnet: IPv4Network | None) -> Scope:
        """(Called once per switch, after the Impact is complete: the cookies of
        `lease_subnets` are computed on the first call and shared.)"""
        if self.all_nodes or node in self.full_nodes:
            return FULL
        if self._cookies is None:
            self._cookies = frozenset(subnet_cookie(s) for s in self.lease_subnets)
            self._cookies |= {direct_cookie(s) for s in self.lease_subnets}
            self._cookies |= self.service_cookies
        # (each test is skipped while its set is empty, as for a lease event: an address's
        # hash is computed in Python, and this runs once per switch)
        owners = (frozenset({Owner.ENDPOINT})
                  if self.endpoint_nodes and own_subnet in self.endpoint_nodes else frozenset())  # fmt: skip
        if self.policy_nodes and node in self.policy_nodes:
            owners |= POLICY_OWNERS
        own = self.node_cookies.get(node) if self.node_cookies else None
        keys = self.policy_keys.get(node) if self.policy_keys else None
        if not (own or owners or keys):  # (the same for every switch: made once)
            if self._shared is None:
                self._shared = Scope(False, self._cookies)
            return self._shared
        return Scope(False, self._cookies | own if own else self._cookies, owners,
                     frozenset(keys) if keys else frozenset())  # fmt: skip


class ClusterModel:
    """Config, leases and endpoints as the controller believes them, with acceptance cached."""

    def __init__(self, log_drops: bool = False) -> None:
        self.log_drops = log_drops  # the policy stages' default drops logged (flows/policy.py)
        self.config: NetworkConfig | None = None
        self._ipv6_noted = False  # the one warning that IPv6 is not routed yet was logged
        self._leases: dict[IPv4Network, Lease] = {}  # every lease the registry delivered
        self._problem: dict[IPv4Network, str | None] = {}
        self._by_ip: dict[IPv4Address, set[IPv4Network]] = defaultdict(set)  # valid ones only
        self._endpoints: dict[IPv4Network, dict[IPv4Address, Endpoint]] = defaultdict(dict)
        self._accepted_eps: dict[IPv4Network, tuple[Endpoint, ...]] = {}
        self._valid: dict[IPv4Network, tuple[Lease, Row]] = {}  # with its route_row
        self._accepted: tuple[list[Lease], list[Row]] | None = None  # cache of leases(), rows
        # IPv6 halves (on an EnableIPv6 config): each valid lease's half fit to route (its
        # `v6_problem` None) by the claims it must hold alone (V6_CLAIMS), and the accepted
        # leases whose half may produce flows (`select_v6`, judged per lease from these)
        self._holders6: dict[object, set[IPv4Network]] = defaultdict(set)
        self._v6: dict[IPv4Network, Lease] = {}
        self._rows6: dict[IPv4Network, Row6] = {}  # route_row6 of each in `_v6`
        self._selection6: list[Row6 | None] | None = None  # cache: _rows6 by _selection()'s leases
        self._by_cookie: dict[int, tuple[Lease, Row] | None] = {}  # cache of accepted() by cookie
        self._own: dict[IPv4Address, tuple[Lease | None, bool]] = {}  # cache of _own_of()
        self.rejected: dict[str, Rejected] = {}  # by lease subnet / endpoint ip, for logs
        self.vxflow = VxflowConfig()
        self.services: dict[str, Service] = {}  # accepted by the registry, by name
        self._plan: ServicePlan | None = None  # cache of plan(), with the two below
        self._ports: dict[int, tuple[Service, int]] = {}  # group id -> (service, port slot)
        self._replies: dict[int, tuple] = {}  # reply-hook cookie -> (ServicePort, Family)
        # node-independent flows and groups of the plan, computed by the first switch that
        # asks and shared by the others (an event fans out to every switch)
        self._port_cache: dict[int, tuple[list[Flow], Group | None]] = {}
        self._reply_cache: dict[int, Flow] = {}
        # node liveness (leases.liveness.node_down): the PublicIPs with a liveness record,
        # those whose switch is connected to this replica, and the subnets of the nodes DOWN
        self.alive: set[IPv4Address] = set()
        self.connected: set[IPv4Address] = set()
        # DirectRouting: the peers each node's agent reaches directly (its liveness record)
        self.direct: dict[IPv4Address, frozenset[IPv4Address | IPv6Address]] = {}
        self._down: dict[IPv4Network, IPv4Address] = {}
        # health checks: the verdicts (by service, then key name) and the unready backends
        # by service (only services with one); the services with a verdict of an IPv6
        # backend, by its node's subnet (by key name): it counts only while that lease holds
        # the address (leases.health.counts), so a lease event counts them again
        self._readiness: dict[str, dict[str, Readiness]] = {}
        self.unready: dict[str, frozenset[IPv4Address | IPv6Address]] = {}
        self._verdicts6: dict[IPv4Network, dict[str, str]] = {}
        # network policy: the accepted policies (by namespace/name) and labelled namespaces;
        # each switch's compiled policy stage until one of its inputs changes, and what the
        # stages are compiled from (kept only while there is a policy: see _policy_delta)
        self.policies: dict[str, NetworkPolicy] = {}
        self.namespaces: dict[str, Namespace] = {}
        self._stages: dict[IPv4Address, NodeStage] = {}
        self._reset_policy()

    # -- queries --------------------------------------------------------------

    def accepted(self, subnet: IPv4Network) -> Lease | None:
        lease = self._leases.get(subnet)
        if lease is None or self._problem.get(subnet):
            return None
        if len(self._by_ip.get(lease.public_ip, ())) != 1:
            return None
        return lease

    def leases(self) -> list[Lease]:
        return self._selection()[0]

    def _selection(self) -> tuple[list[Lease], list[Row]]:
        """The accepted leases and their route rows (cached until a lease changes)."""
        if self._accepted is None:
            by_ip = self._by_ip
            pairs = [p for p in self._valid.values() if len(by_ip[p[0].public_ip]) == 1]
            self._accepted = [lease for lease, _ in pairs], [row for _, row in pairs]
        return self._accepted

    def _rows6_of_selection(self) -> list[Row6 | None]:
        """`route_row6` of each of the accepted leases whose IPv6 half is accepted, None for
        the others, in `_selection()`'s order (cached as it is, and until a half is judged)."""
        if self._selection6 is None:
            rows6 = self._rows6
            self._selection6 = [rows6.get(lease.subnet) for lease in self._selection()[0]]
        return self._selection6

    def _judge6(self, subnets: Iterable[IPv4Network]) -> None:
        """Judge the IPv6 halves of the leases of `subnets` again, as `select_v6` would over
        the accepted leases: fit to route, and alone among the accepted leases on each of
        its claims (the holders of a claim are a lease or two, so this costs the leases
        judged, not the cluster)."""
        if self.config is None or self.config.ipv6 is None:
            return  # (no half is accepted: `load` emptied them)
        self._selection6 = None
        for subnet in subnets:
            lease = self.accepted(subnet)
            why = None
            if lease is None or lease.ipv6_subnet is None:
                self._v6.pop(subnet, None)
                self._rows6.pop(subnet, None)
            elif subnet not in self._holders6.get(lease.public_ipv6, ()):  # unfit: _put_lease
                why = v6_problem(self.config, lease)
            else:
                why = next((why.format(claim(lease)) for claim, why in V6_CLAIMS
                            if sum(self.accepted(s) is not None
                                   for s in self._holders6[claim(lease)]) > 1), None)  # fmt: skip
                if why is None:
                    if self._v6.get(subnet) is not lease:
                        self._rows6[subnet] = route_row6(lease)
                    self._v6[subnet] = lease
            key = f"lease {subnet}{V6_REJECTED}" if why or self.rejected else ""
            if why is None:
                if key:
                    self.rejected.pop(key, None)
                continue
            self._v6.pop(subnet, None)
            self._rows6.pop(subnet, None)
            if key not in self.rejected:
                log.warning("%s: %s (its IPv4 flows stay)", key, why)
            self.rejected[key] = Rejected(lease, why)

    def _rivals6(self, leases: Iterable[Lease | None]) -> set[IPv4Network]:
        """The subnets of the valid leases holding a claim of an IPv6 half of `leases`:
        theirs is judged again when one of these comes, goes or changes."""
        claims = {claim(le) for le in leases if le is not None and le.ipv6_subnet is not None
                  for claim, _ in V6_CLAIMS}  # fmt: skip
        return {s for c in claims for s in self._holders6.get(c, ())}

    def own_lease(self, node: IPv4Address) -> Lease | None:
        return self._own_of(node)[0]

    def _own_of(self, node: IPv4Address) -> tuple[Lease | None, bool]:
        """`node`'s own lease and whether its switch is dual-stack (`_dual_stack`): asked
        twice per switch when an event fans out, so cached until a lease changes (the
        index `_dual_stack` reads changes with the leases alone)."""
        try:
            return self._own[node]
        except KeyError:
            pass
        subnets = self._by_ip.get(node, ())
        own = self.accepted(next(iter(subnets))) if len(subnets) == 1 else None
        found = self._own[node] = own, self._dual_stack(own)
        return found

    def _dual_stack(self, own: Lease | None) -> bool:
        """`dual_stack(config, own)` for an accepted `own`, from the index `_put_lease` keeps
        (an IPv6 half is among the holders of its claims once it is fit to route): asked by
        every switch per event, where judging the half again costs more than the event."""
        return (
            own is not None
            and own.ipv6_subnet is not None
            and self.config.ipv6 is not None
            and own.subnet in self._holders6.get(own.public_ipv6, ())
        )

    def endpoints_of(self, own: Lease | None) -> tuple[Endpoint, ...]:
        if own is None:
            return ()
        found = self._accepted_eps.get(own.subnet)  # (once per switch per lease event)
        if found is None:
            selection = select_endpoints(own, self._endpoints.get(own.subnet, {}).values())
            for r in selection.rejected:
                self.rejected[f"endpoint {r.item.ip}"] = r
            found = self._accepted_eps[own.subnet] = selection.accepted
        return found

    def plan(self) -> ServicePlan | None:
        """The services every switch must serve; None without a ServiceNetwork."""
        if self._plan is None:
            self._plan = service_plan(self.vxflow, map(self._serving, self.services.values()))
            if self._plan is None:
                return None
            self._port_cache, self._reply_cache = {}, {}
            self._ports = {
                group_id(self._plan.network_of(svc), svc, slot): (svc, slot)
                for svc, slot, _ in self._plan.ports()
            }
            self._replies = {reply_cookie(p, fam): (p, fam)
                             for p, fam in reply_ports(self._plan.services).values()}  # fmt: skip
        return self._plan

    def policy_table(self, node: IPv4Address) -> PolicyTable:
        """`node`'s policy stage (empty when no policy isolates a pod of it)."""
        return self._stage(node).table()

    def _stage(self, node: IPv4Address) -> NodeStage:
        """`node`'s policy stage, kept and brought up to date by each event that can change
        it (`_policy_delta`); compiled when first asked for."""
        stage = self._stages.get(node)
        if stage is None:
            stage = self._stages[node] = NodeStage()
            self._restage(node, stage)
        return stage

    def _restage(self, node: IPv4Address, stage: NodeStage) -> set[FlowKey]:
        """Bring `node`'s stage up to date, from the policies that select a pod of it only,
        with the peers resolved once for every switch; returns the keys of the flows that
        changed."""
        own = self.own_lease(node)
        selecting: list[NetworkPolicy] = []
        if self.policies and own is not None:
            self._policy_index()
            if self._selecting is None:  # (once per batch: asked by every switch)
                self._selecting = defaultdict(list)
                for key in sorted(self._selected):
                    for subnet in self._selected[key]:
                        self._selecting[subnet].append(self.policies[key])
            selecting = self._selecting.get(own.subnet, [])
        if not selecting:
            return stage.clear()
        if self._pod_list is None:
            self._pod_list = [v[0] for pods in self._pods.values() for v in pods.values()]
        local = [v[0] for v in self._pods.get(own.subnet, {}).values()]
        if self._evaluator is None:  # (once per change of the policies or namespaces)
            self._evaluator = Evaluator(self.policies.values(), self.namespaces.values())
        return stage.update(selecting, self.namespaces.values(), self._pod_list, local,
                            own.subnet, own.ipv6_subnet, self._peers,
                            [a for a in (own.public_ip, own.public_ipv6) if a is not None],
                            self.log_drops, self._evaluator)  # fmt: skip

    def _reset_policy(self) -> None:
        """Forget every compiled stage and what they are made of."""
        self._stages = {}
        # each accepted node's pods as parties of policy (with their IPv6 address), by
        # lease subnet then IPv4 address; None: not kept (no policy) or to be built again
        self._pods: dict[IPv4Network, dict[IPv4Address, PodView]] | None = None
        self._pod_list: list[Pod] | None = None  # the same, flat (cached)
        self._selected: dict[str, dict[IPv4Network, set[IPv4Address]]] = {}  # by policy
        self._selecting: dict[IPv4Network, list[NetworkPolicy]] | None = None  # the same, by node
        self._peers: dict[RuleRef, Peers] = {}  # each rule's, shared by every switch
        self._evaluator: Evaluator | None = None  # of every policy, shared by every stage

    def _policy_index(self) -> None:
        """Build the pods and what each policy selects, if not kept."""
        if self._pods is None:
            self._pods = {lease.subnet: self._pod_view(lease) for lease in self.leases()}
            self._pod_list = None
            self._selected = {k: self._selected_by(p) for k, p in self.policies.items()}
            self._selecting = None

    def _pod_view(self, lease: Lease | None) -> dict[IPv4Address, PodView]:
        if lease is None:
            return {}
        return {e.ip: (pod, e.ipv6) for e in self.endpoints_of(lease)
                if (pod := endpoint_pod(e)) is not None}  # fmt: skip

    def _selected_by(self, policy: NetworkPolicy) -> dict[IPv4Network, set[IPv4Address]]:
        """The pods `policy` selects (whichever its types), by node subnet."""
        out: dict[IPv4Network, set[IPv4Address]] = {}
        for subnet, pods in self._pods.items():
            ips = {ip for ip, (pod, _) in pods.items() if _selects(policy, pod)}
            if ips:
                out[subnet] = ips
        return out

    def _policy_delta(self, had: bool, policies: Mapping[str, NetworkPolicy | None],
                      namespaces: Mapping[str, Namespace | None], subnets: set[IPv4Network],
                      impact: Impact) -> None:  # fmt: skip
        """A batch changed `policies` and `namespaces` (from what they were, by name) and
        the pods of `subnets`; there were policies before it (`had`), and so the index of
        `_policy_index` as it was then. The stages that can differ are dropped and their
        nodes put in `impact`: those of the pods a changed policy selected or selects; of a
        pod that changed, if a policy selects it (before or after); and those of the pods a
        policy selects whose rule's peers (or, egress, named ports' targets) the changed
        pods or namespace labels may concern (their resolved peers go too)."""
        if policies or namespaces:
            self._evaluator = None
        if not self.policies and not had:
            self._pods = None  # nothing compiled from it; not kept without a policy
            return
        self._selecting = None
        if not had:  # the first policy: no stage held anything before
            self._reset_policy()
            self._policy_index()
            dirty = {s for sel in self._selected.values() for s in sel}
        else:
            dirty = self._dirty_subnets(policies, namespaces, subnets)
        for subnet in dirty:
            lease = self.accepted(subnet)
            if lease is None:
                continue
            node = lease.public_ip
            stage = self._stages.get(node) if self.policies else None
            if stage is None:  # compiled whole when asked for, and compared whole
                self._stages.pop(node, None)
                impact.policy_nodes.add(node)
            elif keys := self._restage(node, stage):
                impact.policy_keys.setdefault(node, set()).update(keys)
        if not self.policies:
            self._reset_policy()

    def _dirty_subnets(self, policies: Mapping[str, NetworkPolicy | None],
                       namespaces: Mapping[str, Namespace | None],
                       subnets: set[IPv4Network]) -> set[IPv4Network]:  # fmt: skip
        """(See `_policy_delta`.) Brings the index up to date; returns the subnets whose
        stage can differ."""
        assert self._pods is not None
        changed: list[tuple[IPv4Network, PodView | None, PodView | None]] = []
        for subnet in subnets:
            old, new = self._pods.pop(subnet, {}), self._pod_view(self.accepted(subnet))
            if new:
                self._pods[subnet] = new
            changed += [(subnet, a, b) for ip in old.keys() | new.keys()
                        if (a := old.get(ip)) != (b := new.get(ip))]  # fmt: skip
        if changed:
            self._pod_list = None
        dirty: set[IPv4Network] = set()
        renewed = {k for k, before in policies.items() if before != self.policies.get(k)}
        for key in renewed:
            dirty |= self._selected.pop(key, {}).keys()
            if (policy := self.policies.get(key)) is not None:
                self._selected[key] = self._selected_by(policy)
                dirty |= self._selected[key].keys()
        stale: set[tuple[str, str, int]] = set()  # rules whose peers may differ
        evaluator = Evaluator((), self.namespaces.values())
        relabelled = []  # (labels before, after) of each namespace whose labels changed
        for name, before in namespaces.items():
            old, new = _labels(name, before), _labels(name, self.namespaces.get(name))
            if old != new:
                relabelled.append((old, new))
        for key, policy in self.policies.items():
            if key in renewed:
                continue
            selected = self._selected[key]
            for subnet, a, b in changed:
                hit = False
                for view, add in ((a, False), (b, True)):
                    if view is not None and _selects(policy, view[0]):
                        hit = True
                        ips = selected.setdefault(subnet, set())
                        (ips.add if add else ips.discard)(view[0].ip)
                        if not ips:
                            del selected[subnet]
                if hit:
                    dirty.add(subnet)
            for direction, index, rule in _rules(policy):
                if any(_sees(evaluator, policy, rule, direction, v[0])
                       for _, a, b in changed for v in (a, b) if v is not None) or any(
                       p.namespace_selector is not None and (p.namespace_selector.matches(old)
                       or p.namespace_selector.matches(new))
                       for p in rule.peers for old, new in relabelled):  # fmt: skip
                    stale.add((key, direction, index))
                    dirty |= selected.keys()
        for ref in list(self._peers):
            if ref.policy in renewed or (ref.policy, ref.direction, ref.index) in stale:
                del self._peers[ref]
        return dirty

    def denied(self, node: IPv4Address, drops: dict[tuple[int, int], int]) -> Iterator[tuple]:
        """`node`'s policy drop counts (by (table, cookie)) as the metric's
        ((namespace, policies, direction), packets); drops of flows no longer desired are left
        out."""
        isolated = self.policy_table(node).isolated
        for (table, cookie), packets in drops.items():
            direction = EGRESS if table == Table.POL_EGRESS else INGRESS
            iso = isolated.get((direction, IPv4Address(cookie & 0xFFFFFFFF)))
            if iso is not None:
                namespace = iso.pod.split("/")[0]
                yield (namespace, ",".join(iso.policies), direction.lower()), packets

    def isolation(self, node: IPv4Address, direction: str, ip: IPv4Address | IPv6Address,
                  group: IPv4Address) -> tuple[str | None, tuple[str, ...]] | None:  # fmt: skip
        """Who a drop of `node`'s isolation group `group` (its drop's cookie) hit: the local
        pod of address `ip` (None: not one, or no longer) and the policies isolating the
        group in `direction`; None: no such group on `node` now."""
        isolated = self.policy_table(node).isolated
        held = isolated.get((direction, group))
        if held is None:
            return None
        if ip.version == 6:
            own = self.own_lease(node)
            ip = next((e.ip for e in self.endpoints_of(own) if e.ipv6 == ip), None) if own else None
        found = isolated.get((direction, ip)) if ip is not None else None
        return (found.pod if found is not None else None), held.policies

    def down_nodes(self) -> dict[IPv4Address, IPv4Network]:
        """The nodes DOWN now (PublicIP -> lease subnet)."""
        return {ip: subnet for subnet, ip in self._down.items()}

    def _serving(
        self,
        service: Service,
        down: dict[IPv4Network, IPv4Address] | None = None,
        unready: dict[str, frozenset[IPv4Address | IPv6Address]] | None = None,
    ) -> Service:
        """`service` without its backends on a DOWN node or unready for it (itself when
        none is); `down`, `unready`: what to go by (default: what holds now)."""
        down = self._down if down is None else down
        service = ready_only(service, self.unready if unready is None else unready)
        if not down or self.config is None:
            return service
        length = self.config.subnet_len
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        if service.vip.version == 6:  # the IPv6 halves of the DOWN nodes' leases
            down6 = self._halves6(down)
            kept = tuple(b for b in service.backends if not any(b.ip in s for s in down6))
        else:
            kept = tuple(b for b in service.backends
                         if IPv4Network((int(b.ip) & mask, length)) not in down)  # fmt: skip
        return service if len(kept) == len(service.backends) else replace(service, backends=kept)

    def desired(self, node: IPv4Address, scope: Scope) -> NodeTable | None:
        """The flows and groups `node`'s switch must hold, restricted to `scope`; None
        while no valid config is known (then nothing may be touched)."""
        if self.config is None:
            return None
        own, six = self._own_of(node)
        plan = self.plan()
        reachable = self.direct.get(node) if self.direct else None
        if scope.full:
            leases, rows = self._selection()
            v6 = tuple(self._v6.values()) if six else None
            rows6 = self._rows6_of_selection() if six else None
            direct = direct_leases(self.config, own, leases, reachable)
            table = node_table(self.config, leases, self.endpoints_of(own), own, rows, plan, v6,
                               rows6, direct, reachable or frozenset())  # fmt: skip
            table.flows.extend(self.policy_table(node).flows)
            return table
        flows: list[Flow] = []
        owners = scope.owners  # (empty for a lease event: no Owner is hashed per switch)
        if owners and Owner.BASE in owners:
            flows += base_flows(self.config, own)
        if own is None:
            return NodeTable(flows)
        leases: list[Lease] = []
        rows: list[Row] = []
        rows6: list[Row6 | None] = []
        for cookie in scope.cookies:
            accepted = self._accepted_by_cookie(cookie)
            if accepted is not None and accepted[0].public_ip != own.public_ip:
                leases.append(accepted[0])
                rows.append(accepted[1])
                if six:
                    rows6.append(self._rows6.get(accepted[0].subnet))
        routes = RemoteRoutes(self.config, own, leases, rows, rows6) if leases else None
        if reachable and self.config.backend.direct_routing:
            flows += self._direct_flows(own, reachable, scope, six)
        every = bool(owners) and Owner.ENDPOINT in owners
        # (a scope naming no endpoint, such as a policy change's, skips the node's pods)
        named = every or any((o := owner_of(c)) is not None and o[0] is Owner.ENDPOINT
                             for c in scope.cookies)  # fmt: skip
        for endpoint in self.endpoints_of(own) if named else ():
            cookie = endpoint_cookie(endpoint)
            if every or cookie in scope.cookies:
                flows += endpoint_flows(own, endpoint)
                if six and endpoint.ipv6 is not None:
                    flows += endpoint_v6_flows(own, endpoint)
                if plan is not None:
                    flows += hairpin_flows(endpoint, plan, six, cookie)
        groups: list[Group] = []
        if plan is not None:
            flows += self._service_flows(own, plan, scope, groups, six)
        if owners and owners & POLICY_OWNERS:
            flows += self.policy_table(node).flows
        elif scope.keys:
            held = self._stage(node).flows
            flows += [f for k in scope.keys if (f := held.get(k)) is not None]
        return NodeTable(flows, routes, groups)

    def _service_flows(
        self, own: Lease, plan: ServicePlan, scope: Scope, groups: list[Group], six: bool
    ) -> list[Flow]:
        """The service flows in `scope` (their groups appended to `groups`): looked up by
        cookie, so one service's event costs the same however many services there are.
        IPv6's on a dual-stack node (`six`) only."""
        flows: list[Flow] = []
        if scope.covers(NET_COOKIE):
            flows += [f for net in plan.networks(six) for f in plumbing_flows(self.config, own, net)]
        every = Owner.SERVICE_NET in scope.owners
        for cookie, (port, fam) in self._replies.items():
            if (every or cookie in scope.cookies) and (six or fam.version == 4):
                hook = self._reply_cache.get(cookie)
                if hook is None:
                    hook = self._reply_cache[cookie] = reply_hook(self.config, port, fam)
                flows.append(hook)
        if Owner.SERVICE in scope.owners:
            gids = list(self._ports)
        else:
            gids = [o[1] for c in scope.cookies if (o := owner_of(c)) and o[0] is Owner.SERVICE
                    and o[1] in self._ports]  # fmt: skip
        for gid in gids:
            if gid & V6_KEY and not six:
                continue
            cached = self._port_cache.get(gid)
            if cached is None:
                svc, slot = self._ports[gid]
                net = plan.network_of(svc)
                cached = port_flows(net, svc, slot), port_group(net, svc, slot)
                self._port_cache[gid] = cached
            flows += cached[0]
            if cached[1] is not None:
                groups.append(cached[1])
        return flows

    def _direct_flows(
        self, own: Lease, reachable: frozenset[IPv4Address | IPv6Address], scope: Scope, six: bool
    ) -> list[Flow]:
        """The direct routes in `scope` (`six`: IPv6's too, on a dual-stack node): by the
        cookie of each peer's, as a lease's."""
        flows = []
        for cookie in scope.cookies:
            owner = owner_of(cookie)
            if owner is None or owner[0] is not Owner.DIRECT:
                continue
            accepted = self._accepted_by_cookie(subnet_cookie(IPv4Network((owner[1], 32))))
            if accepted is not None and direct_leases(self.config, own, [accepted[0]], reachable):
                v6 = {accepted[0].subnet} if six and accepted[0].subnet in self._v6 else ()
                flows += direct_flows(own, [accepted[0]], reachable, v6)
        return flows

    def _accepted_by_cookie(self, cookie: int) -> tuple[Lease, Row] | None:
        """The accepted lease a lease cookie names and its route row (None for other
        cookies): asked once per switch for the same cookie when a lease event fans out,
        so cached."""
        try:
            return self._by_cookie[cookie]
        except KeyError:
            pass
        subnet = cookie_subnet(cookie, self.config.subnet_len)
        if subnet is None:
            # not a subnet's cookie (a stray flow's, added by hand): not cached, so such
            # cookies cannot grow the cache
            return None
        found = self._valid[subnet] if self.accepted(subnet) is not None else None
        self._by_cookie[cookie] = found
        return found

    def _changed(self) -> None:
        """Drop what is cached from the leases (every lease update calls this)."""
        self._accepted = None
        self._selection6 = None
        self._by_cookie = {}
        self._own = {}

    # -- updates --------------------------------------------------------------

    def load(
        self,
        config: NetworkConfig | None,
        leases: Iterable[Lease],
        endpoints: Iterable[Endpoint],
        pause: Callable[[], None] = lambda: None,
        vxflow: VxflowConfig | None = None,
        services: Iterable[Service] | None = None,
        alive: Iterable[IPv4Address] | None = None,
        readiness: Iterable[Readiness] | None = None,
        policies: Iterable[NetworkPolicy] | None = None,
        namespaces: Iterable[Namespace] | None = None,
        direct: Mapping[IPv4Address, frozenset[IPv4Address | IPv6Address]] | None = None,
    ) -> Impact:
        """Replace everything (first snapshot, config change); `pause` is called every
        PAUSE_EVERY leases, so a cooperative caller can yield during a large load.
        The services, vxflow's config, the liveness records (with their Direct lists), the
        health-check verdicts, the policies and the namespaces are kept unless given;
        `connected` (the app's switches) is always kept."""
        self.config = config
        if config is not None and not self._ipv6_noted and (notice := ipv6_notice(config)):
            log.warning("%s", notice)
            self._ipv6_noted = True
        if vxflow is not None:
            self.vxflow = vxflow
        if services is not None:
            self.services = {s.name: s for s in services}
        if alive is not None:
            self.alive = set(alive)
        if readiness is not None:
            self._readiness, self._verdicts6 = {}, {}
            for r in readiness:
                self._readiness.setdefault(r.service, {})[r.key_name] = r
                if r.ip.version == 6:
                    self._verdicts6.setdefault(r.node_subnet, {})[r.key_name] = r.service
        if policies is not None:
            self.policies = {p.key_name: p for p in policies}
        if namespaces is not None:
            self.namespaces = {ns.name: ns for ns in namespaces}
        self._reset_policy()
        if direct is not None:
            self.direct = dict(direct)
        self._plan = None
        self._changed()
        self._leases, self._problem, self._valid, self.rejected = {}, {}, {}, {}
        self._by_ip.clear()
        self._holders6.clear()
        self._v6, self._rows6 = {}, {}
        self._endpoints.clear()
        self._accepted_eps.clear()
        for i, lease in enumerate(leases, 1):
            if not i % PAUSE_EVERY:
                pause()
            self._put_lease(lease)
        for endpoint in endpoints:
            self._endpoints[endpoint.node_subnet][endpoint.ip] = endpoint
        self.unready = {}
        self._count_unready(self._readiness)  # (with the leases: an IPv6 backend's counts)
        self._down = {}
        self._judge(self._valid, Impact())
        self._judge6(self._valid)
        self._selection()  # ready before the first switch asks
        return Impact(all_nodes=True)

    def apply(self, events: Iterable[Event]) -> Impact:
        """Fold a batch of registry events in; returns what they changed."""
        impact = Impact()
        judge: set[IPv4Network] = set()  # the nodes whose liveness may have changed
        verdicts: set[str] = set()  # the services a health-check verdict came or went of
        # what policy stages are made of, as it was before the batch: the policies and
        # namespaces by name, and the nodes whose pods changed (see _policy_delta)
        had = bool(self.policies)
        if had:
            self._policy_index()
        policies: dict[str, NetworkPolicy | None] = {}
        namespaces: dict[str, Namespace | None] = {}
        pods: set[IPv4Network] = set()
        halves: set[IPv4Network] = set()  # the leases whose IPv6 half is judged again
        reloaded = False
        for ev in events:
            if isinstance(ev, ReadinessAdded | ReadinessRemoved):
                record = ev.record
                held = self._readiness.setdefault(record.service, {})
                if isinstance(ev, ReadinessAdded):
                    held[record.key_name] = record
                elif held.get(record.key_name) == record:
                    del held[record.key_name]
                if not held:
                    del self._readiness[record.service]
                if record.ip.version == 6:
                    named = self._verdicts6.setdefault(record.node_subnet, {})
                    if record.key_name in held:
                        named[record.key_name] = record.service
                    else:
                        named.pop(record.key_name, None)
                        if not named:
                            del self._verdicts6[record.node_subnet]
                verdicts.add(record.service)
            elif isinstance(ev, LivenessAdded | LivenessRemoved):
                ip = ev.record.public_ip
                (self.alive.add if isinstance(ev, LivenessAdded) else self.alive.discard)(ip)
                judge |= self._by_ip.get(ip, set())
                self._note_direct(ip, ev.record.direct if isinstance(ev, LivenessAdded) else None,
                                  impact)  # fmt: skip
            elif isinstance(ev, ConfigChanged):
                self.load(ev.config, list(self._leases.values()), self._all_endpoints())
                impact.all_nodes = reloaded = True
            elif isinstance(ev, LeaseAdded | LeaseChanged | LeaseRemoved):
                old = ev.old if isinstance(ev, LeaseChanged) else self._leases.get(ev.lease.subnet)
                ips = {ev.lease.public_ip} | ({old.public_ip} if old else set())
                # a PublicIP conflict appearing or going away flips the other holders too,
                # and an IPv6 one (of any lease flipped) those holders' IPv6 halves
                touched = {ev.lease.subnet} | self._subnets_of(ips)
                if old is not None:
                    self._drop_lease(old)
                if not isinstance(ev, LeaseRemoved):
                    self._put_lease(ev.lease)
                touched |= self._subnets_of(ips)
                touched |= self._rivals6([old, *map(self._leases.get, touched)])
                halves |= touched
                verdicts.update(self._verdicts6.get(ev.lease.subnet, {}).values())
                impact.lease_subnets |= touched
                impact.full_nodes |= ips
                judge |= touched
                pods |= touched
                for subnet in touched:
                    self._accepted_eps.pop(subnet, None)
                for ip in ips:  # its own subnet may have changed (a full resync follows)
                    self._stages.pop(ip, None)
            elif isinstance(ev, EndpointAdded | EndpointRemoved):
                ep = ev.endpoint
                if isinstance(ev, EndpointAdded):
                    self._endpoints[ep.node_subnet][ep.ip] = ep
                else:
                    held = self._endpoints.get(ep.node_subnet, {})
                    held.pop(ep.ip, None)
                    if not held:  # a removed node's endpoints leave no empty dict behind
                        self._endpoints.pop(ep.node_subnet, None)
                self._accepted_eps.pop(ep.node_subnet, None)
                impact.endpoint_nodes.add(ep.node_subnet)
                pods.add(ep.node_subnet)
                judge.add(ep.node_subnet)
            elif isinstance(ev, VxflowConfigChanged):
                self.vxflow, self._plan = ev.config, None
                impact.all_nodes = True
            elif isinstance(ev, ServiceAdded | ServiceRemoved):
                self._apply_service(ev, impact)
            elif isinstance(ev, PolicyAdded | PolicyRemoved):
                _fold(self.policies, policies, ev.policy.key_name, ev.policy,
                      isinstance(ev, PolicyAdded))  # fmt: skip
            elif isinstance(ev, NamespaceAdded | NamespaceRemoved):
                _fold(self.namespaces, namespaces, ev.namespace.name, ev.namespace,
                      isinstance(ev, NamespaceAdded))  # fmt: skip
        if not reloaded:
            self._policy_delta(had, policies, namespaces, pods, impact)
        self._judge(judge, impact)
        self._judge6(halves)
        if verdicts:
            self._take_verdicts(verdicts, impact)
        if impact.flushes:  # a removed backend that the same batch adds back keeps its entries
            impact.flushes = [f for f in impact.flushes if not self._serves(f)]
        return impact

    def _note_direct(
        self, node: IPv4Address, direct: frozenset[IPv4Address | IPv6Address] | None, impact: Impact
    ) -> None:
        """A node's Direct list came, changed or went: with DirectRouting on, the direct
        routes of the peers that came or went are in its switch's scope (a peer without
        a lease yet gets its route with its lease's event)."""
        old = self.direct.pop(node, None)
        if direct is not None:
            self.direct[node] = direct
        if old == direct or self.config is None or not self.config.backend.direct_routing:
            return
        changed = (old or frozenset()) ^ (direct or frozenset())
        six = {ip for ip in changed if ip.version == 6}  # a PublicIPv6: its lease's subnet
        subnets = self._subnets_of(ip for ip in changed if ip.version == 4)
        if six:
            subnets |= {le.subnet for le in self._leases.values() if le.public_ipv6 in six}
        cookies = {direct_cookie(s) for s in subnets}
        if cookies:
            impact.node_cookies.setdefault(node, set()).update(cookies)

    def set_connected(self, node: IPv4Address, connected: bool) -> Impact:
        """This replica's connection to `node`'s switch came (True) or went (False)."""
        (self.connected.add if connected else self.connected.discard)(node)
        impact = Impact()
        self._judge(self._by_ip.get(node, set()), impact)
        return impact

    def _judge(self, subnets: Iterable[IPv4Network], impact: Impact) -> None:
        """Apply `node_down` to the nodes of `subnets` (the others keep their state); a
        node that went DOWN or came UP takes the services with a backend on it to every
        switch (`impact`), with the conntrack flushes of its UDP backends."""
        changed: set[IPv4Network] = set()
        old = dict(self._down)
        for subnet in subnets:
            lease = self.accepted(subnet)
            down = lease is not None and node_down(
                bool(self._endpoints.get(subnet)),
                lease.public_ip in self.alive,
                lease.public_ip in self.connected,
            )
            if down != (subnet in self._down):
                changed.add(subnet)
                if down:
                    self._down[subnet] = lease.public_ip
                else:
                    del self._down[subnet]
        if not changed:
            return
        subnets = [*changed, *self._halves6(changed)]
        touched = [s for s in self.services.values()
                   if any(b.ip in subnet for b in s.backends for subnet in subnets)]  # fmt: skip
        self._reserve(touched, impact, down=old)

    def _halves6(self, subnets: Iterable[IPv4Network]) -> list[IPv6Network]:
        """The IPv6 halves of the leases of `subnets` (those that have one)."""
        return [six for s in subnets
                if (lease := self._leases.get(s)) and (six := lease.ipv6_subnet)]  # fmt: skip

    def _count_unready(self, names: Iterable[str]) -> None:
        """`unready` of the services `names` again, from their verdicts."""
        for name in names:
            out = unready_by_service(self._readiness.get(name, {}).values(), self._leases).get(name)
            if out:
                self.unready[name] = out
            else:
                self.unready.pop(name, None)

    def _take_verdicts(self, names: set[str], impact: Impact) -> None:
        """The verdicts of the services `names` changed: those whose unready backends
        differ now take their new backends to every switch (`impact`)."""
        old = dict(self.unready)
        self._count_unready(names)
        touched = [s for n in sorted(names) if (s := self.services.get(n)) is not None
                   and unready_of(s, old) != unready_of(s, self.unready)]  # fmt: skip
        if touched:
            self._reserve(touched, impact, unready=old)

    def _reserve(
        self,
        touched: Iterable[Service],
        impact: Impact,
        down: dict[IPv4Network, IPv4Address] | None = None,
        unready: dict[str, frozenset[IPv4Address | IPv6Address]] | None = None,
    ) -> None:
        """The `touched` services, whose serving backends were those of `down` and
        `unready` before, go to every switch (`impact`): their groups and the conntrack
        flushes of the UDP backends they no longer serve."""
        self._plan = None
        for svc in touched:
            before = self._serving(svc, down, unready)
            impact.flushes += removed_udp_backends(before, self._serving(svc))
            if (network := self.vxflow.network_of(svc.vip)) is not None:
                impact.service_cookies |= {
                    group_cookie(group_id(network, svc, i)) for i in range(len(svc.ports))
                }

    def _apply_service(self, ev: ServiceAdded | ServiceRemoved, impact: Impact) -> None:
        """A service came or went (a change is both, in one batch): its ports' cookies and
        their reply hooks, on every switch, and the UDP backends it no longer has."""
        svc = ev.service
        if isinstance(ev, ServiceAdded):
            self.services[svc.name] = svc
        elif self.services.get(svc.name) == svc:
            del self.services[svc.name]
            impact.flushes += removed_udp_backends(svc, None)
        self._plan = None
        network = self.vxflow.network_of(svc.vip)
        if network is None:
            return
        impact.service_cookies |= {group_cookie(group_id(network, svc, i)) for i in range(len(svc.ports))}
        impact.service_cookies |= {reply_cookie(p, family(svc.vip)) for p in svc.ports}

    def _serves(self, flush: Flush) -> bool:
        """Whether a service still sends `flush`'s VIP:port to its backend:target port."""
        return any(
            s.vip == flush.vip
            and any(b.ip == flush.backend for b in self._serving(s).backends)
            and any(
                p.protocol == "UDP" and (p.port, p.target_port) == (flush.port, flush.target_port)
                for p in s.ports
            )
            for s in self.services.values()
        )

    def _subnets_of(self, ips: Iterable[IPv4Address | IPv6Address]) -> set[IPv4Network]:
        return {s for ip in ips for s in self._by_ip.get(ip, ())}

    def _all_endpoints(self) -> list[Endpoint]:
        return [ep for eps in self._endpoints.values() for ep in eps.values()]

    def _put_lease(self, lease: Lease) -> None:
        self._changed()
        self._leases[lease.subnet] = lease
        problem = lease_problem(self.config, lease) if self.config else "no network config"
        self._problem[lease.subnet] = problem
        if problem:
            self.rejected[f"lease {lease.subnet}"] = Rejected(lease, problem)
            self._valid.pop(lease.subnet, None)
        else:
            if self.rejected:  # (naming the entry costs more than the lookup)
                self.rejected.pop(f"lease {lease.subnet}", None)
            self._by_ip[lease.public_ip].add(lease.subnet)
            self._valid[lease.subnet] = lease, route_row(lease)
            six = lease.ipv6_subnet is not None and self.config.ipv6 is not None
            if six and v6_problem(self.config, lease) is None:
                for claim, _ in V6_CLAIMS:
                    self._holders6[claim(lease)].add(lease.subnet)

    def _drop_lease(self, lease: Lease) -> None:
        self._changed()
        self._leases.pop(lease.subnet, None)
        self._valid.pop(lease.subnet, None)
        self._problem.pop(lease.subnet, None)
        self.rejected.pop(f"lease {lease.subnet}", None)
        for index, key in (
            (self._by_ip, lease.public_ip),
            *((self._holders6, claim(lease)) for claim, _ in V6_CLAIMS),
        ):
            holders = index.get(key)
            if holders is not None:
                holders.discard(lease.subnet)
                if not holders:
                    del index[key]


def _fold(held: dict, before: dict, name: str, item: object, added: bool) -> None:
    """A policy's or namespace's event folded into `held` (by name); `before` keeps what
    `held` had under that name before the batch's first event of it."""
    before.setdefault(name, held.get(name))
    if added:
        held[name] = item
    elif held.get(name) == item:
        del held[name]


def _selects(policy: NetworkPolicy, pod: Pod) -> bool:
    """Whether `policy` selects `pod` (for whichever of its types)."""
    return pod.namespace == policy.namespace and policy.pod_selector.matches(pod.label_map)


def _rules(policy: NetworkPolicy) -> Iterator[tuple[str, int, Rule]]:
    for direction, rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress)):
        for index, rule in enumerate(rules):
            yield direction, index, rule


def _sees(
    evaluator: Evaluator, policy: NetworkPolicy, rule: Rule, direction: str, pod: Pod
) -> bool:
    """Whether `pod` may be among what `rule` resolves over the cluster's pods: a peer it
    selects, or a target of its named ports (egress: every pod when it names no peer)."""
    if direction == EGRESS and not rule.peers and any(isinstance(p.port, str) for p in rule.ports):
        return True
    return any(evaluator.peer_matches(peer, policy.namespace, pod) for peer in rule.peers)


def _labels(name: str, namespace: Namespace | None) -> Mapping[str, str]:
    """A namespace's labels as selectors see them (its default ones when not labelled)."""
    return Evaluator((), [namespace] if namespace else ()).namespace_labels(name)
