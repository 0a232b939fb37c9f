"""The vxflow controller as the benchmarks run it: `vxflow controller` as a child process.

Listening on the benchmark namespace's loopback, reading the benchmark's etcd;
CPU time and RSS are read from /proc; stopped by its PID.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemons.processes import stop_process
from leases.etcd_server import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
# `vxflow` from the source tree these benchmarks live in (not whatever the venv's
# editable install points at), so a run from a clean snapshot measures that snapshot.
VXFLOW = [sys.executable, "-c", "from vxflow.cli import main; main()"]
CLK_TCK = 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def make_pki(directory: Path) -> Path:
    """A CA and the controller's certificate (`vxflow pki`) for OpenFlow over TLS."""
    from vxflow import pki

    pki.init_ca(directory)
    pki.issue_server(directory, "controller", ["127.0.0.1"])
    return directory


@dataclass
class ControllerProcess:
    etcd: str
    prefix: str
    log_path: Path
    port: int = 0
    audit_interval: float = 0  # periodic readbacks off: they would land inside measurements
    extra_args: tuple[str, ...] = ()
    pki: Path | None = None  # with a CA directory (make_pki): OpenFlow over TLS
    listen: str = "127.0.0.1"  # netns.HUB when switches in child namespaces must reach it
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def target(self) -> str:
        return f"{'ssl' if self.pki else 'tcp'}:{self.listen}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def command(self) -> list[str]:
        cmd = [*VXFLOW, "--log-level", "info", "controller",
               "--etcd-endpoints", self.etcd, "--etcd-prefix", self.prefix,
               "--listen", self.listen, "--port", str(self.port),
               "--audit-interval", str(self.audit_interval), *self.extra_args]  # fmt: skip
        if self.pki is not None:
            cmd += ["--ctl-privkey", str(self.pki / "controller-key.pem"),
                    "--ctl-cert", str(self.pki / "controller.pem"),
                    "--ca-certs", str(self.pki / "ca.pem")]  # fmt: skip
        return cmd

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def start(self, timeout: float = 60) -> ControllerProcess:
        self.port = self.port or free_loopback_port()
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(), cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"controller exited ({self._proc.returncode}):\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"controller not listening after {timeout}s:\n{self._log_tail()}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        """A LISTEN socket on our port in this namespace (without connecting to it,
        which the controller would take for a switch)."""
        port = f":{self.port:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.endswith(port):
                return True
        return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU of the controller process so far."""
        return cpu_seconds(self.pid)

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak) in KiB."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        proc, self._proc = self._proc, None
        return stop_process(proc, sig, timeout=30)

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
