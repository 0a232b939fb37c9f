"""flannel's subnet.env: exact text, atomic replacement, read back for subnet reuse."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from leases.config import parse_config
from leases.model import Lease
from leases.subnet_env import (
    SubnetEnv,
    overlay_mtu,
    previous_subnet,
    read_subnet_env,
    render,
    subnet_env_for,
    write_subnet_env,
)

SEED = parse_config(
    '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
)
LEASE = Lease(IPv4Network("10.20.52.0/24"), IPv4Address("10.140.0.4"), 1, "2e:83:84:1b:95:e4")


def test_text_is_flannels() -> None:
    env = subnet_env_for(SEED, LEASE, overlay_mtu(SEED, 1500))
    assert render(env) == (
        "FLANNEL_NETWORK=10.20.0.0/16\n"
        "FLANNEL_SUBNET=10.20.52.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_backend_mtu_wins_over_underlay() -> None:
    cfg = parse_config('{"Network": "10.20.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1400}}')
    assert overlay_mtu(cfg, 9000) == 1400
    assert overlay_mtu(cfg, 9000, ipv6=True) == 1400


def test_a_node_tunnelling_over_ipv6_leaves_room_for_its_longer_header() -> None:
    assert (overlay_mtu(SEED, 1500), overlay_mtu(SEED, 1500, ipv6=True)) == (1450, 1430)


def test_atomic_write_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "subnet.env"
    env = subnet_env_for(SEED, LEASE, 1450, ipmasq=True)
    write_subnet_env(path, env)
    assert read_subnet_env(path) == env
    assert previous_subnet(path) == IPv4Network("10.20.52.0/24")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    other = SubnetEnv(IPv4Network("10.20.0.0/16"), IPv4Interface("10.20.9.1/24"), 1450, False)
    write_subnet_env(path, other)
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert read_subnet_env(path) == other
    assert os.listdir(path.parent) == ["subnet.env"]  # no temporary files left behind


def test_missing_or_malformed_file_means_no_previous_subnet(tmp_path: Path) -> None:
    assert previous_subnet(tmp_path / "absent.env") is None
    bad = tmp_path / "bad.env"
    bad.write_text("FLANNEL_NETWORK=10.20.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1450\n")
    assert read_subnet_env(bad) is None
    assert previous_subnet(bad) is None
