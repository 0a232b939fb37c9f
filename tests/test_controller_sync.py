"""Per-switch sync logic and the incremental cluster model (pure: a recording channel, no switch)."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import SimpleNamespace

import pytest

from controller import groups, metrics, ofwire, status, switch
from controller.model import FULL, ClusterModel, Scope
from controller.monitor import FlowChange
from controller.switch import State, SwitchSync
from flows.compiler import FLOWS_PER_LEASE, compile_node, subnet_cookie
from flows.flow import Owner, flow, output
from flows.ports import vtep_mac_for
from leases.config import parse_config
from leases.events import EndpointAdded, LeaseAdded, LeaseChanged, LeaseRemoved
from leases.model import Endpoint, Lease, NetworkConfig
from tests.test_flows_ipv6 import DUAL

CONFIG = NetworkConfig(IPv4Network("198.19.0.0/16"))


def lease(i: int, ip: int | None = None) -> Lease:
    public = IPv4Address(f"198.18.0.{ip or i}")
    return Lease(IPv4Network(f"198.19.{i}.0/24"), public, 1, vtep_mac_for(public))


class Recorder:
    """A Channel that keeps every message, split into (type, xid, bytes)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, bytes]] = []
        self.next_xid = 100
        self.writes = 0
        self.deadlines: list = []  # what a SwitchSync runs once a readback is overdue

    def send(self, data: bytes) -> None:
        self.writes += 1
        pos = 0
        while pos < len(data):
            _, mtype, length, xid = struct.unpack_from("!BBHI", data, pos)
            self.messages.append((mtype, xid, data[pos : pos + length]))
            pos += length

    def xids(self, count: int) -> int:
        first = self.next_xid
        self.next_xid += count
        return first

    def take(self) -> list[tuple[int, int, bytes]]:
        out, self.messages = self.messages, []
        return out


def stats_body(flows) -> bytes:
    out = b""
    for f in flows:
        body = ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1)[48:]
        out += ofwire._FLOW_STATS.pack(48 + len(body), f.table, 1, 0, f.priority, 0, 0, 0, 0,
                                       f.cookie, 0, 0) + body  # fmt: skip
    return out


def make(model: ClusterModel, node: IPv4Address) -> tuple[SwitchSync, Recorder, list]:
    """A master sync of `node` on a recording channel; the calls it asks to run later (but
    each readback's deadline, kept in `channel.deadlines`: tested on their own)."""
    channel, delayed, synced = Recorder(), [], []

    def later(delay: float, fn) -> None:
        if delay == switch.READBACK_TIMEOUT:
            channel.deadlines.append(fn)
        else:
            delayed.append((delay, fn))

    sync = SwitchSync(
        node, channel, lambda scope: model.desired(node, scope), later=later,
        on_synced=synced.append, master=True,
    )  # fmt: skip
    return sync, channel, delayed


def read_back(sync: SwitchSync, channel: Recorder, flows, groups_held=()) -> None:
    """Answer the readback: flow stats, then group desc (each one multipart request)."""
    (mtype, xid, _), (gtype, gxid, _) = channel.take()
    assert mtype == gtype == ofwire.OFPT_MULTIPART_REQUEST
    sync.on_flow_stats(xid, stats_body(flows), more=False)
    assert sync.state is State.READING  # the groups are not read yet
    sync.on_group_desc(gxid, b"".join(groups.group_desc_entry(g) for g in groups_held), more=False)


def bundle_adds(messages) -> list[int]:
    """Commands of the flow-mods inside the bundle adds."""
    return [m[16 + 25] for t, _, m in messages if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE]


def bare_mods(messages) -> list[int]:
    """Commands of the flow-mods sent outside any bundle."""
    return [m[25] for t, _, m in messages if t == ofwire.OFPT_FLOW_MOD]


def land_bare(sync: SwitchSync, messages) -> None:
    """Check a bare change's shape (its flow-mods, then one barrier, xids consecutive)
    and answer the barrier."""
    *mods, (barrier, barrier_xid, _) = messages
    assert mods and {t for t, _, _ in mods} == {ofwire.OFPT_FLOW_MOD}
    assert barrier == ofwire.OFPT_BARRIER_REQUEST
    assert [x for _, x, _ in mods] == list(range(barrier_xid - len(mods), barrier_xid))
    sync.on_barrier(barrier_xid)


def finish(sync: SwitchSync, channel: Recorder, messages) -> list:
    """Answer the add-barrier, then the final barrier; returns the control messages sent."""
    barrier = [x for t, x, _ in messages if t == ofwire.OFPT_BARRIER_REQUEST][-1]
    sync.on_barrier(barrier)
    second = channel.take()
    sync.on_barrier([x for t, x, _ in second if t == ofwire.OFPT_BARRIER_REQUEST][-1])
    return second


