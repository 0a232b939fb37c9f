"""Network policy in the controller (pure: a recording channel, no switch): policies,
namespaces and pods' identities fold into the same desired state, diffed and sent in the
same bundle/barrier discipline as every other flow; nothing without policy; the drop
counts a readback finds become the metric's."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from controller import metrics, ofwire
from controller.model import FULL, POLICY_OWNERS, ClusterModel
from controller.monitor import FlowChange
from flows.compiler import compile_table
from flows.flow import Owner, cookie_for, owner_of
from leases.events import (
    EndpointAdded,
    EndpointRemoved,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
    NamespaceAdded,
    NamespaceRemoved,
    PolicyAdded,
    PolicyRemoved,
)
from leases.model import Endpoint
from leases.pods import ContainerPort, PodIdentity
from leases.policy import NAME_LABEL, Namespace, NetworkPolicy
from tests.test_controller_ofwire import stats_entry
from tests.test_controller_sync import CONFIG, bare_mods, finish, land_bare, lease, make, read_back
from tests.test_flows_policy_eval import netpol

LEASES = [lease(1), lease(2)]
N1 = lease(1).public_ip


def pod(node: int, host: int, namespace: str, labels: dict[str, str]) -> Endpoint:
    ident = PodIdentity(namespace, f"p{node}{host}", tuple(sorted(labels.items())))
    return Endpoint(IPv4Network(f"198.19.{node}.0/24"), IPv4Address(f"198.19.{node}.{host}"),
                    f"0a:58:c6:13:{node:02x}:{host:02x}", host, f"veth{host}", ident)  # fmt: skip


WEB = pod(1, 10, "shop", {"app": "web"})
DB = pod(1, 11, "shop", {"app": "db"})
CLIENT = pod(2, 10, "front", {"app": "client"})
PODS = [WEB, DB, CLIENT]
DENY_DB = netpol("shop", "db-from-web", {"matchLabels": {"app": "db"}},
                 ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}])  # fmt: skip


def policy_flows(table) -> set:
    return {f for f in table if (o := owner_of(f.cookie)) and o[0] in POLICY_OWNERS}


def test_no_policy_means_the_table_it_always_was():
    model = ClusterModel()
    model.load(CONFIG, LEASES, PODS)
    full = model.desired(N1, FULL)
    assert set(full) == set(compile_table(CONFIG, LEASES, PODS, N1))
    assert policy_flows(full) == set()


def test_a_policy_event_reaches_every_switch_in_one_scoped_change():
    model = ClusterModel()
    model.load(CONFIG, LEASES, PODS)
    sync, channel, _ = make(model, N1)
    sync.start()
    read_back(sync, channel, list(compile_table(CONFIG, LEASES, PODS, N1)))
    assert channel.take() == []
    impact = model.apply([PolicyAdded(DENY_DB, 1)])
    scope = impact.scope_for(N1, lease(1).subnet)
    assert impact.policy_nodes == {N1} and scope.owners >= POLICY_OWNERS
    assert not impact.scope_for(lease(2).public_ip, lease(2).subnet).cookies
    want = policy_flows(compile_table(CONFIG, LEASES, PODS, N1, policies=[DENY_DB]))
    assert want and policy_flows(model.desired(N1, scope)) == want
    sync.request(scope)
    sent = channel.take()
    if any(t == ofwire.OFPT_BUNDLE_ADD_MESSAGE for t, _, _ in sent):
        finish(sync, channel, sent)
    else:
        land_bare(sync, sent)
    assert policy_flows(sync.installed.values()) == want
    # a namespace's labels and a pod's come and go: the stage, kept, changes in every flow
    # (the pod is selected no more), asked for by key
    relabelled = replace(DB, pod=PodIdentity("shop", "p111", (("app", "web"),)))
    impact = model.apply([NamespaceAdded(Namespace("shop", ((NAME_LABEL, "shop"), ("t", "1"))), 1),
                          EndpointRemoved(DB, 1), EndpointAdded(relabelled, 1)])  # fmt: skip
    scope = impact.scope_for(N1, lease(1).subnet)
    assert N1 not in impact.policy_nodes and scope.keys == {f.key for f in want}
    assert policy_flows(model.desired(N1, scope)) == set()
    # the last policy removed: the stage goes with it
    model.apply([EndpointRemoved(relabelled, 1), EndpointAdded(DB, 1)])
    impact = model.apply([PolicyRemoved(DENY_DB, 1)])
    assert N1 in impact.policy_nodes and policy_flows(model.desired(N1, impact.scope_for(N1, lease(1).subnet))) == set()


def test_drop_counts_become_the_metric_by_namespace_policies_and_direction():
    model = ClusterModel()
    model.load(CONFIG, LEASES, PODS, policies=[DENY_DB])
    table = model.policy_table(N1)
    (drop,) = [f for f in table.flows if owner_of(f.cookie)[0] is Owner.POLICY_DROP]
    drops: dict = {}
    list(ofwire.decode_flow_stats(stats_entry(drop), drops))
    assert list(model.denied(N1, drops)) == [(("shop", "shop/db-from-web", "ingress"), 10)]
    collector = metrics.PolicyDenied()
    collector.source = lambda: model.denied(N1, drops)
    (family,) = collector.collect()
    assert family.name == "vxflow_policy_denied_packets"
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("vxflow_policy_denied_packets_total",
         {"namespace": "shop", "policy": "shop/db-from-web", "direction": "ingress"}, 10.0)
    ]  # fmt: skip


# -- incremental stages: the same as compiled from scratch after any sequence of events --

SEED = 30  # the property test's RNG seed (random.Random)
NODES = [lease(i) for i in range(1, 5)]
APPS = ("a", "b", "c")
CONTAINER_PORTS = ((), (ContainerPort("http", 8080),),
                   (ContainerPort("http", 8081), ContainerPort("dns", 53, "UDP")))  # fmt: skip


def random_selector(rng: random.Random) -> dict:
    return rng.choice([
        {},
        {"matchLabels": {"app": rng.choice(APPS)}},
        {"matchExpressions": [{"key": "app", "operator": "In", "values": rng.sample(APPS, 2)}]},
        {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [rng.choice(APPS)]}]},
    ])  # fmt: skip


def random_rule(rng: random.Random, direction: str) -> dict:
    peers = [rng.choice([
        {"podSelector": random_selector(rng)},
        {"namespaceSelector": {"matchLabels": {"team": rng.choice("rb")}}},
        {"namespaceSelector": random_selector(rng), "podSelector": random_selector(rng)},
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: rng.choice("xyz")}}},
        {"ipBlock": {"cidr": "198.19.0.0/16", "except": ["198.19.2.0/24"]}},
    ]) for _ in range(rng.randrange(3))]  # fmt: skip
    ports = rng.choice([[], [{"port": 80}], [{"port": "http"}],
                        [{"port": 80, "endPort": 90, "protocol": "UDP"}],
                        [{"port": "dns", "protocol": "UDP"}, {"port": 81}]])  # fmt: skip
    rule: dict = {"ports": ports} if ports else {}
    if peers:
        rule["from" if direction == "ingress" else "to"] = peers
    return rule


def random_policy(rng: random.Random) -> NetworkPolicy:
    rules = {d: [random_rule(rng, d) for _ in range(rng.randrange(3))]
             for d in ("ingress", "egress") if rng.random() < 0.7}  # fmt: skip
    if not rules:
        rules = {"ingress": []}  # deny all ingress
    return netpol(rng.choice("xyz"), f"p{rng.randrange(5)}", random_selector(rng), **rules)


def random_pod(rng: random.Random) -> Endpoint:
    labels = {"app": rng.choice(APPS)}
    if rng.random() < 0.5:
        labels["tier"] = rng.choice("12")
    ep = pod(rng.randrange(1, 5), rng.randrange(10, 16), rng.choice("xyz"), labels)
    return replace(ep, pod=replace(ep.pod, ports=rng.choice(CONTAINER_PORTS)))


class Cluster:
    """What the registry holds, and the events that change it, drawn at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.leases = {n.subnet: n for n in NODES}
        self.endpoints: dict[IPv4Address, Endpoint] = {}
        self.policies: dict[str, NetworkPolicy] = {}
        self.namespaces: dict[str, Namespace] = {}
        for _ in range(16):
            ep = random_pod(rng)
            self.endpoints[ep.ip] = ep

    def event(self) -> list:
        rng = self.rng
        kind = rng.choice(["policy", "policy", "policy rm", "namespace", "namespace rm",
                           "pod", "pod", "pod rm", "pod relabel", "pod move", "lease"])  # fmt: skip
        if kind == "policy":
            new = random_policy(rng)
            old = self.policies.get(new.key_name)
            self.policies[new.key_name] = new
            return ([PolicyRemoved(old, 1)] if old else []) + [PolicyAdded(new, 1)]
        if kind == "policy rm" and self.policies:
            return [PolicyRemoved(self.policies.pop(rng.choice(sorted(self.policies))), 1)]
        if kind == "namespace":
            name = rng.choice("xyz")
            labels = {NAME_LABEL: name, "team": rng.choice("rb")}
            new, old = Namespace(name, tuple(sorted(labels.items()))), self.namespaces.get(name)
            self.namespaces[name] = new
            return ([NamespaceRemoved(old, 1)] if old else []) + [NamespaceAdded(new, 1)]
        if kind == "namespace rm" and self.namespaces:
            return [NamespaceRemoved(self.namespaces.pop(rng.choice(sorted(self.namespaces))), 1)]
        if kind == "pod":
            new = random_pod(rng)
            old = self.endpoints.get(new.ip)
            self.endpoints[new.ip] = new
            return ([EndpointRemoved(old, 1)] if old else []) + [EndpointAdded(new, 1)]
        if kind == "pod rm" and self.endpoints:
            return [EndpointRemoved(self.endpoints.pop(rng.choice(sorted(self.endpoints))), 1)]
        if kind in ("pod relabel", "pod move") and self.endpoints:
            old = self.endpoints.pop(rng.choice(sorted(self.endpoints)))
            drawn = random_pod(rng)  # its labels, or its node and address
            new = (replace(old, pod=replace(old.pod, labels=drawn.pod.labels))
                   if kind == "pod relabel" else replace(drawn, pod=old.pod))  # fmt: skip
            held = self.endpoints.get(new.ip)
            self.endpoints[new.ip] = new
            return [EndpointRemoved(old, 1), *([EndpointRemoved(held, 1)] if held else []),
                    EndpointAdded(new, 1)]  # fmt: skip
        if kind == "lease":  # a node leaves, comes back, or takes another's PublicIP
            node = rng.choice(NODES)
            held = self.leases.get(node.subnet)
            if held is None:
                self.leases[node.subnet] = node
                return [LeaseAdded(node, 1)]
            if held != node or rng.random() < 0.5:
                return [LeaseRemoved(self.leases.pop(node.subnet), 1)]
            moved = lease(int(node.subnet.network_address.packed[2]), ip=rng.randrange(1, 5))
            self.leases[node.subnet] = moved
            return [LeaseChanged(node, moved, 1)]
        return []

    def stage(self, node: IPv4Address) -> set:
        """`node`'s policy flows compiled from scratch (flows/compiler.py, every policy)."""
        return policy_flows(compile_table(CONFIG, self.leases.values(), self.endpoints.values(),
                                          node, policies=sorted(self.policies.values(),
                                                                key=lambda p: p.key_name),
                                          namespaces=self.namespaces.values()))  # fmt: skip


