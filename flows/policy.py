"""NetworkPolicy in a switch's flows: the policy stage of flows/compiler.py's pipeline (pure).

Antrea's realisation (docs/design/ovs-pipeline.md in antrea-io/antrea), fitted
into vxflow's tables. Only a switch holding a pod that some policy isolates gets
any of these flows: without policy a switch holds, and a packet hits, exactly
what it did before.

- Hooks, per pod isolated in a direction (cookie POLICY, key 0):
  ROUTE (20), priority 150: IPv4 from the pod, reg2 = 0 -> reg4 = its isolation
  group's digest (GENERATION), reg5 = its isolation group (ISOLATION: the lowest
  address of the node's pods that the same policies isolate in that direction),
  ct(POLICY_ZONE) -> POL_EGRESS. Below the VIP flows (200): a connection to a service is judged
  after DNAT, on the backend's address and TargetPort. Above the routes (100).
  LOCAL (30), priority 210: IPv4 to the pod, reg3 = 0 -> its group's digest and its group,
  ct(POLICY_ZONE) -> POL_INGRESS. Above the services' reply hook (200): a backend's reply is
  looked up while it still is backend -> client, as the zone knows it. Below
  the hairpin flow (220): a pod reaching itself through a VIP is not judged.
- Commit hooks, one per direction (145 in ROUTE: from the node's subnet; 205 in
  LOCAL: into it): every other connection of the node's pods is committed to
  POLICY_ZONE unjudged, so that the replies of a pod isolated the other way
  are known as replies.
- POL_EGRESS (50) and POL_INGRESS (51), for a packet out of a pod's hook:
  established or related (300): pass. A pod's packet to itself (250, egress)
  and, into a pod, what the node's host sends from its own addresses through
  the gateway port (250: its gateway address and PublicIP; kubelet's probes):
  pass new. What the host only forwards (a direct peer's pods, flows/direct.py,
  a DNATed client that kept its address) is judged as any other source. A
  rule: conjunctive clauses (100) of the pods it isolates, its peers and its
  ports, and one flow per rule matching its conj_id (190, cookie
  POLICY|conj_id: its n_packets count the connections the rule allowed): pass
  new; a clause that matches everything is left out, and the pods' clause
  matches whole isolation groups by reg5 (pods by address only where a named
  port splits a group), so a rule costs |groups| + |peers| + |ports| + 1
  flows, and a rule of one clause (no peers, no ports) is a flow per group
  (180). The default drop, one per isolation group (10, matching reg5; cookie
  POLICY_DROP|the group's address: its n_packets count the packets its pods
  were denied). With drops logged (`log_drops`, `vxflow controller
  --log-policy-drops`) it still drops, but first sends the packet's first
  DROP_LOG_BYTES to the controller through meter DROP_LOG_METER, which the
  controller installs on the switch before its flows and which bounds the
  packet-ins a flood can cause (Antrea's packet-in meter): `meter:1,controller:128`.
- Pass: reg2 (egress) or reg3 (ingress) = 1, so the packet takes a hook only
  once; ct_clear, so the service flows behind see the packet as they do without
  policy (the reply hook looks for untracked packets); resubmit to ROUTE or
  LOCAL. Pass new commits the connection first.

Only new connections are judged: a connection once allowed stays established
in POLICY_ZONE whatever policy changes later, until it ends (conntrack's own
timeouts); a policy change only judges the connections opened after it. A
connection opened before its pod's switch had any policy flow is not in the
zone: its packets are judged one by one, as if each opened it.
IPv6 (a dual-stack pod's second address) is judged as IPv4, in the same tables
and conntrack zone: every flow above has its IPv6 twin (`flows.family`'s fields)
where a pod has an IPv6 address, a selector's peers are its pods' addresses of
both families, an ipBlock is of its cidr's family, and one conjunction holds a
rule's clauses of both (a packet matches the clauses of its own family only).
An IPv4-only cluster gets no IPv6 flow.
Named ports resolve per destination pod: the pods (ingress) or peers (egress)
that resolve a rule's names alike share one conjunction. An ipBlock's except
is subtracted from its cidr (the rest as disjoint networks).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from operator import is_
from typing import NamedTuple

from flows.family import V4, Family, family
from flows.flow import (
    CT_EST,
    CT_REL,
    CT_TRK,
    Action,
    Flow,
    FlowKey,
    Masked,
    Owner,
    Table,
    Value,
    conjunction,
    controller,
    cookie_for,
    ct,
    ct_clear,
    ct_state,
    flow,
    meter,
    resubmit,
    set_field,
)
from flows.policy_eval import Evaluator, Pod, pod
from flows.ports import GATEWAY_OFPORT
from leases.model import Endpoint
from leases.policy import EGRESS, INGRESS, IPBlock, Namespace, NetworkPolicy, PolicyPort, Rule

POLICY_ZONE = 7680  # conntrack zone of the policy stage (services use 7678 and 7679)
PRIO_HOOK_EGRESS = 150
PRIO_HOOK_INGRESS = 210
PRIO_STATE = 300
PRIO_ALWAYS = 250
PRIO_RULE_ID = 190
PRIO_RULE_DIRECT = 180
PRIO_CLAUSE = 100
PRIO_DROP = 10
PRIO_MISS = 0

POLICY_COOKIE = cookie_for(Owner.POLICY, 0)
# The hooks load a digest of what their isolation group's packets can meet in the stage
# (NodeStage) into this register before conntrack recirculates the packet: a register is part
# of the state a recirculation resumes from, so a group whose verdicts may have changed
# resumes under a new recirculation id, and no datapath flow cached for the old one (Open
# vSwitch's userspace datapath was seen to keep such a flow, stale, across table changes)
# is ever hit again. (Registers: reg5, the group, is part of that state too.)
GENERATION = "reg4"
ISOLATION = "reg5"  # the hooked pod's isolation group, for the pods' clauses and the drop
IP_PROTO = {"TCP": 6, "UDP": 17}
DROP_LOG_METER = 1  # the meter a logged drop passes before its packet-in
DROP_LOG_BYTES = 128  # of a logged drop's packet sent: its Ethernet, IP and L4 headers
DROP_LOG_RATE = 100  # the meter's packets/s by default (`--log-policy-drops` without RATE)
DROP_LOG_MAX_RATE = 1_000_000  # the most it may be: far past any log, well within 32 bits
LOGGED_DROP = (meter(DROP_LOG_METER), controller(DROP_LOG_BYTES))


def unlogged(flows: Iterable[Flow]) -> list[Flow]:
    """`flows` with each logged drop a plain drop: for a switch that refused the meter, which
    would refuse the logged drops too (a packet-in per drop without it would load the
    switch's channel to the controller, which the controller's guard cannot bound)."""
    return [replace(f, actions=()) if f.actions == LOGGED_DROP else f for f in flows]


@dataclass(frozen=True)
class Stage:
    """One direction of the policy stage: its table, hook and what passing it does."""

    direction: str  # INGRESS or EGRESS
    table: Table  # where its rules are
    hook_table: Table  # where its hook diverts packets from
    hook_priority: int
    done: str  # the register that says the packet has passed this stage
    pod_field: str  # the field naming the guarded pod (the source of egress)
    peer_field: str  # the field naming the other end

    def fields(self, fam: Family) -> tuple[str, str]:
        """`pod_field` and `peer_field` in `fam`'s names."""
        names = {"ip_src": fam.src, "ip_dst": fam.dst}
        return names[self.pod_field], names[self.peer_field]

    def passing(self, new: bool) -> tuple[Action, ...]:
        commit = (ct(POLICY_ZONE, None, commit=True),) if new else ()
        return (*commit, set_field(self.done, 1), ct_clear(), resubmit(self.hook_table))


