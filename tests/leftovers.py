"""Finding what a test run left behind: namespaces, links and processes it made.

Processes are recognised by an environment variable the suite sets for itself
and every child inherits; namespaces and links by the run's tag (tests/emulation.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from daemons.processes import ended

RUN_MARKER = "VXFLOW_TEST_RUN"


def mark_run() -> str:
    """A new marker for this test process and whatever it starts. Each pytest process has
    its own (an xdist worker, a pytest that a test starts), so each one's leftover check
    sees its own processes only, never a sibling's nor the parent that started it."""
    marker = os.environ[RUN_MARKER] = uuid.uuid4().hex
    return marker


def processes_of_this_run() -> list[str]:
    """`pid cmdline` of live processes (other than this one) that carry this run's marker."""
    token = f"{RUN_MARKER}={os.environ[RUN_MARKER]}".encode()
    me = os.getpid()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            if token in (proc / "environ").read_bytes().split(b"\0"):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                if cmd:  # zombies have no cmdline and hold nothing
                    found.append(f"{proc.name} {cmd}")
        except OSError:
            continue  # exited meanwhile
    return found


def names_with_tag(tag: str) -> list[str]:
    """Namespaces and root-namespace links whose names start with `tag`."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(tag)]
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(tag):
            found.append(f"link {name}")
    return found


CLUSTER_TAG = re.compile(r"\(tag (vxm[0-9a-f]+)\)|Adding switches:\s+(vxm[0-9a-f]+)")


def cluster_tag(output: str) -> str:
    """The tag an emulated cluster printed (its progress line, or `mn`'s switch list)."""
    m = CLUSTER_TAG.search(output)
    assert m, f"no cluster tag in the output:\n{output[-3000:]}"
    return m.group(1) or m.group(2)


@dataclass
class Before:
    """The run's processes before a command started, to name what the command left behind.

    An emulated cluster's root-namespace links start with its tag and its work
    dir is /tmp/vxflow-<tag>-…, so other clusters running meanwhile (another
    suite, a demo) are never mistaken for this command's leftovers.
    """

    processes: set[str] = field(default_factory=lambda: set(processes_of_this_run()))

    def left_behind(self, tag: str) -> list[str]:
        found = [f"process {p}" for p in set(processes_of_this_run()) - self.processes]
        found += names_with_tag(tag)
        found += [f"dir {d}" for d in Path("/tmp").glob(f"vxflow-{tag}-*")]
        return sorted(found)

    def stop_left_behind(self, output: str) -> list[str]:
        """After a failed command: stop by PID the processes it left (SIGTERM, then SIGKILL
        after 10 s) and remove the namespaces, links and work dirs named by the cluster tag
        it printed, so that one failure does not fail every later module's leftover check.
        Returns what it found."""
        m = CLUSTER_TAG.search(output)
        found = (
            self.left_behind(m.group(1) or m.group(2))
            if m
            else [f"process {p}" for p in set(processes_of_this_run()) - self.processes]
        )
        pids = [int(item.split()[1]) for item in found if item.startswith("process ")]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(map(ended, pids)):
                time.sleep(0.1)
        for item in found:
            kind, name = item.split()[:2]
            if kind == "netns":
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            elif kind == "link":
                subprocess.run(["ip", "link", "del", name], capture_output=True)
            elif kind == "dir":
                shutil.rmtree(name, ignore_errors=True)
        return found
