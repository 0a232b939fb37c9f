"""End to end: every interactive path a user is shown, typed as a person types it.

Each command runs under a real pseudo-terminal (pexpect). The test waits for
the `mininet>` prompt, types every command the banner suggests exactly as
printed, and requires that command's real output (a ping reply with ttl=63, the
overlay route, a VXLAN capture, the node list); it runs the printed `etcdctl`
line from the host while the cluster is up; then it types `exit` and requires
a clean teardown: exit status 0 and nothing of the run left behind. A
suggested command that prints nothing fails the test. tests/README.md lists
every user-facing command with the test that runs it.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.leftovers import Before, cluster_tag

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROMPT = "mininet> "
BANNER = re.compile(r"At the mininet> prompt try (.+?) \(Ctrl-C ends tcpdump\)")
ETCDCTL = re.compile(r"its etcd keys: (ETCDCTL_API=3 etcdctl [^\r\n]+)(?=\r\n)")
VXFLOW_CLI = re.compile(r"and the vxflow CLI on it \(work dir [^)]+\):\r\n  (\S+ status [^\r\n]+)"
                        r"\r\n  (\S+ trace [^\r\n]+)\r\n  (\S+ flows diff [^\r\n]+)(?=\r\n)")
# (each line's group ends at its line's end, which the pattern requires: pexpect matches what has
# arrived so far, and an open `[^\r\n]+` at the pattern's end once took half a line)
PING_TARGET = re.compile(r"PING (\S+) \((\d+\.\d+\.\d+\.\d+)\)")


def _as_from_a_terminal() -> None:
    """A command typed at a terminal starts with SIGINT and SIGQUIT at their defaults; a
    pytest started in the background of a script (`make test &`, xargs under a shell's
    `&`) has them ignored, and an ignored SIGINT is inherited across exec: `mn` (which
    sets no handler of its own) would then never see the Ctrl-C that ends tcpdump."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


class Session:
    """A command under a pty, with everything it printed kept for failure messages."""

    def __init__(self, argv: list[str]) -> None:
        self.transcript = io.StringIO()
        self.before = Before()
        self.child = pexpect.spawn(
            argv[0], argv[1:], cwd=REPO, encoding="utf-8", timeout=240, dimensions=(50, 400),
            env={**os.environ, "TERM": "dumb", "PYTHONWARNINGS": "ignore"},
            preexec_fn=_as_from_a_terminal,
        )  # fmt: skip
        self.child.logfile_read = self.transcript

    def expect(self, pattern: str | re.Pattern, timeout: float = 240) -> re.Match:
        try:
            self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise AssertionError(
                f"waited for {pattern!r}: {type(exc).__name__}\n--- transcript ---\n"
                f"{self.transcript.getvalue()[-6000:]}"
            ) from None
        return self.child.match

    def command(self, line: str, timeout: float = 60) -> str:
        """Type `line` at the prompt; return what it printed (without the echoed line)."""
        self.child.sendline(line)
        self.expect(PROMPT, timeout)
        printed = self.child.before.replace("\r\n", "\n")
        _echo, _, output = printed.partition("\n")
        assert output.strip(), f"`{line}` printed nothing at the mininet> prompt"
        return output

    def leave(self) -> int:
        """`exit` at the prompt; the exit status once the program has torn down."""
        self.child.sendline("exit")
        self.expect(pexpect.EOF, timeout=120)
        self.child.close()
        return self.child.exitstatus

    def abandon(self) -> None:
        """After a failure: leave the CLI the way a person would, so teardown still runs;
        what it still left (a killed `mn` tears nothing down) is stopped by PID.

        `exit` first: a CLI still starting reads it once up. Ctrl-C only if that
        did not end it (a command still running ate the line): during start-up,
        `mn` answers Ctrl-C with its global cleanup, which is not ours to run.
        """
        for keys in ((), ("c",)):
            if not self.child.isalive():
                break
            for key in keys:
                self.child.sendcontrol(key)
            self.child.sendline("exit")
            try:
                self.child.expect(pexpect.EOF, timeout=150)
            except pexpect.TIMEOUT:
                continue
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()
        self.before.stop_left_behind(self.transcript.getvalue())


@pytest.fixture
def session_of() -> Iterator:
    sessions: list[Session] = []

    def start(argv: list[str]) -> Session:
        sessions.append(Session(argv))
        return sessions[-1]

    yield start
    for s in sessions:
        s.abandon()


