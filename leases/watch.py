"""A watch of one network prefix that never silently stops and never misses a change.

It keeps a validated view of the prefix (leases.state.View). Each batch of
etcd events updates the view for the keys it touches, and the changes of the
valid state are delivered as typed events. When the stream
breaks (etcd restarted, endpoint gone) or etcd reports the start revision as
compacted, it re-lists the prefix and delivers the difference the same way, so
the consumer converges on what etcd holds. Reconnects back off (tenacity) up
to a few seconds. Runs in a thread, which is a green thread under eventlet's
monkey-patching (os-ken's hub), so the controller can use it unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

from etcd3gw.exceptions import Etcd3Exception
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from leases.errors import EtcdAccessDenied, EtcdUnavailable, RegistryError
from leases.etcd_client import GRPC_OUT_OF_RANGE, RANGE_PAGE, EtcdClient, WatchEvent, grpc_code
from leases.events import Event
from leases.keys import Keys
from leases.metrics import WATCH_ERRORS, WATCH_RESYNCS, RejectionReporter
from leases.state import Snapshot, View, diff

log = logging.getLogger(__name__)

_STOP = object()


class Watch:
    """Follows `<prefix>/` from a known state; iterate it, or give it a callback.

    Started by `Registry.watch`. Events from one etcd revision are delivered
    together; `snapshot` is the view after the last delivered batch.
    """

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        *,
        since: Snapshot | None = None,
        start_revision: int | None = None,
        callback: Callable[[Event], None] | None = None,
        idle_timeout: float = 30.0,
        max_backoff: float = 5.0,
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._pause = pause  # handed to every View: see View's docstring
        self._callback = callback
        self.idle_timeout = idle_timeout
        self.max_backoff = max_backoff
        self._queue: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._stream = None
        self._view = View(keys, pause=pause)
        if since is not None and since.view is not None:
            self._view = since.view.copy(pause)
        elif since is not None:
            self._view = View(keys, since.config, pause).load(since.kvs.values(), since.revision)
        self._reporter = RejectionReporter(since.rejected if since else ())
        # What to do first: follow from a snapshot, rebuild the state at
        # start_revision - 1, or (neither) list everything and deliver it as added.
        self._next_rev = self._view.revision + 1
        self._baseline_rev = start_revision - 1 if since is None and start_revision else None
        self._need_relist = since is None and not start_revision
        self._thread = threading.Thread(
            target=self._run, name=f"vxflow-watch{keys.prefix}", daemon=True
        )
        self._thread.start()

    @property
    def snapshot(self) -> Snapshot:
        """The view after the last delivered batch (built on demand: O(cluster size))."""
        return self._view.snapshot()

    # --- consumer side -------------------------------------------------------

    def __iter__(self) -> Iterator[Event]:
        while (item := self._queue.get()) is not _STOP:
            yield item  # type: ignore[misc]
        self._queue.put(_STOP)

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds or once stopped."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            self._queue.put(_STOP)
            return None
        return item  # type: ignore[return-value]

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.interrupt()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._client.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for attempt in Retrying(
                    retry=retry_if_exception_type(Exception),
                    wait=wait_exponential_jitter(multiplier=0.1, max=self.max_backoff, jitter=0.1),
                    stop=lambda _: self._stop.is_set(),
                    sleep=self._stop.wait,
                    before_sleep=self._before_sleep,
                    reraise=True,
                ):
                    with attempt:
                        self._follow()
            except Exception:  # only reached once stopping; never leave the loop otherwise
                if not self._stop.is_set():
                    log.exception("watch of %s: unexpected error, continuing", self._keys.root)
        self._queue.put(_STOP)
        log.info("watch of %s stopped", self._keys.root)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if isinstance(exc, RegistryError):  # etcd away or refusing us: one line each time
            WATCH_ERRORS.labels("etcd").inc()
            log.warning("watch of %s: %s; retrying in %.1fs", self._keys.root, exc, delay)
        else:
            WATCH_ERRORS.labels("internal").inc()
            log.error("watch of %s failed; retrying in %.1fs", self._keys.root, delay, exc_info=exc)

    def _follow(self) -> None:
        """One watch stream; returns to reconnect at once, raises to reconnect after a backoff."""
        if self._baseline_rev is not None:
            self._load_baseline(self._baseline_rev)
        if self._need_relist:
            self._relist()
        established = False
        try:
            with self._client.watch(
                self._keys.root, self._next_rev, idle_timeout=self.idle_timeout
            ) as stream:
                self._stream = stream
                for msg in stream:
                    if self._stop.is_set():
                        return
                    established = True
                    if msg.canceled:
                        if msg.compact_revision:
                            log.warning(
                                "watch of %s from revision %d fell behind compaction (%d); re-listing",
                                self._keys.root,
                                self._next_rev,
                                msg.compact_revision,
                            )
                            WATCH_RESYNCS.labels("compaction").inc()
                            self._need_relist = True
                            return
                        reason = msg.cancel_reason or "no reason"
                        if "permission denied" in reason:
                            raise EtcdAccessDenied(
                                f"etcd refused the watch of {self._keys.root}: {reason} "
                                "(the etcd user's role does not grant this key range)"
                            )
                        raise EtcdUnavailable(f"etcd canceled the watch: {reason}")
                    if msg.events:
                        self._apply(msg.events)
                    elif (
                        not msg.created and msg.revision
                    ):  # progress notice: all up to revision sent
                        self._next_rev = max(self._next_rev, msg.revision + 1)
                if not stream.idle and not self._stop.is_set():
                    raise EtcdUnavailable("etcd closed the watch stream")
        except EtcdUnavailable as exc:
            self._need_relist = True
            if established and not self._stop.is_set():
                WATCH_RESYNCS.labels("reconnect").inc()
                log.warning("watch of %s broke (%s); re-listing", self._keys.root, exc)
                return
            raise
        finally:
            self._stream = None

    def _load_baseline(self, revision: int) -> None:
        """The state the consumer knows: everything as of `revision` (before start_revision)."""
        if revision > 0:
            try:
                kvs, _ = self._client.range(
                    self._keys.root, prefix=True, revision=revision, page_size=RANGE_PAGE
                )
            except Etcd3Exception as exc:
                if grpc_code(exc) != GRPC_OUT_OF_RANGE:
                    raise
                log.warning(
                    "watch of %s: revision %d is compacted; delivering the current state as added",
                    self._keys.root,
                    revision,
                )
                kvs, revision, self._need_relist = [], 0, True
            self._view = View(self._keys, pause=self._pause).load(kvs, revision)
            self._reporter = RejectionReporter(self._view.snapshot().rejected)
        self._next_rev = revision + 1
        self._baseline_rev = None

    def _relist(self) -> None:
        kvs, revision = self._client.range(self._keys.root, prefix=True, page_size=RANGE_PAGE)
        view = View(self._keys, self._view.config, self._pause).load(kvs, revision)
        old, new = self._view.snapshot(), view.snapshot()
        self._view = view
        self._reporter.report(new.rejected)
        self._deliver(diff(old, new))
        self._next_rev = revision + 1
        self._need_relist = False

    def _apply(self, events: tuple[WatchEvent, ...]) -> None:
        changes = {ev.kv.key: (None if ev.kind == "DELETE" else ev.kv) for ev in events}
        revision = max(ev.kv.mod_revision for ev in events)
        delivered, rejections, judged = self._view.apply(changes, revision)
        self._reporter.report(rejections, scope=judged)
        self._deliver(delivered)
        self._next_rev = max(self._next_rev, revision + 1)

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            if self._callback is None:
                self._queue.put(event)
                continue
            try:
                self._callback(event)
            except Exception:
                WATCH_ERRORS.labels("callback").inc()
                log.exception(
                    "watch of %s: consumer failed on %s; continuing", self._keys.root, event
                )
