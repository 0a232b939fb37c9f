"""The data model shared by every part of vxflow.

Plain frozen dataclasses, no I/O: the registry (leases/) produces them from
etcd, the compiler (flows/) consumes them, the node agent (ovsdb/) publishes
them. Field names follow flannel's JSON where flannel has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # leases.pods judges labels with leases.labels; the model stays import-free
    from leases.pods import PodIdentity

FLANNEL_DEFAULT_PREFIX = "/coreos.com/network"
VXFLOW_SUBPREFIX = "vxflow"  # <prefix>/vxflow/... holds vxflow's own keys
DEFAULT_VXLAN_PORT = 8472  # the Linux kernel's VXLAN port, which flannel uses
DEFAULT_VNI = 1
DEFAULT_SUBNET_LEN = 24
LEASE_TTL_SECONDS = 24 * 3600  # flannel's subnet lease TTL
RENEW_MARGIN_SECONDS = 60 * 60  # flannel's --subnet-lease-renew-margin default
VXLAN_OVERHEAD = 50  # outer Ethernet + IPv4 + UDP + VXLAN
VXLAN6_OVERHEAD = 70  # outer Ethernet + IPv6 + UDP + VXLAN


@dataclass(frozen=True)
class BackendConfig:
    """flannel's Backend object (only the vxlan type is accepted).

    `direct_routing` is flannel's DirectRouting: pod traffic to a peer on this node's
    own underlay link goes unencapsulated, via the peer's PublicIP (leases/direct.py)."""

    type: str = "vxlan"
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_VXLAN_PORT
    mtu: int | None = None
    direct_routing: bool = False


@dataclass(frozen=True)
class FamilyConfig:
    """One address family's part of the config: its Network, SubnetLen, SubnetMin and
    SubnetMax (for IPv6 flannel's IPv6Network, IPv6SubnetLen, ...)."""

    network: IPv4Network | IPv6Network
    subnet_len: int
    subnet_min: IPv4Network | IPv6Network
    subnet_max: IPv4Network | IPv6Network


@dataclass(frozen=True)
class NetworkConfig:
    """`<prefix>/config`, validated, with flannel's defaults filled in.

    `ipv6` is the IPv6 part of a dual-stack config (EnableIPv6), None when IPv4-only.
    """

    network: IPv4Network
    subnet_len: int = DEFAULT_SUBNET_LEN
    subnet_min: IPv4Network | None = None  # None until defaults are applied
    subnet_max: IPv4Network | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    ipv6: FamilyConfig | None = None

    @property
    def v4(self) -> FamilyConfig:
        assert self.subnet_min is not None and self.subnet_max is not None, "defaults applied"
        return FamilyConfig(self.network, self.subnet_len, self.subnet_min, self.subnet_max)


@dataclass(frozen=True)
class Lease:
    """One node's subnet lease: `<prefix>/subnets/<a.b.c.d>-<len>`, or for a dual-stack
    node `<a.b.c.d>-<len>&<ipv6 subnet address>-<len>` (flannel's key for both families).

    `backend_data_extra` keeps BackendData fields other than VNI and VtepMAC
    (vxflow's own, or a newer flannel's) so they survive a rewrite. The IPv6 half
    (`ipv6_subnet`, `public_ipv6` and BackendV6Data's VtepMAC; its VNI is the
    config's, as BackendData's) is all None on an IPv4-only node.
    """

    subnet: IPv4Network
    public_ip: IPv4Address
    vni: int
    vtep_mac: str  # lower-case, colon separated
    backend_type: str = "vxlan"
    backend_data_extra: tuple[tuple[str, object], ...] = ()
    etcd_lease_id: int | None = None  # the etcd lease the key is bound to (None: reservation)
    mod_revision: int = 0
    ipv6_subnet: IPv6Network | None = None
    public_ipv6: IPv6Address | None = None
    vtep_mac_v6: str | None = None  # BackendV6Data.VtepMAC: the node's IPv6 VTEP device

    @property
    def label(self) -> str:
        """Its subnets for a log line: `10.20.4.0/24`, dual-stack `10.20.4.0/24+fc00:0:0:4::/64`."""
        return f"{self.subnet}+{self.ipv6_subnet}" if self.ipv6_subnet else str(self.subnet)

    @property
    def key_name(self) -> str:
        """The lease's key name below `<prefix>/subnets/`."""
        return lease_key_name(self.subnet, self.ipv6_subnet)

    @property
    def gateway(self) -> IPv4Address:
        """The node's own overlay address: first host of its subnet (flannel's cni0/docker0)."""
        return self.subnet.network_address + 1


@dataclass(frozen=True)
class Endpoint:
    """A pod port on a node's br-int, published by that node's agent.

    Key: `<prefix>/vxflow/endpoints/<subnet-key>/<ip>` (its IPv4 address; a dual-stack
    pod's IPv6 address rides in the value as `IPv6`).
    """

    node_subnet: IPv4Network
    ip: IPv4Address
    mac: str
    ofport: int
    port_name: str = ""
    pod: PodIdentity | None = None  # who the pod is (policy selects on it); None: not named
    ipv6: IPv6Address | None = None  # its IPv6 address on a dual-stack node (key: still `ip`)


@dataclass(frozen=True)
class Member:
    """A controller replica: `<prefix>/vxflow/controllers/<id>`, bound to its own etcd lease.

    `address` is the OpenFlow target switches reach it on, in OVS's syntax
    (`tcp:IP:PORT` or `ssl:IP:PORT`), so a node agent hands it to OVS as it is;
    empty when the replica listens on every address and was given none to advertise.
    """

    id: str
    address: str
    etcd_lease_id: int = 0
    create_revision: int = 0
    status: str = ""  # the URL of its read-only status page (`vxflow status` reads it); "": none


