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


@pytest.hookimpl(trylast=True)  # after -m has deselected what it will
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration and e2e tests need root: refuse to run them otherwise, never skip them."""
    if os.geteuid() == 0:
        return
    if any("integration" in item.keywords or "e2e" in item.keywords for item in items):
        raise pytest.UsageError(
            "integration/e2e tests need root (namespaces, OVS, Mininet): run `make test` as "
            "root, or `make unit` for the pure-logic tests alone"
        )


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
