"""Prometheus metrics of the controller (served with `--metrics-port`).

Label children of the per-event counters are bound here once: `labels()` is a
locked dict lookup, and B2's profile showed it at 13 % of the controller's own
work per lease event across 50 switches.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

FLOW_MODS = Counter(
    "vxflow_controller_flow_mods",
    "flow-mods sent to switches (bare or inside bundles)",
    ["command"],  # add | delete
)
CHANGES = Counter(
    "vxflow_controller_changes",
    "changes applied to a switch, by form (bundle, or flow_mod: a change of a few flow-mods "
    "sent bare with one barrier) and outcome",
    ["form", "result"],  # bundle | flow_mod, ok | failed
)
OF_ERRORS = Counter(
    "vxflow_controller_openflow_errors",
    "OFPT_ERROR messages received from switches",
    ["type", "code"],  # OpenFlow 1.4's types (0-13, 65535) and codes (< 64); others "other"
)
_ERROR_TYPES = frozenset((*range(14), 0xFFFF))


def of_error(err_type: int, code: int) -> Counter:
    """The OF_ERRORS child of an error: any peer that completed a handshake can send
    errors, so the label values are OpenFlow's own, and whatever else is "other"."""
    if err_type in _ERROR_TYPES and code < 64:
        return OF_ERRORS.labels(str(err_type), str(code))
    return OF_ERRORS.labels("other", "other")



