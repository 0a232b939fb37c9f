"""An emulated cluster raises this process's limits only, never the host's sysctls.

Mininet's first use (`Mininet.init`) runs `fixLimits()`, which raises the
machine's TCP buffer limits, ARP cache, route table, file and pty maximums and
leaves them raised; mininet/vxcluster.py does Mininet's init itself without it.
Here the sysctl writer is replaced by a recorder, so a regression shows as a
recorded write and changes nothing on the host.
"""

from __future__ import annotations

import resource

import pytest

from vxflow.demo import cluster_module

pytestmark = pytest.mark.integration  # raising a hard rlimit needs root


@pytest.fixture
def sysctl_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sysctls Mininet would write, recorded instead, in a process that has not
    built a net yet."""
    cluster_module()  # puts Debian's Mininet on the path
    from mininet.net import Mininet

    from mininet import util

    written: list[str] = []
    monkeypatch.setattr(util, "sysctlTestAndSet", lambda name, value: written.append(name))
    monkeypatch.setattr(Mininet, "inited", False)
    return written


def test_starting_a_cluster_writes_no_host_sysctl(sysctl_writes: list[str]) -> None:
    from mininet.net import Mininet

    cluster_module().init_mininet()
    Mininet(build=False)  # what Cluster.start builds next: its own init must do nothing now
    assert sysctl_writes == []
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 16384
    assert Mininet.inited


def test_mininets_own_init_would_have(sysctl_writes: list[str]) -> None:
    """The recorder sees what it guards against: Mininet's init left to itself."""
    from mininet.net import Mininet

    Mininet(build=False)
    assert "net.ipv4.tcp_rmem" in sysctl_writes
