"""Typed registry events, each carrying the etcd revision at which it became true."""

from __future__ import annotations

from dataclasses import dataclass

from leases.model import (
    Claim,
    Endpoint,
    Lease,
    Liveness,
    Member,
    NetworkConfig,
    Readiness,
    Service,
    VxflowConfig,
)
from leases.policy import Namespace, NetworkPolicy


@dataclass(frozen=True)
class ConfigChanged:
    old: NetworkConfig | None
    config: NetworkConfig
    revision: int


@dataclass(frozen=True)
class LeaseAdded:
    lease: Lease
    revision: int


@dataclass(frozen=True)
class LeaseChanged:
    old: Lease
    lease: Lease
    revision: int


@dataclass(frozen=True)
class LeaseRemoved:
    lease: Lease
    revision: int


@dataclass(frozen=True)
class EndpointAdded:
    """A new endpoint, or a changed one (then preceded by EndpointRemoved of the old)."""

    endpoint: Endpoint
    revision: int


@dataclass(frozen=True)
class EndpointRemoved:
    endpoint: Endpoint
    revision: int


@dataclass(frozen=True)
class MemberAdded:
    """A controller replica registered (or re-registered with another lease or address)."""

    member: Member
    revision: int


@dataclass(frozen=True)
class MemberRemoved:
    member: Member
    revision: int


@dataclass(frozen=True)
class ClaimAdded:
    """A replica claimed a switch (a takeover is ClaimRemoved of the old claim, then this)."""

    claim: Claim
    revision: int


@dataclass(frozen=True)
class ClaimRemoved:
    claim: Claim
    revision: int


@dataclass(frozen=True)
class LivenessAdded:
    """A node's liveness record appeared (or came back under another etcd lease)."""

    record: Liveness
    revision: int


@dataclass(frozen=True)
class LivenessRemoved:
    """A node's liveness record expired or was revoked."""

    record: Liveness
    revision: int


@dataclass(frozen=True)
class ReadinessAdded:
    """A backend's health-check verdict for a service was published (a changed verdict is
    ReadinessRemoved of the old, then this)."""

    record: Readiness
    revision: int


@dataclass(frozen=True)
class ReadinessRemoved:
    """A verdict was withdrawn (the backend or the check went, or its node's lease)."""

    record: Readiness
    revision: int


@dataclass(frozen=True)
class VxflowConfigChanged:
    """vxflow's own config (the service range) changed; services are judged again."""

    old: VxflowConfig
    config: VxflowConfig
    revision: int


@dataclass(frozen=True)
class ServiceAdded:
    """A service became valid (a changed one is ServiceRemoved of the old, then this)."""

    service: Service
    revision: int


@dataclass(frozen=True)
class ServiceRemoved:
    service: Service
    revision: int


@dataclass(frozen=True)
class PolicyAdded:
    """A NetworkPolicy became valid (a changed one is PolicyRemoved of the old, then this)."""

    policy: NetworkPolicy
    revision: int


@dataclass(frozen=True)
class PolicyRemoved:
    policy: NetworkPolicy
    revision: int


@dataclass(frozen=True)
class NamespaceAdded:
    """A namespace's labels were set (a change is NamespaceRemoved of the old, then this)."""

    namespace: Namespace
    revision: int


@dataclass(frozen=True)
class NamespaceRemoved:
    """A namespace's labels key went: it is back to its name label alone."""

    namespace: Namespace
    revision: int


Event = (
    ConfigChanged
    | LeaseAdded
    | LeaseChanged
    | LeaseRemoved
    | EndpointAdded
    | EndpointRemoved
    | MemberAdded
    | MemberRemoved
    | ClaimAdded
    | ClaimRemoved
    | LivenessAdded
    | LivenessRemoved
    | ReadinessAdded
    | ReadinessRemoved
    | VxflowConfigChanged
    | ServiceAdded
    | ServiceRemoved
    | PolicyAdded
    | PolicyRemoved
    | NamespaceAdded
    | NamespaceRemoved
)
ReplicaEvent = MemberAdded | MemberRemoved | ClaimAdded | ClaimRemoved
LivenessEvent = LivenessAdded | LivenessRemoved
ServiceEvent = VxflowConfigChanged | ServiceAdded | ServiceRemoved
ReadinessEvent = ReadinessAdded | ReadinessRemoved
PolicyEvent = PolicyAdded | PolicyRemoved | NamespaceAdded | NamespaceRemoved
