"""At most one log line per interval for what a peer can cause at will (packet-ins, errors
for no message of ours): a flood never floods the log, and the next line counts what it
held back. The metrics still count every one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LogLimit:
    interval: float = 10.0  # seconds between two lines
    clock: Callable[[], float] = time.monotonic
    _until: float = field(default=float("-inf"), repr=False)
    _held: int = field(default=0, repr=False)

    def admit(self) -> int | None:
        """None: hold this line back; otherwise log it, saying how many were held back
        since the last."""
        now = self.clock()
        if now < self._until:
            self._held += 1
            return None
        held, self._held, self._until = self._held, 0, now + self.interval
        return held
