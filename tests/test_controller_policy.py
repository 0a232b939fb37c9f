"""Network policy in the controller (pure: a recording channel, no switch): policies,
namespaces and pods' identities fold into the same desired state, diffed and sent in the
same bundle/barrier discipline as every other flow; nothing without policy; the drop
counts a readback finds become the metric's."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from controller import metrics, ofwire
from controller.model import FULL, POLICY_OWNERS, ClusterModel
from flows.compiler import compile_table
from flows.flow import Owner, owner_of
from leases.events import EndpointAdded, EndpointRemoved, NamespaceAdded, PolicyAdded, PolicyRemoved
from leases.model import Endpoint
from leases.pods import PodIdentity
from leases.policy import NAME_LABEL, Namespace
from tests.test_controller_ofwire import stats_entry
from tests.test_controller_sync import CONFIG, finish, land_bare, lease, make, read_back
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
    assert impact.policy and scope.owners >= POLICY_OWNERS
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
    # a namespace's labels and a pod's come and go: the same stage, compiled anew
    relabelled = replace(DB, pod=PodIdentity("shop", "p111", (("app", "web"),)))
    impact = model.apply([NamespaceAdded(Namespace("shop", ((NAME_LABEL, "shop"), ("t", "1"))), 1),
                          EndpointRemoved(DB, 1), EndpointAdded(relabelled, 1)])  # fmt: skip
    assert impact.policy and policy_flows(model.desired(N1, impact.scope_for(N1, lease(1).subnet))) == set()
    # the last policy removed: the stage goes with it
    model.apply([EndpointRemoved(relabelled, 1), EndpointAdded(DB, 1)])
    impact = model.apply([PolicyRemoved(DENY_DB, 1)])
    assert impact.policy and policy_flows(model.desired(N1, impact.scope_for(N1, lease(1).subnet))) == set()


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
