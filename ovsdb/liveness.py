"""The node agent's liveness record, kept alive from a thread of its own.

Why not in the agent's loop: that loop does slow things one after another (a converge
waits for OVSDB to go quiet, an etcd call waits out its timeout while etcd is away,
`ip route get` per peer, the masquerade check), any of which can outlast a record of a
few seconds; the node would look dead while it is merely busy. This thread does nothing
else, talks to etcd through a client of its own whose request timeout is half the TTL
(a hung request ends before the record would), and, being a thread, runs while the loop
waits on I/O and between the interpreter's switches while it computes.
"""

from __future__ import annotations

import logging
import threading
from ipaddress import IPv4Address, IPv6Address

from etcd3gw.exceptions import Etcd3Exception

from leases.errors import RegistryError
from leases.liveness import RENEWALS_PER_TTL
from leases.registry import Registry
from ovsdb import metrics

log = logging.getLogger(__name__)


class LivenessKeeper:
    """`start()` writes the record and keeps it alive every TTL / RENEWALS_PER_TTL seconds
    (written again under a new etcd lease if it lapsed, e.g. after an etcd outage);
    `stop()` revokes it: a clean stop says at once that the agent is gone.
    `set_direct()` changes the record's Direct list (DirectRouting), written at once."""

    def __init__(self, registry: Registry, public_ip: IPv4Address, ttl: int) -> None:
        self.registry = registry.sibling(timeout=ttl / 2)
        self.public_ip = public_ip
        self.ttl = ttl
        self.lease = 0  # the record's etcd lease (0: not written)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a stop or a new Direct list
        self._lock = threading.Lock()
        self._direct: frozenset[IPv4Address | IPv6Address] | None = None
        self._written: frozenset[IPv4Address | IPv6Address] | None = None  # the Direct list etcd has
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_direct(self, direct: frozenset[IPv4Address | IPv6Address] | None) -> None:
        """The peers this node reaches directly (None: DirectRouting off)."""
        with self._lock:
            changed, self._direct = direct != self._direct, direct
        if changed:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if self.lease:
            try:
                self.registry.etcd.revoke(self.lease)
                log.info("liveness record of %s removed", self.public_ip)
            except (RegistryError, Etcd3Exception) as exc:
                log.warning("could not remove the liveness record of %s (%s): it expires in "
                            "%ds", self.public_ip, exc, self.ttl)  # fmt: skip
        self.registry.close()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self._renew()
            except (RegistryError, Etcd3Exception) as exc:
                metrics.LIVENESS_FAILURES.inc()
                if not failing:  # one line per outage, not per attempt
                    log.warning("liveness record of %s: etcd: %s (retrying)", self.public_ip, exc)
                failing = True
            else:
                if failing:
                    log.info("liveness record of %s renewed again", self.public_ip)
                failing = False
            self._wake.wait(self.ttl / RENEWALS_PER_TTL)
            self._wake.clear()

    def _renew(self) -> None:
        with self._lock:
            direct = self._direct
        if self.lease and self.registry.etcd.keepalive(self.lease) > 0:
            if direct != self._written:  # the same etcd lease, a new Direct list
                self.registry.put_liveness(self.public_ip, self.ttl, direct, self.lease)
                self._written = direct
                metrics.LIVENESS_WRITES.inc()
            return
        if self.lease:
            log.warning("liveness record of %s had expired; writing it again", self.public_ip)
        self.lease = 0
        self.lease = self.registry.put_liveness(self.public_ip, self.ttl, direct)
        self._written = direct
        metrics.LIVENESS_WRITES.inc()
