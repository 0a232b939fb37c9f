"""`vxflow bootstrap` from flags and from etcd (via --sysconfig), dry-run, and its error lines.

Commands that touch a node run inside the emulated node's namespace; the
error cases only reach for loopback addresses nobody listens on.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flows.ports import vtep_mac_for
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.registry import Registry
from ovsdb.cli import resolve_public_ip, resolve_public_ipv6
from tests.emulation import ROOT_UNDERLAY_IP, Node, Underlay
from vxflow.cli import cli

VXFLOW = str(Path(sys.executable).parent / "vxflow")


def vxflow_in(node: Node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", node.netns, VXFLOW, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def node(underlay: Underlay) -> Iterator[Node]:
    yield underlay.add_node()


@pytest.mark.integration
def test_bootstrap_from_flags_dry_run_then_apply(node: Node) -> None:
    args = ["bootstrap", "--network", "198.19.0.0/16", "--subnet", "198.19.4.0/24", "--vni", "9",
            "--public-ip", str(node.underlay_ip), "--ovsdb", node.ovs.db_target]  # fmt: skip
    dry = vxflow_in(node, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("would change: bridge br-int: create (netdev")
    assert any("port vxlan0: create (vxlan, dst_port=8472, key=flow" in x for x in lines)
    assert node.ovs.vsctl("list-br").split() == ["br-phy"]  # nothing was made

    applied = vxflow_in(node, *args)
    assert applied.returncode == 0, applied.stderr
    assert [x.replace("changed: ", "would change: ", 1) for x in applied.stdout.splitlines()][
        :3
    ] == lines[:3]
    assert "changed: kernel: route 198.19.0.0/16 dev vxgw0" in applied.stdout
    assert node.ovs.vsctl("list-br").split() == ["br-int", "br-phy"]

    again = vxflow_in(node, *args)
    assert (again.returncode, again.stdout) == (0, "br-int: no change\n")
    dry_again = vxflow_in(node, *args, "--dry-run")  # what `bootstrap --help` says it prints
    assert (dry_again.returncode, dry_again.stdout) == (0, "br-int: no change\n")
    assert '"BRIDGE: no change" when the node is already right' in " ".join(
        vxflow_in(node, "bootstrap", "--help").stdout.split())  # fmt: skip


@pytest.mark.integration
def test_bootstrap_from_etcd_via_sysconfig(node: Node, tmp_path: Path) -> None:
    with EtcdServer(host=str(ROOT_UNDERLAY_IP)) as etcd:
        prefix = "/atomic.io/network"
        with Registry(f"http://127.0.0.1:{etcd.client_port}", prefix) as registry:
            registry.set_config(
                '{"Network": "198.19.0.0/16", "SubnetLen": 24, '
                '"Backend": {"Type": "vxlan", "VNI": 1, "Port": 4789}}'
            )
            lease = registry.acquire(node.underlay_ip, vtep_mac_for(node.underlay_ip))
        sysconfig = tmp_path / "flanneld"
        sysconfig.write_text(
            "# /etc/sysconfig/flanneld\n"
            f'FLANNEL_ETCD="http://{ROOT_UNDERLAY_IP}:{etcd.client_port}"\n'
            f'FLANNEL_ETCD_KEY="{prefix}"\n'
        )
        res = vxflow_in(node, "bootstrap", "--sysconfig", str(sysconfig),
                        "--public-ip", str(node.underlay_ip), "--ovsdb", node.ovs.db_target)  # fmt: skip
    assert res.returncode == 0, res.stderr
    gw = f"{lease.subnet.network_address + 1}/24"
    assert f"changed: kernel: vxgw0 add address {gw}" in res.stdout
    assert node.ovs.vsctl("get", "Interface", "vxlan0", "options:dst_port").strip() == '"4789"'
    assert IPv4Network(lease.subnet).subnet_of(IPv4Network("198.19.0.0/16"))


def test_unreachable_ovsdb_and_etcd_give_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--public-ip", "198.18.0.77"]
    res = runner.invoke(cli, ["bootstrap", "--network", "198.19.0.0/16", "--subnet",
                              "198.19.4.0/24", "--ovsdb", f"unix:{tmp_path}/none.sock", *common])  # fmt: skip
    assert res.exit_code == 1
    assert f"cannot connect to OVSDB at unix:{tmp_path}/none.sock" in res.output
    dead = f"http://127.0.0.1:{free_loopback_port()}"
    res = runner.invoke(cli, ["bootstrap", "--etcd-endpoints", dead, *common])
    assert res.exit_code == 1
    assert "etcd unreachable" in res.output and "Traceback" not in res.output


def test_settings_precedence_flag_over_env_over_sysconfig(tmp_path: Path) -> None:
    """Which etcd the command tried shows which setting won (all are refused loopback ports)."""
    from_file, from_env, from_flag = (f"http://127.0.0.1:{free_loopback_port()}" for _ in "abc")
    sysconfig = tmp_path / "flanneld"
    sysconfig.write_text(
        f'FLANNEL_ETCD_ENDPOINTS="{from_file}"\nFLANNEL_ETCD_PREFIX="/atomic.io/network"\n'
        "FLANNEL_OPTIONS='--public-ip=198.18.0.77 -v=2'\n"
    )
    runner = CliRunner()
    base = ["bootstrap", "--sysconfig", str(sysconfig)]
    res = runner.invoke(cli, base)
    assert res.exit_code == 1 and from_file in res.output
    res = runner.invoke(cli, base, env={"FLANNELD_ETCD_ENDPOINTS": from_env})
    assert res.exit_code == 1 and from_env in res.output and from_file not in res.output
    res = runner.invoke(cli, [*base, "--etcd-endpoints", from_flag],
                        env={"FLANNELD_ETCD_ENDPOINTS": from_env})  # fmt: skip
    assert res.exit_code == 1 and from_flag in res.output and from_env not in res.output
    bad = tmp_path / "bad"
    bad.write_text("FLANNEL_ETCD_KEY=atomic.io/network\n")  # not an absolute prefix
    res = runner.invoke(cli, ["bootstrap", "--sysconfig", str(bad), "--public-ip", "198.18.0.77"])
    assert res.exit_code == 1 and "etcd prefix must start" in res.output


def test_public_addresses_from_flags_are_checked_per_family() -> None:
    assert resolve_public_ip("198.18.0.77", None) == IPv4Address("198.18.0.77")
    assert resolve_public_ipv6("fd18::77", None) == IPv6Address("fd18::77")
    for resolve, wrong, flag in (
        (resolve_public_ip, "fd18::77", "--public-ip"),
        (resolve_public_ipv6, "198.18.0.77", "--public-ipv6"),
        (resolve_public_ipv6, "fd18::zz", "--public-ipv6"),
    ):
        with pytest.raises(click.BadParameter) as info:
            resolve(wrong, None)
        assert info.value.param_hint == flag
