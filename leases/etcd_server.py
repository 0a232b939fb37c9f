"""A private etcd server process: the demo's embedded store and the tests' fixture.

It listens on loopback only, keeps its data in a directory it is given (or a
temporary one it removes), and is stopped by the PID it started — never by name.
With `tls` it serves https only and requires a client certificate signed by
the CA (`--client-cert-auth`); `enable_auth` adds users whose roles are
limited to one prefix and turns etcd's authentication on, with etcdctl as an
operator would. `enable_v2` also serves etcd's v2 API (`--enable-v2=true`, as
clusters of flannel before v0.14 ran it) and `v2_put` writes to that store.
Standard library only (mininet/vxcluster.py runs under `mn`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leases.etcd_client import EtcdAccess

from daemons.processes import stop_process

log = logging.getLogger(__name__)
PORTS_FROM = 20000  # the lowest port free_loopback_port hands out


_handed_out: set[int] = set()


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to now, below the kernel's ephemeral
    range and not handed out before by this process.

    A port the kernel picks for bind(0) comes from the ephemeral range, so between our
    check and the server's bind an outgoing connection can take it as its local port
    (a CI run lost etcd to exactly that); below the range only listeners compete."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(PORTS_FROM, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {PORTS_FROM}-{low - 1}")


@dataclass(frozen=True)
class ServerTLS:
    """etcd's server certificate and key, and the CA whose client certificates it accepts.

    The server certificate must also allow client authentication: etcd's gateway
    connects to its own gRPC port with it."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class EtcdUser:
    """A user whose one role grants read-write on `prefix` (every key under it)."""

    name: str
    password: str
    prefix: str


@dataclass
class EtcdServer:
    """One etcd 3.4 member on 127.0.0.1; `start()`/`stop()` or use as a context manager."""

    client_port: int = 0
    host: str = "127.0.0.1"  # an emulated cluster also serves its underlay address
    peer_port: int = 0
    data_dir: Path | None = None
    name: str = "vxflow"
    tls: ServerTLS | None = None
    auth_token_ttl: int = 300  # seconds an unused auth token lives (etcd's default)
    root_password: str | None = None  # set by enable_auth
    enable_v2: bool = False  # also serve etcd's v2 API (a separate store)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)
    _log_path: Path | None = field(default=None, init=False, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    def access(self, user: str | None = None, password: str | None = None) -> EtcdAccess:
        """How a client reaches this server: its CA and a client certificate (the
        server's own, which allows client auth) when TLS is on, and credentials."""
        from leases.etcd_client import EtcdAccess

        if self.tls is None:
            return EtcdAccess(username=user, password=password)
        return EtcdAccess(
            cafile=str(self.tls.ca),
            certfile=str(self.tls.cert),
            keyfile=str(self.tls.key),
            username=user,
            password=password,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 20.0) -> EtcdServer:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd not found: run scripts/setup.sh (Debian package etcd-server)")
        self.client_port = self.client_port or free_loopback_port()
        self.peer_port = self.peer_port or free_loopback_port()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="vxflow-etcd-"))
            self._own_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        cmd = [
            "etcd",
            "--name", self.name,
            "--data-dir", str(self.data_dir / "member-data"),
            "--listen-client-urls", ",".join(self._client_urls()),
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"{self.name}=http://127.0.0.1:{self.peer_port}",
            "--log-outputs", "stderr",
            "--logger", "zap",
            "--auth-token-ttl", str(self.auth_token_ttl),
        ]  # fmt: skip
        if self.tls is not None:
            cmd += [
                "--cert-file", str(self.tls.cert),
                "--key-file", str(self.tls.key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        if self.enable_v2:
            cmd.append("--enable-v2=true")
        with open(self._log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C typed at our terminal is not for it
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self._proc.returncode} ({self._last_error()}); "
                    f"log: {self._log_path}"
                )
            if self.healthy():
                log.info("etcd pid %d serving %s", self._proc.pid, self.endpoint)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s; log: {self._log_path}")

    def _last_error(self) -> str:
        """The error of etcd's last error-level log line, for the exception a failed start raises."""
        assert self._log_path is not None
        for line in reversed(self._log_path.read_text(errors="replace").splitlines()):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "error" in entry:
                    return str(entry["error"])
        return "no error in its log"

    def _client_urls(self) -> list[str]:
        urls = [f"{self.scheme}://127.0.0.1:{self.client_port}"]
        if self.host != "127.0.0.1":
            urls.append(self.endpoint)
        return urls

    def _context(self) -> ssl.SSLContext | None:
        """A client's TLS context for this server (its CA, the server's own certificate)."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        return context

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.scheme}://127.0.0.1:{self.client_port}/health", timeout=1,
                context=self._context(),
            ) as r:  # fmt: skip
                return b'"true"' in r.read()
        except (urllib.error.URLError, OSError):
            return False

    def v2_put(self, key: str, value: str, ttl: int | None = None) -> None:
        """Set `key` in etcd's v2 store (needs `enable_v2`), with a TTL in seconds if given:
        what flannel before v0.14 wrote."""
        form = {"value": value, **({"ttl": str(ttl)} if ttl is not None else {})}
        request = urllib.request.Request(
            f"{self.scheme}://127.0.0.1:{self.client_port}/v2/keys{urllib.parse.quote(key)}",
            data=urllib.parse.urlencode(form).encode(), method="PUT",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10, context=self._context()) as r:
            r.read()

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run etcdctl (Debian's etcd-client) against this server; its output."""
        cmd = ["etcdctl", "--endpoints", f"{self.scheme}://127.0.0.1:{self.client_port}"]
        if self.tls is not None:
            cmd += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.cert),
                    "--key", str(self.tls.key)]  # fmt: skip
        if user is not None:
            cmd += ["--user", user]
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "ETCDCTL_API": "3"})  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args[:2])} failed: {res.stderr.strip()}")
        return res.stdout

    def enable_auth(self, root_password: str, users: Iterable[EtcdUser]) -> None:
        """Create `root` and `users` (each with a role on its prefix only), then turn
        etcd's authentication on: from then on every request needs credentials."""
        if shutil.which("etcdctl") is None:
            raise RuntimeError("etcdctl not found: run scripts/setup.sh (Debian package etcd-client)")
        self.etcdctl("user", "add", "root", "--new-user-password", root_password)
        self.etcdctl("user", "grant-role", "root", "root")
        for user in users:
            role = f"{user.name}-prefix"
            self.etcdctl("user", "add", user.name, "--new-user-password", user.password)
            self.etcdctl("role", "add", role)
            self.etcdctl("role", "grant-permission", role, "--prefix=true", "readwrite",
                         user.prefix)  # fmt: skip
            self.etcdctl("user", "grant-role", user.name, role)
        self.etcdctl("auth", "enable")
        self.root_password = root_password

    def stop(self, remove_data: bool | None = None) -> None:
        """Stop the process we started (SIGTERM, then SIGKILL); keep the data unless told."""
        stop_process(self._proc)
        self._proc = None
        if remove_data if remove_data is not None else self._own_dir:
            if self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            if self._log_path is not None:
                self._log_path.unlink(missing_ok=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): clients time out as against an unreachable etcd."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same ports and data (tests of reconnection)."""
        self.stop(remove_data=False)
        self.start()

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