def host_pid(name: str, parent: int) -> int:
    """The shell Mininet runs for host `name` under `parent` (other clusters may have an
    `n1p1` too): a child of the program, its command line ending in mininet:NAME."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and f"mininet:{name}".encode() in cmdline:
                return int(proc.name)
    raise AssertionError(f"no Mininet shell for {name} under {parent}")


def try_every_hint(session: Session, mixed: bool = False) -> None:
    """Type each suggested command as printed and check what it shows; then etcdctl and the
    vxflow CLI's lines (`mixed`: flannel-style nodes hold leases but no switch, which
    `vxflow status` reports)."""
    hints = re.findall(r"`([^`]+)`", session.expect(BANNER).group(1))
    etcdctl = session.expect(ETCDCTL).group(1)
    status, trace, diff = session.expect(VXFLOW_CLI).groups()
    session.expect(PROMPT)
    assert len(hints) == 4, hints
    ping, route, capture, nodes = hints

    out = session.command(ping)
    assert "3 received" in out and set(re.findall(r"ttl=(\d+)", out)) == {"63"}, out
    src = ping.split()[0]
    dst_ip = PING_TARGET.search(out).group(2)

    out = session.command(route)
    assert re.search(r"^198\.19\.0\.0/16 dev vxgw0", out, re.M), out

    # tcpdump runs until Ctrl-C: while it listens, a pod pings across the overlay
    session.child.sendline(capture)
    session.expect("listening on eth0")
    pinger = subprocess.run(
        ["mnexec", "-a", str(host_pid(src, session.child.pid)), "ping", "-n", "-c", "2", "-W", "2", dst_ip],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert pinger.returncode == 0, pinger.stdout + pinger.stderr
    session.expect(r"VXLAN, flags \[I\] \(0x08\), vni 1\s+IP \S+ > " + re.escape(dst_ip), 30)
    session.child.sendcontrol("c")
    session.expect(r"packets captured")
    session.expect(PROMPT)

    out = session.command(nodes)
    assert "available nodes are:" in out and re.search(r"\bn1 n1p1\b", out), out
    assert out.count("available nodes are:") == 1, out  # printed once, not logged again
    assert "Level 25" not in session.transcript.getvalue()

    # the vxflow CLI's lines, as printed (no shell syntax in them)
    shown = subprocess.run(shlex.split(status), capture_output=True, text=True, timeout=60)
    assert shown.returncode == (1 if mixed else 0), shown.stdout + shown.stderr
    if mixed:
        assert all("its switch is not connected" in line
                   for line in shown.stdout.split("problem(s):\n")[1].splitlines()), shown.stdout  # fmt: skip
    else:
        assert shown.stdout.splitlines()[-1] == "healthy", shown.stdout
    traced = subprocess.run(shlex.split(trace), capture_output=True, text=True, timeout=60)
    assert traced.returncode == 0 and "delivered" in traced.stdout, traced.stdout + traced.stderr
    diffed = subprocess.run(shlex.split(diff), capture_output=True, text=True, timeout=60)
    assert diffed.returncode == 0 and ", 0 differ; " in diffed.stderr, diffed.stdout + diffed.stderr

    shown = subprocess.run(["sh", "-c", etcdctl], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"/subnets/198\.19\.\d+\.0-24\n\{\"PublicIP\":\"198\.18\.0\.", shown.stdout), (
        shown.stdout
    )


def test_vxflow_demo_keep(session_of) -> None:
    before = Before()
    session = session_of([str(VENV_BIN / "vxflow"), "demo", "--keep"])
    try_every_hint(session)
    assert session.leave() == 0
    transcript = session.transcript.getvalue()
    assert "FAIL" not in transcript, transcript
    assert "all checks passed; cluster torn down" in transcript, transcript
    assert before.left_behind(cluster_tag(transcript)) == []


def test_cluster_script_cli(session_of) -> None:
    before = Before()
    session = session_of([
        ".venv/bin/python", "mininet/cluster.py", "--nodes", "2", "--pods", "1",
        "--flannel-nodes", "1", "--cli",
    ])  # fmt: skip
    session.expect(r"pod pairs answering: 6/6")
    try_every_hint(session, mixed=True)
    assert session.leave() == 0
    assert before.left_behind(cluster_tag(session.transcript.getvalue())) == []


def test_mn_custom_test_vxflow(session_of) -> None:
    before = Before()
    session = session_of([
        "mn", "--custom", "mininet/cluster.py", "--topo", "vxflow,2,1,1", "--test", "vxflow",
    ])  # fmt: skip
    session.expect(r"pod pairs answering: 6/6")
    try_every_hint(session, mixed=True)
    assert session.leave() == 0
    assert before.left_behind(cluster_tag(session.transcript.getvalue())) == []
