"""Prometheus metrics of the node agent (served with `vxflow agent --metrics-port`).

Every metric here is listed in README.md's metrics table (a test holds the
two to each other).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

LEASE_TTL = Gauge(
    "vxflow_agent_lease_ttl_seconds",
    "seconds until this node's subnet lease expires unless renewed (from the agent's last "
    "acquisition or renewal etcd acknowledged)",
)
LEASE = Gauge(
    "vxflow_agent_lease_info", "1 for the subnet lease this node holds", ["subnet", "public_ip"]
)
ACQUISITIONS = Counter(
    "vxflow_agent_lease_acquisitions",
    "leases acquired: at start, after losing one, after a config change",
)
RENEWALS = Counter(
    "vxflow_agent_lease_renewals", "lease renewals, by outcome", ["result"]  # ok | lost
)
RENEWED = RENEWALS.labels("ok")
LOST = RENEWALS.labels("lost")
LIVENESS_WRITES = Counter(
    "vxflow_agent_liveness_writes",
    "liveness records written: at start, and again after one lapsed (an etcd outage)",
)
LIVENESS_FAILURES = Counter(
    "vxflow_agent_liveness_failures", "liveness record renewals that failed (retried)"
)
CONFIG_CHANGES = Counter(
    "vxflow_agent_config_changes", "network config changes the agent followed (from its watch)"
)
BOOTSTRAP_CHANGES = Counter(
    "vxflow_agent_bootstrap_changes",
    "changes made to the bridge, its ports, the gateway address or route by a converge",
)
BOOTSTRAP_FAILURES = Counter(
    "vxflow_agent_bootstrap_failures", "converges of the bridge that failed (retried)"
)
ENDPOINTS = Gauge("vxflow_agent_endpoints", "pod endpoints this agent has published in etcd")
ENDPOINT_CHANGES = Counter(
    "vxflow_agent_endpoint_changes", "endpoint puts and deletes in etcd", ["op"]  # put | delete
)
ENDPOINT_PUTS = ENDPOINT_CHANGES.labels("put")
ENDPOINT_DELETES = ENDPOINT_CHANGES.labels("delete")
POD_REJECTIONS = Counter(
    "vxflow_agent_pod_ports_rejected", "Pod ports whose external_ids were rejected", ["reason"]
)
ETCD_ERRORS = Counter("vxflow_agent_etcd_errors", "etcd operations that failed (retried)")
CONTROLLERS = Gauge(
    "vxflow_agent_controller_targets",
    "OpenFlow controller targets the bridge is given (--controller plus the registered replicas)",
)
OVSDB_CONNECTED = Gauge("vxflow_agent_ovsdb_connected", "1 while the OVSDB session is up")
OVSDB_RECONNECTS = Counter(
    "vxflow_agent_ovsdb_reconnects", "times the OVSDB session came back after being lost"
)
FLOW_RESTORE_WAIT_CLEARED = Counter(
    "vxflow_agent_flow_restore_wait_cleared",
    "times the agent cleared other_config:flow-restore-wait a restart left set, by why",
    ["why"],  # restored (the bridge holds flows again) | timeout (nothing was restored)
)
MASQ_INSTALLS = Counter(
    "vxflow_agent_ipmasq_installs", "Times the masquerade rules were (re)installed"
)
MASQ_ERRORS = Counter("vxflow_agent_ipmasq_errors", "nftables operations that failed (retried)")
SERVICE_NETWORK_REFUSED = Counter(
    "vxflow_agent_service_network_refused",
    "ServiceNetworks this agent refused to route into its gateway port: the range holds "
    "this node's PublicIP, an etcd endpoint, a controller or a next hop to them",
)
PROBES = Counter(
    "vxflow_agent_health_probes",
    "health checks of the backends on this node (services' HealthCheck), by result",
    ["result"],  # success | failure
)
PROBE_TRANSITIONS = Counter(
    "vxflow_agent_health_transitions",
    "backends' verdicts that changed (one log line each), by the new verdict",
    ["to"],  # ready | unready
)
HEALTH_CHANGES = Counter(
    "vxflow_agent_health_changes", "health-check verdict puts and deletes in etcd", ["op"]
)  # put | delete
HEALTH_PUTS = HEALTH_CHANGES.labels("put")
HEALTH_DELETES = HEALTH_CHANGES.labels("delete")
DIRECT_PEERS = Gauge(
    "vxflow_agent_direct_peers",
    "DirectRouting: peers this node reaches without a gateway, routed to unencapsulated",
)
DIRECT_ROUTE_CHANGES = Counter(
    "vxflow_agent_direct_route_changes",
    "DirectRouting: kernel routes `<subnet> via <PublicIP>` added, replaced or removed",
)
DIRECT_ERRORS = Counter(
    "vxflow_agent_direct_errors", "DirectRouting: decisions whose routes or filter failed (retried)"
)


class DirectIngressDropped:
    """vxflow_agent_direct_ingress_dropped_packets_total, read at each scrape from the
    DirectRouting ingress filter's nftables counters (`source`: the agent's
    ovsdb/direct.py `DroppedCount.read`)."""

    def __init__(self) -> None:
        self.source: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "vxflow_agent_direct_ingress_dropped_packets",
            "DirectRouting: packets the ingress filter dropped (forwarded to this node's pods "
            "unencapsulated from a source no direct peer leases), both families",
            value=self.source(),
        )


DIRECT_INGRESS_DROPPED = DirectIngressDropped()
REGISTRY.register(DIRECT_INGRESS_DROPPED)
