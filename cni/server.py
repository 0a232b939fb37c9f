"""The node agent's CNI server: the plugin's calls, run in-process for the thin client.

A plugin process pays for its interpreter, its imports and its OVSDB
connection on every call, several times the work of an ADD itself
(BENCHMARKS.md, B6). As the antrea-agent serves antrea-cni, `vxflow agent`
serves the fast `vxflow` executable (cni/client.py) on a unix socket and runs
each call with the plugin's own code (`cni.main.run`), keeping between calls
what a long-lived process can: the imports, an OVSDB replica per remote
(`ovsdb.idl.Connections`, this thread's own: the agent's loop keeps its
separate IDL, python-ovs being not thread-safe) and a netlink socket that
makes the pod's veth without spawning `ip` (cni/netlink.py). IPAM is still
delegated to the IPAM executable, as the spec requires.

The socket (--cni-socket, default /run/vxflow/cni.sock) is made in a 0700
directory, bound under a temporary name, set to 0600 and renamed into place,
so it is never reachable with looser permissions. A socket another live
agent serves is left alone (this one then serves none); a stale one is
replaced. A caller must be root in the agent's own network namespace
(SO_PEERCRED): the pod's veth is made in the server's namespace, which must
be the one the runtime ran the plugin in. Otherwise the call is declined and
the client runs it in-process. The client sends CNI_NETNS open, and the
server works on its own copy of that descriptor: an agent in a mount namespace
of its own (a container, an emulated node) does not see the runtime's
/run/netns mounts, and /proc/PID/root would not help (/var/run is a
symbolic link to /run, resolved in the agent's own root).

One thread serves one call at a time, in arrival order (the others wait in
the listen backlog): the plugin's steps share one IDL, and the order makes
an abandoned ADD's undo happen before the next call. A slow call (IPAM may
take a minute) delays only other CNI calls, never the agent's loop.

Protocol (cni/client.py's framing): the request is the format tag, the
environment, stdin and the number of the client's descriptor of CNI_NETNS;
the answer "result", exit status, stdout, and the log lines for the
client's stderr (or "declined" and why); then the client acknowledges. An ADD that succeeded but whose answer nobody acknowledged
(the client timed out or died) is undone at once with a DEL of the same call.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

from cni import client
from cni.main import LOG_FORMAT, log_level
from cni.main import log as plugin_log
from cni.main import run as run_plugin
from cni.netlink import Netlink
from cni.plugin import KEPT, OVSDB_TIMEOUT, Kept
from ovsdb import plug
from ovsdb.idl import Connections

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path(client.DEFAULT_SOCKET)
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request once connected
ACK_TIMEOUT = 5.0  # seconds for a client to acknowledge an answer
ACCEPT_INTERVAL = 0.5  # how often the serving thread looks at the stop flag
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Declined(Exception):
    """The call is not for this server (the client then runs it in-process)."""


class _Capture(logging.Handler):
    """The plugin's log lines of one call, for the client's stderr."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _netns(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class CniServer:
    """`start()` serves `path` in a thread of its own; `stop()` ends it and removes the socket."""

    def __init__(self, path: Path = DEFAULT_SOCKET) -> None:
        self.path = path
        self.served = 0  # calls answered (declined ones not counted)
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (dev, ino) of our socket file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the socket ---------------------------------------------------------------
    def start(self) -> bool:
        """Bind and start serving; False (logged) if the path is another live server's or unusable."""
        if self._live_elsewhere():
            log.error("CNI socket %s is served by another process; not serving CNI here "
                      "(give this agent its own --cni-socket)", self.path)  # fmt: skip
            return False
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary.unlink(missing_ok=True)
            listener.bind(str(temporary))
            os.chmod(temporary, 0o600)
            listener.listen(128)
            os.replace(temporary, self.path)
        except OSError as exc:
            listener.close()
            temporary.unlink(missing_ok=True)
            log.error("cannot serve CNI calls on %s: %s (the plugin runs in-process)",
                      self.path, exc)  # fmt: skip
            return False
        st = os.stat(self.path)
        self._bound, self._listener = (st.st_dev, st.st_ino), listener
        listener.settimeout(ACCEPT_INTERVAL)
        self._thread = threading.Thread(target=self._serve, name="cni-server", daemon=True)
        self._thread.start()
        log.info("serving CNI calls on %s", self.path)
        return True

    def _live_elsewhere(self) -> bool:
        """Whether a process answers on the path already (a stale file is removed)."""
        if not self.path.exists():
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
            return True
        except OSError:
            self.path.unlink(missing_ok=True)
            return False
        finally:
            probe.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let a call in progress finish (up to `timeout` s), remove the socket."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._remove_socket()

    def _remove_socket(self) -> None:
        """Unlink our socket file, not one a later agent bound at the same path."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._bound:
                self.path.unlink()
        except FileNotFoundError:
            pass

    # -- serving --------------------------------------------------------------------
    def _serve(self) -> None:
        assert self._listener is not None
        try:
            connections = Connections(timeout=OVSDB_TIMEOUT, columns=plug.COLUMNS)
            netlink = Netlink()
        except Exception:  # no netlink: stop answering, so that clients run in-process
            log.exception("the CNI server cannot start; the plugin runs in-process")
            self._listener.close()
            self._remove_socket()
            return
        KEPT.set(Kept(connections, netlink))  # this thread's context only
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    try:
                        self._handle(conn)
                    except Exception:  # the client sees the connection close and recovers
                        log.exception("CNI call failed in the server")
        finally:
            self._listener.close()
            connections.close()
            netlink.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            magic, environ_data, stdin, netns_fd = client.read_fields(conn, 4)
            self._check_peer(conn)
            if magic != client.MAGIC:
                raise Declined(f"unknown request format {magic[:40]!r}")
        except Declined as exc:
            log.info("declined a CNI call: %s", exc)
            conn.sendall(client.pack(client.DECLINED, b"0", str(exc).encode(), b""))
            return
        except (EOFError, OSError) as exc:  # the client gave up before sending it all
            log.warning("incomplete CNI request: %s", exc)
            return
        environ = client.decode_environ(environ_data)
        netns = self._open_netns(self._credentials(conn)[0], netns_fd)
        try:
            handle = f"/proc/{os.getpid()}/fd/{netns}" if netns is not None else ""
            out, status, lines = self._call(environ, stdin, handle)
        finally:
            if netns is not None:
                os.close(netns)
        stderr = "".join(f"{line}\n" for line in lines).encode()
        self.served += 1
        acknowledged = False
        try:
            conn.sendall(client.pack(client.RESULT, str(status).encode(), out.encode(), stderr))
            conn.settimeout(ACK_TIMEOUT)
            acknowledged = client.read_fields(conn, 1) == [client.ACK]
        except (EOFError, OSError) as exc:
            log.debug("no acknowledgement: %s", exc)
        if not acknowledged and status == 0 and environ.get("CNI_COMMAND") == "ADD":
            self._undo(environ, stdin)

    @staticmethod
    def _credentials(conn: socket.socket) -> tuple[int, int, int]:
        """(pid, uid, gid) of the connected process, as the kernel saw it connect."""
        return _CREDENTIALS.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        )

    @staticmethod
    def _open_netns(pid: int, fd: bytes) -> int | None:
        """Our own descriptor of the caller's open CNI_NETNS (it outlives the caller)."""
        try:
            return os.open(f"/proc/{pid}/fd/{int(fd)}", os.O_RDONLY | os.O_CLOEXEC)
        except (ValueError, OSError):  # none sent, or the caller is gone: CNI_NETNS's path
            return None

    def _check_peer(self, conn: socket.socket) -> None:
        pid, uid, _ = self._credentials(conn)
        if uid != os.geteuid():
            raise Declined(f"caller uid {uid} is not {os.geteuid()}")
        try:
            theirs = _netns(f"/proc/{pid}/ns/net")
        except OSError as exc:
            raise Declined(f"cannot read the caller's network namespace: {exc}") from exc
        if theirs != _netns("/proc/thread-self/ns/net"):
            raise Declined("the caller is in another network namespace")

    def _call(self, environ: dict[str, str], stdin: bytes,
              netns_handle: str = "") -> tuple[str, int, list[str]]:  # fmt: skip
        """One plugin call as the plugin process would make it; (stdout, status, log lines)."""
        capture = _Capture(log_level(environ))
        level = plugin_log.level
        plugin_log.addHandler(capture)
        plugin_log.setLevel(min(capture.level, plugin_log.getEffectiveLevel()))
        command = environ.get("CNI_COMMAND")
        start = time.perf_counter()
        try:
            out, status = run_plugin([], environ, stdin, netns_handle)
            took = (time.perf_counter() - start) * 1e3
            plugin_log.debug("%s served by the agent in %.1f ms", command, took)
        finally:
            plugin_log.removeHandler(capture)
            plugin_log.setLevel(level)
        if command != "VERSION":
            log.info("CNI %s %s/%s: status %d in %.1f ms", command, environ.get("CNI_CONTAINERID"),
                     environ.get("CNI_IFNAME"), status, took)  # fmt: skip
        return out, status, capture.lines

    def _undo(self, environ: dict[str, str], stdin: bytes) -> None:
        """DEL an ADD whose result nobody took: the runtime saw a failure, so nothing may stay."""
        who = f"{environ.get('CNI_CONTAINERID')}/{environ.get('CNI_IFNAME')}"
        out, status, lines = self._call({**environ, "CNI_COMMAND": "DEL"}, stdin)
        if status == 0:
            log.warning("CNI ADD %s: the client left before taking the result; undone", who)
        else:
            log.error("CNI ADD %s: the client left and undoing it failed: %s %s", who,
                      out.strip(), " ".join(lines))  # fmt: skip