def test_incremental_stages_equal_a_compile_from_scratch_after_any_events():
    rng = random.Random(SEED)
    cluster = Cluster(rng)
    model = ClusterModel()
    model.load(CONFIG, NODES, cluster.endpoints.values())
    nodes = [n.public_ip for n in NODES]
    before = {n: cluster.stage(n) for n in nodes}
    narrow = guarded = 0
    for _ in range(200):
        events = [e for _ in range(rng.randrange(1, 4)) for e in cluster.event()]
        impact = model.apply(events)
        after = {n: cluster.stage(n) for n in nodes}
        for n in nodes:
            own = model.own_lease(n)
            assert set(model.policy_table(n).flows) == after[n], (n, events)
            if after[n] != before[n]:  # a stage that changed is in its switch's scope
                scope = impact.scope_for(n, own.subnet if own else None)
                assert scope.full or scope.owners >= POLICY_OWNERS or {
                    f.key for f in after[n] ^ before[n]} <= scope.keys, (n, events)  # fmt: skip
        guarded += sum(bool(s) for s in after.values())
        touched = impact.policy_nodes | impact.policy_keys.keys()
        narrow += bool(touched) and len(touched) < len(nodes)
        before = after
    assert guarded > 100 and narrow > 10  # the events made stages, and scoped them narrowly


