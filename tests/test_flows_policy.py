"""The policy flows (flows/policy.py) against Kubernetes' semantics (pure).

The compiled flows of every switch are walked as Open vSwitch's classifier
would walk them (priorities, masks, conjunctive matches and the conj_id
lookup): a new connection passes if the source pod's switch lets it through
its egress stage and the destination pod's switch through its ingress stage.
Checked against the upstream conformance tables (tests/test_flows_policy_eval)
and, on random policies and labels, against the evaluator itself.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

import flows.policy as policy_module
from flows.explain import policy_text
from flows.flow import (
    CT_NEW,
    CT_TRK,
    ETH_TYPE_IP,
    ETH_TYPE_IPV6,
    Flow,
    Masked,
    Owner,
    Table,
    cookie_for,
    owner_of,
)
from flows.policy import (
    EGRESS_STAGE,
    GENERATION,
    INGRESS_STAGE,
    IP_PROTO,
    ISOLATION,
    PRIO_CLAUSE,
    PRIO_DROP,
    PRIO_RULE_ID,
    NodeStage,
    Stage,
    block_networks,
    drop_cookie,
    endpoint_pod,
    policy_table,
    port_ranges,
)
from flows.policy_eval import Evaluator, Pod
from flows.ports import GATEWAY_OFPORT, TUNNEL_OFPORT
from leases.model import Endpoint
from leases.pods import ContainerPort, PodIdentity
from leases.policy import INGRESS, NAME_LABEL, IPBlock, Namespace, NetworkPolicy
from tests.test_flows_policy_eval import (
    ALL,
    CASES,
    IPS,
    PODS,
    Step,
    model,
    namespaces_of,
    netpol,
    report,
)


def endpoint_of(p: Pod, ofport: int) -> Endpoint:
    subnet = IPv4Network(f"{p.ip}/24", strict=False)
    ident = PodIdentity(p.namespace, p.name, p.labels, p.ports)
    return Endpoint(subnet, p.ip, f"0a:58:00:00:00:{ofport:02x}", ofport, f"veth{ofport}", ident,
                    p.ipv6)  # fmt: skip


def six_of(ip: IPv4Address) -> IPv6Address:
    """A dual-stack pod's IPv6 address: 198.19.N.H -> fd00:0:0:N::H (its node's /64)."""
    return IPv6Address(f"fd00:0:0:{ip.packed[2]:x}::{ip.packed[3]:x}")


def subnet6_of(subnet: IPv4Network) -> IPv6Network:
    return IPv6Network(f"{six_of(subnet.network_address)}/64")


def _hit(f: Flow, pkt: dict) -> bool:
    for name, value in f.match:
        have = pkt.get(name)
        if have is None:
            return False
        if isinstance(value, IPv4Network | IPv6Network):
            ok = have in value
        elif isinstance(value, Masked):
            ok = have & value.mask == value.value
        else:
            ok = have == value
        if not ok:
            return False
    return True


class Switch:
    """One switch's flows, looked up as OVS does (conjunctions included)."""

    def __init__(self, flows: list[Flow]) -> None:
        self.tables: dict[int, dict[int, list[Flow]]] = defaultdict(lambda: defaultdict(list))
        for f in flows:
            self.tables[f.table][f.priority].append(f)

    def lookup(self, table: int, pkt: dict) -> Flow | None:
        for prio in sorted(self.tables[table], reverse=True):
            hits = [f for f in self.tables[table][prio] if _hit(f, pkt)]
            plain = [f for f in hits if not any(a[0] == "conjunction" for a in f.actions)]
            assert len(plain) <= 1, f"ambiguous: {plain}"
            if plain:
                assert len(plain) == len(hits), f"conjunctive and plain flows overlap: {hits}"
                return plain[0]
            seen: dict[int, set[int]] = defaultdict(set)
            want: dict[int, int] = {}
            for f in hits:
                for _, conj_id, clause, n in f.actions:
                    seen[conj_id].add(clause)
                    want[conj_id] = n
            done = sorted(c for c in seen if len(seen[c]) == want[c])
            if done:
                found = self.lookup(table, {**pkt, "conj_id": done[0]})
                assert found is not None and found.priority > PRIO_CLAUSE, found
                return found
        return None

    def passes(self, stage: Stage, pkt: dict) -> tuple[bool, Flow | None]:
        """Whether a new connection's packet gets through `stage` here (no hook: yes)."""
        hook = self.lookup(stage.hook_table, pkt)
        if hook is None or hook.priority != stage.hook_priority:
            return True, None
        loaded = {a[1]: a[2] for a in hook.actions if a[0] == "set_field"}  # (the registers)
        verdict = self.lookup(stage.table, {**pkt, **loaded, "ct_state": CT_NEW | CT_TRK})
        return verdict is not None and verdict.actions[-1:] == (("resubmit", stage.hook_table),), verdict