EGRESS_STAGE = Stage(EGRESS, Table.POL_EGRESS, Table.ROUTE, PRIO_HOOK_EGRESS, "reg2",
                     "ip_src", "ip_dst")  # fmt: skip
INGRESS_STAGE = Stage(INGRESS, Table.POL_INGRESS, Table.LOCAL, PRIO_HOOK_INGRESS, "reg3",
                      "ip_dst", "ip_src")  # fmt: skip
STAGES = (EGRESS_STAGE, INGRESS_STAGE)


class RuleRef(NamedTuple):
    """What a conj_id stands for: `vxflow trace` and the metrics name rules by it. (A
    tuple: the key of each rule's shared peers, looked up per rule per node per change.)"""

    policy: str  # namespace/name
    direction: str  # INGRESS or EGRESS
    index: int  # the rule's place in the policy's ingress or egress list

    def text(self) -> str:
        return f"{self.direction.lower()} rule {self.index} of policy {self.policy}"


@dataclass(frozen=True)
class Isolation:
    """A guarded pod's isolation in one direction: who it is, which policies isolate it."""

    pod: str  # namespace/name
    policies: tuple[str, ...]  # namespace/name of each policy isolating it, sorted


@dataclass
class PolicyTable:
    """The policy flows of one switch, and what their cookies stand for."""

    flows: list[Flow] = field(default_factory=list)
    rules: dict[int, RuleRef] = field(default_factory=dict)  # conj_id -> rule
    isolated: dict[tuple[str, IPv4Address], Isolation] = field(default_factory=dict)
    # (direction, pod IP) -> its isolation group: the key of its default drop's cookie
    groups: dict[tuple[str, IPv4Address], IPv4Address] = field(default_factory=dict)


def endpoint_pod(endpoint: Endpoint) -> Pod | None:
    """The endpoint as a party of policy: None when it names no pod (an address only)."""
    ident = endpoint.pod
    if ident is None:
        return None
    return pod(ident.namespace, ident.name, endpoint.ip, ident.label_map, ident.ports,
               endpoint.ipv6)  # fmt: skip


def drop_cookie(ip: IPv4Address) -> int:
    """The default drop's cookie: of an isolation group by its address, or (IPv6) of a pod."""
    return cookie_for(Owner.POLICY_DROP, int(ip))


def port_ranges(low: int, high: int) -> list[tuple[int, int]]:
    """[low, high] as the fewest (value, mask) pairs of a 16-bit field."""
    out = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def _port_matches(port: PolicyPort, number: int | None = None) -> list[dict[str, Value]]:
    """The matches of one rule port (`number`: a named port's resolution)."""
    proto = {"ip_proto": IP_PROTO[port.protocol]}
    dst = f"{port.protocol.lower()}_dst"
    if number is not None:
        return [{**proto, dst: number}]
    if port.port is None:
        return [proto]
    if port.end_port is None:
        return [{**proto, dst: port.port}]
    return [{**proto, dst: v if m == 0xFFFF else Masked(v, m)}
            for v, m in port_ranges(port.port, port.end_port)]  # fmt: skip


