"""The etcd key layout under one prefix: flannel's keys plus vxflow's own sub-prefix.

Pure string handling, so the registry, the watch and the validators agree on
which key is which without touching etcd.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from leases.model import VXFLOW_SUBPREFIX, Endpoint, lease_key_name, subnet_key


class KeyKind(StrEnum):
    CONFIG = "config"
    LEASE = "lease"
    ENDPOINT = "endpoint"
    MEMBER = "member"  # a controller replica
    CLAIM = "claim"  # a replica's mastership of one switch
    VXFLOW_CONFIG = "vxflow_config"  # vxflow's own settings (the service range)
    SERVICE = "service"  # a virtual service
    POLICY = "policy"  # a Kubernetes NetworkPolicy
    NAMESPACE = "namespace"  # a namespace's labels
    NODE = "node"  # a node agent's liveness record
    HEALTH = "health"  # a backend's health-check verdict for one service


@dataclass(frozen=True)
class KV:
    """One etcd key-value with the metadata the registry needs (lease 0: no TTL)."""

    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Keys:
    """Key names for one flannel network prefix, e.g. `/coreos.com/network`."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError(f"etcd prefix must start and not end with '/': {self.prefix!r}")

    @property
    def root(self) -> str:
        """Everything of this network (and nothing of a sibling prefix)."""
        return self.prefix + "/"

    @property
    def config(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets(self) -> str:
        return f"{self.prefix}/subnets/"

    @property
    def endpoints(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/endpoints/"

    @property
    def controllers(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/controllers/"

    @property
    def masters(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/masters/"

    @property
    def vxflow_config(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/config"

    @property
    def services(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/services/"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/nodes/"

    def node(self, public_ip: IPv4Address) -> str:
        return f"{self.nodes}{public_ip}"

    @property
    def health(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/health/"

    def node_health(self, node_subnet: IPv4Network) -> str:
        return f"{self.health}{subnet_key(node_subnet)}/"

    def service(self, name: str) -> str:
        return self.services + name

    @property
    def policies(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/policies/"

    def policy(self, namespace: str, name: str) -> str:
        return f"{self.policies}{namespace}/{name}"

    @property
    def namespaces(self) -> str:
        return f"{self.prefix}/{VXFLOW_SUBPREFIX}/namespaces/"

    def namespace(self, name: str) -> str:
        return self.namespaces + name

    def member(self, member_id: str) -> str:
        return self.controllers + member_id

    def claim(self, datapath_id: int) -> str:
        return f"{self.masters}{datapath_id:016x}"

    def lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        return self.subnets + lease_key_name(subnet, ipv6_subnet)

    def node_endpoints(self, node_subnet: IPv4Network) -> str:
        return f"{self.endpoints}{subnet_key(node_subnet)}/"

    def endpoint(self, ep: Endpoint) -> str:
        return f"{self.node_endpoints(ep.node_subnet)}{ep.ip}"

    def endpoint_for(self, node_subnet: IPv4Network, ip: IPv4Address) -> str:
        return f"{self.node_endpoints(node_subnet)}{ip}"

    def classify(self, key: str) -> tuple[KeyKind, str] | None:
        """Which kind of entry `key` is, and its name below that kind's sub-prefix.

        Keys that belong to nobody vxflow knows (flannel's other keys) give
        None and are ignored rather than rejected.
        """
        if key == self.config:
            return KeyKind.CONFIG, ""
        if key.startswith(self.subnets):
            return KeyKind.LEASE, key[len(self.subnets) :]
        if key.startswith(self.endpoints):
            return KeyKind.ENDPOINT, key[len(self.endpoints) :]
        if key.startswith(self.controllers):
            return KeyKind.MEMBER, key[len(self.controllers) :]
        if key.startswith(self.masters):
            return KeyKind.CLAIM, key[len(self.masters) :]
        if key == self.vxflow_config:
            return KeyKind.VXFLOW_CONFIG, ""
        if key.startswith(self.services):
            return KeyKind.SERVICE, key[len(self.services) :]
        if key.startswith(self.policies):
            return KeyKind.POLICY, key[len(self.policies) :]
        if key.startswith(self.namespaces):
            return KeyKind.NAMESPACE, key[len(self.namespaces) :]
        if key.startswith(self.nodes):
            return KeyKind.NODE, key[len(self.nodes) :]
        if key.startswith(self.health):
            return KeyKind.HEALTH, key[len(self.health) :]
        return None
