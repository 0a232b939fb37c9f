"""Read the old `/etc/sysconfig/flanneld` so an existing node's configuration works unchanged.

The file is shell-style `KEY="value"` lines. Two generations exist:
FLANNEL_ETCD + FLANNEL_ETCD_KEY (the seed's) and FLANNEL_ETCD_ENDPOINTS +
FLANNEL_ETCD_PREFIX (later packages). FLANNEL_OPTIONS holds further flanneld
flags (`-iface=eth0 --public-ip=... -etcd-cafile=...`); the ones vxflow
understands are taken (etcd TLS and credentials among them), the rest are
reported so nothing is silently dropped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

# sysconfig variable -> vxflow option name; the later name wins over the older one
_VARIABLES = (
    ("FLANNEL_ETCD", "etcd_endpoints"),
    ("FLANNEL_ETCD_ENDPOINTS", "etcd_endpoints"),
    ("FLANNEL_ETCD_KEY", "etcd_prefix"),
    ("FLANNEL_ETCD_PREFIX", "etcd_prefix"),
)
# flanneld flags inside FLANNEL_OPTIONS that vxflow understands
_FLAGS = {
    "etcd-endpoints": "etcd_endpoints",
    "etcd-prefix": "etcd_prefix",
    "etcd-cafile": "etcd_cafile",
    "etcd-certfile": "etcd_certfile",
    "etcd-keyfile": "etcd_keyfile",
    "etcd-username": "etcd_username",
    "etcd-password": "etcd_password",
    "iface": "iface",
    "public-ip": "public_ip",
    "subnet-file": "subnet_file",
    "ip-masq": "ip_masq",
}


class SysconfigError(ValueError):
    """The sysconfig file cannot be read or parsed."""


@dataclass
class Sysconfig:
    values: dict[str, str] = field(default_factory=dict)  # vxflow option name -> value
    ignored: list[str] = field(default_factory=list)  # FLANNEL_OPTIONS flags vxflow does not use


def parse_sysconfig(text: str) -> Sysconfig:
    """Parse the file's text (pure)."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        key = key.removeprefix("export ").strip()
        if not sep or not key.isidentifier():
            raise SysconfigError(f"line {number}: not KEY=VALUE: {line!r}")
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise SysconfigError(f"line {number}: {exc}") from exc
        env[key] = " ".join(words)
    result = Sysconfig()
    for variable, option in _VARIABLES:
        if env.get(variable):
            result.values[option] = env[variable]
    for word in shlex.split(env.get("FLANNEL_OPTIONS", "")):
        name, sep, value = word.lstrip("-").partition("=")
        option = _FLAGS.get(name)
        if option is None or not word.startswith("-"):
            result.ignored.append(word)
        else:
            result.values[option] = value if sep else "true"
    return result


def read_sysconfig(path: Path) -> Sysconfig:
    try:
        return parse_sysconfig(path.read_text())
    except OSError as exc:
        raise SysconfigError(f"cannot read {path}: {exc.strerror}") from exc
    except SysconfigError as exc:
        raise SysconfigError(f"{path}: {exc}") from exc
