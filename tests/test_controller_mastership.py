"""The controller cluster's pure parts: replica and claim entries, their events, the
rendezvous choice of masters, each replica's decision, and a switch's role (recorded)."""

from __future__ import annotations

import struct
from collections import Counter
from ipaddress import IPv4Address

import pytest

from controller import ofwire
from controller.mastership import Decision, Role, decide, designated
from controller.role import SwitchRole
from leases.controllers import (
    MAX_MEMBERS,
    capped,
    check_claim,
    check_member,
    claim_to_json,
    member_to_json,
)
from leases.events import ClaimAdded, ClaimRemoved, MemberAdded, MemberRemoved
from leases.keys import KV, KeyKind, Keys
from leases.model import Claim, Member
from leases.state import View, diff
from leases.validate import Rejection
from tests.test_controller_sync import Recorder

KEYS = Keys("/coreos.com/network")
DPIDS = [0x7678_0000_0000_0000 | (0xC6120000 + i) for i in range(1, 1001)]


def member_kv(member_id: str, address: str = "tcp:198.18.0.254:6653", lease: int = 7,
              value: str | None = None, rev: int = 5) -> KV:  # fmt: skip
    raw = value if value is not None else member_to_json(Member(member_id, address))
    return KV(KEYS.member(member_id), raw.encode(), rev, rev, lease)


def claim_kv(dpid: int, holder: str, rev: int, lease: int = 7) -> KV:
    return KV(KEYS.claim(dpid), claim_to_json(holder).encode(), rev, rev, lease)


# -- entries -------------------------------------------------------------------------


def test_members_and_claims_validate_with_reasons() -> None:
    assert check_member(member_kv("r1"), "r1") == Member("r1", "tcp:198.18.0.254:6653", 7, 5)
    no_address = check_member(member_kv("r1", address=""), "r1")
    assert no_address.reason == "bad_address" and "no Address" in no_address.detail
    bad = {
        "bad_address": member_kv("r1", address="tcp:0.0.0.0:6653"),
        "bad_key": member_kv("r1", value='{"ID": "r2", "Address": "tcp:198.18.0.254:1"}'),
        "bad_json": member_kv("r1", value="{oops"),
        "not_bound": member_kv("r1", lease=0),
        "wrong_type": member_kv("r1", value='{"ID": "r1", "Address": 6653}'),
    }
    for reason, kv in bad.items():
        result = check_member(kv, "r1")
        assert isinstance(result, Rejection) and result.reason == reason, (reason, result)
        assert result.kind is KeyKind.MEMBER
    assert check_member(member_kv("-x"), "-x").reason == "bad_key"
    assert check_claim(claim_kv(DPIDS[0], "r1", 9), f"{DPIDS[0]:016x}") == Claim(
        DPIDS[0], "r1", 9, 7
    )
    assert check_claim(claim_kv(DPIDS[0], "r1", 9), "not-a-dpid").reason == "bad_key"
    assert (
        check_claim(claim_kv(DPIDS[0], "r1", 9, lease=0), f"{DPIDS[0]:016x}").reason == "not_bound"
    )


def test_the_view_reports_members_and_claims_as_events_and_in_snapshots() -> None:
    view = View(KEYS).load([member_kv("r1")], 5)
    assert view.snapshot().members == (Member("r1", "tcp:198.18.0.254:6653", 7, 5),)
    events, _, _ = view.apply({KEYS.member("r2"): member_kv("r2", rev=6)}, 6)
    assert events == [MemberAdded(Member("r2", "tcp:198.18.0.254:6653", 7, 6), 6)]
    first = claim_kv(DPIDS[0], "r1", 7)
    events, _, _ = view.apply({first.key: first}, 7)
    assert events == [ClaimAdded(Claim(DPIDS[0], "r1", 7, 7), 7)]
    takeover = claim_kv(DPIDS[0], "r2", 8)
    events, _, _ = view.apply({takeover.key: takeover}, 8)
    assert events == [ClaimRemoved(Claim(DPIDS[0], "r1", 7, 7), 8),
                      ClaimAdded(Claim(DPIDS[0], "r2", 8, 7), 8)]  # fmt: skip
    before = view.snapshot()
    events, rejections, _ = view.apply({KEYS.member("r1"): None, takeover.key: None}, 9)
    assert set(events) == {MemberRemoved(before.members[0], 9), ClaimRemoved(before.claims[0], 9)}
    assert rejections == []
    # a re-list yields the same difference
    assert set(diff(before, view.snapshot())) == set(events)


# -- choosing masters ------------------------------------------------------------------


def test_rendezvous_spreads_switches_and_a_new_member_takes_only_its_own() -> None:
    two = Counter(designated(d, ["r1", "r2"]) for d in DPIDS)
    assert 450 <= two["r1"] <= 550, two
    three = {d: designated(d, ["r1", "r2", "r3"]) for d in DPIDS}
    moved = [d for d in DPIDS if three[d] != designated(d, ["r1", "r2"])]
    assert all(three[d] == "r3" for d in moved)  # nothing moves between r1 and r2
    assert 280 <= len(moved) <= 390, len(moved)  # about a third
    assert designated(DPIDS[0], []) is None
    assert designated(DPIDS[0], ["r2", "r1"]) == designated(DPIDS[0], ["r1", "r2"])


