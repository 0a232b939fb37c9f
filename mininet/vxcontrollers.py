"""The emulated cluster's controller replicas: `vxflow controller` processes in the root
namespace, each on its own port of 198.18.0.254, all on the cluster's etcd prefix.

Agents are given the first replica's target; they learn the others from etcd
(every replica advertises tcp:198.18.0.254:PORT, or ssl: with TLS). Standard library only, like
the rest of mininet/ (`mn --custom` loads it on the system Python).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vxnodes import ROOT_IP, _venv_tool, run_root

from daemons.processes import stop_process
from leases.etcd_server import free_loopback_port


@dataclass
class Replica:
    """One controller replica; `start()` again after `stop()` restarts it on the same port."""

    id: str
    log_path: Path
    options: Sequence[str] = ()  # e.g. ("--member-ttl", "3"), TLS's --ctl-privkey ...
    tls: bool = False  # options make it listen for OpenFlow over TLS
    port: int = 0
    metrics_port: int = 0  # its metrics and status page on 127.0.0.1 (`vxflow status` reads it)
    proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"{'ssl' if self.tls else 'tcp'}:{ROOT_IP}:{self.port}"

    def start(self, etcd_flags: Sequence[str], timeout: float = 30) -> Replica:
        self.port = self.port or free_loopback_port()
        self.metrics_port = self.metrics_port or free_loopback_port()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    _venv_tool("vxflow"), "controller", *etcd_flags, "--id", self.id,
                    "--listen", str(ROOT_IP), "--port", str(self.port),
                    "--metrics-port", str(self.metrics_port), *self.options,
                ],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not run_root("ss", "-Hltn", f"sport = :{self.port}", check=False).strip():
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller {self.id} exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"controller {self.id} not listening; see {self.log_path}")
            time.sleep(0.2)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, sig)