def land(sync, channel) -> None:
    """Answer every barrier the switch is sent, as a switch that takes every change does,
    until it has nothing more to send."""
    while sent := channel.take():
        for mtype, xid, _ in sent:
            if mtype == ofwire.OFPT_BARRIER_REQUEST:
                sync.on_barrier(xid)


def test_switches_fed_only_scoped_changes_hold_the_stage_compiled_from_scratch():
    """The same random events (SEED) through the real path: each switch is sent only what
    its scope asks for, and some switches take their change only after the next events
    came (a change in flight while more arrive: where a lost update would hide), and the
    stages are sometimes read before their switch's turn. Whenever
    a switch has taken all it was sent, its table is its whole desired table, and its
    policy flows are the stage compiled from scratch."""
    rng = random.Random(SEED + 1)
    cluster = Cluster(rng)
    model = ClusterModel()
    model.load(CONFIG, NODES, cluster.endpoints.values())
    switches = {}
    for n in NODES:
        sync, channel, _ = make(model, n.public_ip)
        sync.start()
        read_back(sync, channel, list(model.desired(n.public_ip, FULL)))
        land(sync, channel)
        switches[n.public_ip] = sync, channel
    checked = late = 0
    for step in range(200):
        events = [e for _ in range(rng.randrange(1, 4)) for e in cluster.event()]
        impact = model.apply(events)
        for node, (sync, channel) in switches.items():
            if rng.random() < 0.3:  # the metrics or `vxflow status` read the stage first
                model.policy_table(node)
            own = model.own_lease(node)
            sync.request(impact.scope_for(node, own.subnet if own else None))
            if rng.random() < 0.3:  # this one takes its change after the next events
                late += 1
                continue
            land(sync, channel)
            assert sync.in_sync, (step, node)
            assert policy_flows(sync.installed.values()) == cluster.stage(node), (step, node, events)
            assert set(sync.installed.values()) == set(model.desired(node, FULL)), (step, node)
            checked += bool(cluster.stage(node))
    assert checked > 80 and late > 100  # stages were there to check, and changes waited


