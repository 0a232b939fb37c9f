"""This replica's status page (`/status` beside its metrics), which `vxflow status` reads.

Why a page and not etcd: what a switch holds (flows installed, the last sync,
repairs) changes with every lease event; written to etcd it would reach every
agent and replica watching the prefix, a fan-out per event. A replica serves
it on request instead, read-only, and its member entry in etcd carries the
page's URL (`Status`), so `vxflow status` finds every replica from etcd alone.

Per connected switch: its node, this replica's role and generation, and, where
this replica is its master, the flows installed and desired, whether the table
is in sync, the last sync, drift repairs, the last refused change and, with policy
drops logged, whether the switch refused their meter. Flows
are compared (a diff) only for a switch not in sync: in sync, the last
comparison and everything since landed, so the count is all there is; not
in sync, against the copy of its table this mastership read back (none is
counted before the first readback is done).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from greenlet import greenlet

from controller.model import FULL, ClusterModel
from controller.replica import Membership
from controller.role import SwitchRole
from controller.switch import SwitchSync
from flows.diff import diff_table


def status_url(listen: str, port: int, advertised: str) -> str:
    """Where the page is served, as others reach it ("" when it is not served): the
    metrics address, or the advertised OpenFlow address's when it listens on all."""
    if not port:
        return ""
    host = listen
    if listen in ("0.0.0.0", "::", ""):
        host = advertised.split(":")[1] if advertised else "127.0.0.1"
    return f"http://{host}:{port}/status"


def page(
    membership: Membership,
    model: ClusterModel,
    switches: dict[int, SwitchSync],
    roles: dict[int, SwitchRole],
) -> dict[str, Any]:
    return {
        "member": membership.id,
        "address": membership.address,
        "member_valid": membership.valid(),
        "config_known": model.config is not None,
        "time": time.time(),
        "switches": [
            _switch(dpid, sync, roles.get(dpid), model) for dpid, sync in sorted(switches.items())
        ],
    }


def _switch(dpid: int, sync: SwitchSync, role: SwitchRole | None, model: ClusterModel) -> dict:
    entry: dict[str, Any] = {
        "datapath_id": f"{dpid:016x}",
        "node": str(sync.node),
        "role": role.confirmed.name.lower() if role else "unknown",
        "generation": role.generation if role else 0,
        "connected_since": sync.connected_at,
    }
    if not sync.master:
        return entry
    desired = model.desired(sync.node, FULL)
    in_sync = sync.in_sync
    differing = 0
    # also while a readback is under way: a retry's, after a refused change, comes back to
    # the same difference; counted as none, a drift that stands would look healthy
    if desired is not None and not in_sync and sync.table_known:
        differing = len(diff_table(list(sync.installed.values()), desired))
    entry.update(
        state=sync.state.value,
        in_sync=in_sync,
        flows_installed=len(sync.installed),
        flows_desired=len(desired) if desired is not None else None,
        flows_differing=differing,
        last_sync=sync.synced_at,
        drift_repairs=sync.drift_repairs,
        last_error=sync.last_error,
    )
    if sync.meter_rate:  # policy drops logged: whether this switch took their meter
        entry["drop_meter_refused"] = sync.meter_refused
    return entry


def threads() -> dict[str, int]:
    """The `/threads` page: green threads alive, found by walking every object the garbage
    collector tracks (a pause of the hub that grows with the heap, so counted only when
    asked: the soak's leak check, bench/soak.py), and OS threads. (What the idle collector
    froze is not among them until unfrozen: the next idle moment freezes it again.)"""
    gc.unfreeze()
    return {
        "green": sum(isinstance(o, greenlet) and not o.dead for o in gc.get_objects()),
        "os": threading.active_count(),
    }
