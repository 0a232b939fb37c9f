"""Shared fixtures: real components, always cleaned up (also when a test fails)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from leases.etcd_server import EtcdServer
from ovsdb.instance import OvsInstance
from tests import sandbox
from tests.emulation import Underlay, run_tag
from tests.leftovers import mark_run, names_with_tag, processes_of_this_run

mark_run()  # every process the suite starts inherits RUN_MARKER, so leftovers can be found
sandbox.enter()  # before any test: this process's own network namespace (tests/sandbox.py)


@pytest.hookimpl(trylast=True)  # after -m has deselected what it will
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration and e2e tests need root: refuse to run them otherwise, never skip them.
    Then keep each module that builds a fixture once for all its tests on one xdist worker."""
    if os.geteuid() != 0 and any(
        "integration" in item.keywords or "e2e" in item.keywords for item in items
    ):
        raise pytest.UsageError(
            "integration/e2e tests need root (namespaces, OVS, Mininet): run `make test` as "
            "root, or `make unit` for the pure-logic tests alone"
        )
    group_module_fixtures(items)


def group_module_fixtures(items: list[pytest.Item]) -> None:
    """A module whose own module-scoped fixture is costly (an emulated cluster) runs whole on
    one worker (`--dist loadgroup`), and such modules go first: they are the longest, and a
    long one handed out last would leave the other workers idle at the end. Every other
    test is handed out on its own."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        module = item.nodeid.split("::")[0]
        if defs and any(
            d.scope == "module" and d.baseid == module
            for fixturedefs in defs.name2fixturedefs.values()
            for d in fixturedefs
        ):
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After each module (its fixtures torn down): no process, namespace or link it made."""
    yield
    assert processes_of_this_run() == []
    assert names_with_tag(run_tag()) == []


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
