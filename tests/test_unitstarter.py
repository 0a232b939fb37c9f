"""tests/unitstarter.py, the `systemctl` of the deploy guide's run, does what it says.

Each test runs it in a mount namespace of its own with empty /run and
/etc/systemd/system (tmpfs), on small units whose daemon is DAEMON: a Python
script that records its start and environment and then, as told, reports
ready (at once or after longer than a watchdog interval), pings the watchdog or
not, lets a child of its own report ready, or exits before it is ready.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_e2e_controllers import wait_until

pytestmark = pytest.mark.integration

STARTER = Path(__file__).resolve().parent / "unitstarter.py"
DAEMON = """
import json, os, socket, sys, time
mode = sys.argv[1]
with open("/run/daemon.starts", "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "env": dict(os.environ)}) + "\\n")
def notify(message):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), os.environ["NOTIFY_SOCKET"])
if mode == "exits":
    sys.exit("no settings: giving up")
if mode == "child":
    if os.fork() == 0:
        notify("READY=1")
        os._exit(0)
elif mode != "never":
    time.sleep(1.5 if mode == "slow" else 0.2)
    notify("READY=1\\nSTATUS=serving " + " ".join(sys.argv[2:]))
while True:
    if mode in ("pings", "slow"):
        notify("WATCHDOG=1")
    time.sleep(0.2)
