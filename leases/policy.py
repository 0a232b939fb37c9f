"""Kubernetes NetworkPolicy (`networking.k8s.io/v1`): the model, its validation, its JSON.

Pure. Manifests come as users have them for kubectl (YAML or JSON; one object,
several YAML documents, or a `List`/`NetworkPolicyList`); each becomes a frozen
`NetworkPolicy` with Kubernetes' defaults filled in, or a `PolicyInvalid` whose
text is one line naming the object and the field, judged by the API server's
own rules (pkg/apis/networking/validation). The same parser judges what etcd
holds, so a value written behind vxflow's back is a counted `Rejection`:

    <prefix>/vxflow/policies/<namespace>/<name>  the policy as a normalised manifest
    <prefix>/vxflow/namespaces/<name>             {"Labels": {...}}

A namespace's labels always carry `kubernetes.io/metadata.name: <name>`, as
Kubernetes sets them; a namespace without a key has that label alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from leases.keys import KV, KeyKind
from leases.labels import (
    MAX_LABELS,
    MAX_SELECTOR_TERMS,
    PolicyInvalid,
    PolicyReason,
    bounded,
    change_labels,
    dns_label_problem,
    dns_subdomain_problem,
    label_key_problem,
    label_value_problem,
    parse_labels,
    port_name_problem,
    show,
)
from leases.validate import Reason, Rejection, _Invalid, _object

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
DEFAULT_NAMESPACE = "default"  # kubectl's, for an object that names none
NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP")  # SCTP is valid Kubernetes, but vxflow cannot enforce it
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
INGRESS, EGRESS = "Ingress", "Egress"

# Bounds of what vxflow accepts (Kubernetes' only bound is the object's size): each
# rule becomes flows on every switch, so a selector of thousands of terms is refused.
MAX_POLICY_BYTES = 256 * 1024  # one stored policy
MAX_NAMESPACE_BYTES = 64 * 1024
MAX_VALUES = 256  # values of one matchExpression
MAX_RULES = 128  # ingress or egress rules of one policy
MAX_PEERS = 256  # from/to peers of one rule
MAX_PORTS = 128  # ports of one rule
MAX_EXCEPT = 128  # except blocks of one ipBlock


# -- the model ------------------------------------------------------------------------

Labels = Mapping[str, str]
IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Requirement:
    """One matchExpression: `key` In/NotIn `values`, or Exists/DoesNotExist."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: also true without the key


@dataclass(frozen=True)
class LabelSelector:
    """Kubernetes' LabelSelector: every term must hold; the empty selector selects all."""

    match_labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    match_expressions: tuple[Requirement, ...] = ()
    # match_labels as a set: their test is one subset test of the labels' items (a new
    # rule's peers are looked for among every pod of the cluster)
    _pairs: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pairs", frozenset(self.match_labels))

    def matches(self, labels: Labels) -> bool:
        return labels.items() >= self._pairs and all(r.matches(labels) for r in self.match_expressions)


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepted: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.excepted)


@dataclass(frozen=True)
class Peer:
    """A from/to entry: pods by selector(s) (both given: both must match) or an ipBlock.

    podSelector alone selects in the policy's own namespace; namespaceSelector
    alone selects every pod of the namespaces it matches.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """A port entry: no port is every port of the protocol; a name resolves per pod."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule. No peers: every peer; no ports: every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]  # "Ingress" and/or "Egress", in that order
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @cached_property
    def key_name(self) -> str:
        """`<namespace>/<name>`: the key below `<prefix>/vxflow/policies/` (made once: the
        policy stages look it up for every rule of every node at each update)."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Namespace:
    """A namespace's labels (`kubernetes.io/metadata.name` always among them)."""

    name: str
    labels: tuple[tuple[str, str], ...]  # sorted by key

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def default_labels(namespace: str) -> dict[str, str]:
    """The labels of a namespace nobody labelled."""
    return {NAME_LABEL: namespace}


# -- parsing --------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], name: str, kind: type, path: str, default: Any = None) -> Any:
    """obj[name] of type `kind` (None or absent: `default`)."""
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        want = {dict: "an object", list: "a list", str: "a string"}[kind]
        raise PolicyInvalid(PolicyReason.BAD_MANIFEST, f"{path}{name}",
                            f"must be {want}, got {show(value)}")  # fmt: skip
    return value