SYNCS = Counter(
    "vxflow_controller_readbacks",
    "full flow-table readbacks, by reason",
    ["reason"],  # mastership (connect, takeover) | audit | retry
)
DRIFT = Counter(
    "vxflow_controller_drift_repairs",
    "repairs of a switch's table that someone else changed, by what found the change",
    ["found_by"],  # monitor (the switch's flow monitor, at once) | audit (the periodic readback)
)
FOREIGN_CHANGES = Counter(
    "vxflow_controller_foreign_flow_changes",
    "flows another OpenFlow client added, modified or removed on a switch this replica "
    "masters, as the switch's flow monitor reported them",
    ["change"],  # added | modified | removed
)
REPAIR_SECONDS = Histogram(
    "vxflow_controller_drift_repair_seconds",
    "from the flow monitor's report of someone else's change to the barrier of its repair",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MONITOR_PAUSES = Counter(
    "vxflow_controller_flow_monitor_pauses",
    "times a switch paused its flow monitor (too many changes at once): a readback follows",
)
READBACKS_ABANDONED = Counter(
    "vxflow_controller_readbacks_abandoned",
    "readbacks given up (retried later, with backoff): the switch sent more flows or groups "
    "than any vxflow table holds, or did not finish in time",
    ["why"],  # too_large | timeout
)
SLOW_SWITCHES = Counter(
    "vxflow_controller_slow_switch_disconnects",
    "switches disconnected because they read too slowly: more than 64 MiB waited to be sent "
    "to one, or to all together more than VXFLOW_SEND_BACKLOG_TOTAL (it the most), or one "
    "took nothing of a send for VXFLOW_SEND_STALL_TIMEOUT; each resyncs when it reconnects",
)
SWITCHES = Gauge("vxflow_controller_switches", "switches connected and identified as vxflow nodes")
NODES_DOWN = Gauge(
    "vxflow_controller_nodes_down",
    "nodes this replica holds DOWN (no liveness record, switch not connected): their "
    "backends are out of every service",
)
NODE_TRANSITIONS = Counter(
    "vxflow_controller_node_transitions",
    "nodes going DOWN or coming UP again (a DOWN node seen at a (re)load counts as going down)",
    ["to"],  # down | up
)
REJECTED = Gauge(
    "vxflow_controller_rejected_items",
    "leases and endpoints the compiler refuses to program (see the log for reasons)",
)
REFUSED = Counter(
    "vxflow_controller_switches_refused",
    "OpenFlow connections closed because the switch is not who its datapath-id claims "
    "(certificate naming another PublicIP, or none) or never finished its handshake",
    ["reason"],  # identity | handshake_timeout
)
UNEXPECTED_REPLIES = Counter(
    "vxflow_controller_unexpected_replies",
    "flow monitor updates under an xid of no request this replica has open (ignored)",
)
PACKET_INS = Counter(
    "vxflow_controller_packet_ins",
    "packet-ins received; vxflow's tables never send any, so anything here is a bug or drift",
)

GROUP_MODS = Counter(
    "vxflow_controller_group_mods",
    "group-mods sent to switches (services' select groups: added, modified or deleted)",
)
CT_FLUSHES = Counter(
    "vxflow_controller_ct_flushes",
    "NXT_CT_FLUSH messages sent: the conntrack entries of a removed UDP service backend",
)

ADDS = FLOW_MODS.labels("add")
DRIFT_FOUND = {found_by: DRIFT.labels(found_by) for found_by in ("monitor", "audit")}
FOREIGN = {change: FOREIGN_CHANGES.labels(change) for change in ("added", "modified", "removed")}
DELETES = FLOW_MODS.labels("delete")
CHANGE_RESULT = {
    (form, result): CHANGES.labels(form, result)
    for form in ("bundle", "flow_mod")
    for result in ("ok", "failed")
}

# -- the controller cluster (controller/replica.py, controller/role.py) ------------------

MEMBER = Gauge(
    "vxflow_controller_member",
    "1 while this replica is a registered member in good standing (its etcd lease is valid)",
)
MEMBERSHIP_LOST = Counter(
    "vxflow_controller_membership_lost",
    "times this replica's membership lapsed (etcd unreachable or lease expired): writes stopped",
)
MASTERED = Gauge("vxflow_controller_mastered_switches", "switches that confirmed this replica as master")
MEMBERS_IGNORED = Gauge(
    "vxflow_controller_members_ignored",
    "controller members in etcd beyond the cap (the oldest count): never masters, never hashed",
)
TAKEOVERS = Counter(
    "vxflow_controller_takeovers",
    "switch claims written to etcd by this replica, by outcome",
    ["result"],  # claimed | lost_race
)
DEMOTIONS = Counter(
    "vxflow_controller_demotions",
    "times this replica stopped being a switch's master, by who ended it",
    ["by"],  # switch (ROLE_STATUS or a refused write) | replica (stepped down itself)
)
ROLE_REPLIES = Counter(
    "vxflow_controller_role_replies", "roles switches confirmed to this replica", ["role"]
)
ROLE_REFUSED = Counter(
    "vxflow_controller_role_refused",
    "role requests a switch refused (stale: a newer master's generation_id is in force)",
    ["reason"],
)
WRITES_REFUSED = Counter(
    "vxflow_controller_writes_refused",
    "writes a switch refused because this replica is not its master (OFPBRC_IS_SLAVE)",
)
WRITES_FENCED = Counter(
    "vxflow_controller_writes_fenced",
    "changes held back because this replica's membership had lapsed (never sent)",
)

ROLE_CHANGES = {role: ROLE_REPLIES.labels(name) for role, name in ((1, "equal"), (2, "master"), (3, "slave"))}


# -- network policy (flows/policy.py) ------------------------------------------------------

DROPS_LOGGED = Counter(
    "vxflow_policy_drops_logged",
    "policy drops logged one line each (--log-policy-drops: the packet-ins the drops' meter "
    "let through)",
)
_SUPPRESSED = Counter(
    "vxflow_policy_drops_suppressed",
    "packet-ins of logged policy drops the controller did not log, by reason",
    ["reason"],  # rate (the switch's token bucket) | backlog (the log's queue full) | undecodable
)
DROPS_SUPPRESSED = {r: _SUPPRESSED.labels(r) for r in ("rate", "backlog", "undecodable")}
DROP_METERS_REFUSED = Counter(
    "vxflow_policy_drop_meters_refused",
    "switch connections that refused the logged policy drops' meter (no meter support): "
    "their policy drops are plain drops, not logged, until they reconnect",
)

DeniedCount = tuple[tuple[str, str, str], int]  # (namespace, policies, direction), packets


class PolicyDenied:
    """vxflow_policy_denied_packets_total, rolled up at each scrape from the packet counts of
    the policy stage's default drops, as each switch's last readback (an audit) found them."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[DeniedCount]] = lambda: ()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "vxflow_policy_denied_packets",
            "packets network policy dropped (new connections no rule allows), by the isolated "
            "pod's namespace, the policies isolating it (comma-separated) and the direction; "
            "as of each switch's last audit",
            labels=["namespace", "policy", "direction"],
        )
        totals: Tally[tuple[str, str, str]] = Tally()
        for labels, packets in self.source():
            totals[labels] += packets
        for labels, packets in sorted(totals.items()):
            family.add_metric(list(labels), packets)
        yield family


POLICY_DENIED = PolicyDenied()
REGISTRY.register(POLICY_DENIED)
