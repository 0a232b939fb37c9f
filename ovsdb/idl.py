"""A python-ovs IDL connection to the Open_vSwitch database.

The schema is fetched from the server itself (so vxflow works against
whatever OVS version the node runs), and only the tables bootstrap and the
agent read or write are replicated. The IDL reconnects on its own with
backoff; callers keep calling `run()`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

log = logging.getLogger(__name__)

DEFAULT_OVSDB = "unix:/var/run/openvswitch/db.sock"
DB_NAME = "Open_vSwitch"
RECONNECT_MAX_BACKOFF_MS = 1000
# Only the columns bootstrap and the agent use: statistics and status columns that
# ovs-vswitchd rewrites every few seconds would otherwise wake the agent for nothing.
COLUMNS = {
    "Open_vSwitch": ["bridges", "datapath_types", "other_config", "ssl"],
    "Bridge": ["name", "datapath_type", "fail_mode", "protocols", "controller", "other_config",
               "external_ids", "ports"],
    "Port": ["name", "interfaces", "external_ids"],
    "Interface": ["name", "type", "options", "ofport", "ofport_request", "mac", "mtu_request",
                  "external_ids", "error"],
    "Controller": ["target", "is_connected", "max_backoff", "inactivity_probe"],
    "SSL": ["private_key", "certificate", "ca_cert", "external_ids"],
}  # fmt: skip


class OvsdbUnavailable(RuntimeError):
    """The OVSDB server could not be reached or did not answer in time."""


class OvsdbError(RuntimeError):
    """A transaction failed (a constraint, a conflict that did not clear, a lost session)."""


def fetch_schema(remote: str) -> dict:
    """Ask the server for its Open_vSwitch schema (raises OvsdbUnavailable)."""
    error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote))
    if error:
        raise OvsdbUnavailable(
            f"cannot connect to OVSDB at {remote}: {os.strerror(error)} "
            "(is ovsdb-server running? pass --ovsdb)"
        )
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        request = ovs.jsonrpc.Message.create_request("get_schema", [DB_NAME])
        error, reply = rpc.transact_block(request)
    finally:
        rpc.close()
    if error or reply is None or reply.error:
        reason = reply.error if reply is not None and reply.error else os.strerror(error)
        raise OvsdbUnavailable(f"OVSDB at {remote} did not return its schema: {reason}")
    return reply.result


def connect(remote: str, timeout: float = 10.0,
            columns: Mapping[str, list[str]] = COLUMNS) -> ovs.db.idl.Idl:  # fmt: skip
    """An IDL replica of the tables vxflow uses (`columns`), with its first snapshot loaded."""
    helper = ovs.db.idl.SchemaHelper(schema_json=fetch_schema(remote))
    for table, names in columns.items():
        helper.register_columns(table, names)
    idl = ovs.db.idl.Idl(remote, helper)
    # python-ovs backs off up to 8 s between attempts: a restarted ovsdb-server (an OVS
    # upgrade restarts it) would wait that long for the agent; 1 s is its least
    idl._session.reconnect.set_backoff(1000, RECONNECT_MAX_BACKOFF_MS)
    deadline = time.monotonic() + timeout
    while not idl.has_ever_connected():
        if time.monotonic() > deadline:
            idl.close()
            raise OvsdbUnavailable(f"OVSDB at {remote} sent no snapshot within {timeout:.0f}s")
        run_once(idl, timeout=0.2)
    return idl


class Connections:
    """IDL replicas kept open between calls by a long-lived process (the agent's CNI server).

    Connecting and taking the first snapshot is most of what a short-lived
    OVSDB client spends; a kept replica only takes in the updates sent since
    its last use. Each instance belongs to one thread: python-ovs is not
    thread-safe. A replica whose session dropped or reconnected since its last
    use is replaced by a fresh one, as is one a failed call used.
    """

    def __init__(self, timeout: float = 10.0,
                 columns: Mapping[str, list[str]] = COLUMNS) -> None:  # fmt: skip
        self.timeout, self.columns = timeout, columns
        self._idls: dict[str, tuple[ovs.db.idl.Idl, int]] = {}  # remote: (replica, session)

    def get(self, remote: str) -> ovs.db.idl.Idl:
        """A current replica of `remote`'s tables (raises OvsdbUnavailable)."""
        kept = self._idls.get(remote)
        if kept is not None:
            idl, session = kept
            idl.run()  # what the server sent since the last call
            if idl._session.get_seqno() == session and idl.state == idl.IDL_S_MONITORING:
                return idl
            self.discard(remote)  # the session dropped or reconnected since: start afresh
        idl = connect(remote, self.timeout, self.columns)
        self._idls[remote] = (idl, idl._session.get_seqno())
        return idl

    def discard(self, remote: str) -> None:
        """Close the replica of `remote` (after a failure its state is not trusted)."""
        kept = self._idls.pop(remote, None)
        if kept is not None:
            kept[0].close()

    def close(self) -> None:
        for remote in list(self._idls):
            self.discard(remote)


def run_once(idl: ovs.db.idl.Idl, timeout: float, wake: int | None = None) -> bool:
    """Process what the server sent; if that changed nothing, wait up to `timeout` s (or
    until the file descriptor `wake` is readable) for more and process it. True if the
    replica changed (then without waiting)."""
    if idl.run():
        return True
    poller = ovs.poller.Poller()
    idl.wait(poller)
    if wake is not None:
        poller.fd_wait(wake, ovs.poller.POLLIN)
    poller.timer_wait(int(timeout * 1000))
    poller.block()
    return bool(idl.run())


def is_connected(idl: ovs.db.idl.Idl) -> bool:
    """Whether the IDL's session is up right now (python-ovs has no public accessor)."""
    return bool(idl._session.is_connected())


def session_seqno(idl: ovs.db.idl.Idl) -> int:
    """A number the IDL's session changes on every disconnect and connect: a session that
    went down and up again between two looks at `is_connected` shows here."""
    return int(idl._session.get_seqno())


def refresh(idl: ovs.db.idl.Idl, quiet: float = 0.05, limit: float = 2.0) -> None:
    """Take in every update already sent (until `quiet` s pass without one, at most `limit` s)."""
    deadline = time.monotonic() + limit
    while run_once(idl, timeout=quiet) and time.monotonic() < deadline:
        pass


def transact(
    idl: ovs.db.idl.Idl,
    fill: Callable[[ovs.db.idl.Transaction], None],
    what: str,
    attempts: int = 5,
    reconnect_timeout: float = 10.0,
) -> None:
    """Commit what `fill` writes into a fresh transaction, again while the view was stale.

    `fill` reads the replica and may raise to abandon the change (the
    transaction is then aborted and the exception propagates). A session that
    dropped (a restarted ovsdb-server) is waited for, up to `reconnect_timeout`
    s, before the next attempt: python-ovs answers "try again" at once while it
    reconnects, which would use up the attempts meant for conflicts.
    """
    for _ in range(attempts):
        _await_monitoring(idl, reconnect_timeout, what)
        txn = ovs.db.idl.Transaction(idl)
        txn.add_comment(what)
        try:
            fill(txn)
        except BaseException:
            txn.abort()
            raise
        status = txn.commit_block()
        if status in (txn.SUCCESS, txn.UNCHANGED):
            return
        if status != txn.TRY_AGAIN:
            raise OvsdbError(f"{what}: OVSDB transaction failed: {txn.get_error()}")
        run_once(idl, timeout=0.5)  # our view was stale (or the session dropped): refresh
    raise OvsdbError(f"{what}: OVSDB transaction still conflicting after {attempts} attempts")


def _await_monitoring(idl: ovs.db.idl.Idl, timeout: float, what: str) -> None:
    """Return once the replica is connected and current again (OvsdbUnavailable if not)."""
    deadline = time.monotonic() + timeout
    while not (is_connected(idl) and idl.state == idl.IDL_S_MONITORING):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OvsdbUnavailable(f"{what}: OVSDB connection lost and not back within {timeout:.0f}s")
        run_once(idl, timeout=min(remaining, 0.2))
