"""Stopping the processes we started: by their Popen (so by PID), never by name."""

from __future__ import annotations

import signal
import subprocess


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