def block_networks(block: IPBlock) -> list[IPv4Network | IPv6Network]:
    """The block's cidr less its excepts, as disjoint networks."""
    nets = [block.cidr]
    for cut in block.excepted:
        kept = []
        for net in nets:
            if cut.subnet_of(net):
                kept += net.address_exclude(cut)
            elif not net.subnet_of(cut):
                kept.append(net)
        nets = kept
    return sorted(nets)


def _address(net: IPv4Network | IPv6Network) -> Value:
    """The canonical match value: an exact address for a /32 (/128)."""
    return net.network_address if net.prefixlen == net.max_prefixlen else net


def _addresses(p: Pod) -> list[tuple[Family, IPv4Address | IPv6Address]]:
    """A pod's addresses with their families (IPv6's if it has one)."""
    return [(family(ip), ip) for ip in (p.ip, p.ipv6) if ip is not None]


def _families(pods: Iterable[Pod]) -> list[Family]:
    """The families of `pods`' addresses, IPv4's first."""
    return sorted({fam for p in pods for fam, _ in _addresses(p)}, key=lambda f: f.version)


def _resolve(named: Sequence[PolicyPort], target: Pod) -> tuple[tuple[PolicyPort, int], ...]:
    """The named rule ports `target` publishes, each with its number."""
    return tuple((p, cp.port) for p in named for cp in target.ports
                 if cp.name == p.port and cp.protocol == p.protocol)  # fmt: skip


def _by_ports(group: tuple[tuple[tuple[PolicyPort, int], ...], list]) -> tuple:
    """A named-port group's place, from its resolution alone: its conj_id (the group's
    number) does not depend on the order the pods were listed in."""
    return tuple((p.protocol, str(p.port), n) for p, n in group[0])


def _entries(table: Table, matches: Iterable[dict[str, Value]]) -> list[FlowKey]:
    """The keys of the clause flows of `matches`."""
    return [(int(table), PRIO_CLAUSE, tuple(sorted(m.items()))) for m in matches]


def _ordered(values: Iterable[Value]) -> list[Value]:
    """Addresses and networks in one order whatever they came in (IPv4's first)."""
    return sorted(values, key=lambda v: (v.version, int(v.network_address if isinstance(
        v, IPv4Network | IPv6Network) else v), str(v)))  # fmt: skip


@dataclass
class Peers:
    """A rule's peers as addresses (None: every address). A rule's resolved peers are the
    same on every switch, and so is their clause: built once per families and shared."""

    values: list[Value] | None  # in `_ordered`'s order
    # by the families of the pods: the clause's flows' keys and a digest of them
    clauses: dict[tuple[Family, ...], tuple[list[FlowKey], int]] = field(default_factory=dict)
    # an egress rule's named ports: the destinations' addresses by the numbers they resolve
    # to, with the matches of those numbers (resolved once, as the peers)
    targets: list[tuple[Peers, list[dict[str, Value]]]] | None = None

    def clause(self, stage: Stage, families: list[Family]) -> tuple[list[FlowKey], int]:
        """The clause of these peers for pods of `families` (values of other families drop),
        and its digest."""
        key = tuple(families)
        found = self.clauses.get(key)
        if found is None:
            assert self.values is not None
            keys = _entries(stage.table, ({"eth_type": fam.eth_type, stage.fields(fam)[1]: v}
                                          for v in self.values if (fam := family(v)) in families))  # fmt: skip
            found = self.clauses[key] = keys, zlib.crc32(repr(keys).encode())
        return found


Conj = tuple[list, Peers, list[dict[str, Value]] | None]  # (its pods and their groups, ...)


@dataclass(frozen=True, eq=False)
class _Part:
    """One conjunction of a rule on one node (or a one-clause rule's flows): what it adds to
    the stage, kept until what the rule is compiled from changes."""

    conj_id: int
    base: int  # the conj_id its name gives: it is another only after a clash
    ref: RuleRef
    entries: tuple[tuple[FlowKey, tuple[int, int], Action], ...]  # clause flow, (conj_id, k)
    flows: tuple[Flow, ...]  # its conj_id flows, or a one-clause rule's direct flows
    groups: frozenset[int]  # the isolation groups whose pods it matches (by number)
    digest: int  # of what it is, for those groups' digests


@dataclass(eq=False)
class _Compiled:
    """A rule's parts on a node and what they were compiled from: the policy and its shared
    peers by identity (the model keeps both until they change), the pods and their groups
    (`_Group`)."""

    ref: RuleRef
    policy: NetworkPolicy
    peers: Peers
    selected: Selected  # (its groups compared by identity too: kept while their pods are)
    parts: tuple[_Part, ...]
    made: tuple  # what the parts take from `selected` (`_made`), for when its groups are new
    moved: bool = field(init=False)  # whether a clash gave a part another conj_id than its name's

    def __post_init__(self) -> None:
        self.moved = any(p.conj_id != p.base for p in self.parts)


Rules = dict[tuple[str, str], list[_Compiled]]  # each policy's rules, by (direction, name)


def _parts(rules: Rules) -> Iterator[_Part]:
    return (p for compiled in rules.values() for c in compiled for p in c.parts)


def _kept_whole(held: list[_Compiled], selected: Selected, peers: dict[RuleRef, Peers]) -> bool:
    """Whether each rule of a policy held is kept as it is: its pods `selected` and its
    shared `peers` as before, and no clash moved a conj_id."""
    for c in held:
        if (c.selected is not selected and c.selected != selected) or c.moved or (
                peers.get(c.ref) is not c.peers):  # fmt: skip
            return False
    return True


