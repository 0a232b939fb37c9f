"""`vxflow leases list` and `vxflow config show|set` against a real etcd, and their errors."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from leases.etcd_server import EtcdServer
from leases.registry import Registry
from vxflow.cli import cli

PREFIX = "/atomic.io/network"
VXFLOW = str(Path(sys.executable).with_name("vxflow"))
SEED = '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'


def run(etcd: EtcdServer | None, *args: str, stdin: str | None = None) -> Result:
    env = {
        "FLANNELD_ETCD_ENDPOINTS": etcd.endpoint if etcd else "http://127.0.0.1:1",
        "FLANNELD_ETCD_PREFIX": PREFIX,
    }
    return CliRunner().invoke(cli, ["--log-level", "error", *args], env=env, input=stdin)


def as_typed(etcd: EtcdServer, cwd: Path) -> Callable[[str], subprocess.CompletedProcess]:
    """Runs a README line as typed (`vxflow` being this venv's), etcd from the environment
    and the default prefix; it must exit 0."""
    env = {**os.environ, "FLANNELD_ETCD_ENDPOINTS": etcd.endpoint}
    env.pop("FLANNELD_ETCD_PREFIX", None)
    vxflow = str(Path(sys.executable).with_name("vxflow"))

    def typed(line: str) -> subprocess.CompletedProcess:
        out = subprocess.run(shlex.split(line.replace("vxflow", vxflow, 1)), cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out

    return typed


def readme_block(heading: str) -> list[str]:
    """The lines of the first code block under README's `heading`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return readme.split(heading)[1].split("```")[1].strip().splitlines()


def assert_operator_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


@pytest.mark.integration
def test_config_set_validates_then_writes_and_show_prints_it(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    assert_operator_error(run(etcd, "config", "show"), f"no network config at {PREFIX}/config")
    assert_operator_error(run(etcd, "leases", "list"), "no valid network config")

    bad = tmp_path / "bad.json"
    bad.write_text('{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}')
    assert_operator_error(run(etcd, "config", "set", str(bad)), "Backend.Type")
    assert_operator_error(run(etcd, "config", "set", "-", stdin="{oops"), "not valid JSON")
    with Registry(etcd.endpoint, PREFIX) as reg:
        assert reg.etcd.get(reg.keys.config) is None  # nothing was written

    good = tmp_path / "net.json"
    good.write_text(SEED)
    result = run(etcd, "config", "set", str(good))
    assert result.exit_code == 0, result.output
    assert "Network 10.20.0.0/16" in result.stdout

    shown = run(etcd, "config", "show")
    assert shown.exit_code == 0
    assert json.loads(shown.stdout) == {
        "Network": "10.20.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "10.20.1.0",
        "SubnetMax": "10.20.255.0",
        "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472},
    }
    assert run(etcd, "config", "show", "--raw").stdout.strip() == SEED


@pytest.mark.integration
@pytest.mark.random_leases
def test_leases_list_table_and_json(etcd: EtcdServer) -> None:
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config(SEED)
        reg.etcd.put(  # a flannel node's lease, as flannel writes it
            f"{PREFIX}/subnets/10.20.52.0-24",
            '{"PublicIP":"10.140.0.4","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
            lease=reg.etcd.grant(86400),
        )
        reg.etcd.put(f"{PREFIX}/subnets/10.20.53.0-24", "{broken")
        # drawn after the fixed keys exist, so never one of them (the draw is random)
        ours = reg.acquire("10.140.0.6", "02:aa:bb:cc:dd:ee", ttl=600)
        reg.etcd.put(reg.keys.service("bad"), "{broken")  # not a lease: services list's

    table = run(etcd, "leases", "list")  # at --log-level error: the rejection is output
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SUBNET", "PUBLIC-IP", "VTEP-MAC", "VNI", "TTL"]
    rows = {line.split()[0]: line.split() for line in lines[1:-2]}
    assert rows["10.20.52.0/24"][1:4] == ["10.140.0.4", "c6:d2:32:6f:8f:44", "1"]
    assert rows[str(ours.subnet)][1:4] == ["10.140.0.6", "02:aa:bb:cc:dd:ee", "1"]
    assert int(rows[str(ours.subnet)][4].rstrip("s")) > 590
    assert lines[-2].startswith("2 lease(s) at revision ") and lines[-2].endswith("; 1 rejected:")
    assert lines[-1].startswith(f"rejected lease {PREFIX}/subnets/10.20.53.0-24: ")
    assert lines[-1].endswith(" [bad_json]")
    # no log line besides (each command reports its own kind, in its output)
    logged = subprocess.run([VXFLOW, "leases", "list"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FLANNELD_ETCD_ENDPOINTS": etcd.endpoint,
                                 "FLANNELD_ETCD_PREFIX": PREFIX})  # fmt: skip
    assert logged.stdout.splitlines()[-2:] == lines[-2:]  # the rows' TTLs tick meanwhile
    assert "rejected" not in logged.stderr, logged.stderr

    doc = json.loads(run(etcd, "leases", "list", "--output", "json").stdout)
    by_subnet = {item["Subnet"]: item for item in doc["leases"]}
    assert by_subnet["10.20.52.0/24"] == {
        "Subnet": "10.20.52.0/24",
        "Key": f"{PREFIX}/subnets/10.20.52.0-24",
        "PublicIP": "10.140.0.4",
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"},
        "TTL": by_subnet["10.20.52.0/24"]["TTL"],
    }
    assert by_subnet["10.20.52.0/24"]["TTL"] > 86000
    assert doc["rejected"] == [
        {
            "key": f"{PREFIX}/subnets/10.20.53.0-24",
            "kind": "lease",
            "reason": "bad_json",
            "detail": doc["rejected"][0]["detail"],
        }
    ]


def test_unreachable_etcd_is_one_line_not_a_traceback() -> None:
    for args in (("leases", "list"), ("config", "show"), ("leases", "list", "-o", "json")):
        assert_operator_error(run(None, *args), "etcd unreachable: http://127.0.0.1:1")


def test_help_names_flanneld_environment() -> None:
    result = CliRunner().invoke(cli, ["leases", "list", "--help"])
    assert result.exit_code == 0
    assert "FLANNELD_ETCD_ENDPOINTS" in result.output and "FLANNELD_ETCD_PREFIX" in result.output
    bad = CliRunner().invoke(cli, ["config", "show", "--etcd-prefix", "no-slash"])
    assert bad.exit_code == 2 and "--etcd-prefix" in bad.output


@pytest.mark.integration
def test_dual_stack_config_and_leases_show_their_ipv6_half(etcd: EtcdServer, tmp_path: Path) -> None:
    dual = tmp_path / "dual.json"
    dual.write_text(
        '{"Network": "10.20.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48",'
        ' "Backend": {"Type": "vxlan"}}'
    )
    result = run(etcd, "config", "set", str(dual))
    assert result.exit_code == 0, result.output
    assert "IPv6Network fc00::/48, /64 subnets fc00:0:0:1::-64..fc00:0:0:ffff::-64" in result.stdout
    assert "note: EnableIPv6:" in result.stdout and "MTU - 70 (flannel: - 50)" in result.stdout
    shown = json.loads(run(etcd, "config", "show").stdout)
    assert {k: v for k, v in shown.items() if "IPv" in k} == {
        "EnableIPv4": True,
        "EnableIPv6": True,
        "IPv6Network": "fc00::/48",
        "IPv6SubnetLen": 64,
        "IPv6SubnetMin": "fc00:0:0:1::",
        "IPv6SubnetMax": "fc00:0:0:ffff::",
    }
    with Registry(etcd.endpoint, PREFIX) as reg:
        ours = reg.acquire("10.140.0.6", "02:aa:bb:cc:dd:ee", public_ipv6="fd40::6",
                           vtep_mac_v6="02:aa:bb:cc:dd:66", ttl=600)  # fmt: skip
        plain = reg.acquire("10.140.0.7", "02:aa:bb:cc:dd:77", ttl=600)  # no PublicIPv6
    assert ours.ipv6_subnet is not None and plain.ipv6_subnet is None

    lines = run(etcd, "leases", "list").stdout.splitlines()
    assert lines[0].split() == [
        "SUBNET", "PUBLIC-IP", "VTEP-MAC", "IPV6-SUBNET", "PUBLIC-IPV6", "VTEP-MAC-V6", "VNI", "TTL"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows[str(ours.subnet)][1:7] == [
        "10.140.0.6", "02:aa:bb:cc:dd:ee", str(ours.ipv6_subnet), "fd40::6", "02:aa:bb:cc:dd:66",
        "1",
    ]  # fmt: skip
    assert rows[str(plain.subnet)][3:6] == ["-", "-", "-"]

    doc = json.loads(run(etcd, "leases", "list", "--output", "json").stdout)
    item = next(i for i in doc["leases"] if i["Subnet"] == str(ours.subnet))
    assert item["IPv6Subnet"] == str(ours.ipv6_subnet)
    assert item["Key"] == f"{PREFIX}/subnets/{ours.key_name}"
    assert item["PublicIPv6"] == "fd40::6"
    assert item["BackendV6Data"] == {"VNI": 1, "VtepMAC": "02:aa:bb:cc:dd:66"}
    assert "IPv6Subnet" not in next(i for i in doc["leases"] if i["Subnet"] == str(plain.subnet))
