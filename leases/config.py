"""flannel's network config (`<prefix>/config`): parse, validate, fill defaults, serialise.

Follows flannel's ParseConfig + CheckNetworkConfig (pkg/subnet/config.go):
same defaults, same rejections, each naming the field an operator must fix.
vxflow only speaks IPv4 and the vxlan backend, so it rejects the rest instead
of guessing.
"""

from __future__ import annotations

import json
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any

from leases.model import DEFAULT_VNI, DEFAULT_VXLAN_PORT, BackendConfig, NetworkConfig

MAX_VNI = (1 << 24) - 1
MIN_MTU = 576  # RFC 791's minimum reassembly size; less cannot carry the overlay's traffic
MAX_MTU = 65535


class ConfigError(ValueError):
    """The network config is unusable; `field` names the flannel field at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _int(obj: dict[str, Any], name: str, field: str, default: int) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer, got {json.dumps(value)}")
    return value


def _address(obj: dict[str, Any], name: str) -> IPv4Address | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(name, f"must be an IPv4 address string, got {json.dumps(value)}")
    try:
        return IPv4Address(value)
    except AddressValueError as exc:
        raise ConfigError(name, f"not an IPv4 address: {value!r}") from exc


def _network(obj: dict[str, Any]) -> IPv4Network:
    value = obj.get("Network")
    if value is None or value == "":
        raise ConfigError("Network", "missing: define the overlay's IPv4 CIDR, e.g. 10.20.0.0/16")
    if not isinstance(value, str):
        raise ConfigError("Network", f"must be a CIDR string, got {json.dumps(value)}")
    try:
        return IPv4Network(value, strict=False)  # flannel masks host bits too
    except (AddressValueError, NetmaskValueError, ValueError) as exc:
        raise ConfigError("Network", f"not an IPv4 CIDR: {value!r}") from exc


def _subnet_len(obj: dict[str, Any], network: IPv4Network) -> int:
    subnet_len = _int(obj, "SubnetLen", "SubnetLen", 0)
    if subnet_len < 0:
        raise ConfigError("SubnetLen", f"must not be negative, got {subnet_len}")
    if subnet_len == 0:  # flannel's default: /24 when that leaves room for 4 subnets
        if network.prefixlen > 28:
            raise ConfigError("Network", "too small: the minimum useful prefix is /28")
        return 24 if network.prefixlen <= 22 else network.prefixlen + 2
    if subnet_len > 30:
        raise ConfigError("SubnetLen", f"must be /30 or shorter, got {subnet_len}")
    if subnet_len < network.prefixlen + 2:
        raise ConfigError(
            "SubnetLen",
            f"/{subnet_len} must be at least 2 bits longer than Network's /{network.prefixlen}"
            " (the network must hold at least four subnets)",
        )
    return subnet_len


def _bound(
    obj: dict[str, Any], name: str, network: IPv4Network, subnet_len: int, default: IPv4Address
) -> IPv4Network:
    addr = _address(obj, name) or default
    if addr not in network:
        raise ConfigError(name, f"{addr} is not in the range of Network {network}")
    subnet = IPv4Network(f"{addr}/{subnet_len}", strict=False)
    if subnet.network_address != addr:
        raise ConfigError(name, f"{addr} is not on a /{subnet_len} (SubnetLen) boundary")
    return subnet


def _backend(obj: dict[str, Any]) -> BackendConfig:
    backend = obj.get("Backend")
    if backend is None:
        raise ConfigError(
            "Backend", 'missing (flannel would use "udp"); vxflow needs {"Type": "vxlan"}'
        )
    if not isinstance(backend, dict):
        raise ConfigError("Backend", f"must be an object, got {json.dumps(backend)}")
    btype = backend.get("Type")
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
    mtu = backend.get("MTU")
    if mtu is not None:
        mtu = _int(backend, "MTU", "Backend.MTU", 0)
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigError("Backend.MTU", f"must be in {MIN_MTU}..{MAX_MTU}, got {mtu}")
    return BackendConfig(type="vxlan", vni=vni, port=port, mtu=mtu)


def parse_config(raw: bytes | str) -> NetworkConfig:
    """Parse and validate `<prefix>/config` as flannel does; raise ConfigError naming the field."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("config", "not UTF-8 text") from exc
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError("config", f"not valid JSON: {exc}") from exc
    except RecursionError:
        raise ConfigError("config", "not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ConfigError("config", "must be a JSON object")
    if obj.get("EnableIPv4", True) is not True:
        raise ConfigError("EnableIPv4", "vxflow needs IPv4 enabled")
    if obj.get("EnableIPv6", False) is not False:
        raise ConfigError("EnableIPv6", "IPv6 overlays are not supported by vxflow")
    network = _network(obj)
    subnet_len = _subnet_len(obj, network)
    size = 1 << (32 - subnet_len)
    subnet_min = _bound(obj, "SubnetMin", network, subnet_len, network.network_address + size)
    subnet_max = _bound(obj, "SubnetMax", network, subnet_len, network.broadcast_address + 1 - size)
    if subnet_min.network_address > subnet_max.network_address:
        raise ConfigError("SubnetMin", f"{subnet_min.network_address} is above SubnetMax")
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=_backend(obj),
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
    obj: dict[str, Any] = {"Network": str(cfg.network), "SubnetLen": cfg.subnet_len}
    if cfg.subnet_min is not None:
        obj["SubnetMin"] = str(cfg.subnet_min.network_address)
    if cfg.subnet_max is not None:
        obj["SubnetMax"] = str(cfg.subnet_max.network_address)
    obj["Backend"] = backend
    return json.dumps(obj)


def subnet_range(cfg: NetworkConfig) -> tuple[int, int, int]:
    """(first network address, step, count) of the leasable subnets [SubnetMin, SubnetMax]."""
    assert cfg.subnet_min is not None and cfg.subnet_max is not None, "parse_config fills them"
    step = 1 << (32 - cfg.subnet_len)
    first = int(cfg.subnet_min.network_address)
    return first, step, (int(cfg.subnet_max.network_address) - first) // step + 1


def leasable(cfg: NetworkConfig, subnet: IPv4Network) -> bool:
    """flannel's isSubnetConfigCompat: a subnet this config would hand out."""
    first, step, count = subnet_range(cfg)
    return (
        subnet.prefixlen == cfg.subnet_len
        and first <= int(subnet.network_address) < first + step * count
    )