def model_with(*leases: Lease, endpoints=()) -> ClusterModel:
    model = ClusterModel()
    model.load(CONFIG, leases, endpoints)
    return model



def dual_lease(i: int, ip: int | None = None) -> Lease:
    """`lease(i, ip)` with an IPv6 half."""
    return replace(lease(i, ip), ipv6_subnet=IPv6Network(f"fc00:0:0:{i}::/64"),
                   public_ipv6=IPv6Address(f"fd00:198:18::{ip or i}"),
                   vtep_mac_v6=vtep_mac_for(IPv4Address(f"198.18.1.{ip or i}")))  # fmt: skip


def test_a_table_already_right_gets_no_flow_mod():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip))
    assert channel.take() == [] and sync.state is State.IDLE


def test_empty_switch_gets_one_bundle_committed_after_the_add_barrier():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, [])
    sent = channel.take()
    types = [t for t, _, _ in sent]
    assert types[0] == ofwire.OFPT_BUNDLE_CONTROL and types[-1] == ofwire.OFPT_BARRIER_REQUEST
    assert ofwire.OFPT_BUNDLE_CONTROL not in types[1:]  # no commit before the adds are confirmed
    desired = compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip)
    assert bundle_adds(sent) == [ofwire.OFPFC_ADD] * len(desired)
    control = finish(sync, channel, sent)
    ctrl_type = struct.unpack_from("!H", control[0][2], 12)[0]
    assert ctrl_type == ofwire.OFPBCT_COMMIT_REQUEST
    assert set(sync.installed.values()) == desired


def test_rejected_add_discards_the_bundle_and_retries_from_a_readback(caplog):
    model = model_with(lease(1), lease(2))
    sync, channel, delayed = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, [])
    sent = channel.take()
    bad_xid = next(x for t, x, _ in sent if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE)
    assert sync.on_error(bad_xid, 4, 9, b"")
    control = finish(sync, channel, sent)
    assert struct.unpack_from("!H", control[0][2], 12)[0] == ofwire.OFPBCT_DISCARD_REQUEST
    assert "rejected add of flow" in caplog.text and "cookie=0x76" in caplog.text
    assert sync.installed == {} and len(delayed) == 1
    delay, retry = delayed[0]
    assert delay == 0.5
    retry()
    assert [m[0] for m in channel.take()] == [ofwire.OFPT_MULTIPART_REQUEST] * 2  # a fresh
    # readback (flows and groups), not a blind resend


def test_a_rejected_route_of_a_cold_sync_is_named(caplog):
    """Routes of a cold sync are sent from compact rows; an error still names the flow."""
    model = model_with(lease(1), lease(2), lease(3))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, [])
    sent = channel.take()
    adds = [x for t, x, _ in sent if t == ofwire.OFPT_BUNDLE_ADD_MESSAGE]
    assert sync.on_error(adds[-2], 4, 9, b"")  # the last remote lease's route...
    assert "rejected add of flow" in caplog.text and "ip_dst=198.19.3.0/24" in caplog.text
    assert sync.on_error(adds[-1], 4, 9, b"")  # ...and its tunnel-ingress check
    assert "tun_src=198.18.0.3" in caplog.text
    assert not sync.on_error(adds[-1] + 4, 4, 9, b"")  # past the bundle: not ours


def test_recording_a_large_landed_bundle_pauses_without_exposing_half_a_table(monkeypatch):
    monkeypatch.setattr(switch, "CHUNK", 2)
    model = model_with(lease(1), lease(2), lease(3), lease(4))
    sync, channel, _ = make(model, lease(1).public_ip)
    seen = []

    def pause() -> None:  # another event arrives while the hub runs others
        seen.append((sync.state, len(sync.installed)))
        sync.request(FULL)

    sync.pause = pause
    sync.start()
    read_back(sync, channel, [])
    finish(sync, channel, channel.take())
    want = compile_node(CONFIG, [lease(1), lease(2), lease(3), lease(4)], [], lease(1).public_ip)
    assert {state for state, _ in seen} == {State.APPLYING}
    sending = [n for _, n in seen if n == 0]  # between chunks sent (nothing recorded yet)
    assert len(sending) >= len(want) // 2  # chunks of at most 2 flow-mods
    # while recording, every 2 flows; the remote leases' flows are recorded at once (one
    # dict entry per lease, nothing to pause for)
    routes = FLOWS_PER_LEASE * 3
    assert len(seen) - len(sending) == (len(want) - routes) // 2
    assert set(sync.installed.values()) == want
    assert channel.take() == []  # the requests found a right table: nothing sent


