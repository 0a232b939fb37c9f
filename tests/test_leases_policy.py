"""NetworkPolicy manifests: reading them as kubectl users have them, Kubernetes' defaults,
the API's validation rules (each failure one line naming the object and the field), and
the normalised JSON that is stored (pure)."""

from __future__ import annotations

import copy
import json
import re
from ipaddress import IPv4Network
from typing import Any

import pytest

from leases.keys import KV, KeyKind, Keys
from leases.policy import (
    MAX_SELECTOR_TERMS,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    PolicyInvalid,
    PolicyPort,
    Requirement,
    Rule,
    check_namespace,
    check_policy,
    parse_policies,
    parse_policy,
    policy_to_dict,
    policy_to_json,
    read_manifests,
    relabel,
)
from leases.validate import Rejection

KEYS = Keys("/atomic.io/network")

WEB_YAML = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: team, operator: In, values: [blue, green]}
      podSelector: {}
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.1.0.0/16]
    ports:
    - port: 80
    - port: http
      protocol: UDP
    - port: 1000
      endPort: 2000
"""
DENY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny"},
    "spec": {"podSelector": {}},
}


def test_a_yaml_manifest_parses_with_kubernetes_defaults() -> None:
    [policy] = [parse_policy(o) for o in read_manifests(WEB_YAML)]
    assert policy == NetworkPolicy(
        namespace="x",
        name="web",
        pod_selector=LabelSelector((("app", "web"),)),
        policy_types=("Ingress",),  # the default without egress rules
        ingress=(
            Rule(
                peers=(
                    Peer(
                        pod_selector=LabelSelector(),
                        namespace_selector=LabelSelector(
                            (), (Requirement("team", "In", ("blue", "green")),)
                        ),
                    ),
                    Peer(ip_block=IPBlock(IPv4Network("10.0.0.0/8"), (IPv4Network("10.1.0.0/16"),))),
                ),
                ports=(PolicyPort("TCP", 80), PolicyPort("UDP", "http"), PolicyPort("TCP", 1000, 2000)),
            ),
        ),
    )
    # the stored value is a normalised manifest that parses back to the same policy
    assert parse_policy(json.loads(policy_to_json(policy))) == policy
    assert policy_to_dict(policy)["spec"]["policyTypes"] == ["Ingress"]


def test_policy_types_defaults_and_explicit_ones() -> None:
    deny = parse_policy(DENY)
    assert (deny.namespace, deny.policy_types, deny.ingress) == ("default", ("Ingress",), ())
    with_egress = parse_policy({**DENY, "spec": {"podSelector": {}, "egress": [{}]}})
    assert with_egress.policy_types == ("Ingress", "Egress")
    assert with_egress.egress == (Rule(),)  # `egress: [{}]`: every peer, every port
    only_egress = parse_policy({**DENY, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})
    assert (only_egress.policy_types, only_egress.egress) == (("Egress",), ())  # deny all egress
    both = parse_policy({**DENY, "spec": {"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}})
    assert both.policy_types == ("Ingress", "Egress")


def test_every_input_form_kubectl_takes() -> None:
    one_json = json.dumps(DENY)
    other = {**DENY, "metadata": {"name": "other", "namespace": "y"}}
    multi = WEB_YAML + "---\n" + json.dumps(DENY) + "\n---\n"  # a trailing empty document
    as_list = {"apiVersion": "v1", "kind": "List", "items": [DENY, other]}
    np_list = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "items": [other]}
    names = lambda raw: [p.key_name for p in parse_policies(read_manifests(raw))[0]]  # noqa: E731
    assert names(one_json) == ["default/deny"]
    assert names(multi.encode()) == ["x/web", "default/deny"]
    assert names(json.dumps(as_list)) == ["default/deny", "y/other"]
    assert names(json.dumps(np_list)) == ["y/other"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{oops", "not YAML or JSON: "),
        ("a: [1, 2\n", "not YAML or JSON: "),
        ("a: &x [1, 2]\nb: *x\n", "YAML aliases (*name) are not accepted"),
        ("", "no object in the input"),
        ("kind: List\nitems: 3\n", "a List without a list of items"),
        (b"\xff\xfe\x00", "not YAML or JSON"),
    ],
)
def test_unreadable_input_is_one_line(raw: str | bytes, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        read_manifests(raw)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `obj` with the dotted `path` (list indices as numbers) set to `value`."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


BASE = parse_policies(read_manifests(WEB_YAML))[0][0]
WEB = policy_to_dict(BASE)
PEER0 = "spec.ingress.0.from.0"
PEER1 = "spec.ingress.0.from.1"
PORT0 = "spec.ingress.0.ports.0"
EXPR = f"{PEER0}.namespaceSelector.matchExpressions.0"


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("apiVersion", "networking.k8s.io/v1beta1", "apiVersion/kind", "is not networking.k8s.io/v1/NetworkPolicy"),
        ("kind", "Service", "apiVersion/kind", "is not networking.k8s.io/v1/NetworkPolicy"),
        ("metadata.name", "Web_1", "metadata.name", "at most 253 lower-case letters"),
        ("metadata.namespace", "a" * 64, "metadata.namespace", "at most 63 lower-case letters"),
        ("spec.podSelector", None, "spec.podSelector", "is required"),
        ("spec.podSelector.matchLabels", {"app": True}, "spec.podSelector.matchLabels.app", "label value true is not a string (quote it)"),
        ("spec.podSelector.matchLabels", {"app": 7}, "spec.podSelector.matchLabels.app", "label value 7 is not a string"),
        ("spec.podSelector.matchLabels", {"-app": "web"}, "spec.podSelector.matchLabels", "label key '-app'"),
        ("spec.podSelector.matchLabels", {"Bad_Prefix/app": "x"}, "spec.podSelector.matchLabels", "invalid prefix"),
        ("spec.podSelector.matchLabels", {"app": "a b"}, "spec.podSelector.matchLabels", "label value 'a b'"),
        ("spec.podSelector.matchLabels", {"app": "x" * 64}, "spec.podSelector.matchLabels", "label value"),
        ("spec.podSelector.matchLabels", {f"k{i}": "v" for i in range(MAX_SELECTOR_TERMS + 1)}, "spec.podSelector", "65 terms: vxflow accepts at most 64"),
        (f"{EXPR}.values", [], f"{EXPR}.values", "must be non-empty when operator is In"),
        (f"{EXPR}.operator", "Gt", f"{EXPR}.operator", '"Gt" is not one of In, NotIn, Exists, DoesNotExist'),
        (f"{EXPR}.values", ["blue", 3], f"{EXPR}.values[1]", "3 is not a string"),
        (f"{EXPR}.values", ["v"] * 257, f"{EXPR}.values", "257 values: vxflow accepts at most 256"),
        (EXPR, {"key": "team", "operator": "Exists", "values": ["x"]}, f"{EXPR}.values", "must be empty when operator is Exists"),
        (EXPR, {"key": "", "operator": "Exists"}, f"{EXPR}.key", "label key ''"),
        (PEER0, {}, "spec.ingress[0].from[0]", "must specify a peer"),
        (PEER0, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}, "spec.ingress[0].from[0]", "may not specify more than 1 peer"),
        (f"{PEER1}.ipBlock.cidr", "10.0.0.0/33", f"{PEER1}.ipBlock.cidr", "is not a CIDR"),
        (f"{PEER1}.ipBlock.cidr", None, f"{PEER1}.ipBlock.cidr", "is required"),
        (f"{PEER1}.ipBlock.except", ["10.0.0.0/8"], f"{PEER1}.ipBlock.except[0]", "10.0.0.0/8 must be strictly within cidr 10.0.0.0/8"),
        (f"{PEER1}.ipBlock.except", ["11.0.0.0/16"], f"{PEER1}.ipBlock.except[0]", "must be strictly within cidr"),
        (f"{PEER1}.ipBlock.except", ["fd00::/64"], f"{PEER1}.ipBlock.except[0]", "must be strictly within cidr"),
        (f"{PORT0}.protocol", "SCTP", f"{PORT0}.protocol", "SCTP is valid Kubernetes but vxflow cannot enforce it"),
        (f"{PORT0}.protocol", "ICMP", f"{PORT0}.protocol", '"ICMP" is not TCP, UDP or SCTP'),
        (f"{PORT0}.port", 0, f"{PORT0}.port", "0 is not a port number 1-65535"),
        (f"{PORT0}.port", "80", f"{PORT0}.port", "with at least one letter"),
        (f"{PORT0}.port", "a--b", f"{PORT0}.port", "port name 'a--b'"),
        (PORT0, {"endPort": 90}, f"{PORT0}.port", "must be specified when endPort is specified"),
        (PORT0, {"port": "http", "endPort": 90}, f"{PORT0}.endPort", "may not be specified when port is a named port"),
        (PORT0, {"port": 100, "endPort": 90}, f"{PORT0}.endPort", "90 must be greater than or equal to port 100"),
        (PORT0, {"port": 100, "endPort": 70000}, f"{PORT0}.endPort", "70000 is not a port number"),
        ("spec.policyTypes", ["Ingress", "Sideways"], "spec.policyTypes[1]", '"Sideways" is not Ingress or Egress'),
        ("spec.policyTypes", ["Ingress", "Egress", "Ingress"], "spec.policyTypes", "more than two"),
        ("spec.ingress", {"from": []}, "spec.ingress", "must be a list"),
        ("spec.ingress.0.from", [{"podSelector": {}}] * 257, "spec.ingress[0].from", "257 peers: vxflow accepts at most 256"),
    ],
)  # fmt: skip
def test_each_invalid_field_is_one_line_naming_object_and_field(
    path: str, value: Any, field: str, message: str
) -> None:
    obj = _set(WEB, path, value)
    policies, errors = parse_policies([obj])
    assert policies == [] and len(errors) == 1
    text = str(errors[0])
    meta = obj["metadata"]
    field = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", field)  # spec.ingress.0 -> spec.ingress[0]
    assert text.startswith(f"{obj['kind']} {meta['namespace']}/{meta['name']}: {field}: "), text
    assert message in text and "\n" not in text, text


def test_a_file_reports_every_refusal_and_names_the_objects() -> None:
    objects = [WEB, _set(DENY, "spec.podSelector", "all"), "just a string", DENY, WEB]
    policies, errors = parse_policies(objects)
    assert [p.key_name for p in policies] == ["x/web", "default/deny"]
    assert [str(e) for e in errors] == [
        'NetworkPolicy default/deny: spec.podSelector: must be an object, got "all"',
        'object 3 of 5: not an object: "just a string"',
        "NetworkPolicy x/web: appears twice",
    ]


def test_labels_that_are_not_strings_in_yaml() -> None:
    """YAML turns `app: true`, `app: 1.0` and `on: x` into non-strings; kubectl refuses
    them too. Each is named, not coerced."""
    for labels, message in (
        ("{app: true}", "spec.podSelector.matchLabels.app: label value true is not a string (quote it)"),
        ("{app: 1.0}", "spec.podSelector.matchLabels.app: label value 1.0 is not a string (quote it)"),
        ("{on: x}", "spec.podSelector.matchLabels: label key true is not a string"),
    ):
        manifest = f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec:\n  podSelector:\n    matchLabels: {labels}\n"
        _, [error] = parse_policies(read_manifests(manifest))
        assert str(error) == f"NetworkPolicy default/p: {message}"


def test_stored_values_are_judged_by_the_same_rules() -> None:
    key = KEYS.policy("x", "web")
    assert check_policy(KV(key, policy_to_json(BASE).encode(), 3, 4), "x/web") == BASE
    for value, reason, detail in (
        (b"{oops", "bad_json", "value is not JSON"),
        (b"[]", "bad_json", "value is not a JSON object"),
        (json.dumps(_set(WEB, f"{PEER1}.ipBlock.except", ["11.0.0.0/16"])).encode(), "bad_ip_block",
         "spec.ingress[0].from[1].ipBlock.except[0]: 11.0.0.0/16 must be strictly within cidr"),
        (b" " * (256 * 1024 + 1), "oversized", "exceeds 262144"),
        (policy_to_json(BASE).encode(), "bad_key", "the manifest names x/web, the key x/other"),
    ):  # fmt: skip
        name = "x/other" if reason == "bad_key" else "x/web"
        got = check_policy(KV(key, value, 3, 4), name)
        assert isinstance(got, Rejection), got
        assert (got.kind, got.reason, got.mod_revision) == (KeyKind.POLICY, reason, 4)
        assert detail in got.detail


def test_namespace_labels_always_carry_the_name_label() -> None:
    key = KEYS.namespace("y")
    assert check_namespace(KV(key, b'{"Labels": {"team": "blue"}}'), "y") == Namespace(
        "y", (("kubernetes.io/metadata.name", "y"), ("team", "blue"))
    )
    assert check_namespace(KV(key, b"{}"), "y") == Namespace(
        "y", (("kubernetes.io/metadata.name", "y"),)
    )
    for value, reason, detail in (
        (b'{"Labels": {"team": 1}}', "bad_label", "Labels.team: label value 1 is not a string"),
        (b'{"Labels": ["team"]}', "bad_label", "Labels: must be an object"),
        (b'{"Labels": {"kubernetes.io/metadata.name": "z"}}', "bad_label", "'z' is not the namespace's name 'y'"),
        (json.dumps({"Labels": {f"k{i}": "v" for i in range(129)}}).encode(), "too_many", "129 labels"),
    ):  # fmt: skip
        got = check_namespace(KV(key, value), "y")
        assert isinstance(got, Rejection) and (got.kind, got.reason) == (KeyKind.NAMESPACE, reason)
        assert detail in got.detail, got.detail
    bad_name = check_namespace(KV(KEYS.namespace("Y_1"), b"{}"), "Y_1")
    assert isinstance(bad_name, Rejection) and bad_name.reason == "bad_key"


def test_relabel_sets_and_removes_as_kubectl_label_does() -> None:
    ns = relabel("y", {"kubernetes.io/metadata.name": "y", "old": "1"}, ["team=blue", "old-", "gone-"])
    assert ns.label_map == {"kubernetes.io/metadata.name": "y", "team": "blue"}
    for change, message in (
        ("team", "team: is neither KEY=VALUE nor KEY- (to remove it)"),
        ("kubernetes.io/metadata.name=z", "is always the namespace's name"),
        ("team=a b", "label value 'a b'"),
        ("-x=1", "label key '-x'"),
    ):
        with pytest.raises(PolicyInvalid) as caught:
            relabel("y", {}, [change])
        assert message in str(caught.value)
