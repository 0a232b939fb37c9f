"""Services in the controller (pure: a recording channel, no switch): groups read back,
diffed and sent in the bundle/barrier discipline, one group-mod per backend change (with
client-IP affinity: the flow-mods of the links that changed hands), conntrack flushes of
removed UDP backends, learned entries left alone."""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from controller import groups, metrics, ofwire
from controller.model import ClusterModel
from controller.switch import State
from flows.compiler import compile_table
from flows.flow import Flow, Owner, Table, cookie_for
from flows.services import ServicePlan, affinity_links, group_id, plan_groups, port_flows
from leases.events import ServiceAdded, ServiceRemoved, VxflowConfigChanged
from leases.model import Backend, Service, ServicePort, VxflowConfig
from tests.test_controller_sync import CONFIG, bundle_adds, finish, lease, make, read_back

NET = IPv4Network("198.20.0.0/16")
B1, B2, B3 = (IPv4Address(f"198.19.{i}.254") for i in (1, 2, 3))
DNS = Service(
    "dns", IPv4Address("198.20.0.53"),
    (ServicePort(53, "TCP", 5353), ServicePort(53, "UDP", 5353)),
    (Backend(B1), Backend(B2)),
)  # fmt: skip
LEASES = [lease(1), lease(2), lease(3)]


def model_with(*services: Service) -> ClusterModel:
    model = ClusterModel()
    model.load(CONFIG, LEASES, [], vxflow=VxflowConfig(NET), services=services)
    return model


def table_of(*services: Service):
    return compile_table(CONFIG, LEASES, [], lease(1).public_ip, ServicePlan(NET, services))


def synced(model: ClusterModel, *services: Service):
    """A switch of node 1 whose table and groups are already right."""
    sync, channel, delayed = make(model, lease(1).public_ip)
    sync.start()
    held = table_of(*services)
    read_back(sync, channel, list(held), held.groups)
    assert channel.take() == [] and sync.state is State.IDLE
    return sync, channel, delayed


def group_mods(messages) -> list[tuple[int, int]]:
    """(command, group id) of every group-mod sent, bare or inside a bundle add."""
    out = []
    for t, _, m in messages:
        inner = m[16:] if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE else m
        if inner[1] == groups.OFPT_GROUP_MOD:
            command, _, gid = struct.unpack_from("!HBxI", inner, 8)
            out.append((command, gid))
    return out


def land(sync, channel, sent) -> list:
    """Answer a change: a bundle's two barriers, or a bare change's one; what came after."""
    if any(t == ofwire.OFPT_BUNDLE_CONTROL for t, _, _ in sent):
        return finish(sync, channel, sent)
    (barrier, xid, _) = sent[-1]
    assert barrier == ofwire.OFPT_BARRIER_REQUEST
    sync.on_barrier(xid)
    return channel.take()


def test_a_right_switch_with_groups_gets_nothing() -> None:
    synced(model_with(DNS), DNS)


def test_a_backend_change_is_one_bare_group_mod_per_port_and_nothing_else() -> None:
    model = model_with(DNS)
    sync, channel, _ = synced(model, DNS)
    new = replace(DNS, backends=(Backend(B1, 3), Backend(B2), Backend(B3)))
    impact = model.apply([ServiceRemoved(DNS, 9), ServiceAdded(new, 9)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet), impact.flushes)
    sent = channel.take()
    # two ports, two group-mods, nothing else: bare, with one barrier
    assert [t for t, _, _ in sent] == [groups.OFPT_GROUP_MOD] * 2 + [ofwire.OFPT_BARRIER_REQUEST]
    assert group_mods(sent) == [(groups.OFPGC_MODIFY, 53 << 8), (groups.OFPGC_MODIFY, 53 << 8 | 1)]
    land(sync, channel, sent)
    assert list(sync.installed_groups.values()) == table_of(new).groups
    assert impact.flushes == []  # nothing removed

    # one port's backends only (a UDP-only service): one bare group-mod and its barrier
    udp = Service("udp", IPv4Address("198.20.0.54"), (ServicePort(9, "UDP", 9),), (Backend(B1),))
    model, before = model_with(udp), metrics.GROUP_MODS._value.get()
    sync, channel, _ = synced(model, udp)
    grown = replace(udp, backends=(Backend(B1), Backend(B2, 2)))
    impact = model.apply([ServiceRemoved(udp, 9), ServiceAdded(grown, 9)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet))
    (gm, gm_xid, _), (barrier, barrier_xid, _) = channel.take()
    assert (gm, barrier, barrier_xid) == (
        groups.OFPT_GROUP_MOD,
        ofwire.OFPT_BARRIER_REQUEST,
        gm_xid + 1,
    )
    sync.on_barrier(barrier_xid)
    assert sync.installed_groups[54 << 8] == table_of(grown).groups[0]
    assert metrics.GROUP_MODS._value.get() == before + 1