def synced_pair(model: ClusterModel, config: NetworkConfig = CONFIG,
                ) -> dict[int, tuple[SwitchSync, Recorder, list]]:  # fmt: skip
    """Switches of nodes 1 and 2, read back holding exactly their desired tables."""
    syncs = {}
    for i in (1, 2):
        sync, channel, delayed = make(model, lease(i).public_ip)
        sync.start()
        read_back(sync, channel, compile_node(config, model.leases(), [], lease(i).public_ip))
        syncs[i] = (sync, channel, delayed)
    return syncs


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
def test_lease_event_is_bare_flow_mods_and_one_barrier_per_switch(dual: bool):
    """A lease's change needs no bundle: its flow-mods + a barrier in one write, one round
    trip (route and ingress check per family, so a dual-stack lease's up to 6 flow-mods;
    a new PublicIP replaces the route in place and moves the ingress check to a new key:
    deleted first)."""
    config, of = (replace(CONFIG, ipv6=DUAL.ipv6), dual_lease) if dual else (CONFIG, lease)
    halves = 2 if dual else 1
    model = ClusterModel()
    model.load(config, [of(1), of(2)], [])
    syncs = synced_pair(model, config)
    add, delete = ofwire.OFPFC_ADD, ofwire.OFPFC_DELETE_STRICT
    steps = [
        (LeaseAdded(of(3), 10), [add] * 2 * halves),
        (LeaseChanged(of(3), of(3, ip=33), 11), [delete] * halves + [add] * 2 * halves),
        (LeaseRemoved(of(3, ip=33), 12), [delete] * 2 * halves),
    ]
    for event, commands in steps:
        impact = model.apply([event])
        for sync, channel, _ in syncs.values():
            writes = channel.writes
            sync.request(impact.scope_for(sync.node, model.own_lease(sync.node).subnet))
            sent = channel.take()
            assert channel.writes == writes + 1 and bare_mods(sent) == commands
            assert sync.state is State.APPLYING
            land_bare(sync, sent)
            assert sync.state is State.IDLE and channel.take() == []
            assert set(sync.installed.values()) == compile_node(
                config, model.leases(), [], sync.node
            )


def test_rejected_bare_flow_mod_is_named_counted_and_retried_from_a_readback(caplog):
    model = model_with(lease(1), lease(2))
    (sync, channel, delayed), _ = synced_pair(model).values()
    errors = metrics.OF_ERRORS.labels("5", "1")
    failed = metrics.CHANGE_RESULT["flow_mod", "failed"]
    before = errors._value.get(), failed._value.get()
    impact = model.apply([LeaseAdded(lease(3), 10)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet))
    sent = channel.take()
    fm_xid = sent[0][1]
    assert sync.on_error(fm_xid, 5, 1, sent[0][2])  # arrives before the barrier reply
    land_bare(sync, sent)
    assert "rejected add of flow" in caplog.text and "ip_dst=198.19.3.0/24" in caplog.text
    assert (errors._value.get(), failed._value.get()) == (before[0] + 1, before[1] + 1)
    assert subnet_cookie(lease(3).subnet) not in {f.cookie for f in sync.installed.values()}
    assert not sync.on_error(fm_xid + 3, 5, 1, b"")  # past the change: not ours
    (delay, retry), = delayed
    assert delay == 0.5
    retry()  # a fresh readback (read_back checks it is the only message), not a blind resend
    read_back(sync, channel, compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip))
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD] * 2  # the resync re-sends just those flows
    land_bare(sync, sent)
    assert set(sync.installed.values()) == compile_node(CONFIG, model.leases(), [], sync.node)


def page_entry(sync: SwitchSync, model: ClusterModel) -> dict:
    """This switch's entry on the replica's status page (a valid member, no role known)."""
    member = SimpleNamespace(id="r1", address="tcp:127.0.0.1:6653", valid=lambda: True)
    (entry,) = status.page(member, model, {1: sync}, {})["switches"]
    return entry


def test_a_refused_add_counts_as_differing_through_every_retry_readback():
    """A table-full switch refuses a new lease's route at every retry. Its status page says
    the flows differ all along, also while a retry's readback is under way (it once said 0
    then, and `vxflow status` said healthy while the drift stood); before a mastership's
    first readback is done nothing is counted: its copy of the table is not known yet."""
    model = model_with(lease(1), lease(2))
    (sync, channel, delayed), _ = synced_pair(model).values()
    held = compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip)
    sync.request(model.apply([LeaseAdded(lease(3), 10)]).scope_for(sync.node, lease(1).subnet))
    for attempt in range(3):
        sent = channel.take()
        assert sync.on_error(sent[0][1], 5, 1, sent[0][2])  # OFPFMFC_TABLE_FULL, the route
        land_bare(sync, sent)
        entry = page_entry(sync, model)
        assert entry["in_sync"] is False and entry["flows_differing"] >= 1
        assert entry["last_error"].startswith("error type 5 code 1 on add of")
        _, retry = delayed.pop()
        retry()
        assert sync.state is State.READING
        entry = page_entry(sync, model)
        assert entry["in_sync"] is False and entry["flows_differing"] >= 1, attempt
        read_back(sync, channel, held)  # the route still missing: the same add again
    sync.suspend()
    sync.promote()  # a new mastership: its first readback under way, nothing known yet
    assert sync.state is State.READING and page_entry(sync, model)["flows_differing"] == 0


