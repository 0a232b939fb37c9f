"""What a flow of vxflow's pipeline is, and why a packet that stops there is dropped (pure).

`vxflow trace` reads the flows a packet hit from the switches themselves; this
names their owners and turns the last one of a dropped packet into a reason.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from flows.compiler import (
    DROP_TUNNEL_OTHER,
    DROP_TUNNEL_SPOOFED,
    PRIO_MISS,
    PRIO_OVERLAY,
    cookie_subnet,
)
from flows.flow import Owner, Table, owner_of
from flows.policy import PolicyTable
from leases.policy import EGRESS, INGRESS


def owner_text(cookie: int, subnet_len: int) -> str:
    """Who a flow belongs to, from its cookie."""
    owner = owner_of(cookie)
    if owner is None:
        return f"not vxflow's (cookie {cookie:#x})"
    kind, key = owner
    if kind is Owner.LEASE:
        subnet = cookie_subnet(cookie, subnet_len)
        return f"lease {subnet}" if subnet else f"not vxflow's (cookie {cookie:#x})"
    if kind is Owner.ENDPOINT:
        return f"endpoint {IPv4Address(key)}"
    if kind is Owner.POLICY:
        return f"network policy rule (conj_id {key})" if key else "network policy stage"
    if kind is Owner.POLICY_DROP:
        return f"network policy isolation of pod {IPv4Address(key)} (and the pods isolated alike)"
    if kind is Owner.DIRECT:
        return f"direct route to {IPv4Address(key)}/{subnet_len} (DirectRouting, no VXLAN)"
    return "base pipeline"


def policy_text(table: int, cookie: int, policies: PolicyTable,
                src: IPv4Address | None = None, dst: IPv4Address | None = None) -> str | None:  # fmt: skip
    """What a policy flow hit means, by the switch's compiled policy stage: the rule that
    allowed a connection, or the isolation that dropped it; None for any other flow.
    `src`, `dst`: the packet's addresses, to name the pod of its isolation group that
    a default drop dropped it for (else the group is named by its first pod)."""
    owner = owner_of(cookie)
    if owner is None:
        return None
    kind, key = owner
    if kind is Owner.POLICY and key in policies.rules:
        return f"allowed by {policies.rules[key].text()}"
    if kind is Owner.POLICY_DROP:
        direction = EGRESS if table == Table.POL_EGRESS else INGRESS
        pod = src if direction == EGRESS else dst
        if pod is None or policies.groups.get((direction, pod)) != IPv4Address(key):
            pod = IPv4Address(key)
        iso = policies.isolated.get((direction, pod))
        if iso is not None:
            return (f"network policy: {direction.lower()} of pod {iso.pod} is isolated by "
                    f"{', '.join(iso.policies)}, and no rule of them allows this connection")  # fmt: skip
    return None


def drop_reason(table: int, priority: int, cookie: int, pod_port: bool) -> str:
    """Why a packet whose last flow was this one is dropped. `pod_port`: it entered on a
    pod's port (so a miss of the classifier is the spoof guard's refusal)."""
    if cookie == DROP_TUNNEL_SPOOFED:
        return ("spoofed tunnel traffic: its inner source is not in the sending node's "
                "subnet (or the sender holds no lease)")  # fmt: skip
    if cookie == DROP_TUNNEL_OTHER:
        return "tunnel traffic of another VNI or not IPv4 from the overlay"
    if table == Table.CLASSIFY and priority == PRIO_MISS:
        if pod_port:
            return "spoof guard: the pod's port admits only the pod's own MAC and IP address"
        return "no flow admits traffic from this port"
    if table == Table.ROUTE and priority == PRIO_OVERLAY:
        return "no lease: no node holds the destination's subnet"
    if table == Table.LOCAL and priority == PRIO_MISS:
        return "no endpoint: no pod on this node holds the destination address"
    if priority == PRIO_MISS:
        return f"table-miss of table {table}"
    return f"dropped by a flow of {owner_text(cookie, 32)} in table {table}"
