"""`vxflow policies explain`'s judgement, pure: a snapshot built from etcd values, read back.

What the pod's own selection is comes from flows/policy_eval.py (tested against
Kubernetes' cases in test_flows_policy_eval.py); here: every kind of peer and
port put in words, the published pods a selector matches, a policy with no
rule of a direction, and a pod no policy selects.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from click import ClickException

from flows.policy_eval import Evaluator
from leases.keys import KV, Keys
from leases.model import Endpoint
from leases.pods import ContainerPort, PodIdentity
from leases.policy import parse_policy, policy_to_json
from leases.state import build_snapshot
from leases.validate import endpoint_to_json
from vxflow.explain import Explanation, render
from vxflow.pods import BadInput, parse_pod_ref, pod_endpoint

KEYS = Keys("/test/network")
CONFIG = b'{"Network": "198.19.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
LEASE = (b'{"PublicIP":"198.18.0.5","PublicIPv6":null,"BackendType":"vxlan",'
         b'"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}}')  # fmt: skip


def endpoint_kv(host: int, pod: PodIdentity | None) -> KV:
    ep = Endpoint(IPv4Network("198.19.5.0/24"), IPv4Address(f"198.19.5.{host}"),
                  f"0a:58:c6:13:05:{host:02x}", host, f"vx{host}", pod)  # fmt: skip
    return KV(KEYS.endpoint(ep), endpoint_to_json(ep).encode(), 3, 3)


def policy_kv(manifest: dict) -> KV:
    policy = parse_policy(manifest)
    return KV(KEYS.policy(policy.namespace, policy.name), policy_to_json(policy).encode(), 4, 4)


WEB = PodIdentity("shop", "web", (("app", "web"),), (ContainerPort("http", 8080),))
API = PodIdentity("shop", "api", (("app", "api"),))
FRONT = PodIdentity("front", "ui", (("app", "ui"),))


def manifest(name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}  # fmt: skip


def explained(*policies: dict, pod: str = "shop/web") -> dict:
    kvs = [KV(KEYS.config, CONFIG, 1, 1), KV(KEYS.subnets + "198.19.5.0-24", LEASE, 2, 2),
           endpoint_kv(2, WEB), endpoint_kv(3, API), endpoint_kv(4, FRONT), endpoint_kv(5, None),
           KV(KEYS.namespace("front"), json.dumps({"Labels": {"team": "front"}}).encode(), 5, 5),
           *(policy_kv(p) for p in policies)]  # fmt: skip
    snap = build_snapshot(KEYS, kvs, 9)
    assert not snap.rejected, snap.rejected
    ep = pod_endpoint(snap, *parse_pod_ref(pod))
    return Explanation(snap, ep, Evaluator(snap.policies, snap.namespaces)).to_dict()


def test_a_pod_no_policy_selects_is_open_both_ways() -> None:
    doc = explained(manifest("api-only", {"podSelector": {"matchLabels": {"app": "api"}}}))
    assert doc["pod"] == {**WEB.to_dict(), "IP": "198.19.5.2", "Node": "198.18.0.5"}
    assert render(doc) == [
        "pod shop/web 198.19.5.2 on node 198.18.0.5, labels app=web",
        "Ingress: not isolated (no policy selects it for Ingress): all traffic allowed",
        "Egress: not isolated (no policy selects it for Egress): all traffic allowed",
    ]


def test_every_kind_of_peer_and_port_in_words() -> None:
    ingress = manifest("web-in", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "api"}}},
                      {"namespaceSelector": {"matchLabels": {"team": "front"}}},
                      {"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                          {"key": "app", "operator": "In", "values": ["ui", "api"]}]}},
                      {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
             "ports": [{"port": "http"}, {"port": "metrics"}, {"protocol": "UDP", "port": 5000,
                                                               "endPort": 5010}]},
            {},
        ],
    })  # fmt: skip
    egress = manifest("web-out", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "dns", "protocol": "UDP"},
                                                            {"protocol": "TCP"}]}],
    })  # fmt: skip
    deny = manifest("deny-in", {"podSelector": {}})
    lines = render(explained(ingress, egress, deny))
    assert lines[1:] == [
        "Ingress: isolated by shop/deny-in, shop/web-in; allowed is what any rule below allows",
        "  shop/deny-in: no ingress rule: allows nothing",
        "  shop/web-in rule 1: from pods app=api in namespace shop [shop/api]; "
        "every pod in namespaces team=front [front/ui]; "
        "pods app in (ui,api) in every namespace [front/ui, shop/api]; "
        "ipBlock 10.0.0.0/8 except 10.1.0.0/16; "
        "ports TCP/http (8080 on this pod), TCP/metrics (no port of this pod has that name), "
        "UDP/5000-5010",
        "  shop/web-in rule 2: from anywhere; ports all ports",
        "Egress: isolated by shop/web-out; allowed is what any rule below allows",
        "  shop/web-out rule 1: to every pod in namespace shop [shop/api, shop/web]; "
        "ports UDP/dns (each destination pod's port of that name), TCP/all ports",
    ]


def test_an_unknown_or_malformed_pod_is_one_clear_line() -> None:
    with pytest.raises(ClickException, match="no pod shop/nobody is published in etcd"):
        explained(pod="shop/nobody")
    for ref, text in (("web", "'web' is not NAMESPACE/NAME"), ("shop/Web", "shop/Web: name:")):
        with pytest.raises(BadInput, match=text) as info:
            parse_pod_ref(ref)
        assert info.value.exit_code == 2