def test_a_refused_barrier_of_a_bare_flow_mod_fails_the_change(caplog):
    model = model_with(lease(1), lease(2))
    (sync, channel, delayed), _ = synced_pair(model).values()
    sync.request(model.apply([LeaseAdded(lease(3), 10)]).scope_for(sync.node, lease(1).subnet))
    sent = channel.take()
    assert sync.on_error(sent[-1][1], 1, 1, b"")  # the barrier
    land_bare(sync, sent)
    assert "barrier failed (error type 1 code 1)" in caplog.text
    assert len(delayed) == 1 and sync.state is State.IDLE  # resync from a readback, later


def test_scoped_sync_leaves_other_owners_alone():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    junk = flow(0, 500, {"in_port": 9}, [output(9)], 0x1234)
    read_back(sync, channel, [*compile_node(CONFIG, [lease(1)], [], lease(1).public_ip), junk])
    sent = channel.take()  # full sync after readback: adds the lease-2 flows, deletes junk
    # no route on the switch yet: the routes go compact, packed from their row; three
    # flow-mods go bare, the delete first
    assert bare_mods(sent) == [ofwire.OFPFC_DELETE_STRICT] + [ofwire.OFPFC_ADD] * 2
    land_bare(sync, sent)
    assert set(sync.installed.values()) == compile_node(CONFIG, [lease(1), lease(2)], [], sync.node)
    sync.request(Scope(cookies=frozenset({subnet_cookie(lease(2).subnet)})))
    assert channel.take() == []


def test_events_arriving_during_a_bundle_are_sent_after_it():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, [])
    first = channel.take()
    impact = model.apply([LeaseAdded(lease(3), 5)])
    sync.request(impact.scope_for(sync.node, lease(1).subnet))
    assert channel.take() == []  # one change in flight at a time
    finish(sync, channel, first)
    assert bare_mods(channel.messages) == [ofwire.OFPFC_ADD] * 2


def test_changes_held_back_while_membership_lapsed_are_sent_once_it_is_renewed():
    """A renewal that lands before the lapse was noticed changes no role: `resume` is
    what sends the held-back change (without it the switch stayed stale for good)."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip))
    licence = [False]
    sync.may_write = lambda: licence[0]
    fenced = metrics.WRITES_FENCED._value.get()
    sync.request(model.apply([LeaseAdded(lease(3), 5)]).scope_for(sync.node, lease(1).subnet))
    assert channel.take() == [] and metrics.WRITES_FENCED._value.get() == fenced + 1
    licence[0] = True
    sync.resume()
    assert bare_mods(channel.messages) == [ofwire.OFPFC_ADD] * 2


def test_nothing_is_touched_without_a_config():
    model = ClusterModel()
    model.load(None, [lease(1)], [])
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, compile_node(CONFIG, [lease(1)], [], lease(1).public_ip))
    assert channel.take() == []


def test_model_publicip_conflict_disables_both_and_recovers():
    model = model_with(lease(1), lease(2))
    impact = model.apply([LeaseAdded(lease(3, ip=2), 5)])  # steals node 2's PublicIP
    assert model.accepted(lease(2).subnet) is None and model.accepted(lease(3).subnet) is None
    assert {lease(2).subnet, lease(3).subnet} <= impact.lease_subnets
    assert impact.scope_for(lease(2).public_ip, None) == FULL
    model.apply([LeaseRemoved(lease(3, ip=2), 6)])
    assert model.accepted(lease(2).subnet) == lease(2)


def test_model_endpoint_events_touch_only_their_node():
    model = model_with(lease(1), lease(2))
    ep = Endpoint(lease(1).subnet, IPv4Address("198.19.1.9"), "02:00:00:00:00:09", 5)
    impact = model.apply([EndpointAdded(ep, 3)])
    assert impact.scope_for(lease(1).public_ip, lease(1).subnet).owners == {Owner.ENDPOINT}
    assert not impact.scope_for(lease(2).public_ip, lease(2).subnet)
    desired = model.desired(lease(1).public_ip, FULL)
    assert set(desired) == compile_node(CONFIG, [lease(1), lease(2)], [ep], lease(1).public_ip)
    moved = replace(ep, ofport=6)
    model.apply([EndpointAdded(moved, 4)])
    assert set(model.desired(lease(1).public_ip, FULL)) == compile_node(
        CONFIG, [lease(1), lease(2)], [moved], lease(1).public_ip
    )


def strays(n: int) -> list:
    """`n` flows no vxflow table holds: each one a delete in the next change."""
    return [flow(0, 500, {"in_port": port}, (), 0) for port in range(1, n + 1)]


def bundle_under_way(lapse_at_chunk: int):
    """A switch read back with three chunks' worth of strays, its bundle started with the
    membership lapsing after chunk `lapse_at_chunk` (0: never); (sync, channel, licence)."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    licence, chunks = [True], [0]

    def pause() -> None:  # called after each chunk is sent (and while the readback is compared)
        if sync.state is State.APPLYING:
            chunks[0] += 1
            if chunks[0] == lapse_at_chunk:
                licence[0] = False

    sync.may_write, sync.pause = (lambda: licence[0]), pause
    sync.start()
    held = compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip)
    read_back(sync, channel, [*held, *strays(3 * switch.CHUNK)])
    return sync, channel, licence


