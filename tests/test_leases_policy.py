"""NetworkPolicy manifests: reading them as kubectl users have them, Kubernetes' defaults,
the API's validation rules (each failure one line naming the object and the field), and
the normalised JSON that is stored (pure)."""

from __future__ import annotations

import copy
import json
import logging
import re
import textwrap
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from leases.etcd_server import EtcdServer
from leases.events import NamespaceAdded, NamespaceRemoved, PolicyAdded, PolicyRemoved
from leases.keys import KV, KeyKind, Keys
from leases.manifests import read_manifests
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
    relabel,
)
from leases.registry import Registry
from leases.state import View, diff
from leases.validate import Rejection
from tests.test_leases_cli import PREFIX, as_typed, assert_operator_error, readme_block, run
from tests.test_leases_watch import drain, metric
from vxflow.health import assess

KEYS = Keys(PREFIX)

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
        ("[" * 100_000, "not YAML or JSON: RecursionError"),
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
        ("spec.egres", [{}], "spec.egres", "unknown field (known: podSelector, ingress, egress, policyTypes)"),
        ("spec.ingress.0.form", [], "spec.ingress[0].form", "unknown field (known: from, ports)"),
        (f"{PORT0}.Port", 80, f"{PORT0}.Port", "unknown field (known: protocol, port, endPort)"),
        (f"{PEER1}.ipBlock.exept", [], f"{PEER1}.ipBlock.exept", "unknown field (known: cidr, except)"),
        (f"{PEER0}.namespaceSelector.matchLabel", {}, f"{PEER0}.namespaceSelector.matchLabel", "unknown field"),
        ("specs", {}, "specs", "unknown field (known: apiVersion, kind, metadata, spec, status)"),
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
        (b"[" * 100_000, "bad_json", "value is JSON nested too deeply"),
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


# -- the View: policies and namespaces as events, snapshots and rejections ---------------


def test_the_view_reports_policies_and_namespaces_without_any_config() -> None:
    web_key, ns_key = KEYS.policy("x", "web"), KEYS.namespace("y")
    view = View(KEYS).load([KV(web_key, policy_to_json(BASE).encode(), 2, 2)], 2)
    assert view.snapshot().policies == (BASE,)  # no network config needed
    events, rejections, _ = view.apply({ns_key: KV(ns_key, b'{"Labels": {"team": "blue"}}', 3, 3)}, 3)
    blue = Namespace("y", (("kubernetes.io/metadata.name", "y"), ("team", "blue")))
    assert (events, rejections) == ([NamespaceAdded(blue, 3)], [])
    # a change is removed-then-added; an invalid value withdraws the valid one and is rejected
    narrowed = parse_policy(_set(WEB, "spec.podSelector", {}))
    events, _, _ = view.apply({web_key: KV(web_key, policy_to_json(narrowed).encode(), 2, 4)}, 4)
    assert events == [PolicyRemoved(BASE, 4), PolicyAdded(narrowed, 4)]
    before = view.snapshot()
    bad = _set(WEB, "spec.podSelector.matchLabels", {"app": True})
    events, rejections, _ = view.apply({web_key: KV(web_key, json.dumps(bad).encode(), 2, 5),
                                        ns_key: None}, 5)  # fmt: skip
    assert events == [PolicyRemoved(narrowed, 5), NamespaceRemoved(blue, 5)] or events == [
        NamespaceRemoved(blue, 5), PolicyRemoved(narrowed, 5)]  # fmt: skip
    assert [(r.key, r.reason) for r in rejections] == [(web_key, "bad_label")]
    after = view.snapshot()
    assert (after.policies, after.namespaces) == ((), ())
    assert [r.key for r in after.rejected if r.kind is KeyKind.POLICY] == [web_key]
    assert sorted(map(repr, diff(before, after))) == sorted(map(repr, events))
    rebuilt = View(KEYS).load(view.kvs.values(), 5).snapshot()
    assert (rebuilt.policies, rebuilt.namespaces, rebuilt.rejected) == (
        after.policies, after.namespaces, after.rejected)  # fmt: skip


# -- the CLI against etcd ----------------------------------------------------------------


