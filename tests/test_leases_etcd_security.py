"""etcd with TLS, --client-cert-auth and auth on (a role limited to the network's prefix):
the CLI, the agent and the controller work with the right credentials and fail with one
clear line with wrong or missing ones, never a traceback and never "no leases"."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from daemons.processes import stop_process
from leases.errors import EtcdAccessDenied
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.registry import Registry
from tests.ofharness import FUNCTIONAL_WAIT
from tests.security import ETCD_PASSWORD, ETCD_USER, Pki, etcd_env, locked_etcd, make_pki
from vxflow.cli import cli

PREFIX = "/atomic.io/network"
SEED = '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
VXFLOW = str(Path(sys.executable).with_name("vxflow"))

pytestmark = pytest.mark.integration


@pytest.fixture
def ca(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def etcd(ca: Pki) -> Iterator[EtcdServer]:
    server = locked_etcd(ca, PREFIX, auth_token_ttl=2)
    try:
        yield server
    finally:
        server.stop()


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    env = {"FLANNELD_ETCD_PREFIX": PREFIX, **env}
    return CliRunner().invoke(cli, ["--log-level", "error", *args], env=env, input=stdin)


def assert_one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for needle in needles:
        assert needle in lines[0], lines
    return lines[0]


def test_cli_works_with_the_right_credentials(etcd: EtcdServer, ca: Pki, tmp_path: Path) -> None:
    env = etcd_env(etcd, ca.node("198.18.0.1"))
    result = run(env, "config", "set", "-", stdin=SEED)
    assert result.exit_code == 0, result.output
    with Registry(etcd.endpoint, PREFIX, access=etcd.access(ETCD_USER, ETCD_PASSWORD)) as reg:
        reg.acquire("198.18.0.1", "0e:76:c6:12:00:01", ttl=60)
    listed = run(env, "leases", "list")
    assert listed.exit_code == 0, listed.output
    assert "198.18.0.1" in listed.stdout and "1 lease(s)" in listed.stdout
    # the token lapses after 2 s of disuse: the client authenticates again by itself
    time.sleep(3)
    assert run(env, "config", "show").exit_code == 0


def test_wrong_or_missing_credentials_are_one_clear_line(etcd: EtcdServer, ca: Pki) -> None:
    client = ca.node("198.18.0.1")
    good = etcd_env(etcd, client)
    assert run(good, "config", "set", "-", stdin=SEED).exit_code == 0

    wrong = run(etcd_env(etcd, client, password="nope"), "leases", "list")
    assert_one_line_error(wrong, "authentication failed", "--etcd-password")
    missing = run(etcd_env(etcd, client, user=None, password=None), "leases", "list")
    assert_one_line_error(missing, "user name is empty", "--etcd-username")
    # the role grants PREFIX/ only
    other = run({**good, "FLANNELD_ETCD_PREFIX": "/coreos.com/network"}, "config", "show")
    assert_one_line_error(other, "permission denied", "role")
    listing = run({**good, "FLANNELD_ETCD_PREFIX": "/coreos.com/network"}, "leases", "list")
    assert_one_line_error(listing, "permission denied")  # not "0 lease(s)"
    no_password = run(etcd_env(etcd, client, password=None), "leases", "list")
    assert_one_line_error(no_password, "--etcd-username needs --etcd-password")


def test_tls_problems_are_one_clear_line(etcd: EtcdServer, ca: Pki, tmp_path: Path) -> None:
    client = ca.node("198.18.0.1")
    good = etcd_env(etcd, client)
    no_cert = {k: v for k, v in good.items() if k not in ("FLANNELD_ETCD_CERTFILE",
                                                          "FLANNELD_ETCD_KEYFILE")}  # fmt: skip
    assert_one_line_error(run(no_cert, "leases", "list"), "etcd TLS failed", "TLS: ")
    stranger = make_pki(tmp_path / "other-ca")  # a CA etcd does not trust, and etcd not it
    foreign = {**good, "FLANNELD_ETCD_CAFILE": str(stranger.ca)}
    assert_one_line_error(run(foreign, "leases", "list"), "certificate verify failed")
    foreign_client = {**good, **{k: v for k, v in etcd_env(etcd, stranger.node("198.18.0.1"))
                                 .items() if k in ("FLANNELD_ETCD_CERTFILE",
                                                   "FLANNELD_ETCD_KEYFILE")}}  # fmt: skip
    assert_one_line_error(run(foreign_client, "leases", "list"), "etcd TLS failed")
    plain = {**good, "FLANNELD_ETCD_ENDPOINTS": etcd.endpoint.replace("https:", "http:")}
    assert_one_line_error(run(plain, "leases", "list"), "use an https:// URL")
    missing_file = {**good, "FLANNELD_ETCD_CAFILE": str(tmp_path / "absent.pem")}
    assert_one_line_error(run(missing_file, "leases", "list"), "--etcd-cafile", "no such file")
    half = {k: v for k, v in good.items() if k != "FLANNELD_ETCD_KEYFILE"}
    assert_one_line_error(run(half, "leases", "list"), "--etcd-keyfile")


def test_registry_raises_access_denied_not_unavailable(etcd: EtcdServer) -> None:
    with (
        Registry(etcd.endpoint, PREFIX, access=etcd.access(ETCD_USER, "nope")) as reg,
        pytest.raises(EtcdAccessDenied, match="authentication failed"),
    ):
        reg.list_leases()
    with (
        Registry(etcd.endpoint, "/other", access=etcd.access(ETCD_USER, ETCD_PASSWORD)) as reg,
        pytest.raises(EtcdAccessDenied, match="permission denied"),
    ):
        reg.snapshot()


def test_sysconfig_carries_tls_and_credentials(etcd: EtcdServer, ca: Pki, tmp_path: Path) -> None:
    """flannel's sysconfig form: FLANNEL_OPTIONS with -etcd-cafile ... -etcd-password."""
    client = ca.node("198.18.0.1")
    access = etcd.access()
    sysconfig = tmp_path / "flanneld"
    sysconfig.write_text(
        f'FLANNEL_ETCD_ENDPOINTS="{etcd.endpoint}"\n'
        f'FLANNEL_ETCD_PREFIX="{PREFIX}"\n'
        f'FLANNEL_OPTIONS="-etcd-cafile={access.cafile} -etcd-certfile={client.cert} '
        f'-etcd-keyfile={client.key} -etcd-username={ETCD_USER} '
        f'-etcd-password={ETCD_PASSWORD}"\n'
    )
    with Registry(etcd.endpoint, PREFIX, access=etcd.access(ETCD_USER, ETCD_PASSWORD)) as reg:
        reg.set_config(SEED)
        reg.acquire("198.18.0.1", "0e:76:c6:12:00:01", ttl=60)
    result = CliRunner().invoke(
        cli,
        ["--log-level", "error", "bootstrap", "--sysconfig", str(sysconfig), "--public-ip",
         "198.18.0.1", "--ovsdb", "unix:/nonexistent/db.sock", "--dry-run"],
        env={"FLANNELD_ETCD_ENDPOINTS": None, "FLANNELD_ETCD_PREFIX": None},
    )  # fmt: skip
    # etcd answered (config and lease read with the sysconfig's credentials); OVSDB is absent
    assert_one_line_error(result, "cannot connect to OVSDB at unix:/nonexistent/db.sock")
    wrong = sysconfig.read_text().replace(ETCD_PASSWORD, "nope")
    sysconfig.write_text(wrong)
    result = CliRunner().invoke(
        cli,
        ["--log-level", "error", "bootstrap", "--sysconfig", str(sysconfig), "--public-ip",
         "198.18.0.1", "--dry-run"],
        env={"FLANNELD_ETCD_ENDPOINTS": None, "FLANNELD_ETCD_PREFIX": None},
    )  # fmt: skip
    assert_one_line_error(result, "authentication failed")


