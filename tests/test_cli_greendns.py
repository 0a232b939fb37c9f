"""Which commands skip eventlet's green DNS resolver (dnspython, ~0.1-0.2 CPU-s of a start):
every one that runs no green thread, and a controller whose etcd endpoints are IP addresses.
A controller given a host name keeps it, or each lookup would block its hub."""

from __future__ import annotations

import pytest

from vxflow.cli import _resolves_no_names


@pytest.mark.parametrize(("args", "env", "skips"), [
    (["leases", "list", "--etcd-endpoints", "http://etcd.example:2379"], "", True),
    (["status"], "https://etcd.example:2379", True),
    (["controller"], "", True),  # the default endpoint, 127.0.0.1
    (["controller", "--etcd-endpoints", "http://198.18.0.1:2379,https://[fd00::1]:2379"], "", True),
    (["controller", "--etcd-endpoints=http://198.18.0.1:2379"], "http://etcd.example:2379", True),
    (["--log-level", "debug", "controller", "--port", "6654"], "http://198.18.0.1:2379", True),
    (["controller", "--etcd-endpoints", "http://198.18.0.1:2379,http://etcd.example:2379"], "", False),
    (["controller", "--etcd-endpoints=https://localhost:2379"], "", False),
    (["controller"], "http://etcd.example:2379", False),
    (["controller", "--etcd-endpoints"], "", True),  # click refuses it; nothing is looked up
])  # fmt: skip
def test_only_a_controller_given_a_host_name_keeps_green_dns(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: str, skips: bool
) -> None:
    monkeypatch.setenv("FLANNELD_ETCD_ENDPOINTS", env)
    assert _resolves_no_names(args) is skips
