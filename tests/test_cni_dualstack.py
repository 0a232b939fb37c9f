"""vxflow-cni on a dual-stack node (subnet.env with FLANNEL_IPV6_*): one ADD gives the pod an
address of each family from host-local's two range sets (flannel's delegation), the routes
to both networks and a port the agent publishes both from; CHECK and DEL cover both."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Interface, IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from cni.attachments import host_ifname
from leases.subnet_env import SubnetEnv, write_subnet_env
from tests.cni_node import NETWORK, SUBNET, CniNode, bootstrapped
from tests.emulation import Underlay

NETWORK6 = IPv6Network("fd00:198:19::/48")
SUBNET6 = IPv6Network("fd00:198:19:7::/64")

pytestmark = pytest.mark.integration


@pytest.fixture
def cni(underlay: Underlay, tmp_path: Path) -> CniNode:
    node = bootstrapped(underlay, tmp_path)
    write_subnet_env(node.subnet_file, SubnetEnv(
        NETWORK, IPv4Interface((SUBNET.network_address + 1, 24)), 1450, False,
        ipv6_network=NETWORK6, ipv6_subnet=IPv6Interface((SUBNET6.network_address + 1, 64))))  # fmt: skip
    return node


def inside(netns: str, *cmd: str) -> str:
    return subprocess.run(["nsenter", f"--net={netns}", *cmd], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def v6_allocations(cni: CniNode) -> list[str]:
    folder = cni.ipam_dir / "vxnet"
    return sorted(p.name for p in folder.glob("fd00*")) if folder.exists() else []


def test_add_check_del_give_and_take_both_families(cni: CniNode) -> None:
    before = cni.state()
    netns = cni.container("c6")
    code, result, err = cni.plugin("ADD", "c6", netns)
    assert code == 0, (result, err)
    assert result["ips"] == [
        {"address": "198.19.7.2/24", "gateway": "198.19.7.1", "interface": 1},
        {"address": "fd00:198:19:7::2/64", "gateway": "fd00:198:19:7::1", "interface": 1},
    ]
    assert result["routes"] == [{"dst": "198.19.0.0/16"}, {"dst": "fd00:198:19::/48"}]
    host = host_ifname("c6", "eth0")
    ids = cni.node.ovs.vsctl("get", "Interface", host, "external_ids")
    assert 'vxflow-ip="198.19.7.2"' in ids and 'vxflow-ipv6="fd00:198:19:7::2"' in ids, ids
    addresses = inside(netns, "ip", "addr", "show", "eth0")
    line = next(x for x in addresses.splitlines() if "fd00:198:19:7::2/64" in x)
    # usable at once: no duplicate address detection to wait for
    assert "scope global nodad" in line and "tentative" not in line, addresses
    routes = inside(netns, "ip", "-6", "route")
    assert "fd00:198:19::/48 via fd00:198:19:7::1 dev eth0" in routes, routes
    assert v6_allocations(cni) == ["fd00:198:19:7::2"]

    conf = {**cni.conf(), "prevResult": result}
    code, out, err = cni.plugin("CHECK", "c6", netns, conf=conf)
    assert (code, out) == (0, None), err
    inside(netns, "ip", "-6", "addr", "del", "fd00:198:19:7::2/64", "dev", "eth0")
    code, out, _ = cni.plugin("CHECK", "c6", netns, conf=conf)
    assert code == 1 and "lacks address fd00:198:19:7::2/64" in out["details"], out

    code, out, err = cni.plugin("DEL", "c6", netns, conf=conf)
    assert (code, out) == (0, None), err
    assert cni.state() == before and v6_allocations(cni) == []


def test_an_ipv6_address_on_an_ipv4_only_node_is_refused(cni: CniNode) -> None:
    cni.write_subnet_env()  # IPv4 only again
    ipam = {"type": "static", "addresses": [{"address": "198.19.7.9/24"},
                                            {"address": "fd00:198:19:7::9/64"}]}  # fmt: skip
    before = cni.state()
    code, out, _ = cni.plugin("ADD", "s6", cni.container("s6"), conf=cni.conf(ipam=ipam))
    assert code == 1 and out["msg"] == "IPAM must return exactly one IPv4 address", out
    assert cni.state() == before