@dataclass(frozen=True)
class Claim:
    """Mastership of one switch: `<prefix>/vxflow/masters/<datapath-id>`, bound to its
    holder's membership lease, so it vanishes with the holder.

    `generation` is the key's mod_revision: the generation_id the holder sends
    in OFPT_ROLE_REQUEST. etcd revisions only grow, so a newer claim always
    carries a higher generation than any older one, across replicas and restarts.
    """

    datapath_id: int
    controller: str
    generation: int
    etcd_lease_id: int = 0


@dataclass(frozen=True)
class Liveness:
    """A node agent's sign of life: `<prefix>/vxflow/nodes/<PublicIP>`, bound to an etcd
    lease of its own of `ttl` seconds (not the 24 h subnet lease), kept alive by the agent
    and revoked when it stops cleanly: the key is gone within `ttl` of the agent's death.
    The controller's rule of what that means (`leases.liveness.node_down`) is there."""

    public_ip: IPv4Address
    ttl: int
    etcd_lease_id: int = 0
    # DirectRouting: the PublicIPs (and PublicIPv6s) of the peers this node reaches without
    # a gateway (leases/direct.py); None when its agent decides nothing (off, or older)
    direct: frozenset[IPv4Address | IPv6Address] | None = None


@dataclass(frozen=True)
class ServicePort:
    """One port of a service: `Port`/`Protocol` on the VIP, `TargetPort` on each backend."""

    port: int
    protocol: str  # "TCP" or "UDP"
    target_port: int


@dataclass(frozen=True)
class Backend:
    """An endpoint of a service: an IP in the overlay of its service's family and its share
    of new connections."""

    ip: IPv4Address | IPv6Address
    weight: int = 1


@dataclass(frozen=True)
class HealthCheck:
    """A service's backend health check (kubelet's readiness probe, for clusters without
    kubelet): each node's agent probes the backends on its node every `period` seconds;
    `failure_threshold` failures in a row make a backend unready, `success_threshold`
    successes in a row ready again. `path` is the HTTP GET's ("" for TCP)."""

    type: str  # "TCP": a connection is accepted; "HTTP": GET answers 200..399
    port: int
    path: str = ""
    period: int = 10  # the defaults are kubelet's
    timeout: int = 1
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class Readiness:
    """A backend's health-check verdict for one service, published by the agent of the node
    it lives on: `<prefix>/vxflow/health/<subnet-key>/<ip>/<service>`, bound to that node's
    subnet lease (as its endpoints are). A backend is unready for a service while a record
    says `ready` False; without a record (not judged yet, no agent judging) it serves."""

    node_subnet: IPv4Network
    ip: IPv4Address | IPv6Address  # IPv6: a pod of a dual-stack node (in its IPv6 subnet)
    service: str
    ready: bool
    etcd_lease_id: int = 0

    @property
    def key_name(self) -> str:
        """Its key name below `<prefix>/vxflow/health/`."""
        return f"{subnet_key(self.node_subnet)}/{self.ip}/{self.service}"


@dataclass(frozen=True)
class Service:
    """A virtual service: `<prefix>/vxflow/services/<name>`, load-balanced in every node's
    flows. `ports` are sorted by (protocol, port), `backends` by IP: a port's place in
    that order is part of its OpenFlow group id (`flows.services`). Its VIP's family is its
    backends' (an IPv6 VIP lies in the IPv6ServiceNetwork and balances over IPv6 pods)."""

    name: str
    vip: IPv4Address | IPv6Address
    ports: tuple[ServicePort, ...]
    backends: tuple[Backend, ...] = ()
    affinity_timeout: int = 0  # seconds of client-IP session affinity; 0: none
    create_revision: int = 0  # the older of two services claiming one VIP keeps it
    health_check: HealthCheck | None = None  # None: every backend serves (no probing)


@dataclass(frozen=True)
class VxflowConfig:
    """`<prefix>/vxflow/config`: vxflow's own settings beside flannel's config."""

    service_network: IPv4Network | None = None  # the virtual IPs' range; None: no services
    service_network6: IPv6Network | None = None  # IPv6's (IPv6ServiceNetwork); None: none

    def network_of(self, vip: IPv4Address | IPv6Address) -> IPv4Network | IPv6Network | None:
        """The range of `vip`'s family (None: that family has no services)."""
        return self.service_network if vip.version == 4 else self.service_network6


def subnet_key(subnet: IPv4Network | IPv6Network) -> str:
    """flannel's key name for a subnet: `10.20.52.0-24` (`fc00:0:0:4::-64`)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def lease_key_name(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """flannel's MakeSubnetKey: `10.20.4.0-24`, dual-stack `10.20.4.0-24&fc00:0:0:4::-64`."""
    if ipv6_subnet is None:
        return subnet_key(subnet)
    return f"{subnet_key(subnet)}&{subnet_key(ipv6_subnet)}"


def datapath_id_for(public_ip: IPv4Address) -> int:
    """The stable OpenFlow datapath-id of a node's br-int.

    Derived from the node's PublicIP (its underlay address), so the controller
    can tell which node a switch belongs to from the features reply alone, and
    it survives restarts of OVS, the agent and the controller. High 16 bits are
    0x7678 ("vx") so it cannot collide with OVS's MAC-derived default dpids.
    """
    return (0x7678 << 48) | int(public_ip)


def public_ip_for_datapath_id(dpid: int) -> IPv4Address | None:
    """Inverse of `datapath_id_for`; None for a dpid vxflow did not assign."""
    if dpid >> 48 != 0x7678 or (dpid >> 32) & 0xFFFF:
        return None
    return IPv4Address(dpid & 0xFFFFFFFF)