def test_a_new_service_adds_its_group_before_its_flows_and_a_removed_one_after() -> None:
    model = model_with()
    sync, channel, _ = synced(model)
    impact = model.apply([ServiceAdded(DNS, 5)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet))
    sent = channel.take()
    kinds = [m[16 + 1] for t, _, m in sent if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE]
    first_flow = kinds.index(ofwire.OFPT_FLOW_MOD)
    assert set(kinds[:first_flow]) == {groups.OFPT_GROUP_MOD}  # groups first
    assert groups.OFPT_GROUP_MOD not in kinds[first_flow:]
    land(sync, channel, sent)
    held = table_of(DNS)
    assert set(sync.installed.values()) == set(held)
    assert list(sync.installed_groups.values()) == held.groups

    impact = model.apply([ServiceRemoved(DNS, 6)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet), impact.flushes)
    sent = channel.take()
    kinds = [m[16 + 1] for t, _, m in sent if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE]
    assert kinds[-2:] == [groups.OFPT_GROUP_MOD] * 2 and groups.OFPT_GROUP_MOD not in kinds[:-2]
    assert group_mods(sent) == [(groups.OFPGC_DELETE, 53 << 8), (groups.OFPGC_DELETE, 53 << 8 | 1)]
    land(sync, channel, sent)
    assert sync.installed_groups == {}
    assert set(sync.installed.values()) == set(table_of())
    # the UDP port's two backends: their conntrack entries are flushed after the change
    flushes = [m for t, _, m in channel.take() if t == groups.OFPT_EXPERIMENTER]
    assert [struct.unpack_from("!II", m, 8) for m in flushes] == [(ofwire.NX_VENDOR_ID, 32)] * 2


def test_removed_udp_backends_are_flushed_once_the_group_no_longer_picks_them() -> None:
    model = model_with(DNS)
    sync, channel, _ = synced(model, DNS)
    shrunk = replace(DNS, backends=(Backend(B2),))
    impact = model.apply([ServiceRemoved(DNS, 9), ServiceAdded(shrunk, 9)])
    assert [(f.backend, f.port, f.target_port, f.ip_proto) for f in impact.flushes] == [
        (B1, 53, 5353, 17)
    ]  # only UDP, only the backend that went
    sync.request(impact.scope_for(sync.node, lease(1).subnet), impact.flushes)
    sent = channel.take()
    assert not [t for t, _, _ in sent if t == groups.OFPT_EXPERIMENTER]  # not before it landed
    flushes = [m for t, _, m in land(sync, channel, sent) if t == groups.OFPT_EXPERIMENTER]
    assert flushes == [
        groups.encode_ct_flush(7678, impact.flushes[0], struct.unpack_from("!I", flushes[0], 4)[0])
    ]
    # a backend removed and added back in one batch keeps its entries
    again = model.apply([ServiceRemoved(shrunk, 10), ServiceAdded(DNS, 10), ServiceRemoved(DNS, 10),
                         ServiceAdded(shrunk, 10)])  # fmt: skip
    assert [f.backend for f in again.flushes] == [B1]
    back = model.apply([ServiceRemoved(shrunk, 11), ServiceAdded(DNS, 11)])
    assert back.flushes == []


def test_a_replica_that_is_not_master_neither_writes_nor_flushes() -> None:
    model = model_with(DNS)
    sync, channel, _ = synced(model, DNS)
    sync.suspend()
    impact = model.apply([ServiceRemoved(DNS, 9), ServiceAdded(replace(DNS, backends=()), 9)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet), impact.flushes)
    assert channel.take() == []
    sync.promote()  # a fresh readback of flows and groups, then the change
    held = table_of(DNS)
    read_back(sync, channel, list(held), held.groups)
    sent = channel.take()
    assert (groups.OFPGC_DELETE, 53 << 8) in group_mods(sent)
    land(sync, channel, sent)
    assert not [t for t, _, _ in channel.take() if t == groups.OFPT_EXPERIMENTER]


