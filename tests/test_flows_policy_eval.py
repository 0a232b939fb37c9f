"""The NetworkPolicy evaluator against Kubernetes' own conformance cases (pure).

The layout and the cases are upstream's (kubernetes test/e2e/network/netpol/
network_policy.go): namespaces x, y, z labelled `ns: <name>` (and
`kubernetes.io/metadata.name`), each with pods a, b, c labelled `pod: <name>`,
every pod serving ports 80 and 81 over TCP and UDP under the names
`serve-<port>-<protocol>`. Each case states its 81-pair truth table for each of
80/TCP, 81/TCP, 80/UDP and 81/UDP as upstream's reachability matrix does (every
pair allowed, then the exceptions by pattern: `*` every pod, `x/*` every pod of
x, `x/a` one pod); a pod reaching itself is not judged, as upstream ignores
loopback. Upstream's cases probe one port and protocol each, mostly with fewer
pods; the tables here extend them, by the same rules, to the full layout and to
every port and protocol. A failure prints the expected and observed tables and
their difference. These tables are the oracle of the flows' conformance tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest

from flows.policy_eval import Evaluator, Pod, pod
from leases.pods import ContainerPort
from leases.policy import NAME_LABEL, Namespace, NetworkPolicy, parse_policy

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)
COMBOS = ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"))
SERVED = tuple(ContainerPort(f"serve-{port}-{proto.lower()}", port, proto) for port, proto in COMBOS)
# one node per pod name (a on node 1, ...), as upstream spreads them; literal addresses:
# nothing here is leased, nothing is sent
IPS = {
    f"{ns}/{p}": IPv4Address(f"198.19.{node}.{10 + i}")
    for i, ns in enumerate(NAMESPACES) for node, p in enumerate(POD_NAMES, 1)
}  # fmt: skip


def _matches(pattern: str, pod_name: str) -> bool:
    ns, _, name = pattern.partition("/")
    return pattern == "*" or (ns == pod_name.split("/")[0] and name in ("*", pod_name.split("/")[1]))


class R:
    """A reachability matrix: every pair allowed, then `deny`/`allow` by pattern, in order."""

    def __init__(self) -> None:
        self.m = {(s, d): True for s in PODS for d in PODS}

    def _set(self, src: str, dst: str, ok: bool) -> R:
        for s, d in self.m:
            if _matches(src, s) and _matches(dst, d):
                self.m[s, d] = ok
        return self

    def deny(self, src: str, dst: str) -> R:
        return self._set(src, dst, False)

    def allow(self, src: str, dst: str) -> R:
        return self._set(src, dst, True)


def table(default: R, **only: R) -> dict[tuple[int, str], R]:
    """Expectations per (port, protocol): `default`, except those named like tcp81=..."""
    out = {combo: default for combo in COMBOS}
    for name, r in only.items():
        out[int(name[3:]), name[:3].upper()] = r
    return out


def netpol(ns: str, name: str, selector: dict[str, Any], *, ingress: list | None = None,
           egress: list | None = None, types: list[str] | None = None) -> NetworkPolicy:  # fmt: skip
    """Upstream's GenNetworkPolicy...(name, selector, SetSpecIngressRules(...), ...): each
    rule list given adds its policy type, unless `types` says them."""
    spec: dict[str, Any] = {"podSelector": selector}
    kinds = []
    if ingress is not None:
        spec["ingress"], kinds = ingress, [*kinds, "Ingress"]
    if egress is not None:
        spec["egress"], kinds = egress, [*kinds, "Egress"]
    spec["policyTypes"] = types or kinds
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec})  # fmt: skip


def pod_is(*names: str) -> dict[str, Any]:
    if len(names) == 1:
        return {"matchLabels": {"pod": names[0]}}
    return {"matchExpressions": [{"key": "pod", "operator": "In", "values": list(names)}]}


ALL: dict[str, Any] = {}


def ns_is(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAME_LABEL: name}}}


def ns_expr(operator: str, name: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": NAME_LABEL, "operator": operator, "values": [name]}]}


def cidr(ip: str, *excepted: str) -> dict[str, Any]:
    return {"ipBlock": {"cidr": ip, **({"except": list(excepted)} if excepted else {})}}


@dataclass
class Step:
    policies: list[NetworkPolicy]
    expect: dict[tuple[int, str], R]
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # added to the pod's


def namespaces_of(step: Step) -> list[Namespace]:
    return [
        Namespace(ns, tuple(sorted({"ns": ns, NAME_LABEL: ns, **step.namespace_labels.get(ns, {})}.items())))
        for ns in NAMESPACES
    ]  # fmt: skip


def model(step: Step) -> tuple[Evaluator, dict[str, Pod]]:
    namespaces = namespaces_of(step)
    pods = {
        name: pod(*name.split("/"), IPS[name], {"pod": name.split("/")[1], **step.pod_labels.get(name, {})}, SERVED)
        for name in PODS
    }  # fmt: skip
    return Evaluator(step.policies, namespaces), pods


def _render(title: str, cells: dict[tuple[str, str], str]) -> str:
    lines = [title, "\t".join(["-", *PODS])]
    lines += ["\t".join([s, *(cells[s, d] for d in PODS)]) for s in PODS]
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "." if ok else "X"


Judge = Callable[[Pod, Pod, int, str], bool]


def report(step: Step, judge: Judge | None = None) -> str:
    """Each (port, protocol) whose observed table differs from the expected one, shown;
    `judge` observes (default: the evaluator; the compiled flows' tests pass theirs)."""
    evaluator, pods = model(step)
    allowed = judge or evaluator.allowed
    failures = []
    for (port, proto), expected in step.expect.items():
        observed = {(s, d): allowed(pods[s], pods[d], port, proto) for s in PODS for d in PODS}
        wrong = {k for k in observed if k[0] != k[1] and observed[k] != expected.m[k]}  # no loopback
        if wrong:
            failures.append("\n\n".join([
                f"{port}/{proto}: {len(wrong)} of 72 pairs differ (rows: from, columns: to)",
                _render("expected", {k: _mark(v) for k, v in expected.m.items()}),
                _render("observed", {k: _mark(v) for k, v in observed.items()}),
                _render("difference (! differs)", {k: "!" if k in wrong else "." for k in observed}),
            ]))  # fmt: skip
    return "\n\n".join(failures)


X_B = str(IPS["x/b"])
CASES: dict[str, list[Step]] = {
    "default-deny-ingress": [Step(
        [netpol("x", "deny-ingress", ALL, ingress=[])],
        table(R().deny("*", "x/*")))],
    "default-deny-all": [Step(
        [netpol("x", "deny-all", ALL, ingress=[], egress=[])],
        table(R().deny("*", "x/*").deny("x/*", "*")))],
    "podSelector: allow traffic from pods within server namespace": [Step(
        [netpol("x", "x-a-allows-x-b", pod_is("a"), ingress=[{"from": [{"podSelector": pod_is("b")}]}])],
        table(R().deny("*", "x/a").allow("x/b", "x/a")))],
    "allow ingress traffic for a target": [Step(
        [netpol("x", "deny-all", ALL, ingress=[]),
         netpol("x", "allow-all-to-a", pod_is("a"), ingress=[{"from": [{"podSelector": ALL, "namespaceSelector": ALL}]}])],
        table(R().deny("*", "x/*").allow("*", "x/a")))],
    "allow ingress traffic from pods in all namespaces": [Step(
        [netpol("x", "allow-from-another-ns", pod_is("a"), ingress=[{"from": [{"namespaceSelector": {"matchLabels": {}}}]}])],
        table(R()))],
    "namespaceSelector: allow traffic only from a different namespace": [Step(
        [netpol("x", "allow-client-a-via-ns-selector", pod_is("a"), ingress=[{"from": [ns_is("y")]}])],
        table(R().deny("x/*", "x/a").deny("z/*", "x/a")))],
    "podSelector with matchExpressions": [Step(
        [netpol("x", "x-a-allows-x-b", pod_is("a"), ingress=[{"from": [{"podSelector": {
            "matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]}])],
        table(R().deny("*", "x/a").allow("x/b", "x/a")))],
    "namespaceSelector with matchExpressions": [Step(
        [netpol("x", "allow-ns-y-match-selector", pod_is("a"), ingress=[{"from": [{"namespaceSelector": ns_expr("In", "y")}]}])],
        table(R().deny("x/*", "x/a").deny("z/*", "x/a")))],
    "podSelector OR namespaceSelector": [Step(
        [netpol("x", "allow-ns-y-match-selector", pod_is("a"), ingress=[{"from": [
            {"namespaceSelector": ns_expr("NotIn", "x")}, {"podSelector": pod_is("b")}]}])],
        table(R().deny("x/a", "x/a").deny("x/c", "x/a")))],
    "podSelector AND namespaceSelector": [Step(
        [netpol("x", "allow-ns-y-podselector-and-nsselector", pod_is("a"), ingress=[{"from": [
            {"namespaceSelector": ns_expr("NotIn", "x"), "podSelector": pod_is("b")}]}])],
        table(R().deny("*", "x/a").allow("y/b", "x/a").allow("z/b", "x/a")))],
    "multiple podSelectors and namespaceSelectors": [Step(
        [netpol("x", "allow-ns-y-z-pod-b-c", pod_is("a"), ingress=[{"from": [
            {"namespaceSelector": ns_expr("NotIn", "x"), "podSelector": pod_is("b", "c")}]}])],
        table(R().deny("*", "x/a").allow("y/b", "x/a").allow("y/c", "x/a").allow("z/b", "x/a").allow("z/c", "x/a")))],
    "any of several podSelectors": [Step(
        [netpol("x", "allow-ns-x-pod-b-c", pod_is("a"), ingress=[{"from": [
            {"podSelector": pod_is("b")}, {"podSelector": pod_is("c")}]}])],
        table(R().deny("*", "x/a").allow("x/b", "x/a").allow("x/c", "x/a")))],
    "a pod in another namespace by podSelector and namespaceSelector": [Step(
        [netpol("x", "allow-ns-y-pod-a-via-namespace-pod-selector", pod_is("a"), ingress=[{"from": [
            {**ns_is("y"), "podSelector": pod_is("a")}]}])],
        table(R().deny("*", "x/a").allow("y/a", "x/a")))],
    "ports": [Step(
        [netpol("x", "allow-client-a-via-ns-selector", pod_is("a"), ingress=[{"from": [ns_is("y")], "ports": [{"port": 81, "protocol": "TCP"}]}])],
        table(R().deny("*", "x/a"), tcp81=R().deny("x/*", "x/a").deny("z/*", "x/a")))],
    "stacked policies with overlapping podSelectors": [
        Step([netpol("x", "allow-client-a-via-ns-selector", pod_is("a"), ingress=[{"from": [ns_is("y")], "ports": [{"port": 81, "protocol": "TCP"}]}])],
             table(R().deny("*", "x/a"), tcp81=R().deny("x/*", "x/a").deny("z/*", "x/a"))),
        Step([netpol("x", "allow-client-a-via-ns-selector", pod_is("a"), ingress=[{"from": [ns_is("y")], "ports": [{"port": 81, "protocol": "TCP"}]}]),
              netpol("x", "allow-client-a-via-ns-selector-80", pod_is("a"), ingress=[{"from": [ns_is("y")], "ports": [{"port": 80, "protocol": "TCP"}]}])],
             table(R().deny("*", "x/a"), tcp80=R().deny("x/*", "x/a").deny("z/*", "x/a"),
                   tcp81=R().deny("x/*", "x/a").deny("z/*", "x/a")))],
    "allow-all": [Step(
        [netpol("x", "allow-all", ALL, ingress=[{}])],
        table(R()))],
    "ingress on one named port": [Step(
        [netpol("x", "allow-all", ALL, ingress=[{"ports": [{"port": "serve-81-tcp"}]}])],
        table(R().deny("*", "x/*"), tcp81=R()))],
    "ingress from a namespace on one named port": [Step(
        [netpol("x", "allow-client-a-via-ns-selector-80", pod_is("a"), ingress=[{"from": [ns_is("y")], "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}])],
        table(R().deny("*", "x/a"), tcp80=R().deny("x/*", "x/a").deny("z/*", "x/a")))],
    "egress on one named port": [Step(
        [netpol("x", "allow-egress", ALL, egress=[{"ports": [{"port": "serve-80-tcp"}]}])],
        table(R().deny("x/*", "*"), tcp80=R()))],
    "updated policy": [
        Step([netpol("x", "allow-all-mutate-to-deny-all", ALL, ingress=[{}])], table(R())),
        Step([netpol("x", "allow-all-mutate-to-deny-all", ALL, ingress=[])], table(R().deny("*", "x/*")))],
    "ingress from an updated namespace": [
        Step([netpol("x", "allow-client-a-via-ns-selector", pod_is("a"), ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}])],
             table(R().deny("*", "x/a"))),
        Step([netpol("x", "allow-client-a-via-ns-selector", pod_is("a"), ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}])],
             table(R().deny("*", "x/a").allow("y/*", "x/a")), namespace_labels={"y": {"ns2": "updated"}})],
    "ingress from an updated pod": [
        Step([netpol("x", "allow-client-a-via-pod-selector", pod_is("a"), ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}])],
             table(R().deny("*", "x/a"))),
        Step([netpol("x", "allow-client-a-via-pod-selector", pod_is("a"), ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}])],
             table(R().deny("*", "x/a").allow("x/b", "x/a")), pod_labels={"x/b": {"pod2": "updated"}})],
    "deny ingress from pods of other namespaces": [Step(
        [netpol("x", "deny-empty-policy", ALL, ingress=[{"from": [{"podSelector": {"matchLabels": {}}}]}])],
        table(R().deny("y/*", "x/*").deny("z/*", "x/*")))],
    "deny ingress to an updated pod": [
        Step([netpol("x", "deny-ingress-via-label-selector", {"matchLabels": {"target": "isolated"}}, ingress=[])], table(R())),
        Step([netpol("x", "deny-ingress-via-label-selector", {"matchLabels": {"target": "isolated"}}, ingress=[])],
             table(R().deny("*", "x/a")), pod_labels={"x/a": {"target": "isolated"}})],
    "deny egress by podSelector": [Step(
        [netpol("x", "deny-egress-pod-a", pod_is("a"), egress=[])],
        table(R().deny("x/a", "*")))],
    "deny egress from all pods of a namespace": [Step(
        [netpol("x", "deny-egress-ns-x", ALL, egress=[])],
        table(R().deny("x/*", "*")))],
    "ingress and egress together": [Step(
        [netpol("x", "allow-client-a-via-pod-selector", pod_is("a"), ingress=[{"from": [{"podSelector": pod_is("b")}]}],
                egress=[{"ports": [{"port": 80}]}], types=["Egress", "Ingress"])],
        table(R().deny("*", "x/a").deny("x/a", "*").allow("x/b", "x/a"),
              tcp80=R().deny("*", "x/a").allow("x/b", "x/a")))],
    "egress denied on the client side even if the server allows it": [Step(
        [netpol("x", "allow-to-ns-y-pod-a", pod_is("a"), egress=[{"to": [{**ns_is("y"), "podSelector": pod_is("a")}]}]),
         netpol("y", "allow-from-xa-on-ya-match-selector", pod_is("a"), ingress=[{"from": [{**ns_is("x"), "podSelector": pod_is("a")}]}]),
         netpol("y", "allow-from-xa-on-yb-match-selector", pod_is("b"), ingress=[{"from": [{**ns_is("x"), "podSelector": pod_is("a")}]}])],
        table(R().deny("x/a", "*").deny("*", "y/a").allow("x/a", "y/a").deny("*", "y/b")))],
    "egress to a server in another namespace by podSelector and namespaceSelector": [Step(
        [netpol("x", "allow-to-ns-y-pod-a", pod_is("a"), egress=[{"to": [{**ns_is("y"), "podSelector": pod_is("a")}]}])],
        table(R().deny("x/a", "*").allow("x/a", "y/a")))],
    "ingress on any port of one protocol": [Step(
        [netpol("x", "allow-ingress-by-proto", pod_is("a"), ingress=[{"ports": [{"protocol": "TCP"}]}])],
        table(R(), udp80=R().deny("*", "x/a"), udp81=R().deny("*", "x/a")))],
    "ingress allow-all takes precedence": [
        Step([netpol("x", "allow-ingress-port-80", ALL, ingress=[{"ports": [{"port": 80}]}])],
             table(R().deny("*", "x/*"), tcp80=R())),
        Step([netpol("x", "allow-ingress-port-80", ALL, ingress=[{"ports": [{"port": 80}]}]),
              netpol("x", "allow-ingress", ALL, ingress=[{}])], table(R()))],
    "egress allow-all takes precedence": [
        Step([netpol("x", "allow-egress-port-80", ALL, egress=[{"ports": [{"port": 80}]}])],
             table(R().deny("x/*", "*"), tcp80=R())),
        Step([netpol("x", "allow-egress-port-80", ALL, egress=[{"ports": [{"port": 80}]}]),
              netpol("x", "allow-egress", ALL, egress=[{}])], table(R()))],
    "policies deleted": [
        Step([netpol("x", "deny-all", ALL, ingress=[], egress=[])], table(R().deny("x/*", "*").deny("*", "x/*"))),
        Step([], table(R()))],
    "egress to a server in a CIDR block": [Step(
        [netpol("x", "allow-client-a-via-cidr-egress-rule", pod_is("a"), egress=[{"to": [cidr(f"{IPS['y/b']}/32")]}])],
        table(R().deny("x/a", "*").allow("x/a", "y/b")))],
    "except clause of a CIDR block": [Step(
        [netpol("x", "allow-client-a-via-cidr-egress-rule", pod_is("a"), egress=[{"to": [cidr("198.19.0.0/16", f"{X_B}/32")]}])],
        table(R().deny("x/a", "x/b")))],
    "an IP in both a CIDR and its except": [
        Step([netpol("x", "allow-client-a-via-cidr-egress-rule", pod_is("a"), egress=[{"to": [cidr("198.19.0.0/16", f"{X_B}/32")]}])],
             table(R().deny("x/a", "x/b"))),
        Step([netpol("x", "allow-client-a-via-cidr-egress-rule", pod_is("a"), egress=[{"to": [cidr(f"{X_B}/32")]}])],
             table(R().deny("x/a", "*").allow("x/a", "x/b")))],
    "ingress and egress controlled independently": [
        Step([netpol("x", "allow-egress-for-target", pod_is("a"), egress=[{}])], table(R())),
        Step([netpol("x", "allow-egress-for-target", pod_is("a"), egress=[{}]),
              netpol("x", "deny-ingress-via-label-selector", pod_is("a"), ingress=[])], table(R().deny("*", "x/a")))],
    "UDP only: no access by TCP": [Step(
        [netpol("x", "allow-only-udp-ingress-on-port-81", pod_is("a"), ingress=[{"ports": [{"port": 81, "protocol": "UDP"}]}])],
        table(R().deny("*", "x/a"), udp81=R()))],
    "UDP ports from a namespace": [Step(
        [netpol("x", "allow-ingress-on-port-81-ns-x", pod_is("a"), ingress=[{"from": [ns_is("y")], "ports": [{"port": 81, "protocol": "UDP"}]}])],
        table(R().deny("*", "x/a"), udp81=R().deny("x/*", "x/a").deny("z/*", "x/a")))],
    "namespaceSelector matchExpressions on the default name label (egress)": [Step(
        [netpol("x", "allow-ns-y-match-selector-for-immutable-ns-label", pod_is("a"), egress=[{"to": [{"namespaceSelector": ns_expr("NotIn", "y")}]}])],
        table(R().deny("x/a", "y/*")))],
    # not upstream's: port ranges (endPort)
    "endPort ranges": [Step(
        [netpol("x", "range", pod_is("a"), ingress=[{"ports": [{"port": 79, "endPort": 80}]}]),
         netpol("x", "range-udp", pod_is("b"), ingress=[{"ports": [{"port": 81, "endPort": 90, "protocol": "UDP"}]}])],
        table(R().deny("*", "x/a").deny("*", "x/b"), tcp80=R().deny("*", "x/b"), udp81=R().deny("*", "x/a")))],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_upstream_netpol_case(case: str) -> None:
    for i, step in enumerate(CASES[case], 1):
        problems = report(step)
        assert not problems, f"step {i} of {len(CASES[case])}:\n{problems}"


def test_a_wrong_table_is_shown_as_expected_observed_and_difference() -> None:
    """The failure message itself: a reader sees which pairs differ, and how."""
    wrong = Step([netpol("x", "deny-ingress", ALL, ingress=[])], table(R().deny("*", "y/a")))
    text = report(wrong)
    assert "80/TCP: 32 of 72 pairs differ (rows: from, columns: to)" in text
    assert "expected\n-\tx/a\tx/b" in text and "observed\n" in text
    diff = text.split("difference (! differs)\n")[1].splitlines()
    assert diff[2].split("\t")[:5] == ["x/b", "!", ".", "!", "!"]  # x/b to x/a, x/c, y/a


def test_addresses_that_are_no_pods_and_the_verdicts_reasons() -> None:
    """ipBlocks judge any address; selectors never match one that is no pod's; a
    named port never resolves on an address; an address has no policy of its own."""
    outside = IPv4Address("203.0.113.5")
    web = pod("x", "web", IPv4Address("198.19.1.5"), {"app": "web"}, [ContainerPort("http", 8080)])
    policies = [
        netpol("x", "from-net", {"matchLabels": {"app": "web"}},
               ingress=[{"from": [cidr("203.0.113.0/24", "203.0.113.128/25")], "ports": [{"port": "http"}]}],
               egress=[{"to": [cidr("203.0.113.0/24", "203.0.113.4/30")]}, {"to": [{"podSelector": ALL}]}]),
        netpol("x", "deny-all", ALL, ingress=[]),
    ]  # fmt: skip
    ev = Evaluator(policies)
    assert ev.allowed(outside, web, 8080)  # in the cidr, outside the except, the named port
    assert not ev.allowed(outside, web, 80)  # the name resolves to 8080 only
    assert not ev.allowed(IPv4Address("203.0.113.200"), web, 8080)  # in the except
    assert not ev.allowed(web, outside, 443)  # 203.0.113.4/30 is excepted
    assert ev.allowed(web, IPv4Address("203.0.113.9"), 443)
    assert ev.allowed(outside, IPv4Address("203.0.113.9"), 1)  # neither end is a pod
    verdict = ev.verdict(outside, web, 80)
    assert verdict.egress.isolated is False and verdict.egress.allowed
    assert verdict.ingress.isolating == ("x/from-net", "x/deny-all") and verdict.ingress.allowing == ()
    assert ev.verdict(outside, web, 8080).ingress.allowing == ("x/from-net",)
    assert ev.allowed(web, web, 1)  # loopback
    # a policy in a namespace without pods isolates nothing that exists
    lonely = Evaluator([netpol("empty", "deny", ALL, ingress=[], egress=[])])
    assert lonely.allowed(web, outside, 80) and lonely.allowed(outside, web, 80)
    # an IPv6 block never matches an IPv4 address
    v6 = Evaluator([netpol("x", "v6", ALL, ingress=[{"from": [cidr("::/0")]}])])
    assert not v6.allowed(outside, web, 80)
