"""The fast client (cni/client.py) and the agent's CNI server (cni/server.py) over a real socket.

No OVS here: VERSION and STATUS need none, and the server runs in this test
process (the client is a child in the same namespace). The attachments
themselves, through a real agent, are tests/test_cni_fast.py's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.util import cache_from_source
from pathlib import Path

import pytest

from cni import client
from cni.main import install, launcher
from cni.server import CniServer


@pytest.fixture
def installed(tmp_path: Path) -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    return str(install(folder))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CniServer]:
    running = CniServer(tmp_path / "run" / "cni.sock")
    assert running.start()
    yield running
    running.stop()


def call(exe: str, command: str, conf: dict, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe], input=json.dumps(conf), capture_output=True, text=True, timeout=60,
        env={**os.environ, "CNI_COMMAND": command, "VXFLOW_CNI_LOG_LEVEL": "debug", **env},
    )  # fmt: skip


def test_framing() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(client.pack(b"x", b"", b"\0" * 70000))
        assert client.read_fields(b, 3) == [b"x", b"", b"\0" * 70000]
        with pytest.raises(TimeoutError):
            client.read_fields(b, 1, deadline=time.monotonic() + 0.1)
        a.close()
        with pytest.raises(EOFError):
            client.read_fields(b, 1)
    environ = {b"CNI_ARGS": b"K=V;A=B", b"EMPTY": b""}
    assert client.decode_environ(client.encode_environ(environ)) == {"CNI_ARGS": "K=V;A=B",
                                                                      "EMPTY": ""}  # fmt: skip


def test_settings_from_the_conflist() -> None:
    defaults = (client.DEFAULT_SOCKET, client.DEFAULT_TIMEOUT, "1.0.0")
    assert client.settings(b"") == defaults
    assert client.settings(b"{not json") == defaults
    assert client.settings(b"[1, 2]") == defaults
    assert client.settings(b'{"agentSocket": 5, "agentTimeout": "x", "cniVersion": 4}') == defaults
    conf = b' {"cniVersion": "0.4.0", "agentSocket": "/x.sock", "agentTimeout": 2.5}'
    assert client.settings(conf) == ("/x.sock", 2.5, "0.4.0")
    error = json.loads(client.error_json("1.1.0", 11, 'a "quoted" msg', "d\u00e9tails\n"))
    assert error == {"cniVersion": "1.1.0", "code": 11, "msg": 'a "quoted" msg',
                     "details": "d\u00e9tails\n"}  # fmt: skip


def test_installed_client_starts_on_builtin_modules(installed: str) -> None:
    """What the client imports beyond a bare interpreter: C modules and its own, as bytecode."""

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, "-IS", *args], capture_output=True, text=True,
                              env={"CNI_COMMAND": "VERSION"}, input="{}").stderr  # fmt: skip

    def imported(*args: str) -> set[str]:
        return {line.split("|")[-1].strip() for line in run("-X", "importtime", *args).splitlines()
                if line.startswith("import time:") and "|" in line} - {"package"}  # fmt: skip

    bare = imported("-c", "import sys")
    assert imported(installed) - bare <= {"_socket", "_json", "time", "posix", "cni", "cni.client"}
    first = Path(installed).read_text().splitlines()[0]
    assert first == f"#!{sys.executable} -IS"
    # cni/client.py itself is not compiled at every start (a first run may cache its bytecode)
    run(installed)
    assert f"code object from '{cache_from_source(client.__file__)}'" in run("-v", installed)


def test_a_moved_installation_is_the_specs_error(tmp_path: Path) -> None:
    exe = tmp_path / "vxflow"
    exe.write_text(launcher(tmp_path / "gone"))
    exe.chmod(0o755)
    res = call(str(exe), "ADD", {"cniVersion": "1.0.0"})
    assert res.returncode == 1 and json.loads(res.stdout)["code"] == 5, res
    assert f"no longer installed in {tmp_path / 'gone'}" in res.stdout and not res.stderr


def test_calls_served_by_the_server(installed: str, server: CniServer, tmp_path: Path) -> None:
    assert os.stat(server.path).st_mode & 0o777 == 0o600
    assert os.stat(server.path.parent).st_mode & 0o777 == 0o700
    conf = {"cniVersion": "1.1.0", "name": "vxnet", "agentSocket": str(server.path),
            "subnetFile": str(tmp_path / "none.env")}  # fmt: skip
    res = call(installed, "VERSION", conf)
    assert res.returncode == 0 and json.loads(res.stdout)["cniVersion"] == "1.1.0"
    assert "in-process" not in res.stderr and server.served == 1
    res = call(installed, "STATUS", conf)  # no subnet.env: not available, as in-process
    assert res.returncode == 1 and json.loads(res.stdout)["code"] == 50, res.stdout
    assert server.served == 2
    plain = subprocess.run([str(Path(sys.executable).parent / "vxflow-cni")],
                           input=json.dumps(conf), capture_output=True, text=True,
                           env={**os.environ, "CNI_COMMAND": "STATUS"})  # fmt: skip
    assert (plain.returncode, plain.stdout) == (res.returncode, res.stdout)
    server.stop()
    assert not server.path.exists()
    res = call(installed, "VERSION", conf)
    assert res.returncode == 0 and "VERSION in-process: no agent" in res.stderr
    assert server.served == 2


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(server: CniServer) -> None:
    second = CniServer(server.path)
    assert not second.start()  # the first one still answers there
    second.stop()
    assert server.path.exists()
    server.stop()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(server.path))  # left by an agent that was killed
    stale.close()
    third = CniServer(server.path)
    try:
        assert third.start()
    finally:
        third.stop()


def test_no_answer_in_time_is_try_again_later(installed: str, tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # takes calls, never answers
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)
    with silent:
        conf = {"cniVersion": "0.4.0", "agentSocket": str(tmp_path / "silent.sock"),
                "agentTimeout": 0.3}  # fmt: skip
        start = time.monotonic()
        res = call(installed, "DEL", conf, CNI_CONTAINERID="c1", CNI_IFNAME="eth0")
        assert time.monotonic() - start < 5
    assert res.returncode == 1
    error = json.loads(res.stdout)
    assert (error["cniVersion"], error["code"]) == ("0.4.0", 11)
    assert error["msg"] == "the vxflow agent did not answer", error


def test_an_agent_gone_mid_call_is_replaced_by_the_plugin(installed: str, tmp_path: Path) -> None:
    """The connection closes without an answer: the client runs the call itself."""
    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dying.bind(str(tmp_path / "dying.sock"))
    dying.listen(1)

    def take_and_die() -> None:
        conn, _ = dying.accept()
        with conn:
            conn.recv(65536)

    thread = threading.Thread(target=take_and_die)
    thread.start()
    with dying:
        conf = {"cniVersion": "1.0.0", "agentSocket": str(tmp_path / "dying.sock")}
        res = call(installed, "VERSION", conf)
        thread.join()
    assert res.returncode == 0 and json.loads(res.stdout)["cniVersion"] == "1.0.0"
    assert "went away" in res.stderr and "running VERSION in-process" in res.stderr
