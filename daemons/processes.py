"""Stopping the processes we started: by their Popen (so by PID), never by name; and telling
whether a PID still runs, and which process it is."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def stop_process(
    proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Send `sig` to a child we started, SIGKILL it after `timeout` s; its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_time(pid: int) -> int | None:
    """When the process started (/proc/PID/stat's field 22, clock ticks after boot): with its
    PID, which process it is, as a PID is reused. None: it ended (a zombie waiting for its
    parent counts: it does nothing more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from field 3 (the state) on
    return None if fields[0] in ("Z", "X") else int(fields[19])


def ended(pid: int) -> bool:
    """The process ended (a zombie counts)."""
    return start_time(pid) is None