def _fields(raw: Any, field: str, reason: str, known: tuple[str, ...]) -> dict[str, Any]:
    """`raw` as an object of `known` fields only: a misspelt field (`egres`) would
    silently change what a policy allows, so it is refused, as kubectl's strict
    validation refuses it."""
    if not isinstance(raw, dict):
        raise PolicyInvalid(reason, field, f"must be an object, got {show(raw)}")
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise PolicyInvalid(reason, f"{field}.{unknown[0]}" if field else unknown[0],
                            f"unknown field (known: {', '.join(known)})")  # fmt: skip
    return raw


def _requirement(raw: Any, field: str) -> Requirement:
    _fields(raw, field, PolicyReason.BAD_SELECTOR, ("key", "operator", "values"))
    key = _get(raw, "key", str, f"{field}.", "")
    problem = label_key_problem(key)
    if problem:
        raise PolicyInvalid(PolicyReason.BAD_SELECTOR, f"{field}.key", problem)
    op = raw.get("operator")
    if op not in OPERATORS:
        raise PolicyInvalid(PolicyReason.BAD_SELECTOR, f"{field}.operator",
                            f"{show(op)} is not one of {', '.join(OPERATORS)}")  # fmt: skip
    values = bounded(_get(raw, "values", list, f"{field}.", []), MAX_VALUES,
                      f"{field}.values", "values")  # fmt: skip
    if op in ("In", "NotIn") and not values:
        raise PolicyInvalid(PolicyReason.BAD_SELECTOR, f"{field}.values",
                            f"must be non-empty when operator is {op}")  # fmt: skip
    if op in ("Exists", "DoesNotExist") and values:
        raise PolicyInvalid(PolicyReason.BAD_SELECTOR, f"{field}.values",
                            f"must be empty when operator is {op}")  # fmt: skip
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise PolicyInvalid(PolicyReason.BAD_SELECTOR, f"{field}.values[{i}]",
                                f"{show(value)} is not a string (quote it)")  # fmt: skip
        problem = label_value_problem(value)
        if problem:
            raise PolicyInvalid(PolicyReason.BAD_SELECTOR, f"{field}.values[{i}]", problem)
    return Requirement(key, op, tuple(values))


def parse_selector(raw: Any, field: str) -> LabelSelector:
    _fields(raw, field, PolicyReason.BAD_SELECTOR, ("matchLabels", "matchExpressions"))
    labels = raw.get("matchLabels") or {}
    exprs = _get(raw, "matchExpressions", list, f"{field}.", [])
    if len(labels if isinstance(labels, dict) else ()) + len(exprs) > MAX_SELECTOR_TERMS:
        raise PolicyInvalid(PolicyReason.TOO_MANY, field,
                            f"{len(labels) + len(exprs)} terms: vxflow accepts at most "
                            f"{MAX_SELECTOR_TERMS}")  # fmt: skip
    match_labels = parse_labels(labels, f"{field}.matchLabels")
    return LabelSelector(
        tuple(sorted(match_labels.items())),
        tuple(_requirement(e, f"{field}.matchExpressions[{i}]") for i, e in enumerate(exprs)),
    )


def _network(text: Any, field: str) -> IPNetwork:
    if not isinstance(text, str):
        raise PolicyInvalid(PolicyReason.BAD_IP_BLOCK, field,
                            f"must be a CIDR string, got {show(text)}")  # fmt: skip
    try:
        return ip_network(text, strict=False)  # host bits allowed, as Go's ParseCIDR does
    except ValueError:
        raise PolicyInvalid(PolicyReason.BAD_IP_BLOCK, field,
                            f"{text!r} is not a CIDR such as 10.0.0.0/8") from None  # fmt: skip


def _ip_block(raw: Any, field: str) -> IPBlock:
    _fields(raw, field, PolicyReason.BAD_IP_BLOCK, ("cidr", "except"))
    if raw.get("cidr") in (None, ""):
        raise PolicyInvalid(PolicyReason.BAD_IP_BLOCK, f"{field}.cidr", "is required")
    cidr = _network(raw["cidr"], f"{field}.cidr")
    excepted = []
    listed = _get(raw, "except", list, f"{field}.", [])
    for i, text in enumerate(bounded(listed, MAX_EXCEPT, f"{field}.except", "blocks")):
        net = _network(text, f"{field}.except[{i}]")
        if net.version != cidr.version or not (
            net.subnet_of(cidr) and net.prefixlen > cidr.prefixlen  # type: ignore[arg-type]
        ):
            raise PolicyInvalid(PolicyReason.BAD_IP_BLOCK, f"{field}.except[{i}]",
                                f"{net} must be strictly within cidr {cidr}")  # fmt: skip
        excepted.append(net)
    return IPBlock(cidr, tuple(excepted))


