"""Drift reported by a switch's flow monitor: the wire format (against os-ken's own) and the
scoped repair it starts (pure: a recording channel, no switch)."""

from __future__ import annotations

import struct

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from controller import metrics, monitor, ofwire, wirecheck
from controller.app import _each
from controller.model import Scope
from controller.monitor import FlowChange, Paused, Resumed
from controller.replica import Membership
from controller.switch import AUDIT_SHARE, State, audit_spacing
from flows.compiler import BASE_COOKIE, compile_node, cookie_subnet, subnet_cookie
from flows.explain import owner_text
from flows.flow import Flow, Owner, Table, cookie_for, flow, output, owner_of, to_ofctl
from leases.events import LeaseAdded
from tests.test_controller_sync import (
    CONFIG,
    bare_mods,
    land_bare,
    lease,
    make,
    model_with,
    read_back,
)

_HEAD = struct.Struct("!HHBBHHH4xQ")


def full_update(event: int, f: Flow) -> bytes:
    """An OFPFME_ADDED/MODIFIED/REMOVED update as OVS sends it (no instructions if removed)."""
    body = ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1)[48:]
    if event == monitor.OFPFME_REMOVED:
        mlen = struct.unpack_from("!H", body, 2)[0]
        body = body[: (mlen + 7) // 8 * 8]
    return _HEAD.pack(_HEAD.size + len(body), event, f.table, 0, 0, 0, f.priority, f.cookie) + body


def abbrev(xid: int) -> bytes:
    return struct.pack("!HHI", 8, monitor.OFPFME_ABBREV, xid)


def marker(event: int) -> bytes:
    return struct.pack("!HH4x", 8, event)


def test_request_is_byte_identical_to_osken():
    dp = ofproto_protocol.ProtocolDesc(version=ofp.OFP_VERSION)
    msg = parser.OFPFlowMonitorRequest(
        dp, 0, monitor.MONITOR_ID, ofp.OFPP_ANY, ofp.OFPG_ANY,
        ofp.OFPFMF_ADD | ofp.OFPFMF_REMOVED | ofp.OFPFMF_MODIFY | ofp.OFPFMF_INSTRUCTIONS,
        ofp.OFPTT_ALL, ofp.OFPFMC_ADD, parser.OFPMatch(),
    )  # fmt: skip
    msg.set_xid(0x42)
    msg.serialize()
    assert monitor.encode_request(0x42) == bytes(msg.buf)


def test_updates_decode_to_flows_and_markers_own_changes_skipped():
    table = sorted(compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip),
                   key=lambda f: (f.table, f.priority))  # fmt: skip
    added, removed = table[-1], table[0]
    body = (abbrev(7) + full_update(monitor.OFPFME_ADDED, added)
            + full_update(monitor.OFPFME_REMOVED, removed) + marker(monitor.OFPFME_PAUSED)
            + marker(monitor.OFPFME_RESUMED))  # fmt: skip
    updates = list(monitor.decode_updates(body))
    key_only = Flow(removed.table, removed.priority, removed.match, (), removed.cookie)
    assert updates[:2] == [FlowChange(added, "added"), FlowChange(key_only, "removed")]
    assert [type(u) for u in updates[2:]] == [Paused, Resumed]
    assert list(monitor.decode_updates(body[:-3])) == updates[:3]  # a cut update ends the body


def synced(model, i: int = 1):
    sync, channel, delayed = make(model, lease(i).public_ip)
    sync.start()
    read_back(sync, channel, compile_node(CONFIG, model.leases(), [], lease(i).public_ip))
    assert channel.take() == []
    return sync, channel, delayed


def route_of(i: int, table) -> Flow:
    return next(f for f in table if f.cookie == subnet_cookie(lease(i).subnet))


def test_a_removed_flow_is_put_back_and_nothing_else_is_touched():
    model = model_with(lease(1), lease(2), lease(3))
    sync, channel, _ = synced(model)
    route = route_of(2, sync.installed.values())
    before = metrics.DRIFT_FOUND["monitor"]._value.get()
    monitor.deliver(full_update(monitor.OFPFME_REMOVED, route), sync)
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD]
    assert sent[0][2] == ofwire.encode_flow_mod(route, ofwire.OFPFC_ADD, sent[0][1])
    land_bare(sync, sent)
    assert route in sync.installed.values() and sync.state is State.IDLE
    assert metrics.DRIFT_FOUND["monitor"]._value.get() == before + 1
    assert channel.take() == []