"""


@dataclass
class Box:
    """A mount namespace with its own /run and /etc/systemd/system."""

    holder: subprocess.Popen

    def run(self, *cmd: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *cmd],
                              input=input, capture_output=True, text=True, timeout=60)  # fmt: skip

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, str(STARTER), *args)

    def write(self, path: str, text: str) -> None:
        assert self.run("tee", path, input=text).returncode == 0

    def unit(self, name: str, service: str) -> None:
        self.write(f"/etc/systemd/system/{name}.service",
                   f"[Unit]\nDescription={name} test\n[Service]\n{service}\n"
                   "[Install]\nWantedBy=multi-user.target\n")  # fmt: skip

    def starts(self) -> list[dict]:
        res = self.run("cat", "/run/daemon.starts")
        return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.fixture
def box() -> Iterator[Box]:
    script = ("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /etc/systemd/system "
              "&& echo ready && exec sleep infinity")  # fmt: skip
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script], stdout=subprocess.PIPE, text=True)  # fmt: skip
    box = Box(holder)
    try:
        assert holder.stdout.readline().strip() == "ready"
        box.write("/run/daemon.py", DAEMON)
        yield box
    finally:
        states = box.run("sh", "-c", "ls /run/unitstarter/*.json 2>/dev/null").stdout.split()
        for state in states:  # every unit stopped, so no daemon outlives the test
            box.systemctl("stop", Path(state).name.removesuffix(".json"))
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=10)


def exec_start(mode: str, *args: str) -> str:
    return f"ExecStart=/usr/bin/python3 /run/daemon.py {mode} {' '.join(args)}"


def test_start_waits_for_ready_and_runs_the_unit_as_written(box: Box) -> None:
    box.write("/run/settings", '# comment\nGREETING=hello\nWORDS=a b\nQUOTED="x y"\n')
    box.unit("demo", "\n".join(["Type=notify", "Environment=GREETING=overridden OTHER=%p",
                                "EnvironmentFile=/run/settings",
                                "EnvironmentFile=-/run/missing", "RuntimeDirectory=demo",
                                exec_start("ready", "$WORDS", "${QUOTED}")]))  # fmt: skip
    enabled = box.systemctl("enable", "--now", "demo")
    assert enabled.returncode == 0, enabled.stderr
    assert "multi-user.target.wants/demo.service" in enabled.stderr
    status = box.systemctl("status", "demo")
    assert status.returncode == 0 and "Active: active (running)" in status.stdout
    assert 'Status: "serving a b x y"' in status.stdout
    (start,) = box.starts()
    assert start["argv"] == ["ready", "a", "b", "x y"]  # $WORDS split, ${QUOTED} one word
    env = start["env"]
    assert (env["GREETING"], env["OTHER"], env["PATH"]) == (
        "hello",
        "demo",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    assert env["NOTIFY_SOCKET"].startswith("/run/unitstarter/") and "WATCHDOG_USEC" not in env
    assert box.run("test", "-d", "/run/demo").returncode == 0
    assert f"Main PID: {start['pid']}" in status.stdout
    assert box.systemctl("disable", "--now", "demo").returncode == 0
    assert box.systemctl("status", "demo").returncode == 3
    assert box.run("test", "-d", "/run/demo").returncode == 1  # not preserved: removed
    assert box.run("kill", "-0", str(start["pid"])).returncode != 0


def test_a_start_that_never_reports_ready_fails(box: Box) -> None:
    box.unit("silent", "\n".join(["Type=notify", "TimeoutStartSec=1", exec_start("never")]))
    started = box.systemctl("start", "silent")
    assert started.returncode == 1 and "Job for silent.service failed" in started.stderr
    assert box.systemctl("is-active", "silent").stdout.strip() == "failed"


def test_ready_from_another_process_than_the_main_one_is_not_taken(box: Box) -> None:
    box.unit("child", "\n".join(["Type=notify", "TimeoutStartSec=2", exec_start("child")]))
    assert box.systemctl("start", "child").returncode == 1


def test_a_missed_watchdog_aborts_and_restart_starts_it_again(box: Box) -> None:
    box.unit("stuck", "\n".join(["Type=notify", "WatchdogSec=1", "Restart=on-failure",
                                 "RestartSec=0.1", exec_start("ready")]))  # fmt: skip
    assert box.systemctl("start", "stuck").returncode == 0
    assert box.starts()[0]["env"]["WATCHDOG_USEC"] == "1000000"
    wait_until("the stuck daemon aborted and started again", lambda: len(box.starts()) >= 2, 30)
    assert box.systemctl("stop", "stuck").returncode == 0
    box.unit("pinging", "\n".join(["Type=notify", "WatchdogSec=1", "Restart=on-failure",
                                   exec_start("pings")]))  # fmt: skip
    assert box.systemctl("start", "pinging").returncode == 0
    pid = box.starts()[-1]["pid"]
    time.sleep(3)  # three watchdog intervals, each one pinged
    assert box.starts()[-1]["pid"] == pid and box.systemctl("is-active", "pinging").returncode == 0


def test_a_daemon_ending_before_ready_fails_the_start_at_once_and_status_says_why(box: Box) -> None:
    """systemd's start job fails when the first run ends before READY=1, whatever Restart=
    does next; it does not wait through the restarts for TimeoutStartSec=."""
    box.unit("broken", "\n".join(["Type=notify", "Restart=on-failure", "RestartSec=0.5",
                                   exec_start("exits")]))  # fmt: skip
    started = box.systemctl("start", "broken")
    assert started.returncode == 1, started.stderr
    assert "Job for broken.service failed because the control process exited with error code" in (
        started.stderr
    )
    status = box.systemctl("status", "broken")
    assert status.returncode == 3, status.stdout
    assert "(Result: exit-code)" in status.stdout
    assert "ExecStart (code=exited, status=1)" in status.stdout  # this run's or the next's
    assert "no settings: giving up" in status.stdout  # the end of the unit's journal
    assert "no settings: giving up" in box.systemctl("journalctl", "-u", "broken").stdout
    wait_until("Restart= started it again", lambda: len(box.starts()) >= 2, 30)
    assert box.systemctl("stop", "broken").returncode == 0


def test_the_watchdog_runs_from_ready_on_not_from_the_start(box: Box) -> None:
    """A daemon whose start-up takes longer than WatchdogSec= and pings from READY=1 on is
    not aborted: systemd arms the watchdog once start-up has completed."""
    box.unit("slow", "\n".join(["Type=notify", "WatchdogSec=1", "Restart=on-failure",
                                 exec_start("slow")]))  # fmt: skip
    assert box.systemctl("start", "slow").returncode == 0
    time.sleep(3)  # three watchdog intervals after READY=1, each one pinged
    status = box.systemctl("status", "slow")
    assert len(box.starts()) == 1 and status.returncode == 0, status.stdout
    assert "Result:" not in status.stdout and "Restarts:" not in status.stdout
