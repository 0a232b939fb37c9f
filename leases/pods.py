"""A pod's identity: namespace, name, labels and container ports, published with its endpoint.

What NetworkPolicy selects on. A runtime names the pod (CNI_ARGS
`K8S_POD_NAMESPACE`/`K8S_POD_NAME`, labels from `args.cni.labels`), the CNI
plugin writes it on the pod's OVS Interface (external_ids `vxflow-namespace`,
`vxflow-pod`, `vxflow-labels`, `vxflow-ports`), and the node agent publishes it
in the endpoint's etcd value as `"Pod": {"Namespace", "Name", "Labels", "Ports"}`.
Every hop validates with the same functions here, with Kubernetes' own syntax
rules, so a malformed label is a rejection with a reason, never a selector that
silently matches the wrong pods.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from leases.labels import (
    MAX_LABELS,
    PolicyInvalid,
    PolicyReason,
    dns_label_problem,
    dns_subdomain_problem,
    parse_labels,
    port_name_problem,
)

MAX_CONTAINER_PORTS = 128  # a pod spec's ports, all containers together
POD_PROTOCOLS = ("TCP", "UDP", "SCTP")  # a pod spec's; policy enforces TCP and UDP only


@dataclass(frozen=True)
class ContainerPort:
    """A container port a pod publishes (as in a pod spec): what a named port resolves to."""

    name: str
    port: int
    protocol: str = "TCP"

    def to_dict(self) -> dict[str, Any]:
        """As a pod spec writes it (and `external_ids:vxflow-ports` holds it)."""
        return {"name": self.name, "containerPort": self.port, "protocol": self.protocol}


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    ports: tuple[ContainerPort, ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def key_name(self) -> str:
        """`NAMESPACE/NAME`, as the CLI names a pod."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The endpoint value's `Pod` object."""
        return {"Namespace": self.namespace, "Name": self.name, "Labels": self.label_map,
                "Ports": [p.to_dict() for p in self.ports]}  # fmt: skip


def _invalid(field: str, detail: str) -> PolicyInvalid:
    return PolicyInvalid(PolicyReason.BAD_POD, field, detail)


def parse_ports(raw: Any, field: str) -> tuple[ContainerPort, ...]:
    """A pod spec's port list (`[{"name", "containerPort", "protocol"}]`); unnamed ones are
    kept out (only a named port can be selected by name; numbers need no publishing)."""
    if not isinstance(raw, list):
        raise _invalid(field, f"must be a list, got {json.dumps(raw, default=str)[:60]}")
    if len(raw) > MAX_CONTAINER_PORTS:
        raise _invalid(field, f"{len(raw)} ports: vxflow accepts at most {MAX_CONTAINER_PORTS}")
    ports: dict[tuple[str, str], ContainerPort] = {}
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise _invalid(where, "must be an object with name, containerPort and protocol")
        unknown = sorted(set(item) - {"name", "containerPort", "protocol"})
        if unknown:
            raise _invalid(
                f"{where}.{unknown[0]}", "unknown field (known: name, containerPort, protocol)"
            )
        name, number = item.get("name", ""), item.get("containerPort")
        protocol = item.get("protocol", "TCP")
        if not isinstance(name, str):
            raise _invalid(f"{where}.name", "must be a string")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise _invalid(f"{where}.containerPort", f"must be a number 1-65535, got {number!r}")
        if protocol not in POD_PROTOCOLS:
            raise _invalid(
                f"{where}.protocol", f"must be one of {', '.join(POD_PROTOCOLS)}, got {protocol!r}"
            )
        if not name:
            continue
        problem = port_name_problem(name)
        if problem:
            raise _invalid(f"{where}.name", problem)
        if (name, protocol) in ports:
            raise _invalid(f"{where}.name", f"{name}/{protocol} is published twice")
        ports[(name, protocol)] = ContainerPort(name, number, protocol)
    return tuple(sorted(ports.values(), key=lambda p: (p.name, p.protocol)))


def pod_identity(namespace: Any, name: Any, labels: Any = None, ports: Any = None,
                 field: str = "") -> PodIdentity:  # fmt: skip
    """Validated identity from plain values (labels a mapping, ports a pod spec's list)."""
    prefix = f"{field}." if field else ""
    if not isinstance(namespace, str) or dns_label_problem(namespace):
        raise _invalid(
            f"{prefix}namespace", dns_label_problem(str(namespace)) or "must be a string"
        )
    if not isinstance(name, str) or dns_subdomain_problem(name):
        raise _invalid(f"{prefix}name", dns_subdomain_problem(str(name)) or "must be a string")
    label_map = parse_labels({} if labels is None else labels, f"{prefix}labels", MAX_LABELS)
    return PodIdentity(namespace, name, tuple(sorted(label_map.items())),
                       parse_ports([] if ports is None else ports, f"{prefix}ports"))  # fmt: skip


def pod_identity_from_json(obj: Mapping[str, Any]) -> PodIdentity:
    """The endpoint value's `Pod` object (as `PodIdentity.to_dict` writes it)."""
    unknown = sorted(set(obj) - {"Namespace", "Name", "Labels", "Ports"})
    if unknown:
        raise _invalid(f"Pod.{unknown[0]}", "unknown field (known: Namespace, Name, Labels, Ports)")
    return pod_identity(obj.get("Namespace"), obj.get("Name"), obj.get("Labels"),
                        obj.get("Ports"), "Pod")  # fmt: skip


def change_ports(current: tuple[ContainerPort, ...], changes: Iterable[str]) -> tuple[ContainerPort, ...]:
    """`current` changed as `vxflow pods ports` says: `NAME=PORT[/PROTOCOL]` publishes (or
    moves) the named port (protocol TCP by default), `NAME-` withdraws every port of that name."""
    ports = {(p.name, p.protocol): p for p in current}
    for change in changes:
        name, eq, spec = change.partition("=")
        if not eq and change.endswith("-"):
            name = change[:-1]
        elif not eq:
            raise _invalid(change, "is neither NAME=PORT[/PROTOCOL] nor NAME- (to remove it)")
        problem = port_name_problem(name)
        if problem:
            raise _invalid(change, problem)
        if not eq:
            ports = {k: p for k, p in ports.items() if p.name != name}
            continue
        number, _, protocol = spec.partition("/")
        protocol = protocol.upper() or "TCP"
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise _invalid(change, f"port {number!r} must be a number 1-65535")
        if protocol not in POD_PROTOCOLS:
            raise _invalid(change, f"protocol must be one of {', '.join(POD_PROTOCOLS)}")
        ports[(name, protocol)] = ContainerPort(name, int(number), protocol)
    return tuple(sorted(ports.values(), key=lambda p: (p.name, p.protocol)))
