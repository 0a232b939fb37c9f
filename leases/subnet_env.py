"""flannel's subnet.env: what CNI and the container runtime read to wire pods.

Written atomically (temporary file, fsync, rename) so a reader never sees half
a file, and read back on restart so the node asks for its previous subnet.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface
from pathlib import Path

from leases.model import VXLAN6_OVERHEAD, VXLAN_OVERHEAD, Lease, NetworkConfig

log = logging.getLogger(__name__)

DEFAULT_SUBNET_ENV = Path("/run/flannel/subnet.env")  # flanneld's --subnet-file default


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network  # FLANNEL_NETWORK
    subnet: IPv4Interface  # FLANNEL_SUBNET: the node's gateway address / prefix length
    mtu: int  # FLANNEL_MTU (one value for both families, as flannel's)
    ipmasq: bool  # FLANNEL_IPMASQ
    ipv6_network: IPv6Network | None = None  # FLANNEL_IPV6_NETWORK: dual-stack only
    ipv6_subnet: IPv6Interface | None = None  # FLANNEL_IPV6_SUBNET: the IPv6 gateway / length


def overlay_mtu(config: NetworkConfig, underlay_mtu: int, ipv6: bool = False) -> int:
    """The pods' MTU: the config's Backend.MTU, else the underlay's minus VXLAN's 50 bytes,
    or on a node that also tunnels over its IPv6 underlay (`ipv6`) minus 70: the MTU is
    one for both families, and IPv6's outer header is 20 bytes longer. (flannel writes
    the underlay's minus 50 for both, and full-size IPv6 packets then do not fit.)"""
    return config.backend.mtu or underlay_mtu - (VXLAN6_OVERHEAD if ipv6 else VXLAN_OVERHEAD)


def _gateway(subnet: IPv4Network | IPv6Network) -> IPv4Interface | IPv6Interface:
    """flannel's FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET: the subnet's first address, its length."""
    return ip_interface((subnet.network_address + 1, subnet.prefixlen))


def subnet_env_for(
    config: NetworkConfig, lease: Lease, mtu: int, ipmasq: bool = False
) -> SubnetEnv:
    """The file for `lease`; the IPv6 lines when the config and the lease are dual-stack."""
    six = config.ipv6 is not None and lease.ipv6_subnet is not None
    return SubnetEnv(
        config.network,
        _gateway(lease.subnet),
        mtu,
        ipmasq,
        config.ipv6.network if six else None,
        _gateway(lease.ipv6_subnet) if six else None,
    )


def render(env: SubnetEnv) -> str:
    """The file's text, byte for byte as flannel's WriteSubnetFile writes it."""
    six = ""
    if env.ipv6_network is not None and env.ipv6_subnet is not None:
        six = f"FLANNEL_IPV6_NETWORK={env.ipv6_network}\nFLANNEL_IPV6_SUBNET={env.ipv6_subnet}\n"
    return (
        f"FLANNEL_NETWORK={env.network}\n"
        f"FLANNEL_SUBNET={env.subnet}\n"
        f"{six}"
        f"FLANNEL_MTU={env.mtu}\n"
        f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}\n"
    )


def write_subnet_env(path: Path | str, env: SubnetEnv) -> None:
    """Replace `path` atomically with `env` (mode 0644, parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(render(env))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_subnet_env(path: Path | str) -> SubnetEnv | None:
    """The file's values; None if it is missing or unreadable (logged: a node then leases anew)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    try:
        return parse_subnet_env(text)
    except ValueError as exc:
        log.warning("ignoring malformed %s: %s", path, exc)
        return None


def parse_subnet_env(text: str) -> SubnetEnv:
    """The file's values, or ValueError naming what is missing or malformed.

    Like flannel's CNI plugin: FLANNEL_NETWORK, FLANNEL_SUBNET and FLANNEL_MTU
    are required; FLANNEL_IPMASQ defaults to false (older flanneld omit it); the
    IPv6 pair is read when both are there.
    """
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    missing = [k for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU") if k not in values]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    six = [values.get(k, "").strip() for k in ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET")]
    try:
        return SubnetEnv(
            network=IPv4Network(values["FLANNEL_NETWORK"].strip()),
            subnet=IPv4Interface(values["FLANNEL_SUBNET"].strip()),
            mtu=int(values["FLANNEL_MTU"]),
            ipmasq=values.get("FLANNEL_IPMASQ", "false").strip() == "true",
            ipv6_network=IPv6Network(six[0]) if all(six) else None,
            ipv6_subnet=IPv6Interface(six[1]) if all(six) else None,
        )
    except ValueError as exc:
        raise ValueError(f"malformed value: {exc}") from exc


def previous_subnet(path: Path | str) -> IPv4Network | None:
    """The subnet this node held before (from FLANNEL_SUBNET), to ask for it again."""
    env = read_subnet_env(path)
    return env.subnet.network if env else None


def previous_ipv6_subnet(path: Path | str) -> IPv6Network | None:
    """The IPv6 subnet this node held before (from FLANNEL_IPV6_SUBNET), if dual-stack."""
    env = read_subnet_env(path)
    return env.ipv6_subnet.network if env and env.ipv6_subnet else None