@pytest.mark.integration
def test_policies_set_list_rm_and_namespaces_label(etcd: EtcdServer, tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(WEB_YAML + "---\n" + json.dumps(DENY) + "\n")
    result = run(etcd, "policies", "set", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote {PREFIX}/vxflow/policies/x/web: pods app=web, Ingress",
        f"wrote {PREFIX}/vxflow/policies/default/deny: pods <none>, Ingress",
    ]
    # a policy in a namespace that has no pods (nor labels) is valid Kubernetes: stored
    empty = {**DENY, "metadata": {"name": "early", "namespace": "no-pods-yet"},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}  # fmt: skip
    result = run(etcd, "policies", "set", "-", stdin=json.dumps(empty))
    assert result.stdout.strip() == (
        f"wrote {PREFIX}/vxflow/policies/no-pods-yet/early: pods <none>, Ingress+Egress")

    table = run(etcd, "policies", "list")
    assert table.exit_code == 0, table.output
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[:4] == [
        ["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES", "INGRESS", "EGRESS"],
        ["default", "deny", "<none>", "Ingress", "0", "0"],
        ["no-pods-yet", "early", "<none>", "Ingress,Egress", "0", "0"],
        ["x", "web", "app=web", "Ingress", "1", "0"],
    ]
    assert rows[4][:3] == ["3", "networking.k8s.io/v1", "NetworkPolicies"]

    # -o json is a kubectl List of the normalised manifests: `policies set` takes it back
    listed = run(etcd, "policies", "list", "-o", "json").stdout
    doc = json.loads(listed)
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in doc["items"]] == [
        ("default", "deny"), ("no-pods-yet", "early"), ("x", "web")]  # fmt: skip
    assert doc["items"][2] == WEB and doc["rejected"] == []
    again = run(etcd, "policies", "set", "-", stdin=listed)
    assert again.exit_code == 0 and len(again.stdout.splitlines()) == 3, again.output

    # all or nothing: every refusal named, nothing written
    huge = _set(WEB, "spec.podSelector.matchLabels", {f"k{i}": "v" for i in range(1000)})
    mixed = [
        {**DENY, "metadata": {"name": "fine", "namespace": "x"}},
        _set(WEB, f"{PEER1}.ipBlock.except", ["10.0.0.0/7"]),
        _set(DENY, "spec.podSelector", {"matchLabels": {"app": 1}}),
        huge,
    ]
    result = run(etcd, "policies", "set", "-", stdin=json.dumps({"kind": "List", "items": mixed}))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "refused NetworkPolicy x/web: spec.ingress[0].from[1].ipBlock.except[0]: "
        "10.0.0.0/7 must be strictly within cidr 10.0.0.0/8",
        "refused NetworkPolicy default/deny: spec.podSelector.matchLabels.app: "
        "label value 1 is not a string (quote it)",
        "refused NetworkPolicy x/web: spec.podSelector: 1000 terms: vxflow accepts at most 64",
        "Error: 3 of 4 object(s) refused; nothing written",
    ]
    many = [{**DENY, "metadata": {"name": f"p{i}"}} for i in range(101)]
    result = run(etcd, "policies", "set", "-", stdin=json.dumps({"kind": "List", "items": many}))
    assert result.exit_code == 1 and result.stderr.splitlines()[0].startswith(
        "refused 101 policies of ")  # fmt: skip
    assert "one input holds at most 100 policies and 1048576 bytes (one etcd transaction)" in result.stderr
    with Registry(etcd.endpoint, PREFIX) as reg:
        assert reg.etcd.get(reg.keys.policy("default", "p0")) is None
        assert reg.etcd.get(reg.keys.policy("x", "fine")) is None
        assert reg.snapshot().policies[2] == BASE  # the stored web is untouched
    for stdin, message in (
        ("kind: NetworkPolicy\nmetadata: [", "-: not YAML or JSON: "),
        ("a: &a [x]\nb: [*a, *a]\n", "-: not YAML or JSON: YAML aliases (*name) are not accepted"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "Service default/s: apiVersion/kind: "),
    ):
        assert_operator_error(run(etcd, "policies", "set", "-", stdin=stdin), message)

    # namespaces' labels, as kubectl label sets and removes them
    result = run(etcd, "namespaces", "label", "y", "team=blue", "tier=web")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (f"wrote {PREFIX}/vxflow/namespaces/y: "
                                     "kubernetes.io/metadata.name=y,team=blue,tier=web")  # fmt: skip
    result = run(etcd, "namespaces", "label", "y", "tier-")
    assert result.stdout.strip().endswith(": kubernetes.io/metadata.name=y,team=blue")
    assert_operator_error(run(etcd, "namespaces", "label", "y", "team=a b"),
                          "namespace y: team=a b: label value 'a b'")  # fmt: skip
    assert_operator_error(run(etcd, "namespaces", "label", "y", "kubernetes.io/metadata.name=z"),
                          "is always the namespace's name")  # fmt: skip
    assert_operator_error(run(etcd, "namespaces", "label", "Y_1", "a=b"),
                          "namespace Y_1: namespace: 'Y_1' must be at most 63")  # fmt: skip
    listed = run(etcd, "namespaces", "list")
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["NAME", "LABELS"], ["y", "kubernetes.io/metadata.name=y,team=blue"]]  # fmt: skip
    # an invalid stored value is listed as rejected, and replaced (not merged) by a label
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.etcd.put(reg.keys.namespace("z"), '{"Labels": {"team": 7}}')
    listed = run(etcd, "namespaces", "list")
    assert f"rejected {PREFIX}/vxflow/namespaces/z: Labels.team: label value 7" in listed.stderr
    assert run(etcd, "namespaces", "label", "z", "a=b").stdout.strip() == (
        f"wrote {PREFIX}/vxflow/namespaces/z: a=b,kubernetes.io/metadata.name=z")

    assert run(etcd, "policies", "rm", "x/web").stdout.strip() == (
        f"removed {PREFIX}/vxflow/policies/x/web")
    assert_operator_error(run(etcd, "policies", "rm", "x/web"),
                          f"no policy at {PREFIX}/vxflow/policies/x/web")  # fmt: skip
    assert_operator_error(run(etcd, "policies", "rm", "web"), "'web' is not NAMESPACE/NAME")
    assert_operator_error(run(None, "policies", "list"), "etcd")


