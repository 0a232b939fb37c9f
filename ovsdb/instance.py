"""A private Open vSwitch: its own ovsdb-server and ovs-vswitchd, optionally in a namespace.

Emulated nodes (tests, the Mininet cluster, benchmarks) each run one, with a
private database, run directory, pidfiles and unixctl sockets, so several can
live on one machine beside (and never touching) a system-wide OVS. Processes
are started in the foreground under our own Popen and stopped by that PID.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemons.processes import stop_process

log = logging.getLogger(__name__)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
OVS_SAVE = Path("/usr/share/openvswitch/scripts/ovs-save")  # what `ovs-ctl restart` saves with
OPENFLOW_VERSIONS = "OpenFlow13,OpenFlow14"


def accepts(path: Path) -> bool:
    """Whether a daemon accepts connections on unix socket `path`: the file appears at
    bind(), a moment before listen(), and a client in that moment is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


@dataclass
class OvsInstance:
    """One ovsdb-server + ovs-vswitchd pair.

    `netns` runs both inside `ip netns exec NETNS`; `exec_prefix` is the general
    form (for example `["mnexec", "-a", PID]` for a Mininet host) and wins over it.
    """

    name: str
    workdir: Path | None = None
    netns: str | None = None
    exec_prefix: Sequence[str] = ()
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)
    _frozen: bool = field(default=False, init=False, repr=False)  # see stop_ovsdb_server

    # -- paths --------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self._dir / "conf.db"

    @property
    def db_sock(self) -> Path:
        return self._dir / "db.sock"

    @property
    def db_target(self) -> str:
        """The OVSDB remote for python-ovs and ovs-vsctl: `unix:<path>`."""
        return f"unix:{self.db_sock}"

    @property
    def vswitchd_ctl(self) -> Path:
        return self._dir / "ovs-vswitchd.ctl"

    @property
    def ovsdb_ctl(self) -> Path:
        return self._dir / "ovsdb-server.ctl"

    def mgmt_socket(self, bridge: str) -> Path:
        """ovs-vswitchd's per-bridge OpenFlow management socket (`ovs-ofctl` target)."""
        return self._dir / f"{bridge}.mgmt"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"vxflow-ovs-{self.name}-"))
            self._own_dir = True
        return self.workdir

    @property
    def env(self) -> dict[str, str]:
        """Environment that points every OVS tool at this instance's files."""
        d = str(self._dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d}

    def _prefix(self) -> list[str]:
        if self.exec_prefix:
            return list(self.exec_prefix)
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def pids(self) -> dict[str, int]:
        return {k: p.pid for k, p in self._procs.items() if p.poll() is None}

    # -- lifecycle ----------------------------------------------------------
    def start(self, before_vswitchd: Sequence[Sequence[str]] = ()) -> OvsInstance:
        """Create the database if needed and start both daemons.

        `before_vswitchd` are ovs-vsctl argument lists applied after
        ovsdb-server is up and before ovs-vswitchd starts (for example
        `["set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true"]`).
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        if not self.db_path.exists():
            subprocess.run(
                ["ovsdb-tool", "create", str(self.db_path), str(SCHEMA)],
                check=True, capture_output=True,
            )  # fmt: skip
        try:
            self.start_ovsdb_server()
            self.vsctl("--no-wait", "init")
            for args in before_vswitchd:
                self.vsctl("--no-wait", *args)
            self.start_vswitchd()
        except BaseException:
            self.stop(remove_files=False)  # no daemon left behind; its logs kept to read
            raise
        return self

    def stop_ovsdb_server(self) -> None:
        """Stop ovsdb-server (its clients' outage), ovs-vswitchd frozen until
        start_ovsdb_server() brings the database back.

        Without its database, OVS 3.1's ovs-vswitchd spins (its bridge run, which clears a
        pending revalidation, is skipped while it holds no database lock, and its wait
        then wakes at once: "wakeup due to 0-ms timeout at ofproto-dpif.c"), about three
        quarters of a core, which stole up to 20 CPU-s from the suite per outage. Frozen
        (SIGSTOP), it forwards nothing meanwhile: for tests of OVSDB's clients."""
        self.stop_process("ovsdb-server")
        if vswitchd := self._procs.get("ovs-vswitchd"):
            vswitchd.send_signal(signal.SIGSTOP)
            self._frozen = True

    def _thaw_vswitchd(self) -> None:
        if self._frozen and (vswitchd := self._procs.get("ovs-vswitchd")):
            vswitchd.send_signal(signal.SIGCONT)
        self._frozen = False

    def start_ovsdb_server(self) -> None:
        """Start ovsdb-server (again: ovs-vswitchd, if stop_ovsdb_server froze it, goes on)."""
        d = self._dir
        self._spawn(
            "ovsdb-server",
            [
                "ovsdb-server", str(self.db_path),
                f"--remote=punix:{self.db_sock}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={d / 'ovsdb-server.pid'}",
                f"--unixctl={self.ovsdb_ctl}",
                f"--log-file={d / 'ovsdb-server.log'}",
                "-vconsole:off",
            ],
            ready=lambda: accepts(self.db_sock),
        )  # fmt: skip
        self._thaw_vswitchd()

    def start_vswitchd(self) -> None:
        d = self._dir
        self._spawn(
            "ovs-vswitchd",
            [
                "ovs-vswitchd", self.db_target,
                f"--pidfile={d / 'ovs-vswitchd.pid'}",
                f"--unixctl={self.vswitchd_ctl}",
                f"--log-file={d / 'ovs-vswitchd.log'}",
                "-vconsole:off",
            ],
            ready=lambda: accepts(self.vswitchd_ctl),
        )  # fmt: skip

    def _spawn(self, key: str, cmd: list[str], ready, timeout: float = 20.0) -> None:
        if shutil.which(cmd[0]) is None and not Path(f"/usr/sbin/{cmd[0]}").exists():
            raise RuntimeError(f"{cmd[0]} not found: run scripts/setup.sh (openvswitch-switch)")
        proc = subprocess.Popen(
            self._prefix() + cmd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self._dir / f"{key}.stderr", "ab"),  # noqa: SIM115 - owned by the child
            start_new_session=True,  # a Ctrl-C typed at our terminal (the CLI's) is not for it
        )
        self._procs[key] = proc
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{key} exited with {proc.returncode}; see {self._dir}/{key}.log"
                )
            if time.monotonic() > deadline:
                self.stop_process(key)
                raise RuntimeError(f"{key} not ready in {timeout}s; see {self._dir}/{key}.log")
            time.sleep(0.02)
        log.debug("%s %s pid %d", self.name, key, proc.pid)

    def stop_process(self, key: str, kill: bool = False) -> None:
        """Stop one daemon we started ("ovsdb-server" or "ovs-vswitchd"), by PID."""
        proc = self._procs.pop(key, None)
        if proc is None:
            return
        stop_process(proc, signal.SIGKILL if kill else signal.SIGTERM)
        ctl = self.vswitchd_ctl if key == "ovs-vswitchd" else self.ovsdb_ctl
        ctl.unlink(missing_ok=True)
        if key == "ovsdb-server":
            self.db_sock.unlink(missing_ok=True)

    def restart_vswitchd(self, planned: bool = True) -> tuple[float, float]:
        """Restart ovs-vswitchd, keeping ovsdb-server; (stopped, ready) as time.time().

        `planned`: as `ovs-ctl restart` does it (what Debian's service restart
        runs): save every bridge's flows with OVS's own ovs-save, set
        flow-restore-wait, stop the daemon and start it again, restore the
        flows (one bundle per bridge), clear flow-restore-wait. Otherwise a
        crash: SIGKILL, then a plain start. `ready`: the new process answers
        on its control socket.
        """
        if not planned:
            stopped = time.time()
            self.stop_process("ovs-vswitchd", kill=True)
            self.start_vswitchd()
            return stopped, time.time()
        bridges = self.vsctl("--", "--real", "list-br").split()
        restore = self.run("sh", str(OVS_SAVE), "save-flows", *bridges) if bridges else ""
        self.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
        stopped = time.time()
        self.stop_process("ovs-vswitchd")
        self.start_vswitchd()
        ready = time.time()
        self._wait_bridges(bridges)
        self.run("sh", "-e", input=restore)
        self.vsctl("--if-exists", "remove", "Open_vSwitch", ".", "other_config",
                   "flow-restore-wait=true")  # fmt: skip
        return stopped, ready

    def _wait_bridges(self, bridges: Sequence[str], timeout: float = 20.0) -> None:
        """Until a (re)started ovs-vswitchd serves every bridge in `bridges`. Its control
        socket answers before its bridge layer has registered `ofproto/list` (the command
        is "not a valid command" then): that counts as not yet."""
        deadline = time.monotonic() + timeout
        while not set(bridges) <= set(self.appctl("ofproto/list", check=False).split()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ovs-vswitchd did not set up {list(bridges)} in {timeout}s")
            time.sleep(0.02)

    def stop(self, remove_files: bool | None = None) -> None:
        """Stop ovs-vswitchd, then ovsdb-server; remove the work dir if we made it."""
        self._thaw_vswitchd()  # a frozen one would not see its SIGTERM
        self.stop_process("ovs-vswitchd")
        self.stop_process("ovsdb-server")
        if (remove_files if remove_files is not None else self._own_dir) and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OvsInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tools --------------------------------------------------------------
    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> str:
        """Run an OVS tool against this instance (in its namespace), return stdout."""
        res = subprocess.run(
            self._prefix() + list(cmd),
            env=self.env, capture_output=True, text=True, timeout=timeout, input=input,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def vsctl(self, *args: str, **kw) -> str:
        return self.run("ovs-vsctl", f"--db={self.db_target}", "--timeout=10", *args, **kw)

    def ofctl(self, *args: str, **kw) -> str:
        """ovs-ofctl with OpenFlow 1.4; name bridges by name (resolved via OVS_RUNDIR)."""
        return self.run("ovs-ofctl", "-O", "OpenFlow14", *args, **kw)

    def appctl(self, *args: str, **kw) -> str:
        return self.run("ovs-appctl", "-t", str(self.vswitchd_ctl), *args, **kw)