def test_a_lapse_during_a_bundle_stops_it_at_once_and_nothing_is_committed():
    fenced = metrics.WRITES_FENCED._value.get()
    sync, channel, licence = bundle_under_way(lapse_at_chunk=1)
    sent = channel.take()
    # the open and the one chunk sent before the lapse; no further chunk, no barrier
    adds = [ofwire.OFPT_BUNDLE_ADD_MESSAGE] * switch.CHUNK
    assert [t for t, _, _ in sent] == [ofwire.OFPT_BUNDLE_CONTROL, *adds]
    assert sync.state is State.IDLE and sync.reading_back
    assert metrics.WRITES_FENCED._value.get() == fenced + 1
    sync.kick()
    assert channel.take() == []  # still lapsed: nothing at all
    licence[0] = True
    sync.resume()
    (mtype, _, _), (gtype, _, _) = channel.take()  # renewed: a readback comes first
    assert mtype == gtype == ofwire.OFPT_MULTIPART_REQUEST


def test_a_lapse_before_the_add_barrier_returns_means_no_commit():
    sync, channel, licence = bundle_under_way(lapse_at_chunk=0)
    sent = channel.take()
    assert sent[-1][0] == ofwire.OFPT_BARRIER_REQUEST
    licence[0] = False
    sync.on_barrier(sent[-1][1])  # the adds were taken, but the licence is gone
    assert channel.take() == [] and sync.state is State.IDLE and sync.reading_back


def test_a_demotion_during_a_bundle_stops_it_at_once():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    # the switch demotes us while the first chunk is parsed
    sync.pause = lambda: sync.suspend() if sync.state is State.APPLYING else None
    sync.start()
    held = compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip)
    read_back(sync, channel, [*held, *strays(3 * switch.CHUNK)])
    sent = channel.take()
    assert len(sent) == 1 + switch.CHUNK and ofwire.OFPT_BARRIER_REQUEST not in {t for t, _, _ in sent}
    assert not sync.master and sync.state is State.IDLE


def test_a_readback_too_large_or_too_slow_is_given_up_and_retried_later(caplog):
    """What a switch sends is bounded: a flow readback past its limit is given up at once
    (its later replies ignored), one not done by its deadline too; each retried later."""
    model = model_with(lease(1), lease(2))
    sync, channel, delayed = make(model, lease(1).public_ip)
    sync.readback_limits = (100, 10)
    sync.start()
    (_, xid, _), _ = channel.take()
    sync.on_flow_stats(xid, stats_body(strays(60)), more=True)
    sync.on_flow_stats(xid, stats_body(strays(60)), more=True)  # 120 > 100
    assert sync.state is State.IDLE and sync.reading_back and [d for d, _ in delayed] == [0.5]
    assert "readback given up: more than 100 flows" in caplog.text
    assert metrics.READBACKS_ABANDONED.labels("too_large")._value.get() >= 1
    sync.on_flow_stats(xid, stats_body(strays(60)), more=False)  # the rest: ignored
    assert sync.state is State.IDLE and len(sync.installed) == 0

    delayed.pop()[1]()  # the retry: a new readback, which never completes
    (_, xid2, _), _ = channel.take()
    assert xid2 != xid
    overdue = metrics.READBACKS_ABANDONED.labels("timeout")._value.get()
    channel.deadlines[0]()  # the first readback's deadline: that one is long given up
    assert sync.state is State.READING
    channel.deadlines[1]()
    assert sync.state is State.IDLE and metrics.READBACKS_ABANDONED.labels("timeout")._value.get() == overdue + 1
    assert "readback given up: not complete in 60s" in caplog.text


def test_changes_reported_for_too_many_cookies_become_one_full_comparison():
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    read_back(sync, channel, [])
    channel.take()  # the bundle stays in flight: what is noted meanwhile waits
    sync.note(Scope.of_cookies(frozenset(range(switch.MAX_PENDING_COOKIES))))
    assert not sync._pending.full
    sync.note(Scope.of_cookies(frozenset({switch.MAX_PENDING_COOKIES})))
    assert sync._pending.full


