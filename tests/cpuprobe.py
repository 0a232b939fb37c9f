"""CPU of each test: this pytest process and every process it started, daemons included.

A measuring tool, not part of the suite: `-p tests.cpuprobe` (one pytest process, no
xdist) writes a JSON line per test (wall, CPU) to $CPUPROBE_OUT, then the CPU by kind
of process (command name). tests/README.md has the tables it gave.

CPU at any moment = this process's own and its reaped children's (getrusage) + for each
live process carrying this probe's marker (an environment variable every child inherits,
as tests/leftovers.py finds them), its own and its reaped children's CPU (/proc/PID/stat)
+ the last CPU seen of marked processes that were reaped outside the tree (a daemon that
detached, reaped by init). Sampled every 0.3 s and at each test's start and end; a process
that lives less than that and is reaped by init is missed (none such is known)."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

VAR = "VXFLOW_CPU_PROBE"
os.environ[VAR] = uuid.uuid4().hex
TOKEN = f"{VAR}={os.environ[VAR]}".encode()
HZ = os.sysconf("SC_CLK_TCK")
ME = os.getpid()
OUT = Path(os.environ.get("CPUPROBE_OUT", "cpuprobe.jsonl"))


class Tree:
    """The marked processes seen so far."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.marked: dict[int, tuple[int, bool]] = {}  # pid -> (start time, marked)
        self.live: dict[tuple[int, int], tuple[float, int]] = {}  # (pid, start) -> (CPU, ppid)
        self.kinds: dict[tuple[int, int], list] = {}  # (pid, start) -> [kind, own CPU]
        self.lost = 0.0  # CPU of marked processes reaped outside the tree

    def scan(self) -> None:
        seen = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == ME:
                continue
            pid = int(name)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                ppid, start = int(rest[1]), int(rest[19])
                own, children = int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])
                if self.marked.get(pid, (None,))[0] != start:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    self.marked[pid] = (start, TOKEN in env)
                if self.marked[pid][1]:
                    seen[pid, start] = ((own + children) / HZ, ppid)
                    self.kinds.setdefault((pid, start), [kind(pid), 0.0])[1] = own / HZ
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        with self.lock:
            tracked = {pid for pid, _ in seen} | {pid for pid, _ in self.live} | {ME}
            for key, (cpu, ppid) in self.live.items():
                if key not in seen and (ppid == 1 or ppid not in tracked):
                    self.lost += cpu
            self.live = seen

    def total(self) -> float:
        self.scan()
        me, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                             resource.RUSAGE_CHILDREN))  # fmt: skip
        with self.lock:
            return (me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
                    + sum(cpu for cpu, _ in self.live.values()) + self.lost)  # fmt: skip


def kind(pid: int) -> str:
    """The command's name: `python -m MODULE`, `python SCRIPT` or the executable's."""
    argv = [os.path.basename(a.decode(errors="replace"))
            for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3] if a]  # fmt: skip
    if argv and argv[0].startswith("python") and len(argv) > 1:
        return " ".join(argv[:3] if argv[1] == "-m" else argv[:2])
    return argv[0] if argv else "?"


TREE = Tree()


def sample() -> None:
    while True:
        time.sleep(0.3)
        TREE.scan()


threading.Thread(target=sample, daemon=True).start()
START = (time.monotonic(), TREE.total())


def write(record: dict) -> None:
    with OUT.open("a") as out:
        out.write(json.dumps(record) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    wall, cpu = time.monotonic(), TREE.total()
    yield
    write({"test": item.nodeid, "wall": round(time.monotonic() - wall, 2),
           "cpu": round(TREE.total() - cpu, 2)})  # fmt: skip


def pytest_sessionfinish(session: pytest.Session) -> None:
    time.sleep(1.0)  # daemons stopped at the end are reaped
    total = TREE.total()
    by_kind: dict[str, list] = {}
    for name, cpu in list(TREE.kinds.values()):
        row = by_kind.setdefault(name, [0, 0.0])
        row[0] += 1
        row[1] += cpu
    me = resource.getrusage(resource.RUSAGE_SELF)
    by_kind["pytest itself"] = [1, me.ru_utime + me.ru_stime]
    write({"kinds": sorted(([k, n, round(c, 2)] for k, (n, c) in by_kind.items()),
                           key=lambda row: -row[2])})  # fmt: skip
    write({"test": "SESSION", "wall": round(time.monotonic() - START[0], 2),
           "cpu": round(total - START[1], 2)})  # fmt: skip
