"""Plugging pod ports into the integration bridge through the IDL: the CNI plugin's OVSDB edge.

A pod port carries the convention of ovsdb/pods.py (`attached-mac`,
`vxflow-ip`) plus the container's identity as ovs-docker writes it
(`container_id`, `container_iface`), so the agent publishes it and an
operator (or a retried DEL) can tell whose it is. The port is the host end
of the pod's veth, added by name; ovs-vswitchd opens the device and assigns
the ofport, which `wait_ofport()` waits for: a port that failed to open
(ofport -1) is an error, reported with vswitchd's own reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import ovs.db.idl

from ovsdb.bootstrap import by_name, owned
from ovsdb.idl import COLUMNS as AGENT_COLUMNS
from ovsdb.idl import OvsdbError, run_once, transact
from ovsdb.pods import IP_KEY, IPV6_KEY, MAC_KEY

# The plugin's replica reads besides what vswitchd_serves() needs; the agent's does not
# (cur_cfg changes at every reconfiguration, which would wake its loop for nothing).
COLUMNS = {**AGENT_COLUMNS, "Open_vSwitch": [*AGENT_COLUMNS["Open_vSwitch"], "next_cfg", "cur_cfg"]}
CONTAINER_KEY = "container_id"
IFACE_KEY = "container_iface"


class PlugError(RuntimeError):
    """The port could not be added (no bridge, a name taken, vswitchd could not open it)."""


def pod_external_ids(
    mac: str, ip: str, container_id: str, ifname: str, ipv6: str | None = None
) -> dict[str, str]:
    """The port's keys the agent publishes the endpoint from (ovsdb/pods.py), and the
    attachment it belongs to; `ipv6`: a dual-stack pod's IPv6 address."""
    ids = {MAC_KEY: mac, IP_KEY: ip, CONTAINER_KEY: container_id, IFACE_KEY: ifname}
    if ipv6 is not None:
        ids[IPV6_KEY] = ipv6
    return ids


def bridge_datapath_type(idl: ovs.db.idl.Idl, bridge: str) -> str | None:
    """The bridge's datapath type ("system", "netdev"), None if the bridge does not exist."""
    row = by_name(idl, "Bridge", bridge)
    return None if row is None else (row.datapath_type or "system")


def interface(idl: ovs.db.idl.Idl, name: str):
    return by_name(idl, "Interface", name)


class AddressClaimed(PlugError):
    """Another port of the bridge claims the address already (the agent would drop both)."""


def add_port(idl: ovs.db.idl.Idl, bridge: str, name: str, external_ids: Mapping[str, str],
             sending: Callable[[], None] = lambda: None) -> None:  # fmt: skip
    """Add device `name` to `bridge` with `external_ids` (`wait_ofport()` for vswitchd to open it).

    Refused (AddressClaimed) if another port of the bridge claims the same
    `vxflow-ip` (or `vxflow-ipv6`): two IPAM configurations that do not know of each other (a
    static address, host-local data in two mount namespaces) must not give
    one address to two pods. The bridge's port list is verified, so a port
    added meanwhile makes the transaction run again, and the check with it.
    `sending` is called before each commit: from then on the port may exist.
    """

    def fill(txn: ovs.db.idl.Transaction) -> None:
        row = by_name(idl, "Bridge", bridge)
        if row is None:
            raise PlugError(f"bridge {bridge} does not exist (has the vxflow agent bootstrapped it?)")
        if by_name(idl, "Port", name) is not None:
            raise PlugError(f"a port named {name} exists already")
        row.verify("ports")
        for key in (IP_KEY, IPV6_KEY):
            ip = external_ids.get(key)
            for port in row.ports if ip is not None else ():
                if any(i.external_ids.get(key) == ip for i in port.interfaces):
                    raise AddressClaimed(f"{key} {ip} is claimed by port {port.name} already")
        iface = txn.insert(idl.tables["Interface"])
        iface.name = name
        iface.external_ids = dict(external_ids)
        port = txn.insert(idl.tables["Port"])
        port.name = name
        port.interfaces = [iface]
        row.addvalue("ports", port)
        sending()

    try:
        transact(idl, fill, f"vxflow-cni: add port {name}")
    except OvsdbError as exc:
        raise PlugError(str(exc)) from exc