@pytest.mark.integration
def test_values_written_behind_vxflows_back_are_rejected_counted_and_logged(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """What a controller's watch sees: a valid policy is an event; hostile values are
    rejections with their reason, logged and counted once, and listed by the CLI."""
    strings = _set(_set(WEB, "metadata.name", "strings"), "spec.podSelector.matchLabels",
                   {"app": ["web"]})  # fmt: skip
    table = [
        (KEYS.policy("x", "junk"), "{not json", "bad_json"),
        (KEYS.policy("x", "strings"), json.dumps(strings), "bad_label"),
        (KEYS.policy("x", "huge"), " " * (256 * 1024 + 1), "oversized"),
        (KEYS.policy("x", "other"), policy_to_json(BASE), "bad_key"),
        (KEYS.namespace("y"), '{"Labels": {"team": false}}', "bad_label"),
    ]
    counts = {(k, r): metric("vxflow_registry_rejected_entries_total", kind=k, reason=r)
              for k in ("policy", "namespace") for _, _, r in table}  # fmt: skip
    caplog.set_level(logging.WARNING, logger="leases.registry")
    with Registry(etcd.endpoint, PREFIX) as reg, reg.watch(since=reg.snapshot()) as watch:
        for key, value, _ in table:
            reg.etcd.put(key, value)
        reg.etcd.put(KEYS.policy("x", "web"), policy_to_json(BASE))
        events = drain(watch, lambda ev: len(ev) >= 1)
        assert events[0] == PolicyAdded(BASE, events[0].revision) and len(events) == 1
        rejected = {(r.key, r.reason) for r in watch.snapshot.rejected
                    if r.kind in (KeyKind.POLICY, KeyKind.NAMESPACE)}  # fmt: skip
        assert rejected == {(key, reason) for key, _, reason in table}
    for key, _, reason in table:
        kind = "namespace" if "/namespaces/" in key else "policy"
        assert metric("vxflow_registry_rejected_entries_total", kind=kind, reason=reason) > counts[(kind, reason)]
        assert any(key in rec.getMessage() and reason in rec.getMessage() for rec in caplog.records)
    result = run(etcd, "policies", "list", "-o", "json")
    doc = json.loads(result.stdout)
    assert [i["metadata"]["name"] for i in doc["items"]] == ["web"]
    assert {(r["key"], r["reason"]) for r in doc["rejected"]} == {(k, r) for k, _, r in table}
    stderr = run(etcd, "policies", "list").stderr
    assert f"rejected {KEYS.namespace('y')}: Labels.team: label value false is not a string" in stderr


@pytest.mark.integration
def test_the_readme_commands_as_typed(etcd: EtcdServer, tmp_path: Path) -> None:
    """README (Network policy): the four commands as typed, netpol.yaml being the example
    `vxflow policies set --help` shows; the default prefix, etcd from the environment."""
    typed = as_typed(etcd, tmp_path)
    lines = readme_block("## Network policy")
    assert lines == ["vxflow policies set netpol.yaml", "vxflow policies list",
                     "vxflow namespaces label shop team=front",
                     "vxflow policies rm shop/allow-web"]  # fmt: skip
    helptext = typed("vxflow policies set --help").stdout
    example = helptext.split("Example FILE (YAML or JSON, as for kubectl apply -f):\n")[1]
    (tmp_path / "netpol.yaml").write_text(textwrap.dedent(example))
    key = "/coreos.com/network/vxflow/policies/shop/allow-web"
    assert typed(lines[0]).stdout.strip() == f"wrote {key}: pods app=web, Ingress"
    listed = typed(lines[1]).stdout.splitlines()
    assert listed[1].split() == ["shop", "allow-web", "app=web", "Ingress", "1", "0"]
    assert typed(lines[2]).stdout.strip() == (
        "wrote /coreos.com/network/vxflow/namespaces/shop: "
        "kubernetes.io/metadata.name=shop,team=front")  # fmt: skip
    assert typed(lines[3]).stdout.strip() == f"removed {key}"


def test_vxflow_status_names_a_rejected_policy() -> None:
    """`vxflow status` lists every rejected entry among its problems, policies' included."""
    config = KV(KEYS.config, b'{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}', 1, 1)
    bad = json.dumps(_set(WEB, "spec.podSelector.matchLabels", {"app": True})).encode()
    snap = View(KEYS).load([config, KV(KEYS.policy("x", "web"), bad, 2, 2)], 2).snapshot()
    report = assess(snap, {}, {})
    assert (f"rejected policy {KEYS.policy('x', 'web')}: spec.podSelector.matchLabels.app: "
            "label value true is not a string (quote it) [bad_label]") in report.problems  # fmt: skip