def test_a_stray_flow_is_deleted_and_a_modified_one_restored(caplog):
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    stray = flow(Table.CLASSIFY, 500, {}, (), 0)
    monitor.deliver(full_update(monitor.OFPFME_ADDED, stray), sync)
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_DELETE_STRICT]
    land_bare(sync, sent)
    assert stray.key not in sync.installed
    line = f"another OpenFlow client changed 1 flows (1 added), e.g. added {to_ofctl(stray)}"
    assert line in caplog.text

    route = route_of(2, sync.installed.values())
    hijacked = Flow(route.table, route.priority, route.match, (output(5),), route.cookie)
    monitor.deliver(full_update(monitor.OFPFME_MODIFIED, hijacked), sync)
    sent = channel.take()
    assert sent[0][2] == ofwire.encode_flow_mod(route, ofwire.OFPFC_ADD, sent[0][1])
    land_bare(sync, sent)
    assert sync.installed[route.key] == route


def test_own_changes_slaves_and_readbacks_never_start_a_repair():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    route = route_of(2, sync.installed.values())
    monitor.deliver(abbrev(1234), sync)  # our own flow-mod, abbreviated by the switch
    assert channel.take() == []

    sync.audit()  # a readback is under way: it sees the change itself
    read, group_read = channel.take()  # flow stats, group desc
    monitor.deliver(full_update(monitor.OFPFME_REMOVED, route), sync)
    assert channel.take() == [] and route.key in sync.installed
    sync.on_flow_stats(read[1], b"", more=False)  # ...and found the table empty
    sync.on_group_desc(group_read[1], b"", more=False)
    assert len(bare_mods(channel.take())) == 0  # one bundle of everything instead

    slave, slave_channel, _ = make(model, lease(2).public_ip)
    slave.master = False
    monitor.deliver(full_update(monitor.OFPFME_REMOVED, route), slave)
    assert slave_channel.take() == [] and slave.installed == {}


def test_a_paused_monitor_is_trusted_again_only_after_a_readback():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    route = route_of(2, sync.installed.values())
    monitor.deliver(marker(monitor.OFPFME_PAUSED) + full_update(monitor.OFPFME_REMOVED, route),
                    sync)  # fmt: skip
    assert channel.take() == [] and route.key in sync.installed
    monitor.deliver(marker(monitor.OFPFME_RESUMED), sync)
    assert [m[0] for m in channel.take()] == [ofwire.OFPT_MULTIPART_REQUEST] * 2  # a readback


def test_unknown_actions_read_back_from_a_switch_are_shown():
    foreign = Flow(0, 5, (), (("unknown_action", "ffff0010"),), 0)
    assert to_ofctl(foreign) == "cookie=0x0,table=0,priority=5 actions=unknown_action(ffff0010)"


def test_the_audit_repairs_what_no_monitor_reported(caplog):
    """The backstop: a readback finds a route gone that no update reported."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    route = route_of(2, sync.installed.values())
    before = metrics.DRIFT_FOUND["audit"]._value.get()
    sync.audit()
    read_back(sync, channel, [f for f in sync.installed.values() if f != route])
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD]
    land_bare(sync, sent)
    assert metrics.DRIFT_FOUND["audit"]._value.get() == before + 1
    line = f"switch {lease(1).public_ip} drifted: 1 flows missing or wrong, 0 unexpected"
    assert f"{line}, 0 groups differ (found by a readback: audit)" in caplog.text


def test_a_lease_added_during_an_audit_is_sent_not_called_drift(caplog):
    """The readback shows the table before the new lease's flows were sent: the comparison
    sends them, and counts no drift for them (real drift beside them still counts)."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    held = list(sync.installed.values())
    before = metrics.DRIFT_FOUND["audit"]._value.get()
    sync.audit()
    impact = model.apply([LeaseAdded(lease(3), 10)])
    sync.request(impact.scope_for(sync.node, model.own_lease(sync.node).subnet))
    read_back(sync, channel, held)
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD, ofwire.OFPFC_ADD]  # lease 3's two flows
    land_bare(sync, sent)
    assert metrics.DRIFT_FOUND["audit"]._value.get() == before
    assert "drifted" not in caplog.text
    sync.audit()  # again, with lease 2's route gone as well
    impact = model.apply([LeaseAdded(lease(4), 11)])
    sync.request(impact.scope_for(sync.node, model.own_lease(sync.node).subnet))
    read_back(sync, channel, [f for f in sync.installed.values() if f != route_of(2, held)])
    land_bare(sync, channel.take())
    assert metrics.DRIFT_FOUND["audit"]._value.get() == before + 1
    assert "drifted: 1 flows missing or wrong, 0 unexpected, 0 groups differ" in caplog.text


def test_an_audit_is_reading_back_until_its_comparison_is_done():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    assert not sync.reading_back
    sync.audit()
    assert sync.reading_back  # asked for, then under way
    read_back(sync, channel, list(sync.installed.values()))
    assert not sync.reading_back and channel.take() == []  # nothing drifted, nothing sent