def _peer(raw: Any, field: str) -> Peer:
    _fields(raw, field, PolicyReason.BAD_PEER, ("podSelector", "namespaceSelector", "ipBlock"))
    given = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if raw.get(k) is not None]
    if not given:
        raise PolicyInvalid(PolicyReason.BAD_PEER, field,
                            "must specify a peer: podSelector, namespaceSelector or ipBlock")  # fmt: skip
    if "ipBlock" in given and len(given) > 1:
        raise PolicyInvalid(PolicyReason.BAD_PEER, field,
                            "may not specify more than 1 peer: ipBlock stands alone")  # fmt: skip
    if "ipBlock" in given:
        return Peer(ip_block=_ip_block(raw["ipBlock"], f"{field}.ipBlock"))
    pods, spaces = raw.get("podSelector"), raw.get("namespaceSelector")
    return Peer(
        pod_selector=None if pods is None else parse_selector(pods, f"{field}.podSelector"),
        namespace_selector=None if spaces is None
        else parse_selector(spaces, f"{field}.namespaceSelector"),
    )  # fmt: skip


def _port_number(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PolicyInvalid(PolicyReason.BAD_PORT, field,
                            f"{show(value)} is not a port number 1-65535")  # fmt: skip
    return value


def _policy_port(raw: Any, field: str) -> PolicyPort:
    _fields(raw, field, PolicyReason.BAD_PORT, ("protocol", "port", "endPort"))
    protocol = raw.get("protocol") or "TCP"
    if protocol == "SCTP":
        raise PolicyInvalid(PolicyReason.BAD_PROTOCOL, f"{field}.protocol",
                            "SCTP is valid Kubernetes but vxflow cannot enforce it: "
                            "refused rather than ignored")  # fmt: skip
    if protocol not in PROTOCOLS:
        raise PolicyInvalid(PolicyReason.BAD_PROTOCOL, f"{field}.protocol",
                            f"{show(protocol)} is not TCP, UDP or SCTP")  # fmt: skip
    port = raw.get("port")
    if isinstance(port, str):
        problem = port_name_problem(port)
        if problem:
            raise PolicyInvalid(PolicyReason.BAD_PORT, f"{field}.port", problem)
    elif port is not None:
        port = _port_number(port, f"{field}.port")
    end = raw.get("endPort")
    if end is not None:
        end = _port_number(end, f"{field}.endPort")
        if port is None:
            raise PolicyInvalid(PolicyReason.BAD_PORT, f"{field}.port",
                                "must be specified when endPort is specified")  # fmt: skip
        if isinstance(port, str):
            raise PolicyInvalid(PolicyReason.BAD_PORT, f"{field}.endPort",
                                "may not be specified when port is a named port")  # fmt: skip
        if end < port:
            raise PolicyInvalid(PolicyReason.BAD_PORT, f"{field}.endPort",
                                f"{end} must be greater than or equal to port {port}")  # fmt: skip
    return PolicyPort(protocol, port, end)


def _rule(raw: Any, field: str, peers_name: str) -> Rule:
    _fields(raw, field, PolicyReason.BAD_MANIFEST, (peers_name, "ports"))
    peers = bounded(_get(raw, peers_name, list, f"{field}.", []), MAX_PEERS,
                     f"{field}.{peers_name}", "peers")  # fmt: skip
    ports = bounded(_get(raw, "ports", list, f"{field}.", []), MAX_PORTS,
                     f"{field}.ports", "ports")  # fmt: skip
    return Rule(
        tuple(_peer(p, f"{field}.{peers_name}[{i}]") for i, p in enumerate(peers)),
        tuple(_policy_port(p, f"{field}.ports[{i}]") for i, p in enumerate(ports)),
    )


def _rules(spec: Mapping[str, Any], name: str, peers_name: str) -> tuple[Rule, ...]:
    rules = bounded(_get(spec, name, list, "spec.", []), MAX_RULES, f"spec.{name}", "rules")
    return tuple(_rule(r, f"spec.{name}[{i}]", peers_name) for i, r in enumerate(rules))


def _policy_types(spec: Mapping[str, Any], egress: tuple[Rule, ...]) -> tuple[str, ...]:
    """Kubernetes' defaults: Ingress always, Egress when there are egress rules."""
    given = _get(spec, "policyTypes", list, "spec.", [])
    if not given:
        return (INGRESS, EGRESS) if egress else (INGRESS,)
    if len(given) > 2:
        raise PolicyInvalid(PolicyReason.BAD_MANIFEST, "spec.policyTypes",
                            "may not specify more than two policyTypes")  # fmt: skip
    for i, kind in enumerate(given):
        if kind not in (INGRESS, EGRESS):
            raise PolicyInvalid(PolicyReason.BAD_MANIFEST, f"spec.policyTypes[{i}]",
                                f"{show(kind)} is not Ingress or Egress")  # fmt: skip
    return tuple(k for k in (INGRESS, EGRESS) if k in given)


def _identity(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a manifest, as far as it can be read (for messages too)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace") or DEFAULT_NAMESPACE
    return (namespace if isinstance(namespace, str) else "?", name if isinstance(name, str) else "?")


def parse_policy(obj: Any) -> NetworkPolicy:
    """One NetworkPolicy manifest (a parsed object); PolicyInvalid naming the field."""
    if not isinstance(obj, dict):
        raise PolicyInvalid(PolicyReason.BAD_MANIFEST, "", f"not an object: {show(obj)}")
    _fields(obj, "", PolicyReason.BAD_MANIFEST, ("apiVersion", "kind", "metadata", "spec", "status"))
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise PolicyInvalid(PolicyReason.BAD_MANIFEST, "apiVersion/kind",
                            f"{show(obj.get('apiVersion'))}/{show(obj.get('kind'))} is not "
                            f"{API_VERSION}/{KIND}")  # fmt: skip
    meta = _get(obj, "metadata", dict, "", {})
    name = _get(meta, "name", str, "metadata.", "")
    if not name:
        raise PolicyInvalid(PolicyReason.BAD_MANIFEST, "metadata.name", "is required")
    problem = dns_subdomain_problem(name)
    if problem:
        raise PolicyInvalid(Reason.BAD_KEY, "metadata.name", problem)
    namespace = _get(meta, "namespace", str, "metadata.", "") or DEFAULT_NAMESPACE
    problem = dns_label_problem(namespace)
    if problem:
        raise PolicyInvalid(Reason.BAD_KEY, "metadata.namespace", problem)
    spec = _fields(obj.get("spec") or {}, "spec", PolicyReason.BAD_MANIFEST,
                   ("podSelector", "ingress", "egress", "policyTypes"))  # fmt: skip
    if spec.get("podSelector") is None:
        raise PolicyInvalid(PolicyReason.BAD_SELECTOR, "spec.podSelector",
                            "is required ({} selects every pod of the namespace)")  # fmt: skip
    selector = parse_selector(spec["podSelector"], "spec.podSelector")
    ingress = _rules(spec, "ingress", "from")
    egress = _rules(spec, "egress", "to")
    return NetworkPolicy(namespace, name, selector, _policy_types(spec, egress), ingress, egress)


def _describe(obj: Any, index: int, count: int) -> str:
    kind = obj.get("kind") if isinstance(obj, dict) else None
    namespace, name = _identity(obj) if isinstance(obj, dict) else ("?", "?")
    if isinstance(kind, str) and name != "?":
        return f"{kind} {namespace}/{name}"
    return f"object {index + 1} of {count}"


def parse_policies(objects: list[Any]) -> tuple[list[NetworkPolicy], list[PolicyInvalid]]:
    """Every object judged; the valid policies and one error per invalid one (named).
    Two objects naming one policy are an error too: a file says one thing per policy."""
    policies: dict[str, NetworkPolicy] = {}
    errors = []
    for i, obj in enumerate(objects):
        what = _describe(obj, i, len(objects))
        try:
            policy = parse_policy(obj)
        except PolicyInvalid as exc:
            errors.append(exc.of(what))
            continue
        if policy.key_name in policies:
            errors.append(PolicyInvalid(PolicyReason.BAD_MANIFEST, what, "appears twice"))
        policies[policy.key_name] = policy
    return list(policies.values()), errors


# -- JSON, as stored and listed -------------------------------------------------------


def _selector_dict(sel: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
            for r in sel.match_expressions
        ]
    return out


def _peer_dict(peer: Peer) -> dict[str, Any]:
    if peer.ip_block is not None:
        block: dict[str, Any] = {"cidr": str(peer.ip_block.cidr)}
        if peer.ip_block.excepted:
            block["except"] = [str(n) for n in peer.ip_block.excepted]
        return {"ipBlock": block}
    out = {}
    if peer.pod_selector is not None:
        out["podSelector"] = _selector_dict(peer.pod_selector)
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = _selector_dict(peer.namespace_selector)
    return out


def _port_dict(port: PolicyPort) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": port.protocol}
    if port.port is not None:
        out["port"] = port.port
    if port.end_port is not None:
        out["endPort"] = port.end_port
    return out


def _rule_dict(rule: Rule, peers_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.peers:
        out[peers_name] = [_peer_dict(p) for p in rule.peers]
    if rule.ports:
        out["ports"] = [_port_dict(p) for p in rule.ports]
    return out


def policy_to_dict(policy: NetworkPolicy) -> dict[str, Any]:
    """The normalised manifest: defaults filled in, a valid input to kubectl as well."""
    spec: dict[str, Any] = {"podSelector": _selector_dict(policy.pod_selector)}
    if policy.ingress:
        spec["ingress"] = [_rule_dict(r, "from") for r in policy.ingress]
    if policy.egress:
        spec["egress"] = [_rule_dict(r, "to") for r in policy.egress]
    spec["policyTypes"] = list(policy.policy_types)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": policy.name, "namespace": policy.namespace},
        "spec": spec,
    }


def policy_to_json(policy: NetworkPolicy) -> str:
    return json.dumps(policy_to_dict(policy), separators=(",", ":"))


def namespace_to_json(ns: Namespace) -> str:
    return json.dumps({"Labels": dict(ns.labels)}, separators=(",", ":"))


def relabel(namespace: str, current: Labels, changes: Iterable[str]) -> Namespace:
    """`current` changed as `kubectl label` does: `k=v` sets, `k-` removes. PolicyInvalid
    for a malformed change or an attempt on kubernetes.io/metadata.name."""
    return _namespace(namespace, change_labels(dict(current), changes, (
        NAME_LABEL, f"{NAME_LABEL} is always the namespace's name")))


def _namespace(name: str, labels: dict[str, Any]) -> Namespace:
    problem = dns_label_problem(name)
    if problem:
        raise PolicyInvalid(Reason.BAD_KEY, "namespace", problem)
    parse_labels(labels, "Labels", MAX_LABELS)
    if labels.get(NAME_LABEL, name) != name:
        raise PolicyInvalid(PolicyReason.BAD_LABEL, f"Labels.{NAME_LABEL}",
                            f"{labels[NAME_LABEL]!r} is not the namespace's name {name!r}")  # fmt: skip
    return Namespace(name, tuple(sorted({**labels, NAME_LABEL: name}.items())))


# -- what etcd holds ------------------------------------------------------------------


def _rejection(kind: KeyKind, kv: KV, exc: PolicyInvalid | _Invalid) -> Rejection:
    return Rejection(kind, kv.key, exc.reason, str(exc) if isinstance(exc, PolicyInvalid)
                     else exc.detail, kv.mod_revision)  # fmt: skip


def check_policy(kv: KV, name: str) -> NetworkPolicy | Rejection:
    """Validate one `<prefix>/vxflow/policies/<namespace>/<name>` entry on its own."""
    try:
        policy = parse_policy(_object(kv.value, MAX_POLICY_BYTES))
    except (PolicyInvalid, _Invalid) as exc:
        return _rejection(KeyKind.POLICY, kv, exc)
    if policy.key_name != name:
        return Rejection(KeyKind.POLICY, kv.key, Reason.BAD_KEY,
                         f"the manifest names {policy.key_name}, the key {name}",
                         kv.mod_revision)  # fmt: skip
    return policy


def check_namespace(kv: KV, name: str) -> Namespace | Rejection:
    """Validate one `<prefix>/vxflow/namespaces/<name>` entry on its own."""
    try:
        obj = _object(kv.value, MAX_NAMESPACE_BYTES)
        labels = obj.get("Labels")
        return _namespace(name, {} if labels is None else labels)
    except (PolicyInvalid, _Invalid) as exc:
        return _rejection(KeyKind.NAMESPACE, kv, exc)



def selector_text(sel: LabelSelector) -> str:
    """A selector as kubectl prints one (`app=web,tier in (a,b),!legacy`; `<none>`: all)."""
    terms = [f"{k}={v}" for k, v in sel.match_labels]
    for r in sel.match_expressions:
        values = ",".join(r.values)
        terms.append({"In": f"{r.key} in ({values})", "NotIn": f"{r.key} notin ({values})",
                      "Exists": r.key, "DoesNotExist": f"!{r.key}"}[r.operator])  # fmt: skip
    return ",".join(terms) or "<none>"