def test_sending_to_a_switch_that_reads_nothing_never_waits_and_is_bounded():
    """os-ken's queue for a switch holds 16 buffers, and its `send` waits while they are
    full; the channel's never does: the rest waits in that switch's backlog, and past
    MAX_BACKLOG bytes the switch is disconnected (counted). (A real os-ken Datapath on a
    loopback connection whose send loop never runs: nothing is ever written.)"""
    from os_ken.base import app_manager  # noqa: F401 (imported before os-ken's controller)
    from os_ken.controller.controller import Datapath
    from os_ken.controller.handler import DEAD_DISPATCHER
    from os_ken.lib import hub

    from controller.app import MAX_BACKLOG, DatapathChannel

    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        conn, address = listener.accept()
    try:
        dp = Datapath(conn, address)
        channel = DatapathChannel(dp, tls=True)
        for _ in range(16):
            channel.send(b"x" * 8)
        assert dp.send_q.qsize() == 16
        channel.send(b"y" * 8)  # no room left: returns at once
        hub.sleep(0)  # the backlog's feeder now waits for room, alone
        assert channel.backlog_bytes == 8
        dropped = metrics.SLOW_SWITCHES._value.get()
        channel.send(b"z" * MAX_BACKLOG)
        assert dp.state == DEAD_DISPATCHER and metrics.SLOW_SWITCHES._value.get() == dropped + 1
        assert channel.backlog_bytes == 0
    finally:
        peer.close()
        conn.close()


def test_past_the_total_backlog_the_switch_with_the_most_waiting_is_disconnected(caplog):
    """Three switches that read nothing (real os-ken Datapaths whose send loops never run),
    each under its own bound: once their backlogs together pass the total, the one with the
    most waiting is disconnected (logged, counted) and its bytes leave the total; the
    others stay connected with theirs."""
    from os_ken.base import app_manager  # noqa: F401 (imported before os-ken's controller)
    from os_ken.controller.controller import Datapath
    from os_ken.controller.handler import DEAD_DISPATCHER

    from controller.app import Backlogs, DatapathChannel

    backlogs = Backlogs(limit=100)
    peers, conns = [], []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for _ in range(3):
            peers.append(socket.create_connection(listener.getsockname()))
            conns.append(listener.accept())
    try:
        channels = [DatapathChannel(Datapath(*conn), True, backlogs) for conn in conns]
        dropped = metrics.SLOW_SWITCHES._value.get()
        for channel, waiting in zip(channels, (60, 30, 30), strict=True):
            for _ in range(16):  # os-ken's queue, full
                channel.send(b"x" * 8)
            channel.send(b"y" * waiting)
        slowest, *others = channels
        assert slowest.datapath.state == DEAD_DISPATCHER and slowest.backlog_bytes == 0
        assert metrics.SLOW_SWITCHES._value.get() == dropped + 1
        assert "all switches' backlogs hold more than" in caplog.text
        assert [c.datapath.state != DEAD_DISPATCHER for c in others] == [True, True]
        assert [c.backlog_bytes for c in others] == [30, 30] and backlogs.total == 60
        assert backlogs.waiting == set(others)
    finally:
        for sock in peers:
            sock.close()
        for conn, _ in conns:
            conn.close()


def guarded_datapath(monkeypatch, peer_buffer: int, send_buffer: int):
    """A real os-ken Datapath (OpenFlow 1.4) on a loopback connection whose peer reads
    nothing (`peer_buffer` bytes to receive in: its window fills), with vxflow's send guard
    (restored after the test); returns (datapath, peer socket)."""
    from os_ken.base import app_manager  # noqa: F401 (imported before os-ken's controller)
    from os_ken.controller.controller import Datapath
    from os_ken.ofproto import ofproto_v1_4

    from controller import guard

    for name in ("send", "_send_loop"):
        monkeypatch.setattr(Datapath, name, getattr(Datapath, name))
    guard.guard_sends(Datapath)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_buffer)
        peer.connect(listener.getsockname())
        conn, address = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    dp = Datapath(conn, address)
    dp.set_version(ofproto_v1_4.OFP_VERSION)
    return dp, peer