class Cluster:
    """The switches of `pods` (one node per /24) under `policies`; `direct`: the nodes reach
    each other by DirectRouting (a remote pod's packet comes in through the gateway port,
    flows/direct.py), not through the tunnel."""

    def __init__(self, policies: list[NetworkPolicy], namespaces: list[Namespace], pods: list[Pod],
                 direct: bool = False, dual: bool = False):  # fmt: skip
        """(`dual`: every node dual stack, each pod with its `six_of` address.)"""
        self.direct = direct
        if dual:
            pods = [replace(p, ipv6=six_of(p.ip)) for p in pods]
        self.endpoints = {p.ip: endpoint_of(p, 10 + i) for i, p in enumerate(pods)}
        by_node: dict[IPv4Network, list[Endpoint]] = defaultdict(list)
        for e in self.endpoints.values():
            by_node[e.node_subnet].append(e)
        everything = list(self.endpoints.values())
        self.tables = {n: policy_table(policies, namespaces, everything, eps, n,
                                       subnet6_of(n) if dual else None)
                       for n, eps in by_node.items()}  # fmt: skip
        self.switches = {n: Switch(t.flows) for n, t in self.tables.items()}

    def allowed(self, src: Pod, dst: Pod, port: int, proto: str, six: bool = False) -> bool:
        """Over IPv4, or (`six`) between the pods' IPv6 addresses."""
        s, d = self.endpoints[src.ip], self.endpoints[dst.ip]
        ips = ({"eth_type": ETH_TYPE_IPV6, "ipv6_src": s.ipv6, "ipv6_dst": d.ipv6} if six else
               {"eth_type": ETH_TYPE_IP, "ip_src": src.ip, "ip_dst": dst.ip})  # fmt: skip
        pkt = {**ips, "reg2": 0, "reg3": 0,
               "ip_proto": IP_PROTO[proto], f"{proto.lower()}_dst": port, "in_port": s.ofport}  # fmt: skip
        out, _ = self.switches[s.node_subnet].passes(EGRESS_STAGE, pkt)
        if s.node_subnet != d.node_subnet:
            pkt["in_port"] = GATEWAY_OFPORT if self.direct else TUNNEL_OFPORT
        into, _ = self.switches[d.node_subnet].passes(INGRESS_STAGE, pkt)
        return out and into


def flows_judge(step: Step, direct: bool = False):
    _, pods = model(step)
    return Cluster(step.policies, namespaces_of(step), list(pods.values()), direct).allowed