def test_a_policy_recompiles_the_switches_of_the_pods_it_selects_only():
    model = ClusterModel()
    model.load(CONFIG, LEASES, PODS)
    assert model.apply([PolicyAdded(DENY_DB, 1)]).policy_nodes == {N1}
    # a peer's labels: its own switch holds nothing of it, the selected pod's does
    web2 = pod(2, 20, "shop", {"app": "web"})
    assert model.apply([EndpointAdded(web2, 1)]).policy_nodes == {N1}
    assert web2.ip in {v for f in model.policy_table(N1).flows for _, v in f.match}
    # an unrelated pod, or a namespace no peer selects by label: nothing to recompile
    assert model.apply([EndpointAdded(pod(2, 21, "front", {"app": "web"}), 1)]).policy_nodes == set()
    assert model.apply([NamespaceAdded(Namespace("front", ((NAME_LABEL, "front"),
                                                           ("t", "1"))), 1)]).policy_nodes == set()  # fmt: skip


def test_a_policy_flow_another_client_removed_is_repaired_from_the_monitor_report():
    """The flow monitor's report of a removed policy flow (a rule's clause, a default drop)
    repairs it at once: the repair's scope holds the policy stage, which is asked for by
    owner (before, such a flow stayed gone until the next audit)."""
    model = ClusterModel()
    model.load(CONFIG, LEASES, PODS, policies=[DENY_DB])
    sync, channel, _ = make(model, N1)
    sync.start()
    read_back(sync, channel, list(model.desired(N1, FULL)))
    assert channel.take() == [] and sync.in_sync
    stage = model.policy_table(N1).flows
    (drop,) = [f for f in stage if owner_of(f.cookie)[0] is Owner.POLICY_DROP]
    clause = next(f for f in stage if f.cookie == cookie_for(Owner.POLICY, 0)
                  and f.actions and f.actions[0][0] == "conjunction")  # fmt: skip
    for gone in (drop, clause):
        sync.observe([FlowChange(gone, "removed")])
        assert sync.installed.get(gone.key) is None
        sent = channel.take()
        assert bare_mods(sent) == [ofwire.OFPFC_ADD], gone
        land_bare(sync, sent)
        assert sync.installed.get(gone.key) == gone and sync.in_sync