def test_os_kens_close_after_an_incompatible_hello_is_no_stall_but_a_timed_out_send_is(
        monkeypatch, caplog):  # fmt: skip
    """os-ken answers a peer of an incompatible OpenFlow version with an error and closes
    (`close_socket`: its send loop ends after that send, on purpose): not a slow switch,
    though the peer, which reads nothing, has not acknowledged all it was sent. A send the
    peer takes nothing of for the socket's timeout is one: logged and counted."""
    from os_ken.controller.ofp_handler import OFPHandler

    from controller.guard import _unsent

    slow = metrics.SLOW_SWITCHES._value.get()
    dp, peer = guarded_datapath(monkeypatch, peer_buffer=4096, send_buffer=1 << 20)
    try:
        dp.send(b"\0" * 65536)  # more than the peer's window, less than the send buffer
        OFPHandler._hello_failed(SimpleNamespace(logger=switch.log), dp,
                                 "unsupported version 0x1")  # fmt: skip
        dp._send_loop()  # sends both, ends after the error, as os-ken meant
        assert dp.send_q is None and _unsent(dp.socket) > 0  # not all acknowledged
        assert metrics.SLOW_SWITCHES._value.get() == slow and "took nothing" not in caplog.text
    finally:
        peer.close()
        dp.socket.close()
    dp, peer = guarded_datapath(monkeypatch, peer_buffer=4096, send_buffer=4096)
    try:
        dp.socket.settimeout(0.2)
        dp.send(b"\0" * (4 << 20))  # never taken whole: the send times out
        dp._send_loop()
        assert metrics.SLOW_SWITCHES._value.get() == slow + 1 and "took nothing" in caplog.text
    finally:
        peer.close()
        dp.socket.close()


def test_a_huge_comparison_yields_and_other_switches_go_on_meanwhile():
    """A readback of 20,000 junk flows is taken in and compared STEP entries at a time,
    yielding to the hub between (the controller's `pause`): another switch's new lease is
    sent and lands while this one compares, and a flow this one's monitor reports
    meanwhile is taken in once the comparison is done, then repaired."""
    from os_ken.lib import hub

    model = model_with(lease(1), lease(2))
    (big, big_channel, _), (other, other_channel, _) = synced_pair(model).values()
    big.pause = lambda: hub.sleep(0)
    foreign = flow(0, 400, {"in_port": 7}, [output(7)], 0x5678)
    seen: list[State] = []

    def meanwhile() -> None:
        while big.state is not State.COMPARING:
            hub.sleep(0)
        impact = model.apply([LeaseAdded(lease(3), 10)])
        other.request(impact.scope_for(other.node, lease(2).subnet))
        land_bare(other, other_channel.take())
        big.observe([FlowChange(foreign, "added")])
        seen.append(big.state)

    junk = [flow(0, 500, {"in_port": i}, [output(9)], 0x1234) for i in range(1, 20_001)]
    big.audit()
    worker = hub.spawn(meanwhile)
    read_back(big, big_channel, [*big.installed.values(), *junk])
    worker.wait()
    assert seen == [State.COMPARING]  # the other switch's change landed during the comparison
    assert subnet_cookie(lease(3).subnet) in {f.cookie for f in other.installed.values()}
    sent = big_channel.take()  # the repair, with the lease that came meanwhile (its routes)
    assert bundle_adds(sent).count(ofwire.OFPFC_DELETE_STRICT) == len(junk)
    finish(big, big_channel, sent)
    land_bare(big, big_channel.take())  # then the foreign flow reported meanwhile: deleted
    assert set(big.installed.values()) == compile_node(CONFIG, model.leases(), [], big.node)
    assert big.in_sync and big_channel.take() == []


def test_a_lapse_while_a_readback_is_compared_sends_nothing_and_reads_back_once_renewed():
    """The membership lapses while a large readback is compared (at one of its pauses):
    nothing is sent, and once renewed the switch is read back anew."""
    model = model_with(lease(1), lease(2))
    sync, channel, _ = make(model, lease(1).public_ip)
    lapsed: list[bool] = []
    sync.pause = lambda: lapsed.append(True) if sync.table_known else None  # comparing
    sync.may_write = lambda: not lapsed
    sync.start()
    read_back(sync, channel, [flow(0, 500, {"in_port": i}, [output(9)], 0x1234)
                              for i in range(1, 5_001)])  # fmt: skip
    assert lapsed and channel.take() == [] and sync.state is State.IDLE and sync.reading_back
    lapsed.clear()
    sync.resume()
    assert [m[0] for m in channel.take()] == [ofwire.OFPT_MULTIPART_REQUEST] * 2


def test_a_dual_stack_config_is_said_once_what_is_ipv4_only(caplog) -> None:
    """The controller says, once per process's model, what a dual-stack cluster does not
    get over IPv6 yet: not again on a reload, never for an IPv4-only config."""
    model = ClusterModel()
    plain = parse_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')
    dual = parse_config(
        '{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48",'
        ' "Backend": {"Type": "vxlan"}}'
    )
    with caplog.at_level("WARNING", logger="controller.model"):
        model.load(plain, [], [])
        assert "IPv6" not in caplog.text
        model.load(dual, [], [])
        model.load(dual, [], [])
    assert caplog.text.count("MTU - 70 (flannel: - 50)") == 1


