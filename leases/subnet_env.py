"""flannel's subnet.env: what CNI and the container runtime read to wire pods.

Written atomically (temporary file, fsync, rename) so a reader never sees half
a file, and read back on restart so the node asks for its previous subnet.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from leases.model import VXLAN_OVERHEAD, Lease, NetworkConfig

log = logging.getLogger(__name__)

DEFAULT_SUBNET_ENV = Path("/run/flannel/subnet.env")  # flanneld's --subnet-file default


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network  # FLANNEL_NETWORK
    subnet: IPv4Interface  # FLANNEL_SUBNET: the node's gateway address / prefix length
    mtu: int  # FLANNEL_MTU
    ipmasq: bool  # FLANNEL_IPMASQ


def overlay_mtu(config: NetworkConfig, underlay_mtu: int) -> int:
    """The pods' MTU: the config's Backend.MTU, else the underlay's minus VXLAN's 50 bytes."""
    return config.backend.mtu or underlay_mtu - VXLAN_OVERHEAD


def subnet_env_for(
    config: NetworkConfig, lease: Lease, mtu: int, ipmasq: bool = False
) -> SubnetEnv:
    return SubnetEnv(
        config.network, IPv4Interface((lease.gateway, lease.subnet.prefixlen)), mtu, ipmasq
    )


def render(env: SubnetEnv) -> str:
    """The file's text, byte for byte as flannel's WriteSubnetFile writes it."""
    return (
        f"FLANNEL_NETWORK={env.network}\n"
        f"FLANNEL_SUBNET={env.subnet}\n"
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
    are required; FLANNEL_IPMASQ defaults to false (older flanneld omit it).
    """
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    missing = [k for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU") if k not in values]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        return SubnetEnv(
            network=IPv4Network(values["FLANNEL_NETWORK"].strip()),
            subnet=IPv4Interface(values["FLANNEL_SUBNET"].strip()),
            mtu=int(values["FLANNEL_MTU"]),
            ipmasq=values.get("FLANNEL_IPMASQ", "false").strip() == "true",
        )
    except ValueError as exc:
        raise ValueError(f"malformed value: {exc}") from exc


def previous_subnet(path: Path | str) -> IPv4Network | None:
    """The subnet this node held before (from FLANNEL_SUBNET), to ask for it again."""
    env = read_subnet_env(path)
    return env.subnet.network if env else None