def _made(selected: Selected) -> tuple:
    """What a rule's parts take from its pods and their groups: the pods, and each one's
    group's number, size and families."""
    return tuple((p, g.num, len(g.pods), g.families) for p, g in selected)


class NodeStage:
    """One switch's policy stage, kept between updates: each rule's flows are compiled again
    only when what they are made of changed, and `update` returns the keys of the flows that
    differ, so a caller sends (and compares) those alone. A fresh NodeStage's first update
    is the compile from scratch: kept and fresh stages are one code path.

    Each isolation group's hooks load a digest (GENERATION) of what a packet of the group
    can meet in the stage: the plumbing, its default drop (egress: its pods' packets to
    themselves), the rules that match its pods. A change resumes that group's
    recirculations under a new id and leaves every other group's hooks as they are."""

    def __init__(self) -> None:
        self.flows: dict[FlowKey, Flow] = {}
        self._context: tuple | None = None
        self._rules: Rules = {}
        self._ids: set[int] = set()  # the conj_ids of the parts of `_rules` (no clash: once each)
        # the digests of the parts of `_rules` matching each isolation group's pods, by
        # (direction, group number): what the group's block is made from (`_Run.blocks`)
        self._digests: dict[tuple[str, int], dict[_Part, int]] = defaultdict(dict)
        self._base: dict[FlowKey, Flow] = {}  # the flows besides the rules', of `_blocks`
        self._blocks: dict[tuple, _Block] = {}  # the plumbing's, and each group's
        self._isolating: dict[int, tuple] = {}  # each local pod's, as last found (by id)
        self._clauses: dict[FlowKey, dict[tuple[int, int], Action]] = {}  # shared clause flows
        self._held: dict[FlowKey, dict[int, Flow]] = {}  # rule flows by key, by conj_id
        self._groups: dict[tuple[str, frozenset[str]], _Group] = {}  # as last found
        self._table: PolicyTable | None = None

    def table(self) -> PolicyTable:
        """The stage as a PolicyTable (built once per update, when asked)."""
        if self._table is None:
            self._table = PolicyTable(
                list(self.flows.values()),
                {p.conj_id: p.ref for p in _parts(self._rules)},
                {(g.direction, p.ip): Isolation(f"{p.namespace}/{p.name}", tuple(sorted(g.names)))
                 for g in self._groups.values() for p in g.pods},
                {(g.direction, p.ip): g.key for g in self._groups.values() for p in g.pods})  # fmt: skip
        return self._table

    def clear(self) -> set[FlowKey]:
        """Forget everything (no policy isolates a pod of the node any more); returns the
        keys of the flows that went."""
        gone = set(self.flows)
        self.__init__()  # type: ignore[misc]
        return gone

    def update(self, policies: Sequence[NetworkPolicy], namespaces: Iterable[Namespace],
               pods: Sequence[Pod], local: Sequence[Pod], subnet: IPv4Network,
               subnet6: IPv6Network | None = None, peers: dict[RuleRef, Peers] | None = None,
               host: Sequence[IPv4Address | IPv6Address] = (),
               log_drops: bool = False, evaluator: Evaluator | None = None) -> set[FlowKey]:  # fmt: skip
        """Bring the stage to what these inputs make (see `policy_table`; the pods as parties
        of policy, `endpoint_pod`; `policies` may leave out any that selects none of `local`:
        they add nothing); returns the keys of the flows added, changed or removed.
        `evaluator`: an Evaluator of `namespaces` and of `policies` or more (every policy of
        the cluster, say: the others select no local pod), shared by the callers that update
        every stage from the same inputs (else one of `policies` is made here, each update)."""
        stale: set[FlowKey] = set()  # the keys of a stage of another context (either kind)
        context = (subnet, subnet6, tuple(host), log_drops)
        if context != self._context:  # (another node's stage, in effect: from scratch)
            stale = set(self.flows)
            old = self.flows
            self.__init__()  # type: ignore[misc]
            self.flows, self._context = old, context
        self._table = None
        run = _Run(policies, evaluator or Evaluator(policies, namespaces), pods,
                   {} if peers is None else peers, LOGGED_DROP if log_drops else ())  # fmt: skip
        chosen = run.isolate(local, self._isolating, self._groups)
        rules, fresh = self._compile(run, chosen, reuse=True) if run.groups else ({}, [])
        gone, new = self._changes(rules, fresh)
        if self._clash(gone, new):  # conj_ids given in order instead
            rules, fresh = self._compile(run, chosen, reuse=False)
            gone, new = self._changes(rules, fresh)
        # the keys whose flow may differ: the rules' and the blocks' (their priorities differ,
        # so a key is of one kind only: each looked up where it can be)
        touched = ((self._swap_rules(rules, gone, new), self._rule_flow),
                   (self._swap_blocks(run.blocks(context, self._digests, self._blocks)
                                      if run.groups else {}), self._base.get),
                   (stale, lambda key: self._base.get(key) or self._rule_flow(key)))  # fmt: skip
        changed = set()
        for keys, find in touched:
            for key in keys:
                flow = find(key)
                if flow != self.flows.get(key):
                    changed.add(key)
                    if flow is None:
                        del self.flows[key]
                    else:
                        self.flows[key] = flow
        self._groups = run.groups
        return changed

    def _swap_blocks(self, blocks: dict[tuple, _Block]) -> set[FlowKey]:
        """Take `blocks` in place of those held; returns the keys of the flows of the blocks
        that changed (every block's flows leave before any enters: a pod's hook moves from
        one group's block to another's)."""
        old, self._blocks = self._blocks, blocks
        changed = [(old.get(k), blocks.get(k)) for k in old.keys() | blocks.keys()
                   if old.get(k) is not blocks.get(k)]  # fmt: skip
        touched: set[FlowKey] = set()
        for before, _ in changed:
            if before is not None:
                for key in before.flows:
                    del self._base[key]
                touched |= before.flows.keys()
        for _, after in changed:
            if after is not None:
                self._base.update(after.flows)
                touched |= after.flows.keys()
        return touched

    def _compile(self, run: _Run, chosen: dict[tuple[str, str], Selected],
                 reuse: bool) -> tuple[Rules, list[tuple[str, str]]]:  # fmt: skip
        """Every rule's parts, those of a rule whose inputs are as before kept (`reuse`);
        without `reuse`, each conj_id is the first free one from its name on, in order.
        Also returns the keys of the policies whose list is not the one held (a policy's
        list is kept whole when each of its rules is)."""
        out: Rules = {}
        fresh: list[tuple[str, str]] = []
        taken: set[int] = set()
        directions = {direction for direction, _ in run.groups}
        for stage in STAGES:
            if stage.direction not in directions:
                continue  # (no pod isolated that way: no policy selects one for it)
            for policy in run.policies:
                key = (stage.direction, policy.key_name)
                selected = chosen.get(key)
                if not selected:
                    continue
                rules = policy.ingress if stage is INGRESS_STAGE else policy.egress
                held = self._rules.get(key) if reuse else None
                if held and (held[0].policy is not policy or len(held) != len(rules)):
                    held = None
                elif held and _kept_whole(held, selected, run.peer_cache):
                    out[key] = held  # (the common case, checked at once)
                    continue
                compiled: list[_Compiled] = []
                for index, rule in enumerate(rules):
                    was = held[index] if held else None
                    ref = was.ref if was is not None else RuleRef(policy.key_name,
                                                                  stage.direction, index)  # fmt: skip
                    peers = run.peer_cache.get(ref)
                    if peers is None:
                        peers = run.peers(ref, rule, policy.namespace)
                    made = None
                    if was is not None and was.peers is peers and not was.moved:
                        if was.selected == selected:
                            compiled.append(was)
                            continue
                        made = _made(selected)
                        if was.made == made:  # new groups, alike: its parts stay
                            compiled.append(_Compiled(ref, policy, peers, selected, was.parts,
                                                      made))  # fmt: skip
                            continue
                    parts = []
                    for group, conj in enumerate(run.conjunctions(policy, ref, rule, stage,
                                                                  selected)):  # fmt: skip
                        part = run.part(stage, ref, group, conj, None if reuse else taken)
                        if part is not None:
                            parts.append(part)
                            taken.add(part.conj_id)
                    compiled.append(_Compiled(ref, policy, peers, selected, tuple(parts),
                                              _made(selected) if made is None else made))  # fmt: skip
                if held and all(map(is_, compiled, held)):
                    out[key] = held
                else:
                    out[key] = compiled
                    fresh.append(key)
        return out, fresh

    def _changes(self, rules: Rules,
                 fresh: list[tuple[str, str]]) -> tuple[list[_Part], list[_Part]]:  # fmt: skip
        """The parts held that `rules` leaves out, and those of `rules` not held: compared
        for the policies whose list is `fresh` (`_compile`) or gone only."""
        gone: list[_Part] = []
        new: list[_Part] = []
        held = self._rules
        for key in [*fresh, *(held.keys() - rules.keys())]:
            before, after = held.get(key), rules.get(key)
            old = {p for c in before or () for p in c.parts}
            now = {p for c in after or () for p in c.parts}
            gone += [p for p in old if p not in now]
            new += [p for p in now if p not in old]
        return gone, new

    def _clash(self, gone: list[_Part], new: list[_Part]) -> bool:
        """Whether the parts held, less `gone`, plus `new` give a conj_id twice, or 0 (the
        parts held give none twice: a clash is only ever among or with new ones)."""
        count: dict[int, int] = {}
        for p in new:
            count[p.conj_id] = count.get(p.conj_id, 0) + 1
        for p in gone:
            if p.conj_id in count:
                count[p.conj_id] -= 1
        return any(conj_id == 0 or n + (conj_id in self._ids) > 1 for conj_id, n in count.items())

    def _swap_rules(self, rules: Rules, gone: list[_Part], new: list[_Part]) -> set[FlowKey]:
        """Take `rules` in place of the rules held (`_changes`: the parts `gone` and `new`):
        the parts that went leave their clause and rule flows and their groups' digests, the
        new ones join theirs (every part leaves before any joins: a conj_id given again is
        another part's); returns the keys of the flows touched."""
        touched: set[FlowKey] = set()
        for leaving, part in [(True, p) for p in gone] + [(False, p) for p in new]:
            (self._ids.discard if leaving else self._ids.add)(part.conj_id)
            for num in part.groups:
                group = (part.ref.direction, num)
                if not leaving:
                    self._digests[group][part] = part.digest
                elif len(self._digests[group]) > 1:
                    del self._digests[group][part]
                else:
                    del self._digests[group]
            for key, slot, action in part.entries:
                actions = self._clauses.setdefault(key, {})
                if leaving:
                    del actions[slot]
                else:
                    actions[slot] = action
                touched.add(key)
            for f in part.flows:
                held = self._held.setdefault(f.key, {})
                if leaving:
                    del held[part.conj_id]
                else:
                    held[part.conj_id] = f
                touched.add(f.key)
        self._rules = rules
        return touched

    def _rule_flow(self, key: FlowKey) -> Flow | None:
        """The rules' flow of `key`: a clause flow with the conjunctions of every part that
        has it (ordered by conj_id and clause), or the flow of the part of the lowest conj_id
        (one-clause rules of the same pods share a flow)."""
        actions = self._clauses.get(key)
        if actions:
            return Flow(key[0], key[1], key[2], tuple(map(actions.__getitem__, sorted(actions))),
                        POLICY_COOKIE)  # fmt: skip
        self._clauses.pop(key, None)
        held = self._held.get(key)
        if held:
            return held[min(held)]
        self._held.pop(key, None)
        return None