def test_each_replica_decides_its_part() -> None:
    d = DPIDS[0]
    me = designated(d, ["a", "b"])
    other = "b" if me == "a" else "a"
    members = {"a", "b"}
    mine, theirs = Claim(d, me, 40), Claim(d, other, 41)
    # designated, nobody holds it: claim it (expecting no key)
    assert decide(me, d, members, None, True) == Decision(None, 0, take_over=0)
    # designated, another holds it: take it over (expecting that claim's revision)
    assert decide(me, d, members, theirs, True) == Decision(Role.SLAVE, 41, take_over=41)
    # holding it: master with the claim's generation
    assert decide(me, d, members, mine, True) == Decision(Role.MASTER, 40)
    # not designated and another holds it: slave with the claim's generation
    assert decide(other, d, members, mine, True) == Decision(Role.SLAVE, 40)
    # holding it but no longer designated: master until the designated one takes over
    assert decide(other, d, members, Claim(d, other, 42), True) == Decision(Role.MASTER, 42)
    # membership lapsed, no config, or not (yet) among the members: never master, never claim
    for active, ms in ((False, members), (True, {other})):
        assert decide(me, d, ms, mine, active) == Decision(Role.SLAVE, 40)
        assert decide(me, d, ms, None, active) == Decision(None)

    # not designated, but orphaned (its designated member never claimed it): claim it,
    # also from a holder that no longer counts as a member
    assert decide(other, d, members, None, True, orphaned=True) == Decision(None, 0, take_over=0)
    gone = Claim(d, "gone", 43)
    assert decide(other, d, members, gone, True, orphaned=True) == Decision(Role.SLAVE, 43, 43)
    assert decide(other, d, members, None, False, orphaned=True) == Decision(None)


def test_only_the_oldest_members_count() -> None:
    members = [Member(f"m{i:04}", "tcp:198.18.0.254:6653", 7, 1000 - i) for i in range(1000)]
    kept, ignored = capped(reversed(members))
    assert ignored == 1000 - MAX_MEMBERS
    assert [m.id for m in kept] == [f"m{i:04}" for i in range(999, 999 - MAX_MEMBERS, -1)]
    assert capped(members[:3]) == (sorted(members[:3], key=lambda m: m.create_revision), 0)


# -- a switch's role -------------------------------------------------------------------


def role_requests(channel: Recorder) -> list[tuple[int, int, int]]:
    return [
        (xid, *struct.unpack_from("!I4xQ", msg, 8))
        for kind, xid, msg in channel.take()
        if kind == ofwire.OFPT_ROLE_REQUEST
    ]


@pytest.fixture
def role() -> tuple[SwitchRole, Recorder, list[str]]:
    channel, calls = Recorder(), []
    switch_role = SwitchRole(IPv4Address("198.18.0.1"), channel,
                             on_master=lambda: calls.append("sync"),
                             on_lost=lambda: calls.append("stop"))  # fmt: skip
    return switch_role, channel, calls


def test_master_only_once_the_switch_confirms(role) -> None:
    r, channel, calls = role
    r.ask(Role.MASTER, 40)
    r.ask(Role.MASTER, 40)  # asked already: not again
    ((xid, asked, generation),) = role_requests(channel)
    assert (asked, generation) == (Role.MASTER, 40) and not r.master and calls == []
    assert not r.on_reply(xid + 99, Role.MASTER, 40)  # not ours
    assert r.on_reply(xid, Role.MASTER, 40) and r.master and calls == ["sync"]
    r.ask(Role.SLAVE, 41)  # stepping down stops writes before the request goes out
    assert calls == ["sync", "stop"] and not r.master
    assert [(a, g) for _, a, g in role_requests(channel)] == [(Role.SLAVE, 41)]


def test_demoted_by_the_switch_or_refused_as_stale(role) -> None:
    r, channel, calls = role
    r.ask(Role.MASTER, 40)
    ((xid, _, _),) = role_requests(channel)
    r.on_reply(xid, Role.MASTER, 40)
    r.on_status(Role.SLAVE, 41)  # another controller became master
    assert not r.master and calls == ["sync", "stop"]
    r.ask(Role.MASTER, 40)  # our view is behind: the switch refuses it as stale
    ((xid, _, _),) = role_requests(channel)
    assert r.on_error(xid, 11, 0) and not r.master
    r.ask(Role.MASTER, 40)  # the same request would be refused again: not re-sent
    assert role_requests(channel) == []
    r.ask(Role.SLAVE, 41)
    assert len(role_requests(channel)) == 1


def test_answers_to_superseded_requests_are_ours_and_change_nothing(role) -> None:
    r, channel, calls = role
    r.ask(Role.MASTER, 40)
    r.ask(Role.SLAVE, 41)  # a newer claim arrived before the switch answered
    (old, _, _), (new, _, _) = role_requests(channel)
    assert r.on_reply(old, Role.MASTER, 40)  # ours, but superseded: no promotion
    assert not r.master and calls == []
    assert r.on_reply(new, Role.SLAVE, 41) and not r.master
    assert not r.on_reply(old, Role.MASTER, 40)  # answered already: not ours any more
    r.ask(Role.MASTER, 42)
    r.ask(Role.MASTER, 43)
    (a, _, _), (b, _, _) = role_requests(channel)
    assert r.on_error(a, 11, 0)  # a refused superseded request is ours too (counted)
    assert r.on_reply(b, Role.MASTER, 43) and r.master and calls == ["sync"]


def test_a_replica_listening_on_every_address_must_advertise_one() -> None:
    """Its member entry would have no Address (rejected by every reader): refused at once."""
    from click.testing import CliRunner

    from vxflow.cli import cli

    result = CliRunner().invoke(cli, ["controller", "--listen", "0.0.0.0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "listening on every address ('0.0.0.0'): give --advertise tcp:IP:PORT" in result.output
