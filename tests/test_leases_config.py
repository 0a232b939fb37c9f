"""flannel's network config: defaults and rejections, as flannel's CheckNetworkConfig."""

from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest

from leases.config import ConfigError, config_to_json, leasable, parse_config, subnet_range
from leases.model import BackendConfig

SEED = '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'


def test_seed_config_gets_flannels_defaults() -> None:
    cfg = parse_config(SEED)
    assert cfg.network == IPv4Network("10.20.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Network("10.20.1.0/24")  # the second subnet
    assert cfg.subnet_max == IPv4Network("10.20.255.0/24")  # the last subnet
    assert cfg.backend == BackendConfig(type="vxlan", vni=1, port=8472, mtu=None)


@pytest.mark.parametrize(
    ("network", "subnet_len"),
    [("10.0.0.0/8", 24), ("10.20.0.0/22", 24), ("10.20.0.0/24", 26), ("10.20.0.0/28", 30)],
)
def test_default_subnet_len_follows_flannel(network: str, subnet_len: int) -> None:
    cfg = parse_config(json.dumps({"Network": network, "Backend": {"Type": "vxlan"}}))
    assert cfg.subnet_len == subnet_len


def test_explicit_fields_and_bytes_input() -> None:
    raw = json.dumps(
        {
            "Network": "198.19.0.0/16",
            "SubnetLen": 22,
            "SubnetMin": "198.19.8.0",
            "SubnetMax": "198.19.20.0",
            "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "MTU": 1400, "GBP": False},
        }
    ).encode()
    cfg = parse_config(raw)
    assert (cfg.subnet_min, cfg.subnet_max) == (
        IPv4Network("198.19.8.0/22"),
        IPv4Network("198.19.20.0/22"),
    )
    assert cfg.backend == BackendConfig(vni=42, port=4789, mtu=1400)
    assert subnet_range(cfg) == (int(IPv4Network("198.19.8.0/22").network_address), 1024, 4)
    assert leasable(cfg, IPv4Network("198.19.20.0/22"))
    assert not leasable(cfg, IPv4Network("198.19.24.0/22"))
    assert not leasable(cfg, IPv4Network("198.19.8.0/24"))


def test_config_to_json_round_trips_with_flannel_field_names() -> None:
    cfg = parse_config(SEED)
    text = config_to_json(cfg)
    assert json.loads(text) == {
        "Network": "10.20.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "10.20.1.0",
        "SubnetMax": "10.20.255.0",
        "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472},
    }
    assert parse_config(text) == cfg


BASE = {"Network": "10.20.0.0/16", "Backend": {"Type": "vxlan"}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Network": None}, "Network"),
        ({"Network": "10.20.0.0"}, "Network"),  # no prefix length is a /32: too small
        ({"Network": "not-a-cidr"}, "Network"),
        ({"Network": 10}, "Network"),
        ({"Network": "10.20.0.0/29"}, "Network"),
        ({"SubnetLen": 17}, "SubnetLen"),  # not 2 bits longer than /16
        ({"SubnetLen": 31}, "SubnetLen"),
        ({"SubnetLen": "24"}, "SubnetLen"),
        ({"SubnetLen": True}, "SubnetLen"),
        ({"SubnetMin": "10.21.0.0"}, "SubnetMin"),  # outside Network
        ({"SubnetMax": "192.168.0.0"}, "SubnetMax"),
        ({"SubnetMin": "10.20.1.5"}, "SubnetMin"),  # not on a SubnetLen boundary
        ({"SubnetMin": "10.20.9.0", "SubnetMax": "10.20.3.0"}, "SubnetMin"),
        ({"SubnetMin": "banana"}, "SubnetMin"),
        ({"Backend": None}, "Backend"),
        ({"Backend": "vxlan"}, "Backend"),
        ({"Backend": {"Type": "udp"}}, "Backend.Type"),
        ({"Backend": {"Type": "host-gw"}}, "Backend.Type"),
        ({"Backend": {}}, "Backend.Type"),
        ({"Backend": {"Type": "vxlan", "VNI": -1}}, "Backend.VNI"),
        ({"Backend": {"Type": "vxlan", "VNI": 1 << 24}}, "Backend.VNI"),
        ({"Backend": {"Type": "vxlan", "VNI": "1"}}, "Backend.VNI"),
        ({"Backend": {"Type": "vxlan", "Port": 70000}}, "Backend.Port"),
        ({"Backend": {"Type": "vxlan", "MTU": 100}}, "Backend.MTU"),
        ({"EnableIPv6": True}, "EnableIPv6"),
        ({"EnableIPv4": False}, "EnableIPv4"),
    ],
)
def test_rejections_name_the_field(change: dict, field: str) -> None:
    obj = {**BASE, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps(obj))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe", "{not json", "[1, 2]", '"10.20.0.0/16"', "", "[" * 5000]
)
def test_unparseable_config_is_a_config_error(raw: bytes | str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.field == "config"
    assert isinstance(info.value, ValueError)