def wait_ofport(idl: ovs.db.idl.Idl, name: str, timeout: float = 10.0) -> int:
    """The ofport of port `name` once ovs-vswitchd opened it (PlugError with its reason if not)."""
    deadline = time.monotonic() + timeout
    while True:
        row = interface(idl, name)
        ofport = row.ofport[0] if row is not None and row.ofport else None
        if ofport is not None and ofport >= 1:
            return ofport
        if ofport == -1:
            reason = row.error[0] if row.error else "no reason given"
            raise PlugError(f"ovs-vswitchd could not open port {name}: {reason}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PlugError(f"ovs-vswitchd assigned no ofport to {name} within {timeout:.0f}s "
                            "(is ovs-vswitchd running for this OVSDB?)")  # fmt: skip
        run_once(idl, timeout=min(remaining, 0.5))


def vswitchd_serves(idl: ovs.db.idl.Idl, timeout: float) -> bool:
    """Whether ovs-vswitchd applies this database's configuration: `next_cfg` bumped and
    `cur_cfg` caught up within `timeout` s, as `ovs-vsctl --wait=vswitchd` waits.

    A row in OVSDB does not tell: the tables outlive a stopped ovs-vswitchd,
    and a port added then never gets an ofport. OvsdbError if the bump fails.
    """
    rows = list(idl.tables["Open_vSwitch"].rows.values())
    if not rows:
        return False
    target = []

    def bump(_txn: ovs.db.idl.Transaction) -> None:  # python-ovs's increment() alone is no change
        rows[0].verify("next_cfg")
        target[:] = [rows[0].next_cfg + 1]
        rows[0].next_cfg = target[0]

    transact(idl, bump, "vxflow-cni: is ovs-vswitchd there?")
    deadline = time.monotonic() + timeout
    while rows[0].cur_cfg < target[0]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        run_once(idl, timeout=min(remaining, 0.5))
    return True


def foreign_ports(idl: ovs.db.idl.Idl, bridge: str) -> list:
    """The Port rows of `bridge` that vxflow did not create (its tunnel, gateway, bridge port)."""
    row = by_name(idl, "Bridge", bridge)
    return [] if row is None else [p for p in row.ports if not owned(p)]


def pod_ports(idl: ovs.db.idl.Idl, bridge: str, name: str, container_id: str, ifname: str) -> list:
    """Ports of `bridge` that are this attachment's: by name, or by the container's identity."""
    found = []
    for port in foreign_ports(idl, bridge):
        ids = [i.external_ids for i in port.interfaces]
        mine = any(
            x.get(CONTAINER_KEY) == container_id and x.get(IFACE_KEY) == ifname for x in ids
        )
        if port.name == name or mine:
            found.append(port)
    return found


def container_ifnames(idl: ovs.db.idl.Idl, bridge: str, container_id: str) -> list[str]:
    """The container interfaces (`container_iface`) of `container_id` with a port on `bridge`."""
    return sorted(
        i.external_ids.get(IFACE_KEY, "")
        for port in foreign_ports(idl, bridge)
        for i in port.interfaces
        if i.external_ids.get(CONTAINER_KEY) == container_id
    )


def unplug(idl: ovs.db.idl.Idl, bridge: str, name: str, container_id: str, ifname: str) -> list[str]:
    """Remove this attachment's ports from `bridge`; the names removed (none: nothing to do)."""
    removed: list[str] = []

    def fill(_txn: ovs.db.idl.Transaction) -> None:
        removed.clear()
        row = by_name(idl, "Bridge", bridge)
        for port in pod_ports(idl, bridge, name, container_id, ifname):
            row.delvalue("ports", port)
            removed.append(port.name)

    transact(idl, fill, f"vxflow-cni: remove port {name}")
    return removed
