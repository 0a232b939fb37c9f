"""`vxflow policies explain NAMESPACE/POD`: which policies select a pod and what they allow.

Judged by flows/policy_eval.py (Kubernetes' semantics, the oracle the flows
are checked against) on what etcd holds now: the policies, the namespaces'
labels and the published pods. The `policies` group is leases/policy_cli.py's;
this module adds the command that needs the evaluator (a floor above leases).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click

from flows.policy_eval import Evaluator, Pod
from leases.cli_options import etcd_options, open_registry, operator_errors
from leases.model import Endpoint
from leases.policy import (
    EGRESS,
    INGRESS,
    LabelSelector,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Rule,
    selector_text,
)
from leases.policy_cli import policies
from leases.state import Snapshot
from vxflow.pods import labels_text, node_of, parse_pod_ref, pod_endpoint

SHOWN = 8  # pods named per peer (the rest counted)
EVERY = LabelSelector()  # the empty selector: selects all


@dataclass(frozen=True)
class Explanation:
    """One pod's policies per direction, as `policies explain` reports them."""

    snap: Snapshot
    endpoint: Endpoint
    evaluator: Evaluator

    @property
    def pod(self) -> Pod:
        return as_pod(self.endpoint)

    def pods(self) -> list[Pod]:
        return [as_pod(ep) for ep in self.snap.endpoints if ep.pod]

    def peer(self, peer: Peer, policy: NetworkPolicy) -> dict[str, Any]:
        """A peer in words, and the published pods it matches now (selectors only)."""
        if peer.ip_block is not None:
            block = peer.ip_block
            text = f"ipBlock {block.cidr}" + (
                f" except {', '.join(map(str, block.excepted))}" if block.excepted else "")
            return {"peer": text}  # fmt: skip
        ns, pods = peer.namespace_selector, peer.pod_selector
        where = (f"namespace {policy.namespace}" if ns is None else
                 f"namespaces {selector_text(ns)}" if ns != EVERY else "every namespace")  # fmt: skip
        which = f"pods {selector_text(pods)}" if pods not in (None, EVERY) else "every pod"
        matching = sorted(f"{p.namespace}/{p.name}" for p in self.pods()
                          if self.evaluator.peer_matches(peer, policy.namespace, p))  # fmt: skip
        return {"peer": f"{which} in {where}", "pods": matching}

    def port(self, port: PolicyPort, direction: str) -> str:
        if port.port is None:
            return f"{port.protocol}/all ports"
        if port.end_port is not None:
            return f"{port.protocol}/{port.port}-{port.end_port}"
        if isinstance(port.port, str) and direction == INGRESS:  # resolved on this pod
            mine = [p.port for p in self.pod.ports
                    if p.name == port.port and p.protocol == port.protocol]  # fmt: skip
            where = f"{mine[0]} on this pod" if mine else "no port of this pod has that name"
            return f"{port.protocol}/{port.port} ({where})"
        if isinstance(port.port, str):
            return f"{port.protocol}/{port.port} (each destination pod's port of that name)"
        return f"{port.protocol}/{port.port}"

    def rule(self, rule: Rule, policy: NetworkPolicy, direction: str) -> dict[str, Any]:
        return {
            "peers": [self.peer(p, policy) for p in rule.peers],  # none: every peer
            "ports": [self.port(p, direction) for p in rule.ports],  # none: every port
        }

    def direction(self, direction: str) -> dict[str, Any]:
        selecting = self.evaluator.selecting(self.pod, direction)
        return {
            "isolated": bool(selecting),
            "policies": [{
                "policy": p.key_name,
                "rules": [self.rule(r, p, direction)
                          for r in (p.ingress if direction == INGRESS else p.egress)],
            } for p in selecting],
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        ep = self.endpoint
        return {"pod": {**ep.pod.to_dict(), "IP": str(ep.ip), "Node": node_of(self.snap, ep)},
                INGRESS: self.direction(INGRESS), EGRESS: self.direction(EGRESS)}  # fmt: skip


def as_pod(ep: Endpoint) -> Pod:
    return Pod(ep.pod.namespace, ep.pod.name, ep.ip, ep.pod.labels, ep.pod.ports)


def _pods_text(pods: list[str]) -> str:
    if not pods:
        return "no published pod now"
    more = f" and {len(pods) - SHOWN} more" if len(pods) > SHOWN else ""
    return ", ".join(pods[:SHOWN]) + more


def render(doc: dict[str, Any]) -> list[str]:
    pod = doc["pod"]
    lines = [f"pod {pod['Namespace']}/{pod['Name']} {pod['IP']} on node {pod['Node']}, labels "
             f"{labels_text(tuple(sorted(pod['Labels'].items())))}"]  # fmt: skip
    for direction, towards in ((INGRESS, "from"), (EGRESS, "to")):
        part = doc[direction]
        if not part["isolated"]:
            lines.append(f"{direction}: not isolated (no policy selects it for {direction}): "
                         "all traffic allowed")  # fmt: skip
            continue
        names = ", ".join(p["policy"] for p in part["policies"])
        lines.append(f"{direction}: isolated by {names}; allowed is what any rule below allows")
        for policy in part["policies"]:
            if not policy["rules"]:
                lines.append(f"  {policy['policy']}: no {direction.lower()} rule: allows nothing")
            for i, rule in enumerate(policy["rules"], 1):
                peers = "; ".join(
                    p["peer"] + (f" [{_pods_text(p['pods'])}]" if "pods" in p else "")
                    for p in rule["peers"]
                ) or "anywhere"
                ports = ", ".join(rule["ports"]) or "all ports"
                lines.append(f"  {policy['policy']} rule {i}: {towards} {peers}; ports {ports}")
    return lines


@policies.command("explain")
@click.argument("pod", metavar="NAMESPACE/POD")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
              show_default=True)  # fmt: skip
@etcd_options
@operator_errors
def explain(pod: str, output: str, **etcd: Any) -> None:
    """Which policies select the published pod NAMESPACE/POD, per direction, and what
    their rules allow (peers, with the published pods they match now, and ports).

    Judged with Kubernetes' semantics on what etcd holds: policies, namespaces'
    labels and the pods the agents published. Example: vxflow policies explain shop/web
    """
    namespace, name = parse_pod_ref(pod)
    with open_registry(**etcd) as registry:
        snap = registry.snapshot()
    ep = pod_endpoint(snap, namespace, name)
    doc = Explanation(snap, ep, Evaluator(snap.policies, snap.namespaces)).to_dict()
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    for line in render(doc):
        click.echo(line)
