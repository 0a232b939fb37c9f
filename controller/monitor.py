"""Instant drift repair: each switch reports every flow that anyone else changes.

The controller asks every switch, on every connection (master or slave: a
monitor only reads), for an OpenFlow 1.4 flow monitor (OFPMP_FLOW_MONITOR)
on all tables: flows added, modified and removed, with their instructions.
Open vSwitch (3.1 verified, the OF 1.4 form; Nicira's NXST_FLOW_MONITOR is
the same machinery) reports a change made by *another* connection in full:
`ovs-ofctl` through the management socket, another controller, a script.
A change this connection made itself comes back only abbreviated
(OFPFME_ABBREV with the xid of the message that made it, one per batch), so
the controller's own flow-mods and bundles are never mistaken for drift:
there is no repair loop by construction. OVS rejects OFPFMF_NO_ABBREV and
reads OFPFMF_ONLY_OWN as "own changes in full", so neither is asked for.

A full update carries the flow as a flow-stats entry does (table, priority,
cookie, match, instructions), so the switch's copy of the table
(`SwitchSync.installed`) is kept exact, and the repair is scoped to the
cookies the change touched (`SwitchSync.observe`). When the switch cannot
keep up it pauses the monitor (OFPFME_PAUSED) and later resumes it
(OFPFME_RESUMED, after re-sending what changed meanwhile, but not what was
deleted): updates are then ignored, and the resumption starts a full
readback. The periodic audit stays the backstop for anything else.

No os-ken here: the app hands the raw body of each monitor reply in.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller import ofwire
from flows.flow import Flow

OFPMP_FLOW_MONITOR = 16
OFPFMC_ADD = 0
OFPFMF_ADD, OFPFMF_REMOVED, OFPFMF_MODIFY, OFPFMF_INSTRUCTIONS = 2, 4, 8, 16
FLAGS = OFPFMF_ADD | OFPFMF_REMOVED | OFPFMF_MODIFY | OFPFMF_INSTRUCTIONS
OFPFME_INITIAL, OFPFME_ADDED, OFPFME_REMOVED, OFPFME_MODIFIED = 0, 1, 2, 3
OFPFME_ABBREV, OFPFME_PAUSED, OFPFME_RESUMED = 4, 5, 6
MONITOR_ID = 1

_REQUEST = struct.Struct("!HH4xIIIHBB")  # multipart type, flags; monitor id, out port/group...
_EMPTY_MATCH = b"\x00\x01\x00\x04\x00\x00\x00\x00"
_UPDATE_HEAD = struct.Struct("!HH")  # length, event
_FULL = struct.Struct("!HHBBHHH4xQ")  # length, event, table, reason, idle, hard, priority, cookie
_U16 = struct.Struct("!H")
_KINDS = {OFPFME_ADDED: "added", OFPFME_MODIFIED: "modified", OFPFME_REMOVED: "removed"}


@dataclass(frozen=True)
class FlowChange:
    """A flow another client added or modified (as the switch now holds it), or removed
    (then `flow.actions` is empty: only its key and cookie matter)."""

    flow: Flow
    kind: str  # added | modified | removed

    @property
    def removed(self) -> bool:
        return self.kind == "removed"


@dataclass(frozen=True)
class Paused:
    """The switch stopped reporting changes (its send queue to us is full)."""


@dataclass(frozen=True)
class Resumed:
    """The switch reports changes again; what happened meanwhile is unknown."""


Update = FlowChange | Paused | Resumed


def encode_request(xid: int) -> bytes:
    """One monitor on every table, every flow: adds, removals and modifications, in full."""
    body = _REQUEST.pack(
        OFPMP_FLOW_MONITOR, 0, MONITOR_ID, ofwire.OFPP_ANY, ofwire.OFPG_ANY, FLAGS,
        ofwire.OFPTT_ALL, OFPFMC_ADD,
    ) + _EMPTY_MATCH  # fmt: skip
    return (
        struct.pack("!BBHI", ofwire.OFP_VERSION, ofwire.OFPT_MULTIPART_REQUEST, 8 + len(body), xid)
        + body
    )


def decode_updates(body: bytes) -> Iterator[Update]:
    """The updates of one OFPMP_FLOW_MONITOR reply body (after the multipart header).

    Abbreviated updates (this connection's own changes) and the initial
    listing (never asked for) are skipped; a malformed update ends the body.
    """
    pos = 0
    while pos + _UPDATE_HEAD.size <= len(body):
        length, event = _UPDATE_HEAD.unpack_from(body, pos)
        if length < _UPDATE_HEAD.size or pos + length > len(body):
            return
        if event in _KINDS and length >= _FULL.size + 4:
            yield FlowChange(_flow(body[pos : pos + length]), _KINDS[event])
        elif event == OFPFME_PAUSED:
            yield Paused()
        elif event == OFPFME_RESUMED:
            yield Resumed()
        pos += length


class Observer(Protocol):
    """What a switch's updates go to (`controller.switch.SwitchSync`)."""

    def observe(self, changes: Sequence[FlowChange]) -> None: ...

    def monitor_paused(self) -> None: ...

    def monitor_resumed(self) -> None: ...


def deliver(body: bytes, observer: Observer) -> None:
    """Hand one reply's updates to `observer` in order: changes in runs, pauses and
    resumptions between them."""
    run: list[FlowChange] = []
    for update in decode_updates(body):
        if isinstance(update, FlowChange):
            run.append(update)
            continue
        observer.observe(run)
        run = []
        if isinstance(update, Paused):
            observer.monitor_paused()
        else:
            observer.monitor_resumed()
    observer.observe(run)


def _flow(update: bytes) -> Flow:
    _, _, table, _, _, _, priority, cookie = _FULL.unpack_from(update)
    mpos = _FULL.size
    (mlen,) = _U16.unpack_from(update, mpos + 2)
    match = ofwire.decode_oxm_list(bytes(update[mpos + 4 : mpos + mlen]))
    instructions = ofwire.decode_instructions(bytes(update[mpos + ofwire.pad8(mlen) :]))
    return Flow(table, priority, match, instructions, cookie)
