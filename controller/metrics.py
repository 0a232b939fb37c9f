"""Prometheus metrics of the controller (served with `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FLOW_MODS = Counter(
    "vxflow_controller_flow_mods",
    "flow-mods sent to switches (inside bundles)",
    ["command"],  # add | delete
)
BUNDLES = Counter(
    "vxflow_controller_bundles",
    "bundles committed, by outcome",
    ["result"],  # ok | failed
)
OF_ERRORS = Counter(
    "vxflow_controller_openflow_errors",
    "OFPT_ERROR messages received from switches",
    ["type", "code"],
)
SYNCS = Counter(
    "vxflow_controller_readbacks",
    "full flow-table readbacks, by reason",
    ["reason"],  # connect | audit | retry
)
DRIFT = Counter(
    "vxflow_controller_drift_repairs",
    "audits that found a switch's table differing from the desired one and repaired it",
)
SWITCHES = Gauge("vxflow_controller_switches", "switches connected and identified as vxflow nodes")
REJECTED = Gauge(
    "vxflow_controller_rejected_items",
    "leases and endpoints the compiler refuses to program (see the log for reasons)",
)
PACKET_INS = Counter(
    "vxflow_controller_packet_ins",
    "packet-ins received; vxflow's tables never send any, so anything here is a bug or drift",
)