def test_agent_stops_with_one_line_on_refused_credentials(etcd: EtcdServer, ca: Pki) -> None:
    with Registry(etcd.endpoint, PREFIX, access=etcd.access(ETCD_USER, ETCD_PASSWORD)) as reg:
        reg.set_config(SEED)
    env = {**os.environ, **etcd_env(etcd, ca.node("198.18.0.1"), password="nope"),
           "FLANNELD_ETCD_PREFIX": PREFIX}  # fmt: skip
    res = subprocess.run(
        [VXFLOW, "agent", "--public-ip", "198.18.0.1", "--ovsdb", "unix:/nonexistent/db.sock"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: etcd https://"), res.stderr
    assert "authentication failed" in res.stderr


def _controller(env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [VXFLOW, "controller", "--port", str(free_loopback_port()), "--etcd-prefix", PREFIX]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})  # fmt: skip


def _wait_in_log(log: Path, text: str, timeout: float = FUNCTIONAL_WAIT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the controller's log:\n{log.read_text()}")


def test_controller_with_right_and_wrong_credentials(
    etcd: EtcdServer, ca: Pki, tmp_path: Path
) -> None:
    with Registry(etcd.endpoint, PREFIX, access=etcd.access(ETCD_USER, ETCD_PASSWORD)) as reg:
        reg.set_config(SEED)
        reg.acquire("198.18.0.1", "0e:76:c6:12:00:01", ttl=60)
    client = ca.server("controller", "127.0.0.1")
    good_log, bad_log = tmp_path / "good.log", tmp_path / "bad.log"
    good = _controller(etcd_env(etcd, client), good_log)
    bad = _controller(etcd_env(etcd, client, password="nope"), bad_log)
    try:
        _wait_in_log(good_log, "registry loaded at revision")
        content = _wait_in_log(bad_log, "authentication failed")
        assert "Traceback" not in content
        assert "registry loaded" not in content  # never "no leases"
        assert "nope" not in content and ETCD_PASSWORD not in good_log.read_text()  # never logged
    finally:
        stop_process(good)
        stop_process(bad)