class _Group:
    """An isolation group: the node's pods that the same policies isolate in one direction.
    Kept from update to update while its pods are the same objects, so that what depends
    on it is compared by identity."""

    __slots__ = ("chooses", "direction", "families", "key", "made", "names", "num", "pairs", "pods")

    def __init__(self, direction: str, pods: list[Pod], names: frozenset[str]) -> None:
        self.direction = direction
        self.key = min(p.ip for p in pods)  # its default drop's cookie, ISOLATION's value
        self.num = int(self.key)
        self.pods = pods
        self.names = names  # namespace/name of the policies isolating it
        self.families = tuple(_families(pods))
        self.pairs = [(p, self) for p in pods]  # (read only: a policy's Selected may be it)
        self.chooses = [(direction, name) for name in names]  # the keys of `isolate`'s result
        self.made = sorted((int(p.ip), int(p.ipv6 or 0)) for p in pods)  # for its digest


Selected = list[tuple[Pod, _Group]]  # the pods a policy isolates, each with its group


class _Run:
    """What one update of a stage works from: the policies, the cluster's pods, the
    node's isolation groups."""

    def __init__(self, policies: Sequence[NetworkPolicy], evaluator: Evaluator,
                 pods: Sequence[Pod], peers: dict[RuleRef, Peers],
                 drop: tuple[Action, ...]) -> None:  # fmt: skip
        self.policies = policies  # those that may select a local pod, in their order
        self.evaluator = evaluator  # (which pods they select, and peers)
        self.pods = pods
        self.peer_cache = peers
        self.drop = drop  # the default drops' actions
        self.groups: dict[tuple[str, frozenset[str]], _Group] = {}

    def isolate(self, local: Sequence[Pod], held: dict[IPv4Address, tuple],
                groups: dict[tuple[str, frozenset[str]], _Group]) -> dict[tuple[str, str], Selected]:  # fmt: skip
        """Group the isolated pods of `local`; returns the pods each policy isolates, by
        (direction, policy). `held`: each pod's isolation as found before, with the pod and
        its namespace's policies it was found from, by the pod's id (the pod it holds keeps
        that id its own); `groups`: the groups before (each kept again if its pods are)."""
        alike: dict[tuple[str, frozenset[str]], list[Pod]] = defaultdict(list)
        found = {}
        by_namespace = self.evaluator.by_namespace()
        for p in local:
            mine = by_namespace.get(p.namespace, ())
            was = held.get(id(p))
            if was is None or was[1] != mine:  # its isolations: (direction, policies) if any
                was = (p, mine, [(d, frozenset(x.key_name for x in policies))
                                 for d, policies in self.evaluator.isolating(p).items() if policies])  # fmt: skip
            found[id(p)] = was
            for isolation in was[2]:
                alike[isolation].append(p)
        held.clear()
        held.update(found)
        # (a policy isolating one group's pods takes the group's own list, kept with the group)
        chosen: dict[tuple[str, str], Selected] = {}
        for (direction, names), pods in alike.items():
            group = groups.get((direction, names))
            if group is None or group.pods != pods:
                group = _Group(direction, pods, names)
            self.groups[direction, names] = group
            for key in group.chooses:
                found = chosen.get(key)
                chosen[key] = group.pairs if found is None else found + group.pairs
        return chosen

    def peers(self, ref: RuleRef, rule: Rule, namespace: str) -> Peers:
        """The addresses a rule's peers stand for. The same on every switch: looked up in
        the cache the caller shares between them."""
        found = self.peer_cache.get(ref)
        if found is None:
            found = self.peer_cache[ref] = Peers(self._peers(rule, namespace))
        return found

    def _peers(self, rule: Rule, namespace: str) -> list[Value] | None:
        if not rule.peers:
            return None
        out: set[Value] = set()
        for peer in rule.peers:
            if peer.ip_block is not None:
                out.update(_address(n) for n in block_networks(peer.ip_block))
            else:
                out.update(ip for p in self.evaluator.peer_pods(peer, namespace, self.pods)
                           for _, ip in _addresses(p))  # fmt: skip
        return _ordered(out)

    def conjunctions(self, policy: NetworkPolicy, ref: RuleRef, rule: Rule, stage: Stage,
                     selected: Selected) -> list[Conj]:  # fmt: skip
        """The rule as conjunctions of (its pods, peers, ports): more than one when it has
        named ports, which resolve per destination pod."""
        numeric = [p for p in rule.ports if not isinstance(p.port, str)]
        named = [p for p in rule.ports if isinstance(p.port, str)]
        ports = [m for p in numeric for m in _port_matches(p)]
        peers = self.peers(ref, rule, policy.namespace)
        if not rule.ports:
            return [(selected, peers, None)]
        out: list[Conj] = [(selected, peers, ports)] if numeric else []
        if not named:
            return out
        if stage is INGRESS_STAGE:  # the destination is the selected pod
            groups: dict[tuple, Selected] = defaultdict(list)
            for target in selected:
                groups[_resolve(named, target[0])].append(target)
            out += [(pods, peers, [m for p, n in key for m in _port_matches(p, n)])
                    for key, pods in sorted(groups.items(), key=_by_ports) if key]  # fmt: skip
            return out
        if peers.targets is None:  # egress: the peer is the destination (shared, as peers)
            targets: dict[tuple, list[Value]] = defaultdict(list)
            for target in self.pods:
                if not rule.peers or any(self.evaluator.peer_matches(peer, policy.namespace,
                                                                     target)
                                         for peer in rule.peers):  # fmt: skip
                    targets[_resolve(named, target)] += [ip for _, ip in _addresses(target)]
            peers.targets = [(Peers(_ordered(ips)), [m for p, n in key for m in _port_matches(p, n)])
                             for key, ips in sorted(targets.items(), key=_by_ports) if key]  # fmt: skip
        return out + [(selected, to, matches) for to, matches in peers.targets]

    @staticmethod
    def pods_clause(stage: Stage, selected: Selected) -> tuple[list[dict[str, Value]],
                                                               set[int]]:  # fmt: skip
        """The matches of `selected`: each isolation group they hold whole by its register
        (once per family its pods have), any other pod by its addresses; and the groups
        (by number) of the pods they match."""
        count: dict[int, list] = {}  # id -> [group, its pods selected]
        for _, g in selected:
            held = count.get(id(g))
            if held is None:
                count[id(g)] = [g, 1]
            else:
                held[1] += 1
        whole = sorted((g for g, n in count.values() if n == len(g.pods)), key=lambda g: g.num)
        full = {id(g) for g in whole}
        rest = sorted((p for p, g in selected if id(g) not in full), key=lambda p: int(p.ip))
        return ([{"eth_type": fam.eth_type, ISOLATION: g.num} for g in whole for fam in g.families]
                + [{"eth_type": fam.eth_type, stage.fields(fam)[0]: ip}
                   for p in rest for fam, ip in _addresses(p)],
                {g.num for g, _ in count.values()})  # fmt: skip

    def part(self, stage: Stage, ref: RuleRef, group: int, conj: Conj,
             taken: set[int] | None) -> _Part | None:  # fmt: skip
        """One conjunction's flows; None when a peer or port resolves to nothing (the rule
        allows nothing here). `taken`: the conj_ids given so far, when a clash is resolved."""
        selected, peers, ports = conj
        pods, groups = self.pods_clause(stage, selected)
        families = _families(p for p, _ in selected)
        clauses: list = [pods]
        made: list = []  # what the part's clauses are, for its digest (the peers' digested)
        if peers.values is not None:
            keys, digest = peers.clause(stage, families)
            clauses.append(keys)
            made.append(digest)
        if ports is not None:  # (a port listed twice, or named and numbered alike: once)
            unique = {tuple(sorted(m.items())): m for m in ports}
            clauses.append(_entries(stage.table, ({"eth_type": fam.eth_type, **m}
                                                  for fam in families for m in unique.values())))
            made.append(sorted(map(repr, clauses[-1])))
        if any(not c for c in clauses):
            return None
        base = zlib.crc32(f"{ref.direction}/{ref.policy}/{ref.index}/{group}".encode())
        conj_id = base
        while taken is not None and (conj_id in taken or conj_id == 0):
            conj_id = (conj_id + 1) & 0xFFFFFFFF
        cookie = cookie_for(Owner.POLICY, conj_id)
        entries: list[tuple[FlowKey, tuple[int, int], Action]] = []
        if len(clauses) == 1:
            flows = tuple(flow(stage.table, PRIO_RULE_DIRECT, m, stage.passing(True), cookie)
                          for m in pods)  # fmt: skip
        else:
            clauses[0] = _entries(stage.table, pods)
            for k, clause in enumerate(clauses, 1):
                action = conjunction(conj_id, k, len(clauses))
                entries += [(key, (conj_id, k), action) for key in clause]
            flows = tuple(flow(stage.table, PRIO_RULE_ID, {"eth_type": fam.eth_type,
                                                           "conj_id": conj_id},
                               stage.passing(True), cookie)  # (ct needs an IP match)
                          for fam in families)  # fmt: skip
        digest = zlib.crc32(repr((int(stage.table), conj_id, len(clauses),
                                  sorted(map(repr, pods)), made, flows)).encode())  # fmt: skip
        return _Part(conj_id, base, ref, tuple(entries), flows, frozenset(groups), digest)

    def blocks(self, context: tuple, digests: dict[tuple[str, int], dict[_Part, int]],
               held: dict[tuple, _Block]) -> dict[tuple, _Block]:  # fmt: skip
        """The stage's flows besides its rules', in blocks: each stage's plumbing, and each
        isolation group's default drop, hooks (loading its digest) and, egress, its pods'
        packets to themselves. `digests`: those of the rules' parts matching each group's
        pods (NodeStage._digests). A block made from what `held`'s was is `held`'s."""
        out: dict[tuple, _Block] = {}
        subnet, subnet6, host, _ = context
        for stage in STAGES:
            block = held.get((stage.direction,))
            if block is None:  # (made once per context: a new context makes a new stage)
                plumbing = [f for net in (subnet, subnet6) if net
                            for f in _stage_plumbing(stage, net, host)]  # fmt: skip
                block = _Block(zlib.crc32(repr((plumbing, self.drop)).encode()),
                               {f.key: f for f in plumbing})  # fmt: skip
            out[stage.direction,] = block
            for g in self.groups.values():
                if g.direction == stage.direction:
                    made = (block.made, g.made, sorted(digests.get((g.direction, g.num), {}).values()))
                    out[g.direction, g.num] = _kept(held, (g.direction, g.num), made,
                                                    lambda s=stage, g=g, m=made:
                                                    self._group_flows(s, g, m))  # fmt: skip
        return out

    def _group_flows(self, stage: Stage, group: _Group, made: tuple) -> list[Flow]:
        """An isolation group's block (see `blocks`): its digest is of `made` (the stage's
        plumbing and drops, its pods, the rules matching them) and of its own flows."""
        own = [flow(stage.table, PRIO_DROP, {"eth_type": fam.eth_type, ISOLATION: group.num},
                    self.drop, drop_cookie(group.key))
               for fam in group.families]  # fmt: skip
        hooks = []
        for p in group.pods:
            for fam, ip in _addresses(p):
                match = {"eth_type": fam.eth_type, stage.fields(fam)[0]: ip}
                hooks.append({**match, stage.done: 0})
                if stage is EGRESS_STAGE:  # (into a pod, the hairpin flow goes first)
                    own.append(flow(stage.table, PRIO_ALWAYS, {**match, fam.dst: ip},
                                    stage.passing(True), POLICY_COOKIE))  # fmt: skip
        generation = zlib.crc32(repr((made, sorted(map(repr, own)))).encode())
        return own + [flow(stage.hook_table, stage.hook_priority, match,
                           [set_field(GENERATION, generation), set_field(ISOLATION, group.num),
                            ct(POLICY_ZONE, stage.table)], POLICY_COOKIE)
                      for match in hooks]  # fmt: skip