@pytest.mark.parametrize("path", ["tunnel", "direct"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_flows_pass_the_upstream_netpol_case(case: str, path: str) -> None:
    for i, step in enumerate(CASES[case], 1):
        problems = report(step, flows_judge(step, path == "direct"))
        assert not problems, f"step {i} of {len(CASES[case])}:\n{problems}"


LABELS = {"pod": ("a", "b", "c"), "tier": ("web", "db"), "env": ("prod", "dev")}


def _selector(rng: random.Random) -> dict:
    sel: dict = {}
    if rng.random() < 0.6:
        key = rng.choice(sorted(LABELS))
        sel["matchLabels"] = {key: rng.choice(LABELS[key])}
    if rng.random() < 0.4:
        key = rng.choice(sorted(LABELS))
        op = rng.choice(("In", "NotIn", "Exists", "DoesNotExist"))
        values = list(rng.sample(LABELS[key], 1)) if op in ("In", "NotIn") else []
        sel["matchExpressions"] = [{"key": key, "operator": op, **({"values": values} if values else {})}]
    return sel


def _peer(rng: random.Random, ips: list[IPv4Address], dual: bool = False) -> dict:
    kind = rng.randrange(4)
    if kind == 0:
        return {"podSelector": _selector(rng)}
    if kind == 1:
        return {"namespaceSelector": {"matchLabels": {NAME_LABEL: rng.choice("xyz")}}}
    if kind == 2:
        return {"podSelector": _selector(rng), "namespaceSelector": _selector(rng) if rng.random() < 0.5 else {}}
    ip = rng.choice(ips)
    if dual and rng.random() < 0.5:  # an IPv6 block (its pods' IPv6 addresses)
        cidr6 = IPv6Network(f"{six_of(ip)}/{rng.choice((48, 62, 64))}", strict=False)
        block6: dict = {"cidr": str(cidr6)}
        cut = IPv6Network(f"{six_of(rng.choice(ips))}/{rng.choice((65, 120, 128))}", strict=False)
        if rng.random() < 0.6 and cut.subnet_of(cidr6):
            block6["except"] = [str(cut)]
        return {"ipBlock": block6}
    cidr = IPv4Network(f"{ip}/{rng.choice((16, 22, 24))}", strict=False)
    block: dict = {"cidr": str(cidr)}
    if rng.random() < 0.6:
        block["except"] = [str(IPv4Network(f"{rng.choice(ips)}/{rng.choice((25, 28, 32))}", strict=False))]
        if not IPv4Network(block["except"][0]).subnet_of(cidr):
            del block["except"]
    return {"ipBlock": block}


def _port(rng: random.Random) -> dict:
    proto = rng.choice(("TCP", "UDP"))
    kind = rng.randrange(4)
    if kind == 0:
        return {"protocol": proto}
    if kind == 1:
        return {"protocol": proto, "port": rng.choice((80, 81))}
    if kind == 2:
        return {"protocol": proto, "port": rng.choice(("http", "alt"))}
    return {"protocol": proto, "port": rng.choice((70, 80)), "endPort": rng.choice((80, 81, 95))}


def _rules(rng: random.Random, key: str, ips: list[IPv4Address], dual: bool = False) -> list:
    return [
        {**({key: [_peer(rng, ips, dual) for _ in range(rng.randrange(1, 3))]} if rng.random() < 0.7 else {}),
         **({"ports": [_port(rng) for _ in range(rng.randrange(1, 3))]} if rng.random() < 0.6 else {})}
        for _ in range(rng.randrange(3))
    ]  # fmt: skip


def random_world(seed: int, dual: bool = False) -> tuple[list[NetworkPolicy], list[Namespace], list[Pod]]:
    """(`dual`: ipBlocks of both families, the pods' IPv6 addresses being `six_of` theirs.)"""
    rng = random.Random(seed)
    pods = []
    for name in PODS:
        labels = {k: rng.choice(v) for k, v in LABELS.items() if rng.random() < 0.7}
        ports = [ContainerPort("http", rng.choice((80, 81)), rng.choice(("TCP", "UDP")))]
        if rng.random() < 0.5:
            ports.append(ContainerPort("alt", 81, "TCP"))
        pods.append(Pod(*name.split("/"), IPS[name], tuple(sorted(labels.items())), tuple(ports)))
    ips = [p.ip for p in pods]
    policies = []
    for n in range(rng.randrange(1, 4)):
        ingress = _rules(rng, "from", ips, dual) if rng.random() < 0.8 else None
        egress = _rules(rng, "to", ips, dual) if rng.random() < 0.5 else None
        if ingress is None and egress is None:
            ingress = []
        policies.append(netpol(rng.choice("xyz"), f"p{n}", _selector(rng) if rng.random() < 0.8 else ALL,
                               ingress=ingress, egress=egress))  # fmt: skip
    namespaces = [Namespace(ns, ((NAME_LABEL, ns),)) for ns in "xyz"]
    return policies, namespaces, pods


# pods a and b of every namespace on node 1: pods that the same policies isolate share an
# isolation group there (one register value, one drop), and named ports may split a group
DENSE = {name: IPv4Address(f"198.19.{1 if name[-1] in 'ab' else 2}.{10 + i}")
         for i, name in enumerate(PODS)}  # fmt: skip


@pytest.mark.parametrize("dense", [False, True], ids=["spread", "dense"])
@pytest.mark.parametrize("seed", range(60))
def test_compiled_flows_agree_with_the_evaluator_on_random_policies(seed: int, dense: bool) -> None:
    policies, namespaces, pods = random_world(seed)
    if dense:
        pods = [replace(p, ip=DENSE[f"{p.namespace}/{p.name}"]) for p in pods]
    cluster = Cluster(policies, namespaces, pods)
    oracle = Evaluator(policies, namespaces)
    wrong = [
        (s.namespace + "/" + s.name, d.namespace + "/" + d.name, port, proto)
        for s in pods for d in pods if s != d
        for port, proto in ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"), (90, "TCP"))
        if cluster.allowed(s, d, port, proto) != oracle.allowed(s, d, port, proto)
    ]  # fmt: skip
    assert not wrong, f"{len(wrong)} verdicts differ, e.g. {wrong[:5]}; policies: {policies}"


@pytest.mark.parametrize("seed", range(60))
def test_dual_stack_flows_judge_each_family_as_the_evaluator_does(seed: int) -> None:
    """Every pod dual stack, ipBlocks of both families: over IPv4 the evaluator's verdicts;
    over IPv6 the evaluator's on the same world with each pod at its IPv6 address (selectors
    match a pod whatever the family, an ipBlock the addresses of its own)."""
    policies, namespaces, pods = random_world(seed, dual=True)
    cluster = Cluster(policies, namespaces, pods, dual=True)
    oracle = Evaluator(policies, namespaces)
    as6 = {p: replace(p, ip=six_of(p.ip)) for p in pods}
    wrong = [
        (s.namespace + "/" + s.name, d.namespace + "/" + d.name, port, proto, six)
        for s in pods for d in pods if s != d
        for port, proto in ((80, "TCP"), (81, "UDP"), (90, "TCP"))
        for six in (False, True)
        if cluster.allowed(s, d, port, proto, six)
        != (oracle.allowed(as6[s], as6[d], port, proto) if six else oracle.allowed(s, d, port, proto))
    ]  # fmt: skip
    assert not wrong, f"{len(wrong)} verdicts differ, e.g. {wrong[:5]}; policies: {policies}"


def digested(flows: list[Flow]) -> tuple[frozenset[Flow], frozenset]:
    """A stage's flows but its hooks, and the digests (GENERATION) its hooks load, each with
    its isolation group (the hook's table, for its direction, and ISOLATION): one per group."""
    loads = {((f.table, h[ISOLATION]), h[GENERATION]) for f in flows
             if (h := {a[1]: a[2] for a in f.actions if a[0] == "set_field"}).get(GENERATION)}  # fmt: skip
    assert len({group for group, _ in loads}) == len(loads)
    return frozenset(f for f in flows if not any(a[:2] == ("set_field", GENERATION)
                                                 for a in f.actions)), frozenset(loads)  # fmt: skip


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual"])
def test_the_digest_changes_exactly_when_the_stage_does(dual: bool) -> None:
    """Node 1's stage in 80 random worlds, each also compiled from its inputs shuffled: one
    stage, one digest per isolation group, whatever the order; different stages, different
    digests (a changed stage must resume conntrack's recirculation under a new id; each
    group's digest is of what its packets can meet, so an unrelated change leaves it)."""
    digests: dict[frozenset[Flow], set[frozenset]] = defaultdict(set)
    node1 = IPv4Network("198.19.1.0/24")
    for seed in range(80):
        policies, namespaces, pods = random_world(seed, dual)
        if dual:
            pods = [replace(p, ipv6=six_of(p.ip)) for p in pods]
        eps = [endpoint_of(p, 10 + i) for i, p in enumerate(pods)]
        for order in range(2):
            if order:
                random.Random(seed).shuffle(eps)
                policies = policies[::-1]
            local = [e for e in eps if e.node_subnet == node1]
            table = policy_table(policies, namespaces, eps, local, node1,
                                 subnet6_of(node1) if dual else None)  # fmt: skip
            if table.flows:
                stage, generations = digested(table.flows)
                digests[stage].add(generations)
    assert all(len(g) == 1 for g in digests.values())
    assert len({g for gs in digests.values() for g in gs}) == len(digests) > 20


def test_no_policy_adds_no_flow_and_a_policy_elsewhere_neither() -> None:
    _, pods = model(Step([], {}))
    eps = [endpoint_of(p, 10 + i) for i, p in enumerate(pods.values())]
    node1 = IPv4Network("198.19.1.0/24")
    on_node1 = [e for e in eps if e.node_subnet == node1]
    assert policy_table([], [], eps, on_node1, node1).flows == []
    lonely = netpol("empty", "deny", ALL, ingress=[], egress=[])  # a namespace without pods
    assert policy_table([lonely], [], eps, on_node1, node1).flows == []
    x_only = netpol("x", "deny", ALL, ingress=[])
    on_node1_y = [e for e in on_node1 if e.pod.namespace != "x"]
    assert policy_table([x_only], [], eps, on_node1_y, node1).flows == []
    assert policy_table([x_only], [], eps, on_node1, node1).flows != []


def test_a_rule_costs_groups_plus_peers_plus_ports_flows() -> None:
    """100 selected pods x 100 peers x 5 ports (B10's rule): 107 rule flows, not 50,000, and
    217 in the node's whole stage (B10's goal: <= 300)."""
    server = [Pod("x", f"s{i}", IPv4Address(f"198.19.1.{i + 1}"), (("app", "srv"),)) for i in range(100)]
    client = [Pod("y", f"c{i}", IPv4Address(f"198.19.2.{i + 1}"), (("app", "cli"),)) for i in range(100)]
    policy = netpol("x", "srv", {"matchLabels": {"app": "srv"}}, ingress=[{
        "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "cli"}}}],
        "ports": [{"port": 8000 + i} for i in range(5)]}])  # fmt: skip
    eps = [endpoint_of(p, 10 + i) for i, p in enumerate(server + client)]
    table = policy_table([policy], [], eps, eps[:100], IPv4Network("198.19.1.0/24"))
    clauses = [f for f in table.flows if f.table == Table.POL_INGRESS and f.priority == PRIO_CLAUSE]
    # the pods isolated alike are one group, matched by the register their hooks load
    group = int(min(p.ip for p in server))
    assert [f for f in clauses if (ISOLATION, group) in f.match] != []
    assert len(clauses) == 1 + 100 + 5
    rule = [f for f in table.flows if f.priority in (PRIO_CLAUSE, PRIO_RULE_ID)]
    assert len(rule) == 1 + 100 + 5 + 1
    # and per isolated pod its hook; one default drop for the group; the stage's own few
    (drop,) = [f for f in table.flows if f.priority == PRIO_DROP]
    assert drop.cookie == drop_cookie(min(p.ip for p in server))
    assert len(table.flows) == 107 + 100 + 1 + 9 == 217


def test_port_ranges_and_blocks() -> None:
    assert port_ranges(80, 80) == [(80, 0xFFFF)]
    assert port_ranges(1, 65535)[0] == (1, 0xFFFF) and len(port_ranges(1, 65535)) == 16
    covered = {p for v, m in port_ranges(70, 95) for p in range(65536) if p & m == v}
    assert covered == set(range(70, 96))
    block = IPBlock(IPv4Network("10.0.0.0/8"), (IPv4Network("10.1.0.0/16"), IPv4Network("10.1.2.0/24")))
    nets = block_networks(block)
    assert all(not n.overlaps(IPv4Network("10.1.0.0/16")) for n in nets)
    assert sum(n.num_addresses for n in nets) == 2**24 - 2**16


def test_every_policy_flow_is_owned_and_every_drop_names_its_pod() -> None:
    step = CASES["default-deny-all"][0]
    _, pods = model(step)
    cluster = Cluster(step.policies, namespaces_of(step), list(pods.values()))
    table = cluster.tables[IPv4Network("198.19.1.0/24")]
    assert len({f.key for f in table.flows}) == len(table.flows)  # no entry written twice
    for f in table.flows:
        owner = owner_of(f.cookie)
        assert owner is not None and owner[0] in (Owner.POLICY, Owner.POLICY_DROP)
        if owner[0] is Owner.POLICY_DROP:
            direction = "Egress" if f.table == Table.POL_EGRESS else "Ingress"
            assert table.isolated[direction, IPv4Address(owner[1])].policies == ("x/deny-all",)



def test_the_pods_isolated_alike_share_one_drop_that_names_the_pod_it_dropped_for() -> None:
    node = IPv4Network("198.19.1.0/24")
    a = Pod("x", "a", IPv4Address("198.19.1.10"), (("pod", "a"),))
    b = Pod("x", "b", IPv4Address("198.19.1.11"), (("pod", "b"),))
    eps = [endpoint_of(a, 10), endpoint_of(b, 11)]
    table = policy_table([netpol("x", "deny", {}, ingress=[])], [], eps, eps, node)
    (drop,) = [f for f in table.flows if f.priority == PRIO_DROP]
    assert drop.cookie == drop_cookie(a.ip) and table.groups[INGRESS, b.ip] == a.ip
    far = {"eth_type": ETH_TYPE_IP, "ip_src": IPv4Address("198.19.2.5"), "reg2": 0, "reg3": 0,
           "ip_proto": 6, "tcp_dst": 80, "in_port": TUNNEL_OFPORT}  # fmt: skip
    assert Switch(table.flows).passes(INGRESS_STAGE, {**far, "ip_dst": b.ip}) == (False, drop)
    text = ("network policy: ingress of pod x/{} is isolated by x/deny, and no rule of them "
            "allows this connection")  # fmt: skip
    assert policy_text(drop.table, drop.cookie, table, dst=b.ip) == text.format("b")
    assert policy_text(drop.table, drop.cookie, table) == text.format("a")  # the group's first


def test_a_dual_stack_pods_ipv6_is_judged_by_its_rules() -> None:
    """No longer closed: an isolated pod's IPv6 connections meet its rules as its IPv4 ones
    do (a selector names its peers' IPv6 addresses too, a v6 ipBlock with its except), its
    node's own traffic passes, and a pod no policy isolates keeps IPv6 as it is."""
    node = IPv4Network("198.19.1.0/24")
    node6 = subnet6_of(node)
    a = Pod("x", "a", IPv4Address("198.19.1.10"), (("pod", "a"),), ipv6=node6[10])
    b = Pod("x", "b", IPv4Address("198.19.1.11"), (("pod", "b"),), ipv6=node6[11])
    c = Pod("y", "c", IPv4Address("198.19.2.12"), (("pod", "c"),), ipv6=six_of(IPv4Address("198.19.2.12")))
    far6, near6 = IPv6Address("fd00:0:0:2::5"), IPv6Address("fd00:0:0:3::7")
    eps = [endpoint_of(a, 10), endpoint_of(b, 11), endpoint_of(c, 12)]
    only_a = netpol("x", "a-from-x", {"matchLabels": {"pod": "a"}}, ingress=[
        {"from": [{"podSelector": {}}]},
        {"from": [{"ipBlock": {"cidr": "fd00:0:0:3::/64", "except": ["fd00:0:0:3::8/128"]}}],
         "ports": [{"port": 80}]}])  # fmt: skip
    table = policy_table([only_a], [], eps, eps[:2], node, node6)
    switch = Switch(table.flows)

    def v6(src: IPv6Address, dst: IPv6Address, in_port: int, port: int = 80) -> dict:
        return {"eth_type": ETH_TYPE_IPV6, "ipv6_src": src, "ipv6_dst": dst, "reg2": 0,
                "reg3": 0, "ip_proto": 6, "tcp_dst": port, "in_port": in_port}  # fmt: skip

    assert switch.passes(INGRESS_STAGE, v6(b.ipv6, a.ipv6, 11))[0]  # x/b: the selector's
    denied, verdict = switch.passes(INGRESS_STAGE, v6(c.ipv6, a.ipv6, TUNNEL_OFPORT))  # y/c: not
    assert not denied and verdict is not None and verdict.cookie == drop_cookie(a.ip)
    assert switch.passes(INGRESS_STAGE, v6(near6, a.ipv6, TUNNEL_OFPORT))[0]  # the v6 block
    assert not switch.passes(INGRESS_STAGE, v6(near6, a.ipv6, TUNNEL_OFPORT, 81))[0]  # its port only
    assert not switch.passes(INGRESS_STAGE, v6(near6 + 1, a.ipv6, TUNNEL_OFPORT))[0]  # except
    assert not switch.passes(INGRESS_STAGE, v6(far6, a.ipv6, TUNNEL_OFPORT))[0]
    assert switch.passes(INGRESS_STAGE, v6(node6[1], a.ipv6, GATEWAY_OFPORT))[0]  # its node's probe
    assert switch.passes(EGRESS_STAGE, v6(a.ipv6, far6, 10)) == (True, None)  # ingress only
    assert switch.passes(INGRESS_STAGE, v6(far6, b.ipv6, TUNNEL_OFPORT)) == (True, None)  # b: open
    v4_only = policy_table([only_a], [], [endpoint_of(replace(p, ipv6=None), 10 + i)
                                          for i, p in enumerate((a, b, c))],
                           [endpoint_of(replace(a, ipv6=None), 10)], node)  # fmt: skip
    assert not any(dict(f.match).get("eth_type") == ETH_TYPE_IPV6 for f in v4_only.flows)


def test_the_nodes_own_addresses_pass_into_an_isolated_pod_what_its_host_forwards_is_judged() -> None:
    """Through the gateway port come the node's own packets (from its gateway address or
    its PublicIP: kubelet's probes), which pass, and packets its host only forwards (a
    direct peer's pod, flows/direct.py; a host on the link), which the rules judge."""
    node, node6 = IPv4Network("198.19.1.0/24"), IPv6Network("fd00:0:0:1::/64")
    public, public6 = IPv4Address("198.18.0.1"), IPv6Address("fd18::1")
    a = Pod("x", "a", IPv4Address("198.19.1.10"), (("pod", "a"),))
    b = Pod("x", "b", IPv4Address("198.19.2.10"), (("pod", "b"),))
    c = Pod("x", "c", IPv4Address("198.19.3.10"), (("pod", "c"),))
    eps = [replace(endpoint_of(a, 10), ipv6=node6[10]), endpoint_of(b, 10), endpoint_of(c, 10)]
    only_b = netpol("x", "a-from-b", {"matchLabels": {"pod": "a"}},
                    ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}])  # fmt: skip
    switch = Switch(policy_table([only_b], [], eps, eps[:1], node, node6,
                                 host=(public, public6)).flows)  # fmt: skip

    def into_a(src: IPv4Address) -> bool:
        return switch.passes(INGRESS_STAGE, {
            "eth_type": ETH_TYPE_IP, "ip_src": src, "ip_dst": a.ip, "reg2": 0, "reg3": 0,
            "ip_proto": 6, "tcp_dst": 80, "in_port": GATEWAY_OFPORT})[0]  # fmt: skip

    def into_a6(src: IPv6Address) -> bool:
        return switch.passes(INGRESS_STAGE, {
            "eth_type": ETH_TYPE_IPV6, "ipv6_src": src, "ipv6_dst": node6[10], "reg2": 0,
            "reg3": 0, "ip_proto": 6, "tcp_dst": 80, "in_port": GATEWAY_OFPORT})[0]  # fmt: skip

    assert into_a(node[1]) and into_a(public)  # the node's own
    assert into_a(b.ip) and not into_a(c.ip)  # direct peers' pods: as the rule says
    assert not into_a(IPv4Address("198.18.0.9"))  # a host on the link, or a peer's host
    assert into_a6(node6[1]) and into_a6(public6)
    assert not into_a6(IPv6Address("fd00:0:0:2::10"))  # a direct peer's pod over IPv6


