"""Where a benchmark's figures go: a JSON file per benchmark plus a readable summary.

Every result records the machine and component versions and the exact command
that produced it, so a number in BENCHMARKS.md can always be traced to a run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return out.splitlines()[0].strip() if out else "unavailable"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_state() -> dict[str, Any]:
    """The commit the code under test came from, and files that differed from it (other
    sessions edit the shared tree while benchmarks run)."""
    snapshot = os.environ.get("VXFLOW_BENCH_SNAPSHOT")
    if snapshot:  # a `git archive` of that commit, see BENCHMARKS.md
        return {"git_head": snapshot, "modified_files": [], "clean_snapshot": True}
    repo = Path(__file__).resolve().parents[1]
    head = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    return {"git_head": head, "modified_files": [line[3:] for line in status.splitlines()]}


STARTED_LOAD = os.getloadavg()  # every benchmark imports this module as it starts


def environment() -> dict[str, Any]:
    """The machine and the versions of everything a figure depends on."""
    try:
        from importlib.metadata import version

        os_ken = version("os-ken")
    except Exception as e:  # reported, never fatal
        os_ken = f"unavailable ({e})"
    mem_kb = next(
        (int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal")),
        0,
    )  # fmt: skip
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "loadavg_at_start": STARTED_LOAD,
        "loadavg_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "os_ken": os_ken,
        "ovs": _first_line(["ovs-vswitchd", "--version"]),
        "etcd": _first_line(["etcd", "--version"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        **source_state(),
    }


def command_line(module: str) -> str:
    """The command that reproduces this run, as typed from the repository root."""
    return " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]])


def save(
    name: str, module: str, result: dict[str, Any], results_dir: Path | None = None
) -> Path:
    """Write `result` with environment, command and timestamp to results/<name>.json."""
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line(module),
        "environment": environment(),
        **result,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "n/a"