@dataclass(frozen=True, eq=False)
class _Block:
    """Flows of the stage besides its rules' that change together, and what they were made
    from (by value; a stage's plumbing: a digest of its flows and drops, which the groups'
    digests hold)."""

    made: object
    flows: dict[FlowKey, Flow]


def _kept(held: dict[tuple, _Block], key: tuple, made: object,
          make: Callable[[], Iterable[Flow]]) -> _Block:  # fmt: skip
    """`held`'s block of `key` if made from `made`, else a new one."""
    block = held.get(key)
    if block is not None and block.made == made:
        return block
    return _Block(made, {f.key: f for f in make()})


@lru_cache(maxsize=1 << 10)
def _stage_plumbing(stage: Stage, subnet: IPv4Network | IPv6Network,
                    host: tuple[IPv4Address | IPv6Address, ...]) -> tuple[Flow, ...]:  # fmt: skip
    """What a stage holds whatever its pods, for `subnet`'s family: the commit hook of the
    node's subnet, state bypass, the node's own traffic (from its gateway address and the
    `host` addresses of the family, through the gateway port: not what its host forwards,
    such as a direct peer's pods), the miss (IPv4's only)."""
    fam = family(subnet)
    ip = {"eth_type": fam.eth_type}
    own = [subnet.network_address + 1, *(a for a in host if family(a) is fam)]
    flows = [
        flow(stage.table, PRIO_STATE, {**ip, "ct_state": ct_state(bits | CT_TRK)},
             stage.passing(False), POLICY_COOKIE)
        for bits in (CT_EST, CT_REL)
    ]  # fmt: skip
    flows.append(flow(stage.hook_table, stage.hook_priority - 5,
                      {**ip, stage.fields(fam)[0]: subnet, stage.done: 0},
                      stage.passing(True), POLICY_COOKIE))  # fmt: skip
    if stage is INGRESS_STAGE:
        flows += [flow(stage.table, PRIO_ALWAYS, {**ip, "in_port": GATEWAY_OFPORT, fam.src: a},
                       stage.passing(True), POLICY_COOKIE) for a in own]  # fmt: skip
    if fam is V4:
        flows.append(flow(stage.table, PRIO_MISS, {}, (), POLICY_COOKIE))
    return tuple(flows)