def test_audits_are_spread_over_the_interval_and_kept_to_a_share_of_the_time():
    assert audit_spacing(60, 2, 0.0) == 30
    assert round(audit_spacing(60, 1000, 0.01), 6) == 0.05  # 1,000 switches once a minute
    # audits of 80 ms: 240 ms apart (a quarter of the time), the round longer than 60 s
    assert AUDIT_SHARE == 0.25 and round(audit_spacing(60, 1000, 0.08), 6) == 0.24


def test_monitor_replies_pass_the_wire_check_and_a_zero_length_update_does_not():
    table = list(compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip))
    body = (abbrev(7) + b"".join(full_update(monitor.OFPFME_ADDED, f) for f in table)
            + full_update(monitor.OFPFME_REMOVED, table[0]) + marker(monitor.OFPFME_PAUSED))  # fmt: skip
    reply = struct.pack("!BBHIHH4x", 5, 19, 16 + len(body), 0, monitor.OFPMP_FLOW_MONITOR, 0)
    assert wirecheck.problem(5, 19, reply + body) is None
    zero = struct.pack("!HH4x", 0, monitor.OFPFME_ADDED)
    assert "flow update at 16 has length 0" in wirecheck.problem(5, 19, reply + zero)
    bad = bytearray(full_update(monitor.OFPFME_ADDED, max(table, key=lambda f: len(f.actions))))
    struct.pack_into("!H", bad, 24 + 2, 4000)  # a match longer than the update
    assert "match has length 4000" in wirecheck.problem(5, 19, reply + bytes(bad))


def test_a_removed_flow_of_the_base_pipeline_is_put_back():
    """The base pipeline has several cookies (the table-miss drops, the counting drops of
    tunnel traffic) and one owner: a change to any of them repairs it from the whole."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    base = [f for f in sync.installed.values() if f.cookie != BASE_COOKIE
            and (owner_of(f.cookie) or (None,))[0] is Owner.BASE]  # fmt: skip
    assert base, "the base pipeline has flows under cookies of their own"
    monitor.deliver(full_update(monitor.OFPFME_REMOVED, base[0]), sync)
    sent = channel.take()
    assert sent[0][2] == ofwire.encode_flow_mod(base[0], ofwire.OFPFC_ADD, sent[0][1])
    land_bare(sync, sent)
    assert base[0] in sync.installed.values()


def test_affinity_entries_the_switch_learns_are_not_drift():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    learned = flow(41, 100, {}, (), cookie_for(Owner.LEARNED, 10))
    monitor.deliver(full_update(monitor.OFPFME_ADDED, learned), sync)
    assert channel.take() == [] and learned.key not in sync.installed


@pytest.mark.parametrize("key", [1, 0xC6130001, 0xFFFFFFFF])
def test_a_lease_shaped_cookie_naming_no_subnet_is_a_stray(key: int, caplog):
    """A hand-made flow whose cookie looks like a lease's, but whose key is no /24's
    network address: deleted like any stray, no exception (it used to raise in the model
    and leave the change pending for good)."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = synced(model)
    stray = flow(Table.ROUTE, 100, {"eth_type": 0x0800}, (), cookie_for(Owner.LEASE, key))
    assert cookie_subnet(stray.cookie, CONFIG.subnet_len) is None
    monitor.deliver(full_update(monitor.OFPFME_ADDED, stray), sync)
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_DELETE_STRICT]
    land_bare(sync, sent)
    assert stray.key not in sync.installed and sync.in_sync
    assert "Traceback" not in caplog.text
    assert owner_text(stray.cookie, CONFIG.subnet_len) == f"not vxflow's (cookie {stray.cookie:#x})"


def test_one_switch_failing_to_compute_retries_alone_and_the_others_go_on(caplog):
    """Whatever raises while one switch's flows are computed is logged; that switch retries
    from a readback later, and every other switch still gets the change."""
    model = model_with(lease(1), lease(2), lease(3))
    broken, broken_channel, delayed = synced(model, 1)
    healthy, healthy_channel, _ = synced(model, 2)

    def boom(scope):
        raise ValueError("a value nothing foresaw")

    broken.desired = boom
    model.apply([LeaseAdded(lease(4), 2)])
    scope = Scope.of_cookies(frozenset({subnet_cookie(lease(4).subnet)}))
    _each([broken, healthy], lambda s: s.request(scope), "sending a registry change")
    assert broken_channel.take() == [] and [d for d, _ in delayed] == [0.5]
    assert broken.reading_back and "computing its desired flows failed" in caplog.text
    land_bare(healthy, healthy_channel.take())
    assert route_of(4, healthy.installed.values())


def test_a_failing_lapse_or_renewal_handler_never_ends_the_membership(caplog):
    """The renewal loop and the lapse timer call the app back: what fails there is logged,
    never raised into them (a dead renewal loop would lapse the replica for good)."""

    def boom():
        raise RuntimeError("resume failed")

    membership = Membership(None, "r1", "", 5, on_change=boom)  # never reaches etcd here
    membership._lapse()
    assert "acting on a lapse or renewal failed" in caplog.text
