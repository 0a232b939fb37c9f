"""flannel's network config (`<prefix>/config`): parse, validate, fill defaults, serialise.

Follows flannel's ParseConfig + CheckNetworkConfig (pkg/subnet/config.go):
same defaults, same rejections, each naming the field an operator must fix,
for IPv4 and (with EnableIPv6) IPv6 alike. vxflow only speaks the vxlan backend
and needs IPv4 enabled, so it rejects the rest instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from leases.model import (
    DEFAULT_VNI,
    DEFAULT_VXLAN_PORT,
    BackendConfig,
    FamilyConfig,
    NetworkConfig,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

MAX_VNI = (1 << 24) - 1
MIN_MTU = 576  # RFC 791's minimum reassembly size; less cannot carry the overlay's traffic
MAX_MTU = 65535


class ConfigError(ValueError):
    """The network config is unusable; `field` names the flannel field at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _int(obj: dict[str, Any], name: str, field: str, default: int) -> int:
    value = obj.get(name.casefold(), default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer, got {json.dumps(value)}")
    return value


def _flag(obj: dict[str, Any], name: str, default: bool, field: str = "") -> bool:
    value = obj.get(name.casefold(), default)
    if not isinstance(value, bool):
        raise ConfigError(field or name, f"must be true or false, got {json.dumps(value)}")
    return value


@dataclass(frozen=True)
class Family:
    """One address family's config fields and flannel's limits for them: both families go
    through the same functions, told apart only by this."""

    version: int
    prefix: str  # "" or "IPv6": the field names are <prefix>Network, <prefix>SubnetLen, ...
    max_subnet_len: int  # a subnet needs room for a gateway and a pod
    default_subnet_len: int  # when the network is big enough for four of them
    min_prefix: int  # the smallest network flannel picks a default SubnetLen for
    example: str

    @property
    def bits(self) -> int:
        return 32 if self.version == 4 else 128

    def field(self, name: str) -> str:
        return f"{self.prefix}{name}"


IPV4 = Family(4, "", 30, 24, 28, "10.20.0.0/16")
IPV6 = Family(6, "IPv6", 126, 64, 124, "fc00::/48")


def _address(obj: dict[str, Any], name: str, version: int = 4) -> IPAddress | None:
    value = obj.get(name.casefold())
    if value is None or value == "":
        return None
    kind = f"IPv{version} address"
    if not isinstance(value, str):
        raise ConfigError(name, f"must be an {kind} string, got {json.dumps(value)}")
    try:
        addr = ip_address(value)
    except ValueError as exc:
        raise ConfigError(name, f"not an {kind}: {value!r}") from exc
    if addr.version != version:
        raise ConfigError(name, f"not an {kind}: {value!r}")
    return addr


def _network(obj: dict[str, Any], fam: Family) -> IPNetwork:
    name = fam.field("Network")
    value = obj.get(name.casefold())
    if value is None or value == "":
        raise ConfigError(
            name, f"missing: define the overlay's IPv{fam.version} CIDR, e.g. {fam.example}"
        )
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a CIDR string, got {json.dumps(value)}")
    try:
        network = ip_network(value, strict=False)  # flannel masks host bits too
    except ValueError as exc:
        raise ConfigError(name, f"not an IPv{fam.version} CIDR: {value!r}") from exc
    if network.version != fam.version:
        raise ConfigError(name, f"not an IPv{fam.version} CIDR: {value!r}")
    return network


def _subnet_len(obj: dict[str, Any], network: IPNetwork, fam: Family) -> int:
    name = fam.field("SubnetLen")
    subnet_len = _int(obj, name, name, 0)
    if subnet_len < 0:
        raise ConfigError(name, f"must not be negative, got {subnet_len}")
    if subnet_len == 0:  # flannel's default: its usual size when that leaves room for 4 subnets
        if network.prefixlen > fam.min_prefix:
            raise ConfigError(
                fam.field("Network"), f"too small: the minimum useful prefix is /{fam.min_prefix}"
            )
        if network.prefixlen <= fam.default_subnet_len - 2:
            return fam.default_subnet_len
        return network.prefixlen + 2
    if subnet_len > fam.max_subnet_len:
        raise ConfigError(name, f"must be /{fam.max_subnet_len} or shorter, got {subnet_len}")
    if subnet_len < network.prefixlen + 2:
        raise ConfigError(
            name,
            f"/{subnet_len} must be at least 2 bits longer than {fam.field('Network')}'s"
            f" /{network.prefixlen} (the network must hold at least four subnets)",
        )
    return subnet_len


def _bound(
    obj: dict[str, Any],
    name: str,
    network: IPNetwork,
    subnet_len: int,
    default: IPAddress,
    fam: Family,
) -> IPNetwork:
    addr = _address(obj, name, fam.version) or default
    if addr not in network:
        raise ConfigError(name, f"{addr} is not in the range of {fam.field('Network')} {network}")
    subnet = ip_network(f"{addr}/{subnet_len}", strict=False)
    if subnet.network_address != addr:
        raise ConfigError(
            name, f"{addr} is not on a /{subnet_len} ({fam.field('SubnetLen')}) boundary"
        )
    return subnet


def _family(obj: dict[str, Any], fam: Family) -> FamilyConfig:
    """One family's Network, SubnetLen, SubnetMin and SubnetMax, as CheckNetworkConfig."""
    network = _network(obj, fam)
    subnet_len = _subnet_len(obj, network, fam)
    size = 1 << (fam.bits - subnet_len)
    lo_name, hi_name = fam.field("SubnetMin"), fam.field("SubnetMax")
    subnet_min = _bound(obj, lo_name, network, subnet_len, network.network_address + size, fam)
    subnet_max = _bound(
        obj, hi_name, network, subnet_len, network.broadcast_address - size + 1, fam
    )
    if subnet_min.network_address > subnet_max.network_address:
        raise ConfigError(lo_name, f"{subnet_min.network_address} is above {hi_name}")
    return FamilyConfig(network, subnet_len, subnet_min, subnet_max)


def _backend(obj: dict[str, Any]) -> BackendConfig:
    backend = obj.get("backend")
    if backend is None:
        raise ConfigError(
            "Backend", 'missing (flannel would use "udp"); vxflow needs {"Type": "vxlan"}'
        )
    if not isinstance(backend, dict):
        raise ConfigError("Backend", f"must be an object, got {json.dumps(backend)}")
    btype = backend.get("type")
    if btype != "vxlan":
        raise ConfigError(
            "Backend.Type", f'unsupported backend {json.dumps(btype)}; vxflow needs "vxlan"'
        )
    vni = _int(backend, "VNI", "Backend.VNI", DEFAULT_VNI)
    if not 0 <= vni <= MAX_VNI:
        raise ConfigError("Backend.VNI", f"must be in 0..{MAX_VNI}, got {vni}")
    port = _int(backend, "Port", "Backend.Port", 0) or DEFAULT_VXLAN_PORT  # 0: kernel default
    if not 0 < port <= 65535:
        raise ConfigError("Backend.Port", f"must be a UDP port 1..65535, got {port}")
    mtu = backend.get("mtu")
    if mtu is not None:
        mtu = _int(backend, "MTU", "Backend.MTU", 0)
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigError("Backend.MTU", f"must be in {MIN_MTU}..{MAX_MTU}, got {mtu}")
    direct = _flag(backend, "DirectRouting", False, "Backend.DirectRouting")
    return BackendConfig(type="vxlan", vni=vni, port=port, mtu=mtu, direct_routing=direct)


def _fold(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object keyed by case-folded names, the last of equal ones winning: Go's
    encoding/json matches a struct's fields so, and flannel reads its config with it."""
    return {name.casefold(): value for name, value in pairs}


def parse_config(raw: bytes | str) -> NetworkConfig:
    """Parse and validate `<prefix>/config` as flannel does; raise ConfigError naming the field.

    Keys match regardless of case, as in flannel. IPv4 must stay enabled (vxflow's
    keys and flows are built on each node's IPv4 subnet); EnableIPv6 adds the IPv6
    fields, checked by the same rules with IPv6's limits.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("config", "not UTF-8 text") from exc
    try:
        obj = json.loads(raw, object_pairs_hook=_fold)
    except json.JSONDecodeError as exc:
        raise ConfigError("config", f"not valid JSON: {exc}") from exc
    except RecursionError:
        raise ConfigError("config", "not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ConfigError("config", "must be a JSON object")
    if not _flag(obj, "EnableIPv4", True):
        raise ConfigError("EnableIPv4", "vxflow needs IPv4 enabled")
    v4 = _family(obj, IPV4)
    return NetworkConfig(
        network=v4.network,
        subnet_len=v4.subnet_len,
        subnet_min=v4.subnet_min,
        subnet_max=v4.subnet_max,
        backend=_backend(obj),
        ipv6=_family(obj, IPV6) if _flag(obj, "EnableIPv6", False) else None,
    )


def config_to_json(cfg: NetworkConfig) -> str:
    """The config in flannel's field names, defaults written out (parses back to `cfg`)."""
    backend: dict[str, Any] = {
        "Type": cfg.backend.type,
        "VNI": cfg.backend.vni,
        "Port": cfg.backend.port,
    }
    if cfg.backend.mtu is not None:
        backend["MTU"] = cfg.backend.mtu
    if cfg.backend.direct_routing:  # written only when on: a config without it stays as it was
        backend["DirectRouting"] = True
    obj: dict[str, Any] = {}
    if cfg.ipv6 is not None:  # an IPv4-only config is written as before, without these
        obj.update(EnableIPv4=True, EnableIPv6=True)
    for fam, values in ((IPV4, cfg.v4), (IPV6, cfg.ipv6)):
        if values is not None:
            obj[fam.field("Network")] = str(values.network)
            obj[fam.field("SubnetLen")] = values.subnet_len
            obj[fam.field("SubnetMin")] = str(values.subnet_min.network_address)
            obj[fam.field("SubnetMax")] = str(values.subnet_max.network_address)
    obj["Backend"] = backend
    return json.dumps(obj)


def subnet_range(fam: FamilyConfig | NetworkConfig) -> tuple[int, int, int]:
    """(first network address, step, count) of the leasable subnets [SubnetMin, SubnetMax]
    of one family (a NetworkConfig: its IPv4 one)."""
    assert fam.subnet_min is not None and fam.subnet_max is not None, "parse_config fills them"
    step = 1 << (fam.network.max_prefixlen - fam.subnet_len)
    first = int(fam.subnet_min.network_address)
    return first, step, (int(fam.subnet_max.network_address) - first) // step + 1


def leasable(fam: FamilyConfig | NetworkConfig, subnet: IPNetwork) -> bool:
    """flannel's isSubnetConfigCompat / isIPv6SubnetConfigCompat: a subnet this family's
    config would hand out."""
    first, step, count = subnet_range(fam)
    return (
        subnet.version == fam.network.version
        and subnet.prefixlen == fam.subnet_len
        and first <= int(subnet.network_address) < first + step * count
    )


def ipv6_notice(config: NetworkConfig) -> str | None:
    """What a daemon logs, once, on a dual-stack config (None for IPv4 only): where its
    dual stack differs from flannel's, which an operator moving from flannel must know
    before relying on it: the pods' MTU leaves room for the IPv6 outer header."""
    if config.ipv6 is None:
        return None
    return (
        f"EnableIPv6: IPv6Network {config.ipv6.network} is routed between pods and nodes, "
        "with services, network policy and direct routes as for IPv4; a node that tunnels "
        "over IPv6 gives its pods the underlay MTU - 70 (flannel: - 50), room for the IPv6 "
        "outer header"
    )
