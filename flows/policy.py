"""NetworkPolicy in a switch's flows: the policy stage of flows/compiler.py's pipeline (pure).

Antrea's realisation (docs/design/ovs-pipeline.md in antrea-io/antrea), fitted
into vxflow's tables. Only a switch holding a pod that some policy isolates gets
any of these flows: without policy a switch holds, and a packet hits, exactly
what it did before.

- Hooks, per pod isolated in a direction (cookie POLICY, key 0):
  ROUTE (20), priority 150: IPv4 from the pod, reg2 = 0 -> reg4 = the stage's
  digest (GENERATION), reg5 = its isolation group (ISOLATION: the lowest
  address of the node's pods that the same policies isolate in that direction),
  ct(POLICY_ZONE) -> POL_EGRESS. Below the VIP flows (200): a connection to a service is judged
  after DNAT, on the backend's address and TargetPort. Above the routes (100).
  LOCAL (30), priority 210: IPv4 to the pod, reg3 = 0 -> the same digest and its group,
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
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.family import V4, Family, family
from flows.flow import (
    CT_EST,
    CT_REL,
    CT_TRK,
    Action,
    Flow,
    Masked,
    Match,
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
# The hooks load a digest of the stage into this register before conntrack recirculates the
# packet: a register is part of the state a recirculation resumes from, so a changed stage
# resumes under a new recirculation id, and no datapath flow cached for the old one (Open
# vSwitch's userspace datapath was seen to keep such a flow, stale, across table changes)
# is ever hit again.
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


@dataclass(frozen=True)
class RuleRef:
    """What a conj_id stands for: `vxflow trace` and the metrics name rules by it."""

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


Entry = tuple[str, Match]  # a clause flow's key (its table and match as text: hashed once)


def _entries(table: Table, matches: Iterable[dict[str, Value]]) -> list[Entry]:
    """Clause matches in canonical form, each with its key."""
    out = []
    for m in matches:
        match = tuple(sorted(m.items()))
        out.append((f"{int(table)} {match!r}", match))
    return out


@dataclass
class Peers:
    """A rule's peers as addresses (None: every address). A rule's resolved peers are the
    same on every switch, and so is their clause: built once per families and shared."""

    values: list[Value] | None
    clauses: dict[tuple[Family, ...], list[Entry]] = field(default_factory=dict)

    def clause(self, stage: Stage, families: list[Family]) -> list[Entry]:
        """The clause of these peers for pods of `families` (values of other families drop)."""
        key = tuple(families)
        found = self.clauses.get(key)
        if found is None:
            assert self.values is not None
            found = self.clauses[key] = _entries(stage.table, (
                {"eth_type": fam.eth_type, stage.fields(fam)[1]: v}
                for v in self.values if (fam := family(v)) in families))  # fmt: skip
        return found


Conj = tuple[list[Pod], Peers, list[dict[str, Value]] | None]


class _Compiler:
    def __init__(self, policies: Sequence[NetworkPolicy], namespaces: Iterable[Namespace],
                 pods: Sequence[Pod], peers: dict[RuleRef, Peers],
                 log_drops: bool = False) -> None:  # fmt: skip
        self.evaluator = Evaluator(policies, namespaces)
        self.drop = LOGGED_DROP if log_drops else ()  # the default drops' actions
        self.pods = pods
        self.peer_cache = peers
        self.table = PolicyTable()
        # a clause flow's table, match, actions and their text for the digest, by its key
        self.clauses: dict[str, tuple[int, Match, list[Action], list[str]]] = {}
        self.direct: dict[tuple[int, tuple], Flow] = {}
        self.members: dict[str, Counter[IPv4Address]] = {}  # by direction: each group's size
        # (direction, group) -> the families of its pods' addresses
        self.group_families: dict[tuple[str, IPv4Address], list[Family]] = {}

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
                out.update(ip for p in self.pods if self.evaluator.peer_matches(peer, namespace, p)
                           for _, ip in _addresses(p))  # fmt: skip
        return sorted(out, key=lambda v: (v.version, int(v.network_address if isinstance(
            v, IPv4Network | IPv6Network) else v), str(v)))  # fmt: skip

    def conjunctions(self, policy: NetworkPolicy, ref: RuleRef, rule: Rule, stage: Stage,
                     selected: list[Pod]) -> list[Conj]:  # fmt: skip
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
            groups: dict[tuple, list[Pod]] = defaultdict(list)
            for target in selected:
                groups[_resolve(named, target)].append(target)
            out += [(pods, peers, [m for p, n in key for m in _port_matches(p, n)])
                    for key, pods in sorted(groups.items(), key=_by_ports) if key]  # fmt: skip
            return out
        targets: dict[tuple, list[Value]] = defaultdict(list)  # egress: the peer is
        for target in self.pods:
            if not rule.peers or any(self.evaluator.peer_matches(peer, policy.namespace, target)
                                     for peer in rule.peers):  # fmt: skip
                targets[_resolve(named, target)] += [ip for _, ip in _addresses(target)]
        out += [(selected, Peers(ips), [m for p, n in key for m in _port_matches(p, n)])
                for key, ips in sorted(targets.items(), key=_by_ports) if key]  # fmt: skip
        return out

    def pods_clause(self, stage: Stage, selected: list[Pod]) -> list[dict[str, Value]]:
        """The matches of `selected`: each isolation group they hold whole by its register
        (once per family its pods have), any other pod by its addresses."""
        direction, groups = stage.direction, self.table.groups
        members = self.members.get(direction)
        if members is None:  # (asked once the stage's groups are all known)
            members = self.members[direction] = Counter(
                key for (d, _), key in groups.items() if d == direction)
        keyed = [(groups[direction, p.ip], p) for p in selected]
        count: dict[IPv4Address, int] = {}  # (a Counter costs more for a few pods)
        for key, _ in keyed:
            count[key] = count.get(key, 0) + 1
        whole = sorted(key for key, n in count.items() if n == members[key])
        held = set(whole)
        rest = sorted((p for key, p in keyed if key not in held), key=lambda p: p.ip)
        return ([{"eth_type": fam.eth_type, ISOLATION: int(key)}
                 for key in whole for fam in self.group_families[stage.direction, key]]
                + [{"eth_type": fam.eth_type, stage.fields(fam)[0]: ip}
                   for p in rest for fam, ip in _addresses(p)])  # fmt: skip

    def add_rule(self, stage: Stage, ref: RuleRef, group: int, conj: Conj) -> None:
        selected, peers, ports = conj
        pods = self.pods_clause(stage, selected)
        families = _families(selected)
        clauses = [pods]
        if peers.values is not None:
            clauses.append(peers.clause(stage, families))
        if ports is not None:  # (a port listed twice, or named and numbered alike: once)
            unique = {tuple(sorted(m.items())): m for m in ports}
            clauses.append(_entries(stage.table, ({"eth_type": fam.eth_type, **m}
                                                  for fam in families for m in unique.values())))
        if any(not c for c in clauses):
            return  # a peer or port that resolves to nothing: the rule allows nothing here
        conj_id = self._conj_id(ref, group)
        cookie = cookie_for(Owner.POLICY, conj_id)
        self.table.rules[conj_id] = ref
        if len(clauses) == 1:
            for m in pods:
                f = flow(stage.table, PRIO_RULE_DIRECT, m, stage.passing(True), cookie)
                self.direct.setdefault((f.table, f.match), f)
            return
        clauses[0] = _entries(stage.table, pods)
        for k, clause in enumerate(clauses, 1):
            action = conjunction(conj_id, k, len(clauses))
            text = f"{conj_id},{k},{len(clauses)}"  # (the action in the digest)
            for key, match in clause:
                held = self.clauses.get(key)
                if held is None:
                    held = self.clauses[key] = (int(stage.table), match, [], [])
                held[2].append(action)
                held[3].append(text)
        self.table.flows += [
            flow(stage.table, PRIO_RULE_ID, {"eth_type": fam.eth_type, "conj_id": conj_id},
                 stage.passing(True), cookie)  # (ct needs an IP match)
            for fam in families
        ]  # fmt: skip

    def _conj_id(self, ref: RuleRef, group: int) -> int:
        """A conj_id from the rule's name: the same on every switch and replica, and across
        unrelated changes (so they rewrite no flow of this rule); a clash takes the next."""
        conj_id = zlib.crc32(f"{ref.direction}/{ref.policy}/{ref.index}/{group}".encode())
        while conj_id in self.table.rules or conj_id == 0:
            conj_id = (conj_id + 1) & 0xFFFFFFFF
        return conj_id

    def compile(self, local: Sequence[Pod], subnet: IPv4Network,
                subnet6: IPv6Network | None = None,
                host: Sequence[IPv4Address | IPv6Address] = ()) -> PolicyTable:  # fmt: skip
        # (direction, pod IP) -> namespace/name of the policies isolating it; and (direction,
        # policy) -> the pods it isolates, in `local`'s order
        isolating: dict[tuple[str, IPv4Address], set[str]] = {}
        chosen: dict[tuple[str, str], list[Pod]] = defaultdict(list)
        for p in local:
            for direction, policies in self.evaluator.isolating(p).items():
                names = isolating[direction, p.ip] = {x.key_name for x in policies}
                for name in names:
                    chosen[direction, name].append(p)
        guarded = [p for p in local if any(isolating[s.direction, p.ip] for s in STAGES)]
        if not guarded:
            return self.table
        flows = self.table.flows
        hooks: list[tuple[Stage, dict, IPv4Address]] = []
        for stage in STAGES:
            flows += [f for net in (subnet, subnet6) if net
                      for f in _stage_plumbing(stage, net, tuple(host))]  # fmt: skip
            isolated = [p for p in guarded if isolating[stage.direction, p.ip]]
            alike: dict[frozenset[str], list[Pod]] = defaultdict(list)
            for p in isolated:
                alike[frozenset(isolating[stage.direction, p.ip])].append(p)
            for pods in alike.values():
                key = min(p.ip for p in pods)
                self.table.groups.update(((stage.direction, p.ip), key) for p in pods)
                families = self.group_families[stage.direction, key] = _families(pods)
                flows += [flow(stage.table, PRIO_DROP, {"eth_type": fam.eth_type,
                                                        ISOLATION: int(key)},
                               self.drop, drop_cookie(key)) for fam in families]  # fmt: skip
            for p in isolated:
                key = self.table.groups[stage.direction, p.ip]
                for fam, ip in _addresses(p):
                    match = {"eth_type": fam.eth_type, stage.fields(fam)[0]: ip}
                    hooks.append((stage, {**match, stage.done: 0}, key))
                    if stage is EGRESS_STAGE:  # (into a pod, the hairpin flow goes first)
                        flows.append(flow(stage.table, PRIO_ALWAYS, {**match, fam.dst: ip},
                                          stage.passing(True), POLICY_COOKIE))  # fmt: skip
                self.table.isolated[stage.direction, p.ip] = Isolation(
                    f"{p.namespace}/{p.name}",
                    tuple(sorted(isolating[stage.direction, p.ip])),
                )
            self._rules(stage, chosen)
        flows += self.direct.values()
        # the digest, of every flow so far: the others' reprs, and each clause flow (all of
        # the same priority and cookie) as its table, match and conjunctions (its match's repr
        # already made for its key, in part once for every switch)
        lines = [*map(_text, flows)]
        for key, (table, match, actions, texts) in self.clauses.items():
            lines.append(f"{key} " + ";".join(texts))
            flows.append(Flow(table, PRIO_CLAUSE, match, tuple(actions), POLICY_COOKIE))
        generation = zlib.crc32("\n".join(sorted(lines)).encode())
        flows += [flow(stage.hook_table, stage.hook_priority, match,
                       [set_field(GENERATION, generation), set_field(ISOLATION, int(key)),
                        ct(POLICY_ZONE, stage.table)],
                       POLICY_COOKIE) for stage, match, key in hooks]  # fmt: skip
        return self.table

    def _rules(self, stage: Stage, chosen: dict[tuple[str, str], list[Pod]]) -> None:
        for policy in self.evaluator.policies:
            selected = chosen.get((stage.direction, policy.key_name))
            if not selected:
                continue
            rules = policy.ingress if stage is INGRESS_STAGE else policy.egress
            for index, rule in enumerate(rules):
                ref = RuleRef(policy.key_name, stage.direction, index)
                for group, conj in enumerate(self.conjunctions(policy, ref, rule, stage, selected)):
                    self.add_rule(stage, ref, group, conj)


@lru_cache(maxsize=1 << 14)
def _text(f: Flow) -> str:
    """A flow's repr, for the digest: the flows besides the clauses (plumbing, drops, rule
    ids) mostly come back unchanged compile after compile, and hashing one costs a tenth of
    its repr."""
    return repr(f)


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
    pods = [p for e in endpoints if (p := endpoint_pod(e)) is not None]
    own = [p for e in local if (p := endpoint_pod(e)) is not None]
    return stage_table(policies, namespaces, pods, own, subnet, ipv6_subnet, peers, host,
                       log_drops)


def stage_table(
    policies: Sequence[NetworkPolicy],
    namespaces: Iterable[Namespace],
    pods: Sequence[Pod],
    local: Sequence[Pod],
    subnet: IPv4Network,
    ipv6_subnet: IPv6Network | None = None,
    peers: dict[RuleRef, Peers] | None = None,
    host: Sequence[IPv4Address | IPv6Address | None] = (),
    log_drops: bool = False,
) -> PolicyTable:
    """`policy_table` from the pods (the cluster's, `local` the node's) as parties of policy
    (`endpoint_pod`), for a caller that keeps them between compiles. `policies` may leave
    out any that selects none of `local`: they add nothing to the stage."""
    if not policies:
        return PolicyTable()
    return _Compiler(policies, namespaces, pods, {} if peers is None else peers,
                     log_drops).compile(local, subnet, ipv6_subnet,
                                        [a for a in host if a is not None])  # fmt: skip