def test_large_bundles_stream_a_few_at_a_time_in_order():
    """The app's spawner for large bundles' encoding (SwitchSync.spawn): at most its limit
    run at once, each yielding to the hub as a stream does; the others wait in order, so
    the hub's run queue holds a few of them, not one per switch; all of them run."""
    from os_ken.lib import hub

    from controller.app import bounded_spawn

    spawn = bounded_spawn(2)
    running: list[int] = []
    most, started = [0], []

    def stream(i: int) -> None:
        started.append(i)
        running.append(i)
        most[0] = max(most[0], len(running))
        for _ in range(3):  # chunks, the hub run between them
            hub.sleep(0)
        running.remove(i)

    threads = [spawn(lambda i=i: stream(i)) for i in range(7)]
    for t in threads:
        t.wait()
    assert started == list(range(7)) and most[0] == 2 and not running


def test_idle_collection_picks_what_is_due():
    """Pure: a full collection at the oldest generation's threshold or after
    IDLE_GC_FULL_AFTER freezes (unless a full collection may not run yet), the young objects
    frozen from IDLE_GC_YOUNG new objects on, else nothing."""
    from controller.app import IDLE_GC_FULL_AFTER, IDLE_GC_YOUNG, idle_collection

    th = (50_000, 20, 100)
    assert idle_collection((IDLE_GC_YOUNG - 1, 5, 0), th) is None
    assert idle_collection((IDLE_GC_YOUNG, 0, 0), th) == 0
    assert idle_collection((IDLE_GC_YOUNG, 0, 99), th, frozen=IDLE_GC_FULL_AFTER - 1) == 0
    assert idle_collection((0, 0, 100), th) == 2
    assert idle_collection((0, 0, 0), th, frozen=IDLE_GC_FULL_AFTER) == 2
    assert idle_collection((IDLE_GC_YOUNG, 0, 100), th, full=False,
                           frozen=IDLE_GC_FULL_AFTER) == 0  # a full one ran lately  # fmt: skip


def test_frozen_cycles_are_collected_by_the_next_full_collection():
    """A cycle that dies after its objects were frozen outlives young collections and is
    freed by the idle collector's next full collection (which unfreezes first)."""
    import gc
    import weakref

    from controller.app import IdleCollector

    class Node:
        pass

    collector = IdleCollector()
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    try:
        collector.collect(0, time.monotonic())
        assert gc.get_freeze_count() > 0 and collector.frozen == 1
        del a, b
        gc.collect(1)
        assert alive() is not None  # frozen: out of the young collections' reach
        collector.collect(2, time.monotonic())
        assert alive() is None and collector.frozen == 0 and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_the_idle_collector_collects_between_changes_only():
    """A real collector under the hub: nothing is done while a change is applied (`busy`);
    once it is done and idle, the new objects are frozen (the young count drops)."""
    import gc

    from os_ken.lib import hub

    from controller.app import IDLE_GC_QUIET, IDLE_GC_YOUNG, IdleCollector

    collector = IdleCollector()
    thread = hub.spawn(collector.run)
    before = gc.get_threshold()
    gc.set_threshold(10 * IDLE_GC_YOUNG, 20, 100)  # (the collector's own rule not in the way)
    try:
        collector.busy = True
        kept = [[i] for i in range(2 * IDLE_GC_YOUNG)]  # new tracked objects
        hub.sleep(5 * IDLE_GC_QUIET)
        assert gc.get_count()[0] >= 2 * IDLE_GC_YOUNG  # busy: left alone
        collector.busy = False
        collector.done()
        deadline = time.monotonic() + 5
        while gc.get_count()[0] >= IDLE_GC_YOUNG and time.monotonic() < deadline:
            hub.sleep(IDLE_GC_QUIET)
        assert gc.get_count()[0] < IDLE_GC_YOUNG and len(kept) == 2 * IDLE_GC_YOUNG
        assert collector.frozen >= 1
    finally:
        gc.set_threshold(*before)
        hub.kill(thread)
        gc.unfreeze()


def test_a_bundle_from_a_whole_comparison_is_logged_at_info_a_registry_changes_at_debug(caplog):
    """A registry change lands on every switch at once: one INFO line per switch would
    flood the log of a large cluster, so its landing is DEBUG; a resync (whole table
    compared, as after a readback) stays INFO."""
    model = model_with(lease(1))
    sync, channel, _ = make(model, lease(1).public_ip)
    sync.start()
    with caplog.at_level("DEBUG", logger="controller.switch"):
        read_back(sync, channel, [])
        finish(sync, channel, channel.take())
        impact = model.apply([LeaseAdded(lease(n), 5) for n in range(2, 6)])  # 8 flows
        sync.request(impact.scope_for(sync.node, lease(1).subnet))
        finish(sync, channel, channel.take())
    landed = [(r.levelname, r.getMessage().split(": ")[1].split(" landed")[0])
              for r in caplog.records if " landed (" in r.getMessage()]  # fmt: skip
    assert landed == [("INFO", "bundle 1"), ("DEBUG", "bundle 2")]
    assert sync.in_sync