def policy_table(
    policies: Sequence[NetworkPolicy],
    namespaces: Iterable[Namespace],
    endpoints: Iterable[Endpoint],
    local: Iterable[Endpoint],
    subnet: IPv4Network,
    ipv6_subnet: IPv6Network | None = None,
    peers: dict[RuleRef, Peers] | None = None,
    host: Sequence[IPv4Address | IPv6Address | None] = (),
    log_drops: bool = False,
) -> PolicyTable:
    """The policy flows of the switch of `subnet` (and `ipv6_subnet`, dual stack) whose
    accepted pods are `local`; `endpoints`: every accepted endpoint of the cluster (the
    peers selectors may name). Empty when no policy isolates any of `local`. `peers`: each
    rule's resolved peers, shared by the callers that compile every switch from the same
    inputs. `host`: the node's addresses besides its gateway addresses (its PublicIP and
    PublicIPv6; None: not there), whose traffic into its pods passes as the node's own.
    `log_drops`: the default drops send what they drop to the controller (module doc)."""
    if not policies:
        return PolicyTable()
    stage = NodeStage()
    stage.update(policies, namespaces, [p for e in endpoints if (p := endpoint_pod(e)) is not None],
                 [p for e in local if (p := endpoint_pod(e)) is not None], subnet, ipv6_subnet,
                 peers, [a for a in host if a is not None], log_drops)  # fmt: skip
    return stage.table()
