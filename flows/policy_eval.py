"""Kubernetes NetworkPolicy semantics, evaluated directly: may SRC open a connection to DST?

Pure, and deliberately naive (every policy looked at for every question): it is
the oracle the compiled flows are checked against, so it follows the API's
definition and nothing else:

- A pod selected by any policy of its namespace whose policyTypes include a
  direction is isolated for that direction; otherwise that direction allows all.
- An isolated direction allows what any rule of any of those policies allows
  (rules are additive; there is no deny rule).
- Egress is judged for the source pod, ingress for the destination pod; a
  connection needs both. An address that is no pod's has no policy of its own.
- A peer is a podSelector (the policy's namespace), a namespaceSelector (every
  pod of the namespaces it matches), both (both must match), or an ipBlock
  (any address in its cidr and in none of its excepts, pods' included).
- A rule without peers matches every peer; without ports, every port. A port
  matches its protocol and number, a range up to endPort, or, when named, the
  destination pod's container port of that name and protocol.
- A pod reaching itself never leaves the pod: always allowed.

Replies of allowed connections, the node's own probes and services' DNAT are
the flows' concern (they decide which new connection is asked about), not this.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from leases.pods import ContainerPort
from leases.policy import (
    EGRESS,
    INGRESS,
    IPAddress,
    Labels,
    Namespace,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Rule,
    default_labels,
)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: IPAddress
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    ports: tuple[ContainerPort, ...] = ()
    ipv6: IPv6Address | None = None  # a dual-stack pod's second address (the flows' concern)
    # `labels` as a dict, made once: every selector of every policy reads it (read only)
    label_map: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_map", dict(self.labels))


Party = Pod | IPAddress  # a pod, or an address that is no pod's


@dataclass(frozen=True)
class Decision:
    """One direction's verdict: allowed or not, whether the pod is isolated in that
    direction, and the policies that isolate it and those whose rules allow."""

    allowed: bool
    isolated: bool
    isolating: tuple[str, ...] = ()  # namespace/name of the policies selecting the pod
    allowing: tuple[str, ...] = ()  # those of them with a rule that allows


@dataclass(frozen=True)
class Verdict:
    egress: Decision  # judged for the source
    ingress: Decision  # judged for the destination

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


_OPEN = Decision(allowed=True, isolated=False)


class Evaluator:
    """The policies and namespaces' labels of one moment; asks answer connection by connection."""

    def __init__(
        self, policies: Iterable[NetworkPolicy], namespaces: Iterable[Namespace] = ()
    ) -> None:
        self.policies = tuple(policies)
        self._labels = {ns.name: ns.label_map for ns in namespaces}
        self._by_namespace: dict[str, tuple[NetworkPolicy, ...]] | None = None

    def of_namespace(self, namespace: str) -> tuple[NetworkPolicy, ...]:
        """The policies of `namespace` (the only ones that can select its pods)."""
        return self.by_namespace().get(namespace, ())

    def by_namespace(self) -> dict[str, tuple[NetworkPolicy, ...]]:
        """`of_namespace` of each namespace with a policy (made once)."""
        if self._by_namespace is None:
            found: dict[str, list[NetworkPolicy]] = {}
            for p in self.policies:
                found.setdefault(p.namespace, []).append(p)
            self._by_namespace = {k: tuple(v) for k, v in found.items()}
        return self._by_namespace

    def namespace_labels(self, namespace: str) -> Labels:
        return self._labels.get(namespace) or default_labels(namespace)

    def verdict(self, src: Party, dst: Party, port: int, protocol: str = "TCP") -> Verdict:
        """Egress of `src` and ingress of `dst` for a new connection to `port`/`protocol`."""
        if isinstance(src, Pod) and src == dst:  # loopback
            return Verdict(_OPEN, _OPEN)
        return Verdict(
            egress=self._decide(src, EGRESS, dst, port, protocol, dst),
            ingress=self._decide(dst, INGRESS, src, port, protocol, dst),
        )

    def allowed(self, src: Party, dst: Party, port: int, protocol: str = "TCP") -> bool:
        return self.verdict(src, dst, port, protocol).allowed

    def selecting(self, pod: Pod, direction: str) -> list[NetworkPolicy]:
        """The policies that isolate `pod` for `direction` (INGRESS or EGRESS)."""
        return self.isolating(pod)[direction]

    def isolating(self, pod: Pod) -> dict[str, list[NetworkPolicy]]:
        """The policies that isolate `pod`, by direction: each selector matched once for both."""
        labels = pod.label_map
        chosen = [p for p in self.of_namespace(pod.namespace) if p.pod_selector.matches(labels)]
        return {d: [p for p in chosen if d in p.policy_types] for d in (EGRESS, INGRESS)}

    def _decide(
        self, subject: Party, direction: str, peer: Party, port: int, protocol: str, dst: Party
    ) -> Decision:
        if not isinstance(subject, Pod):
            return _OPEN
        isolating = self.selecting(subject, direction)
        if not isolating:
            return _OPEN
        allowing = [
            p.key_name for p in isolating
            if any(self._rule_matches(r, p.namespace, peer, port, protocol, dst)
                   for r in (p.ingress if direction == INGRESS else p.egress))
        ]  # fmt: skip
        return Decision(
            allowed=bool(allowing),
            isolated=True,
            isolating=tuple(p.key_name for p in isolating),
            allowing=tuple(allowing),
        )

    def _rule_matches(
        self, rule: Rule, namespace: str, peer: Party, port: int, protocol: str, dst: Party
    ) -> bool:
        return (not rule.peers or any(self.peer_matches(p, namespace, peer) for p in rule.peers)) and (
            not rule.ports or any(_port_matches(p, port, protocol, dst) for p in rule.ports)
        )  # fmt: skip

    def peer_matches(self, peer: Peer, namespace: str, party: Party) -> bool:
        """Whether `party` is `peer` of a rule of a policy in `namespace`."""
        if peer.ip_block is not None:
            return peer.ip_block.contains(party.ip if isinstance(party, Pod) else party)
        if not isinstance(party, Pod):
            return False  # selectors select pods only
        return self._in_namespace(peer, namespace, party.namespace) and _pod_matches(peer, party)

    def peer_pods(self, peer: Peer, namespace: str, pods: Iterable[Pod]) -> Iterator[Pod]:
        """The `pods` that a selector `peer` of a rule of a policy in `namespace` matches
        (`peer_matches`, with each namespace judged once: the compiler resolves a new
        rule's peers over every pod of the cluster)."""
        judged: dict[str, bool] = {}
        for p in pods:
            inside = judged.get(p.namespace)
            if inside is None:
                inside = judged[p.namespace] = self._in_namespace(peer, namespace, p.namespace)
            if inside and _pod_matches(peer, p):
                yield p

    def _in_namespace(self, peer: Peer, namespace: str, pod_namespace: str) -> bool:
        """Whether a pod of `pod_namespace` is in the namespaces of selector `peer`."""
        if peer.namespace_selector is None:
            return pod_namespace == namespace
        return peer.namespace_selector.matches(self.namespace_labels(pod_namespace))


def _pod_matches(peer: Peer, pod: Pod) -> bool:
    return peer.pod_selector is None or peer.pod_selector.matches(pod.label_map)


def _port_matches(rule_port: PolicyPort, port: int, protocol: str, dst: Party) -> bool:
    if rule_port.protocol != protocol:
        return False
    if rule_port.port is None:
        return True
    if isinstance(rule_port.port, str):  # named: the destination pod's port of that name
        return isinstance(dst, Pod) and any(
            cp.name == rule_port.port and cp.protocol == protocol and cp.port == port
            for cp in dst.ports
        )
    if rule_port.end_port is not None:
        return rule_port.port <= port <= rule_port.end_port
    return rule_port.port == port


def pod(
    namespace: str,
    name: str,
    ip: IPAddress,
    labels: Mapping[str, str] | None = None,
    ports: Iterable[ContainerPort] = (),
    ipv6: IPv6Address | None = None,
) -> Pod:
    """A Pod from a plain labels mapping."""
    return Pod(namespace, name, ip, tuple(sorted((labels or {}).items())), tuple(ports), ipv6)
