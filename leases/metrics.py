"""Prometheus metrics of the registry, and the one place rejections are logged and counted."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import Counter

from leases.validate import Rejection

log = logging.getLogger("leases.registry")

REJECTED = Counter(
    "vxflow_registry_rejected_entries",
    "etcd entries excluded by validation, counted once per entry version",
    ["kind", "reason"],
)
WATCH_RESYNCS = Counter(
    "vxflow_registry_watch_resyncs",
    "watch re-lists of the whole prefix (after etcd restart, compaction or a broken stream)",
    ["cause"],
)
WATCH_ERRORS = Counter(
    "vxflow_registry_watch_errors",
    "failures inside the watch loop (etcd unreachable, consumer callback raised, ...)",
    ["kind"],
)


class RejectionReporter:
    """Logs and counts each rejection once, not on every re-validation of the same entry.

    Remembers the rejection in force per key, so memory stays bounded and an
    entry rejected again after being fixed is reported again.
    """

    def __init__(self, already_reported: Iterable[Rejection] = ()) -> None:
        self._seen = {r.key: self._id(r) for r in already_reported}

    @staticmethod
    def _id(r: Rejection) -> tuple[int, str, str]:
        return (r.mod_revision, r.reason, r.detail)

    def report(self, rejections: Iterable[Rejection], scope: Iterable[str] | None = None) -> None:
        """`rejections` in force for the keys of `scope` (None: for every key)."""
        current = {}
        for r in rejections:
            current[r.key] = ident = self._id(r)
            if self._seen.get(r.key) != ident:
                log.warning("rejected %s %s: %s [%s]", r.kind, r.key, r.detail, r.reason,
                            extra={"event": "rejected", "key": r.key, "reason": r.reason})  # fmt: skip
                REJECTED.labels(r.kind.value, r.reason).inc()
        if scope is None:
            self._seen = current
            return
        for key in scope:
            self._seen.pop(key, None)
        self._seen.update(current)