STICKY = Service("sticky", IPv4Address("198.20.0.80"), (ServicePort(80, "TCP", 8080),),
                 (Backend(B1), Backend(B2)), affinity_timeout=60)  # fmt: skip


def test_learned_affinity_entries_are_never_drift_and_wrong_groups_are() -> None:
    model = model_with(DNS, STICKY)
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    held = table_of(DNS, STICKY)
    learned = Flow(Table.SVC_AFFINITY, 100, (("ip_src", B3),), (("set_field", "reg1", 1),),
                   cookie_for(Owner.LEARNED, 80 << 8))  # fmt: skip
    wrong = replace(held.groups[0], buckets=held.groups[0].buckets[:1])
    foreign = replace(held.groups[0], group_id=7)
    read_back(sync, channel, [*held, learned], [wrong, held.groups[1], foreign])
    sent = channel.take()
    assert group_mods(sent) == [(groups.OFPGC_MODIFY, 53 << 8), (groups.OFPGC_DELETE, 7)]
    assert not [
        m
        for t, _, m in sent
        if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE and m[17] == ofwire.OFPT_FLOW_MOD
    ]
    land(sync, channel, sent)
    assert list(sync.installed_groups.values()) == held.groups  # none for the sticky port


def test_a_backend_change_with_affinity_is_the_flow_mods_of_the_links_that_changed_hands() -> None:
    """No group: the links re-dealt (a removed backend's, an added one's share), the
    backends' own SVC_DNAT flows, the multipath flow untouched; in one bundle here."""
    model = model_with(STICKY)
    sync, channel, _ = synced(model, STICKY)
    new = replace(STICKY, backends=(Backend(B2), Backend(B3)))  # B1 out, B3 in
    impact = model.apply([ServiceRemoved(STICKY, 9), ServiceAdded(new, 9)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet), impact.flushes)
    sent = channel.take()
    assert group_mods(sent) == [] and impact.flushes == []  # (TCP: nothing to flush)
    moved = sum(a != b for a, b in zip(affinity_links(STICKY.backends), affinity_links(new.backends),
                                       strict=True))  # fmt: skip
    assert 0 < moved < 67
    assert sorted(bundle_adds(sent)) == [ofwire.OFPFC_ADD] * (moved + 1) + [ofwire.OFPFC_DELETE_STRICT]
    land(sync, channel, sent)
    assert set(sync.installed.values()) == set(table_of(new))
    assert sync.installed_groups == {}
    # the port's flows are its cookie's alone: the other services' stay untouched
    assert {f.cookie for f in port_flows(NET, new, 0)} == {
        cookie_for(Owner.SERVICE, group_id(NET, new, 0))
    }


def test_a_port_gaining_affinity_loses_its_group_after_the_flows_that_pointed_at_it() -> None:
    """Also a switch programmed before affinity had no group: its group goes last."""
    plain = replace(STICKY, affinity_timeout=0)
    model = model_with(STICKY)
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    held = table_of(plain)
    read_back(sync, channel, list(held), held.groups)
    sent = channel.take()
    kinds = [m[16 + 1] for t, _, m in sent if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE]
    assert kinds[-1] == groups.OFPT_GROUP_MOD and set(kinds[:-1]) == {ofwire.OFPT_FLOW_MOD}
    assert group_mods(sent) == [(groups.OFPGC_DELETE, 80 << 8)]
    land(sync, channel, sent)
    assert set(sync.installed.values()) == set(table_of(STICKY)) and sync.installed_groups == {}


def test_the_range_and_its_services_arrive_and_leave_with_the_vxflow_config() -> None:
    model = ClusterModel()
    model.load(CONFIG, LEASES, [], services=[DNS])
    assert model.plan() is None  # services without a range: no service flows anywhere
    impact = model.apply([VxflowConfigChanged(VxflowConfig(), VxflowConfig(NET), 3)])
    assert impact.all_nodes
    desired = model.desired(lease(1).public_ip, impact.scope_for(lease(1).public_ip, None))
    assert set(desired) == set(table_of(DNS)) and desired.groups == plan_groups(
        ServicePlan(NET, (DNS,))
    )
