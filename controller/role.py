"""This replica's OpenFlow role on one switch connection, as the switch confirmed it.

No os-ken here (like `controller.switch`): the app hands role replies, role
status messages and errors in. A replica writes to a switch only while the
switch has confirmed it as MASTER: the request carries the generation_id of
its etcd claim, and OVS refuses a MASTER or SLAVE request older than the
newest it has seen (OFPRRFC_STALE) and demotes the previous master when
another is promoted, so a replica that fell behind can never write again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from controller import metrics, ofwire
from controller.mastership import Role
from controller.switch import Channel

log = logging.getLogger(__name__)

OFPET_ROLE_REQUEST_FAILED = 11
ROLE_FAILURES = {0: "stale", 1: "unsupported", 2: "bad_role"}  # OFPRRFC_*
GENERATION_MASK = 0xFFFFFFFFFFFFFFFF


@dataclass
class SwitchRole:
    """Asks the switch for roles and tracks the one it confirmed."""

    node: IPv4Address
    channel: Channel
    on_master: Callable[[], None]  # confirmed MASTER: (re)sync from a fresh readback
    on_lost: Callable[[], None]  # no longer master: stop writing at once
    confirmed: Role = Role.EQUAL  # every OpenFlow connection starts EQUAL
    generation: int = 0
    _asked: tuple[Role, int] | None = None
    _xid: int = -1  # the latest request's: only its answer sets the role
    _outstanding: dict[int, tuple[Role, int]] = field(default_factory=dict)  # xid -> request

    @property
    def master(self) -> bool:
        return self.confirmed is Role.MASTER

    def ask(self, role: Role, generation: int) -> None:
        """Request `role` with `generation` (once: asking again for the same is a no-op).

        Giving up MASTER stops writes before the request is even sent.
        """
        if self._asked == (role, generation):
            return
        if role is not Role.MASTER and self.master:
            self._lose(f"stepping down to {role.name} (generation {generation})", "replica")
        self._asked = (role, generation)
        self._xid = self.channel.xids(1)
        self._outstanding[self._xid] = self._asked
        self.channel.send(
            ofwire.encode_role_request(int(role), generation & GENERATION_MASK, self._xid)
        )
        log.debug("switch %s: asked for %s with generation %d", self.node, role.name, generation)

    def on_reply(self, xid: int, role: int, generation: int) -> bool:
        """A ROLE_REPLY; False if it answers no request of ours. The answer to a request
        a later one superseded is taken as answered and otherwise ignored: the later
        request's answer follows it (the switch handles a connection's messages in order)."""
        if self._outstanding.pop(xid, None) is None:
            return False
        if xid != self._xid:
            return True
        was_master = self.master
        self.confirmed, self.generation = Role(role), generation
        metrics.ROLE_CHANGES[self.confirmed].inc()
        if self.master and not was_master:
            log.info("switch %s: master (generation %d)", self.node, generation)
            self.on_master()
        elif was_master and not self.master:
            self._lose(f"confirmed {self.confirmed.name}", "replica")
        return True

    def on_error(self, xid: int, err_type: int, code: int) -> bool:
        """An OFPT_ERROR for one of our role requests (the switch refused it, also one a
        later request superseded); False if not ours."""
        if err_type != OFPET_ROLE_REQUEST_FAILED or xid not in self._outstanding:
            return False
        role, generation = self._outstanding.pop(xid)
        reason = ROLE_FAILURES.get(code, str(code))
        metrics.ROLE_REFUSED.labels(reason).inc()
        log.warning(
            "switch %s refused role %s with generation %d (%s): a newer master holds it",
            self.node, role.name, generation, reason,
        )  # fmt: skip
        # `_asked` stays: the same request would be refused again; a newer claim in etcd
        # (another generation) is what makes asking worthwhile
        return True

    def on_status(self, role: int, generation: int) -> None:
        """A ROLE_STATUS: the switch changed our role itself (another controller became master)."""
        if self.master and role != Role.MASTER:
            self.confirmed, self.generation = Role(role), generation
            self._lose(
                f"demoted by the switch: another controller is master (generation {generation})",
                "switch",
            )
        self._asked = None

    def refused_write(self) -> None:
        """The switch refused a write of ours as from a slave: stop writing, ask again later."""
        if self.master:
            self._lose("the switch refused a write: another controller is master", "switch")
        self._asked = None

    def _lose(self, why: str, by: str) -> None:
        self.confirmed = Role.SLAVE if self.confirmed is Role.MASTER else self.confirmed
        metrics.DEMOTIONS.labels(by).inc()
        log.info("switch %s: no longer master: %s", self.node, why,
                 extra={"event": "demoted", "node": str(self.node), "by": by})  # fmt: skip
        self.on_lost()
