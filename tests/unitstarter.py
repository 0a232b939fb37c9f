"""A stand-in for `systemctl` on the emulated machines of tests/test_deploy_guide_run.py.

The test machines have no systemd as PID 1, so docs/deploy.md's `systemctl`
lines run this instead (a `systemctl` on the machine's PATH that calls it).
It reads the installed unit files as systemd does and starts ExecStart the way
systemd would start it, for the directives the guide's units use (see
tests/README.md for what it covers and what it does not):

- units from /etc/systemd/system, then /lib/systemd/system; the specifiers
  %p, %n, %H, %%;
- a clean environment (PATH, LANG, and for User= HOME/USER/LOGNAME/SHELL),
  then Environment=, then EnvironmentFile= (a leading `-`: optional), which
  wins; ExecStart's `$VAR` splits into words, `${VAR}` stays one word;
- User= (setpriv --reuid/--regid/--init-groups), CapabilityBoundingSet= and
  NoNewPrivileges= (setpriv --bounding-set/--no-new-privs), the main process in
  a session of its own, cwd /, stdin /dev/null, output appended to
  /run/unitstarter/UNIT.log (the journal's stand-in);
- RuntimeDirectory= (removed at stop unless RuntimeDirectoryPreserve=yes),
  StateDirectory= (under /var/lib);
- ProtectSystem= (strict: all read-only but /proc, /sys, /dev and the
  RuntimeDirectory=, StateDirectory= and ReadWritePaths= paths), PrivateTmp=,
  ProtectHome=, in a mount namespace of the service's own (`protect`);
- Type=notify: a NOTIFY_SOCKET of its own; READY=1, STATUS=, WATCHDOG=1 and
  STOPPING=1 accepted from the main process only (NotifyAccess=main, checked
  with SCM_CREDENTIALS); `start` returns once READY=1 arrived, fails after
  TimeoutStartSec=, and fails at once when the first run ends before READY=1
  (as systemd's start job does, Restart= or not); WatchdogSec= sets
  WATCHDOG_USEC (not WATCHDOG_PID), the watchdog runs from READY=1 on (as
  systemd's: a start-up longer than WatchdogSec= is no missed ping) and a
  missing ping aborts the process (SIGABRT);
- Restart=on-failure/on-abnormal/always/no with RestartSec=; stop: SIGTERM to
  the main process's process group, SIGKILL after TimeoutStopSec=; `status`
  shows the result, how the main process last ended, the restarts and the
  last lines of the unit's output;
- enable/disable: the [Install] WantedBy= symlinks, --now;
- `journalctl -u UNIT` (a `journalctl` on the machine's PATH that calls
  `unitstarter.py journalctl`): the unit's output, without the journal's prefixes.

A supervisor process per started unit (`unitstarter.py supervise UNIT`) plays
systemd's part for that unit and keeps its state in /run/unitstarter/UNIT.json.
Standard library only: it runs on whatever Python runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))
STATE = Path("/run/unitstarter")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_THROUGH = ("VXFLOW_TEST_RUN",)  # the suite's leftover check finds the daemons by it
PROTECTIONS = ("ProtectSystem", "PrivateTmp", "ProtectHome")  # applied by `protect`
API_FILESYSTEMS = ("/proc", "/sys", "/dev")  # writable under ProtectSystem=strict too
CLEAN_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
EXIT_INACTIVE, EXIT_NO_UNIT = 3, 4
JOURNAL_LINES = 10  # `systemctl status` shows the end of the unit's journal
JOB_FAILURES = {  # systemctl's words for a failed start job, by the service's result
    "exit-code": "the control process exited with error code",
    "signal": "a fatal signal was delivered to the control process",
    "timeout": "a timeout was exceeded",
    "resources": "of unavailable resources or another system error",
}


def seconds(value: str | None, default: float) -> float:
    """A systemd time span ("30s", "5min", "2", "infinity") in seconds."""
    if value is None or value == "":
        return default
    if value == "infinity":
        return float("inf")
    total = 0.0
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    for number, unit in re.findall(r"([\d.]+)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@dataclass
class Unit:
    name: str  # with its suffix: vxflow-agent.service
    path: Path
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> Unit:
        if "." not in name:
            name += ".service"
        path = next((d / name for d in UNIT_DIRS if (d / name).is_file()), None)
        if path is None:
            raise LookupError(f"Unit {name} not found.")
        unit = cls(name, path)
        section: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = unit.sections.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            values = section.setdefault(key.strip(), [])
            if value.strip():
                values.append(unit.expand(value.strip()))
            else:
                values.clear()  # an empty assignment resets the list, as in systemd
        return unit

    @property
    def prefix(self) -> str:
        return self.name.rsplit(".", 1)[0].split("@", 1)[0]

    def expand(self, value: str) -> str:
        specifiers = {"p": self.prefix, "n": self.name, "H": socket.gethostname(), "%": "%"}
        return re.sub(r"%(.)", lambda m: specifiers.get(m.group(1), m.group(0)), value)

    def all(self, key: str, section: str = "Service") -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def get(self, key: str, default: str | None = None, section: str = "Service") -> str | None:
        values = self.all(key, section)
        return values[-1] if values else default

    def words(self, key: str) -> list[str]:
        return [w for value in self.all(key) for w in value.split()]

    def environment(self) -> dict[str, str]:
        """The service's environment: systemd's own, Environment=, then EnvironmentFile=."""
        env = {"PATH": DEFAULT_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
        env.update({k: os.environ[k] for k in PASSED_THROUGH if k in os.environ})
        user = self.get("User")
        if user:
            entry = pwd.getpwnam(user)
            env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user, SHELL=entry.pw_shell)
        for value in self.all("Environment"):
            env.update(word.split("=", 1) for word in shlex.split(value) if "=" in word)
        for value in self.all("EnvironmentFile"):
            optional, path = value.startswith("-"), Path(value.lstrip("-"))
            if not path.exists():
                if optional:
                    continue
                raise FileNotFoundError(f"{self.name}: EnvironmentFile {path} is missing")
            env.update(read_environment_file(path))
        return env

    def argv(self, env: dict[str, str]) -> list[str]:
        """ExecStart's words, `$VAR` split into words, `${VAR}` one word."""
        (command,) = self.all("ExecStart")
        argv: list[str] = []
        for word in shlex.split(command.lstrip("-@+!")):
            if m := re.fullmatch(r"\$(\w+)", word):
                argv += env.get(m.group(1), "").split()
            else:
                argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
        return argv

    def sandboxed(self) -> bool:
        return any(self.get(key, "no") not in ("no", "false") for key in PROTECTIONS)

    def writable_paths(self) -> list[Path]:
        """What ProtectSystem=strict leaves writable: RuntimeDirectory=, StateDirectory=,
        ReadWritePaths= (a leading `-`: skipped when missing)."""
        paths = [Path("/run") / n for n in self.words("RuntimeDirectory")]
        paths += [Path("/var/lib") / n for n in self.words("StateDirectory")]
        for word in self.words("ReadWritePaths"):
            if not (word.startswith("-") and not Path(word[1:]).exists()):
                paths.append(Path(word.lstrip("-")))
        return paths

    def privileges(self) -> list[str]:
        """setpriv's options for User=, CapabilityBoundingSet= and NoNewPrivileges=."""
        opts = []
        if user := self.get("User"):
            opts += [f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups"]
        if "CapabilityBoundingSet" in self.sections.get("Service", {}):
            caps = [c.removeprefix("CAP_").lower() for c in self.words("CapabilityBoundingSet")]
            opts.append("--bounding-set=" + ",".join(["-all", *(f"+{c}" for c in caps)]))
        if self.get("NoNewPrivileges") in ("yes", "true", "1"):
            opts.append("--no-new-privs")
        return ["setpriv", *opts, "--"] if opts else []


def read_environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile= syntax: NAME=value lines, # and ; comments, quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


# -- the state a supervisor keeps ---------------------------------------------


def state_file(unit: str) -> Path:
    return STATE / f"{unit}.json"


def read_state(unit: str) -> dict:
    try:
        state = json.loads(state_file(unit).read_text())
    except (OSError, ValueError):
        return {"ActiveState": "inactive"}
    if not alive(state.get("supervisor", 0)) and state["ActiveState"] != "failed":
        state["ActiveState"] = "inactive"
    return state


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Supervisor:
    """systemd's part for one unit: runs it, restarts it, stops it on SIGTERM."""

    unit: Unit
    state: dict = field(default_factory=dict)
    main: subprocess.Popen | None = None
    stopping: bool = False

    def save(self, **changes: object) -> None:
        self.state.update(changes, supervisor=os.getpid())
        tmp = state_file(self.unit.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(state_file(self.unit.name))

    def directories(self) -> list[Path]:
        made = []
        user = self.unit.get("User")
        for key, base in (("RuntimeDirectory", Path("/run")), ("StateDirectory", Path("/var/lib"))):
            for name in self.unit.words(key):
                path = base / name
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
                if user:
                    entry = pwd.getpwnam(user)
                    os.chown(path, entry.pw_uid, entry.pw_gid)
                if key == "RuntimeDirectory":
                    made.append(path)
        return made

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop_requested)
        notify_type = self.unit.get("Type", "simple") == "notify"
        restart = self.unit.get("Restart", "no")
        while True:
            result = self.run_once(notify_type)
            if "Job" not in self.state:  # ended before start-up did: the start job fails
                self.save(Job=f"failed:{result}")
            clean = result == "success"
            again = not self.stopping and (
                restart == "always"
                or (restart == "on-failure" and not clean)
                or (restart == "on-abnormal" and result in ("signal", "timeout", "watchdog"))
            )
            if not again:
                break
            self.log(f"failed ({result}): scheduled restart")
            self.save(ActiveState="activating", SubState="auto-restart", Result=result)
            time.sleep(seconds(self.unit.get("RestartSec"), 0.1))
            if self.stopping:
                break
            self.state["NRestarts"] = self.state.get("NRestarts", 0) + 1
        if self.unit.get("RuntimeDirectoryPreserve", "no") not in ("yes", "true"):
            for path in self.directories():
                subprocess.run(["rm", "-rf", str(path)], check=False)
        failed = result != "success" and not self.stopping
        self.save(ActiveState="failed" if failed else "inactive", SubState="dead", MainPID=0,
                  Result=result)  # fmt: skip

    def _stop_requested(self, *_: object) -> None:
        self.stopping = True

    def run_once(self, notify_type: bool) -> str:
        """Start the main process and watch it until it exits; the result as systemd names it."""
        self.directories()
        env = self.unit.environment()
        sock_path = STATE / f"{self.unit.name}.notify"
        sock_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock_path.chmod(0o777)  # a daemon run as User= writes to it too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        env["NOTIFY_SOCKET"] = str(sock_path)
        watchdog = seconds(self.unit.get("WatchdogSec"), 0)
        if watchdog:
            env["WATCHDOG_USEC"] = str(int(watchdog * 1e6))
        argv = self.unit.argv(env)
        # the unit's file system view: a mount namespace of its own, set up by `protect`
        # (unshare and the protect step exec() in turn: the daemon keeps the main PID)
        sandbox = []
        if self.unit.sandboxed():
            sandbox = ["unshare", "--mount", "--propagation", "slave", "--", sys.executable,
                       __file__, "protect", self.unit.name, "--"]  # fmt: skip
        with open(STATE / f"{self.unit.name}.log", "ab") as log:
            self.main = subprocess.Popen(
                [*sandbox, *self.unit.privileges(), *argv], env=env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        ready = not notify_type
        self.save(ActiveState="active" if ready else "activating",
                  SubState="running" if ready else "start", MainPID=self.main.pid,
                  StatusText="", Since=time.time(), **({"Job": "done"} if ready else {}))  # fmt: skip
        started = last_ping = time.monotonic()  # (for Type=simple: start-up ends at once)
        start_deadline = started + seconds(self.unit.get("TimeoutStartSec"), 90)
        self.log(f"started {argv[0]} as PID {self.main.pid}")
        try:
            while self.main.poll() is None:
                if self.stopping:
                    return self.stop_main()
                now = time.monotonic()
                if not ready and now > start_deadline:
                    self.stop_main()
                    return "timeout"
                if ready and watchdog and now - last_ping > watchdog:
                    os.killpg(self.main.pid, signal.SIGABRT)
                    self.main.wait()
                    self.exited()
                    return "watchdog"
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
                sender = next((struct.unpack("3i", d)[0] for level, kind, d in anc
                               if level == socket.SOL_SOCKET
                               and kind == socket.SCM_CREDENTIALS), None)  # fmt: skip
                if sender != self.main.pid:  # NotifyAccess=main
                    continue
                fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                              if "=" in line)  # fmt: skip
                if "STATUS" in fields:
                    self.save(StatusText=fields["STATUS"])
                if fields.get("READY") == "1" and not ready:
                    ready, last_ping = True, now  # systemd arms the watchdog at start-up's end
                    self.save(ActiveState="active", SubState="running", Job="done")
                    self.log(f"ready {now - started:.1f} s after its start")
                if fields.get("WATCHDOG") == "1":
                    last_ping = now
                if fields.get("STOPPING") == "1":
                    self.save(ActiveState="deactivating", SubState="stop")
        finally:
            sock.close()
            sock_path.unlink(missing_ok=True)
        code = self.exited()
        if code == 0 or (code < 0 and -code in CLEAN_SIGNALS):
            return "success"
        return "signal" if code < 0 else "exit-code"

    def exited(self) -> int:
        """Record how the main process ended (systemctl status shows it); its return code."""
        assert self.main is not None
        code = self.main.returncode
        how = (f"code=killed, status={-code}/{signal.Signals(-code).name.removeprefix('SIG')}"
               if code < 0 else f"code=exited, status={code}")  # fmt: skip
        self.save(ExecMain=f"{self.main.pid} {how}")
        self.log(f"main process ended: {how}")
        return code

    def log(self, message: str) -> None:
        """A line of this supervisor's own record (UNIT.supervisor): what systemd would log."""
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        print(f"{stamp} {self.unit.name}: {message}", file=sys.stderr, flush=True)

    def stop_main(self) -> str:
        """SIGTERM to the main process's group, SIGKILL after TimeoutStopSec=."""
        assert self.main is not None
        self.save(ActiveState="deactivating", SubState="stop")
        try:
            os.killpg(self.main.pid, signal.SIGTERM)
            self.main.wait(timeout=seconds(self.unit.get("TimeoutStopSec"), 90))
        except subprocess.TimeoutExpired:
            os.killpg(self.main.pid, signal.SIGKILL)
            self.main.wait()
        except ProcessLookupError:
            self.main.wait()
        self.exited()
        return "success"


def mount_points() -> list[tuple[str, str]]:
    """(mount point, file system type) of this mount namespace, in mount order."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        found.append((point, fields[fields.index("-") + 1]))
    return found


def under(path: str, roots: Sequence[Path | str]) -> bool:
    return any(path == str(r) or path.startswith(f"{str(r).rstrip('/')}/") for r in roots)


def protect(unit: Unit, argv: list[str]) -> None:
    """In the unit's own mount namespace: ProtectSystem= (strict: every mount read-only
    but the API file systems and the writable paths; full/yes: /usr, /boot, /efi and for
    full /etc), PrivateTmp= (a tmpfs on /tmp and /var/tmp), ProtectHome= (yes: /home,
    /root and /run/user empty and inaccessible; read-only); then exec `argv`."""

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    system = unit.get("ProtectSystem", "no")
    if system != "no":
        keep = unit.writable_paths() if system == "strict" else []
        for path in keep:  # each its own mount, left writable
            mount("--bind", str(path), str(path))
        roots = {"strict": ["/"], "full": ["/usr", "/boot", "/efi", "/etc"]}.get(
            system, ["/usr", "/boot", "/efi"]
        )
        for point, fstype in mount_points():
            if (under(point, roots) and not under(point, API_FILESYSTEMS)
                    and not under(point, keep) and fstype != "nsfs"):  # fmt: skip
                mount("-o", "remount,bind,ro", point)
    if unit.get("PrivateTmp", "no") in ("yes", "true"):
        for path in ("/tmp", "/var/tmp"):
            mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", path)
    home = unit.get("ProtectHome", "no")
    for path in ("/home", "/root", "/run/user"):
        if Path(path).is_dir() and home in ("yes", "true"):
            mount("-t", "tmpfs", "-o", "ro,mode=000", "tmpfs", path)
        elif Path(path).is_dir() and home == "read-only":
            mount("--bind", "-o", "ro", path, path)
    os.execvp(argv[0], argv)


# -- the systemctl verbs -------------------------------------------------------


def start(unit: Unit) -> int:
    """Start `unit` and wait for its start job: done at READY=1 (Type=notify) or at once,
    failed when the first run ends before that (as systemd's job fails, whatever Restart=
    does next), or when the supervisor is gone."""
    if read_state(unit.name)["ActiveState"] in ("active", "activating"):
        return 0
    STATE.mkdir(parents=True, exist_ok=True)
    state_file(unit.name).unlink(missing_ok=True)
    supervisor = subprocess.Popen([sys.executable, __file__, "supervise", unit.name],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(STATE / f"{unit.name}.supervisor", "ab"),  # noqa: SIM115
                                  start_new_session=True)  # fmt: skip
    # the supervisor ends the job itself (TimeoutStartSec= included), or dies trying
    while "Job" not in read_state(unit.name) and supervisor.poll() is None:
        time.sleep(0.05)
    job = read_state(unit.name).get("Job", "failed:resources")
    if job != "done":
        print(f"Job for {unit.name} failed because {JOB_FAILURES.get(job[7:], job[7:])}.\n"
              f'See "systemctl status {unit.name}" for details.', file=sys.stderr)  # fmt: skip
        return 1
    return 0


def stop(unit: Unit) -> int:
    state = read_state(unit.name)
    pid = state.get("supervisor", 0)
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + seconds(unit.get("TimeoutStopSec"), 90) + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if state["ActiveState"] == "failed":  # stop clears a failed state, as systemd's reset
        state_file(unit.name).unlink(missing_ok=True)
    return 0


def wants_links(unit: Unit) -> list[Path]:
    return [UNIT_DIRS[0] / f"{target}.wants" / unit.name
            for value in unit.all("WantedBy", "Install") for target in value.split()]  # fmt: skip


def enable(unit: Unit) -> int:
    for link in wants_links(unit):
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(unit.path)
            print(f"Created symlink {link} \u2192 {unit.path}.", file=sys.stderr)
    return 0


def disable(unit: Unit) -> int:
    for link in wants_links(unit):
        if link.is_symlink():
            link.unlink()
            print(f'Removed "{link}".', file=sys.stderr)
    return 0


def status(unit: Unit) -> int:
    state = read_state(unit.name)
    enabled = "enabled" if any(link.is_symlink() for link in wants_links(unit)) else "disabled"
    active = state["ActiveState"]
    print(f"\u25cf {unit.name} - {unit.get('Description', unit.name, 'Unit')}")
    print(f"     Loaded: loaded ({unit.path}; {enabled})")
    result = state.get("Result", "success")
    print(f"     Active: {active} ({state.get('SubState', 'dead')})"
          + (f" (Result: {result})" if result != "success" else ""))  # fmt: skip
    if state.get("ExecMain"):
        pid, how = state["ExecMain"].split(" ", 1)
        print(f"    Process: {pid} ExecStart ({how})")
    if state.get("NRestarts"):
        print(f"   Restarts: {state['NRestarts']}")
    if state.get("MainPID"):
        print(f"   Main PID: {state['MainPID']}")
    if state.get("StatusText"):
        print(f'     Status: "{state["StatusText"]}"')
    journal = STATE / f"{unit.name}.log"
    if journal.exists():
        lines = journal.read_text(errors="replace").splitlines()[-JOURNAL_LINES:]
        print("", *lines, sep="\n")
    return 0 if active == "active" else EXIT_INACTIVE


def journalctl(argv: list[str]) -> int:
    """`journalctl -u UNIT`: what the unit wrote, from its first start on (its lines only,
    without the journal's time, host and process prefix)."""
    parser = argparse.ArgumentParser(prog="journalctl")
    parser.add_argument("-u", "--unit", action="append", required=True)
    args = parser.parse_args(argv)
    logs = [STATE / f"{name if '.' in name else name + '.service'}.log" for name in args.unit]
    text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
    print(text or "-- No entries --\n", end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="systemctl")
    parser.add_argument("verb", choices=["daemon-reload", "start", "stop", "restart", "enable",
                                         "disable", "status", "is-active", "supervise"])  # fmt: skip
    parser.add_argument("--now", action="store_true")
    parser.add_argument("units", nargs="*")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["protect"]:  # protect UNIT -- COMMAND...: not for argparse
        protect(Unit.load(argv[1]), argv[argv.index("--") + 1 :])
    if argv[:1] == ["journalctl"]:  # the machine's `journalctl` runs this
        return journalctl(argv[1:])
    args = parser.parse_intermixed_args(argv)
    if args.verb == "daemon-reload":
        return 0  # every start reads the unit files afresh
    try:
        units = [Unit.load(name) for name in args.units]
    except LookupError as exc:
        print(f"Failed to {args.verb} {' '.join(args.units)}: {exc}", file=sys.stderr)
        return EXIT_NO_UNIT
    if args.verb == "supervise":
        Supervisor(units[0]).run()
        return 0
    code = 0
    for unit in units:
        if args.verb == "is-active":
            print(read_state(unit.name)["ActiveState"])
            code = code or (0 if read_state(unit.name)["ActiveState"] == "active" else 3)
            continue
        verbs = {"start": [start], "stop": [stop], "restart": [stop, start],
                 "enable": [enable] + ([start] if args.now else []),
                 "disable": [disable] + ([stop] if args.now else []), "status": [status]}  # fmt: skip
        for verb in verbs[args.verb]:
            code = verb(unit) or code
    return code


if __name__ == "__main__":
    sys.exit(main())