def test_drops_logged_or_not_the_table_is_the_golden_one_but_the_drops_and_digest():
    """`vxflow controller` without --log-policy-drops compiles exactly the golden table (its
    text as ovs-ofctl reads it, tests/golden); with it only the default drops change (meter
    then packet-in, still no output anywhere) and with them the stage's digest in its hooks."""
    from tests.test_flows_ipv6_services import GOLDEN, golden_table

    golden = GOLDEN.read_text().splitlines()
    assert golden_table(log_drops=False) == golden
    logged = golden_table(log_drops=True)
    changed = sorted(set(logged) - set(golden))
    drops = [line for line in changed if f"cookie={cookie_for(Owner.POLICY_DROP, 0) >> 32:#x}" in line]
    assert drops and all(line.endswith(" actions=meter:1,controller:128") for line in drops)
    assert {line.replace("actions=meter:1,controller:128", "actions=drop") for line in drops} <= set(golden)
    hooks = [line for line in changed if line not in drops]
    assert hooks and all("set_field:" in line and "->reg4" in line for line in hooks)
    assert len(logged) == len(golden)


def test_a_kept_stage_gives_clashing_conj_ids_in_order_as_a_compile_from_scratch(monkeypatch):
    """Every rule's name made to hash to one conj_id (its crc32): each conjunction still gets
    its own, the first free one from its name's in the rules' order, and a stage kept
    through 80 random worlds of node 1 (NodeStage, one object), each with its first policy
    taken out and put back (a clash that comes and goes), is each time the one compiled
    from scratch."""
    real = policy_module.zlib.crc32
    monkeypatch.setattr(policy_module.zlib, "crc32",
                        lambda data: 7 if data.startswith((b"Ingress/", b"Egress/")) else real(data))  # fmt: skip
    node1 = IPv4Network("198.19.1.0/24")
    kept, clashed = NodeStage(), 0
    for seed in range(80):
        policies, namespaces, pods = random_world(seed)
        eps = [endpoint_of(p, 10 + i) for i, p in enumerate(pods)]
        local = [e for e in eps if e.node_subnet == node1]
        peers: dict = {}  # (each rule's, the same while the world is)
        for chosen in (policies, policies[1:], policies):
            fresh = policy_table(chosen, namespaces, eps, local, node1)
            kept.update(chosen, namespaces, [endpoint_pod(e) for e in eps],
                        [endpoint_pod(e) for e in local], node1, peers=peers)  # fmt: skip
            assert set(kept.table().flows) == set(fresh.flows) and kept.table().rules == fresh.rules
            clashed += len(fresh.rules) > 1
    assert clashed > 50  # (the ids are distinct: `rules` is keyed by them)
    # an egress rule's id comes first; once it goes, the ingress rule (its inputs unchanged,
    # so kept) must take the id its name gives, as from scratch
    egress = netpol("x", "out", ALL, egress=[{"ports": [{"port": 53, "protocol": "UDP"}]}])
    ingress = netpol("x", "in", ALL, ingress=[{"ports": [{"port": 80}]}])
    peers = {}
    for chosen in ([egress, ingress], [ingress]):
        kept.update(chosen, namespaces, [endpoint_pod(e) for e in eps],
                    [endpoint_pod(e) for e in local], node1, peers=peers)  # fmt: skip
        fresh = policy_table(chosen, namespaces, eps, local, node1)
        assert set(kept.table().flows) == set(fresh.flows) and kept.table().rules == fresh.rules
