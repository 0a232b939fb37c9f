"""Shared fixtures: real components, always cleaned up (also when a test fails)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from leases.etcd_server import EtcdServer
from ovsdb.instance import OvsInstance
from tests.emulation import Underlay
from tests.leftovers import mark_run

mark_run()  # every process the suite starts inherits RUN_MARKER, so leftovers can be found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration and e2e tests need root; say so instead of failing obscurely."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, OVS); run via `make test` as root")
    for item in items:
        if "integration" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh etcd server on a free loopback port with a temporary data dir."""
    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ovs() -> Iterator[OvsInstance]:
    """A private ovsdb-server + ovs-vswitchd in the root namespace (no traffic, flow tables only)."""
    instance = OvsInstance(name="t").start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def underlay() -> Iterator[Underlay]:
    """An underlay bridge (198.18.0.0/24, root .254); `add_node()` / `add_pod()` on it."""
    net = Underlay().create()
    try:
        yield net
    finally:
        errors = net.destroy()
        assert not errors, f"cleanup failed: {errors}"
