"""Typed registry events, each carrying the etcd revision at which it became true."""

from __future__ import annotations

from dataclasses import dataclass

from leases.model import Endpoint, Lease, NetworkConfig


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


Event = ConfigChanged | LeaseAdded | LeaseChanged | LeaseRemoved | EndpointAdded | EndpointRemoved
