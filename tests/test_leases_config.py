"""flannel's network config: defaults and rejections, as flannel's CheckNetworkConfig."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest

from leases.config import (
    ConfigError,
    config_to_json,
    ipv6_notice,
    leasable,
    parse_config,
    subnet_range,
)
from leases.model import BackendConfig, FamilyConfig

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
        ({"Backend": {"Type": "vxlan", "DirectRouting": "true"}}, "Backend.DirectRouting"),
        ({"Backend": {"Type": "vxlan", "directRouting": 1}}, "Backend.DirectRouting"),
        ({"EnableIPv6": True}, "IPv6Network"),  # enabled without a network
        ({"EnableIPv6": "true"}, "EnableIPv6"),
        ({"EnableIPv4": False}, "EnableIPv4"),
        ({"EnableIPv6": True, "IPv6Network": "10.30.0.0/16"}, "IPv6Network"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/125"}, "IPv6Network"),  # too small
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 127}, "IPv6SubnetLen"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 49}, "IPv6SubnetLen"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc01::"},
         "IPv6SubnetMin"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMax": "fc00:0:0:5::1"},
         "IPv6SubnetMax"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "10.20.1.0"},
         "IPv6SubnetMin"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:9::",
          "IPv6SubnetMax": "fc00:0:0:3::"}, "IPv6SubnetMin"),
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


DUAL = {**BASE, "EnableIPv6": True, "IPv6Network": "fc00::/48"}


def test_ipv4_only_config_has_no_ipv6_part() -> None:
    assert parse_config(json.dumps(BASE)).ipv6 is None
    assert parse_config(json.dumps({**BASE, "IPv6Network": "fc00::/48"})).ipv6 is None  # disabled


def test_dual_stack_config_gets_flannels_ipv6_defaults() -> None:
    cfg = parse_config(json.dumps(DUAL))
    assert cfg.ipv6 is not None
    assert cfg.ipv6.network == IPv6Network("fc00::/48")
    assert cfg.ipv6.subnet_len == 64
    assert cfg.ipv6.subnet_min == IPv6Network("fc00:0:0:1::/64")  # the second subnet
    assert cfg.ipv6.subnet_max == IPv6Network("fc00:0:0:ffff::/64")  # the last subnet
    assert cfg.v4 == FamilyConfig(cfg.network, 24, cfg.subnet_min, cfg.subnet_max)
    assert subnet_range(cfg.ipv6) == (int(IPv6Address("fc00:0:0:1::")), 1 << 64, 0xFFFF)
    assert leasable(cfg.ipv6, IPv6Network("fc00:0:0:ffff::/64"))
    assert not leasable(cfg.ipv6, IPv6Network("fc00::/64"))  # the first is not handed out
    assert not leasable(cfg.ipv6, IPv6Network("fc00:0:0:1::/80"))
    assert not leasable(cfg.ipv6, IPv4Network("10.20.1.0/24"))
    assert parse_config(config_to_json(cfg)) == cfg


@pytest.mark.parametrize(
    ("network", "subnet_len"),
    [("fc00::/8", 64), ("fc00::/62", 64), ("fc00::/63", 65), ("fc00::/100", 102),
     ("fc00::/124", 126)],
)  # fmt: skip
def test_default_ipv6_subnet_len_follows_flannel(network: str, subnet_len: int) -> None:
    cfg = parse_config(json.dumps({**DUAL, "IPv6Network": network}))
    assert cfg.ipv6 is not None and cfg.ipv6.subnet_len == subnet_len


def test_explicit_ipv6_fields() -> None:
    cfg = parse_config(
        json.dumps(
            {**DUAL, "IPv6SubnetLen": 56, "IPv6SubnetMin": "fc00:0:0:100::",
             "IPv6SubnetMax": "fc00:0:0:400::"}
        )
    )
    assert cfg.ipv6 is not None
    assert (cfg.ipv6.subnet_len, cfg.ipv6.subnet_min, cfg.ipv6.subnet_max) == (
        56, IPv6Network("fc00:0:0:100::/56"), IPv6Network("fc00:0:0:400::/56"))  # fmt: skip
    assert subnet_range(cfg.ipv6)[2] == 4


def test_keys_match_regardless_of_case_as_in_go() -> None:
    """Go's encoding/json (flannel's reader) matches field names case-insensitively, the
    last of two spellings winning; nested Backend fields too."""
    raw = (
        '{"network": "10.30.0.0/16", "NETWORK": "10.20.0.0/16", "subnetlen": 26,'
        ' "enableipv6": true, "ipv6network": "fc00::/48", "IPV6SUBNETLEN": 80,'
        ' "backend": {"type": "vxlan", "vni": 7, "PORT": 4789}}'
    )
    cfg = parse_config(raw)
    assert cfg.network == IPv4Network("10.20.0.0/16")
    assert cfg.subnet_len == 26
    assert cfg.backend == BackendConfig(vni=7, port=4789)
    assert cfg.ipv6 is not None
    assert (cfg.ipv6.network, cfg.ipv6.subnet_len) == (IPv6Network("fc00::/48"), 80)


@pytest.mark.parametrize("key", ["DirectRouting", "directRouting", "directrouting", "DIRECTROUTING"])
def test_direct_routing_is_read_in_any_case_and_written_only_when_on(key: str) -> None:
    """flannel's vxlan backend reads `directRouting` through Go's encoding/json: any case."""
    cfg = parse_config(json.dumps({**BASE, "Backend": {"Type": "vxlan", key: True}}))
    assert cfg.backend.direct_routing
    assert json.loads(config_to_json(cfg))["Backend"]["DirectRouting"] is True
    assert parse_config(config_to_json(cfg)) == cfg
    off = parse_config(json.dumps({**BASE, "Backend": {"Type": "vxlan", key: False}}))
    assert not off.backend.direct_routing
    assert "DirectRouting" not in json.loads(config_to_json(off))["Backend"]
    assert not parse_config(json.dumps(BASE)).backend.direct_routing  # flannel's default


def test_ipv6_notice_only_for_dual_stack() -> None:
    assert ipv6_notice(parse_config(json.dumps(BASE))) is None
    notice = ipv6_notice(parse_config(json.dumps(DUAL)))
    assert notice is not None and "fc00::/48" in notice and "direct routes as for IPv4" in notice
    assert "MTU - 70" in notice
