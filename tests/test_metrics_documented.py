"""README.md's metrics table is the list of every vxflow metric: names, types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import controller.metrics
import leases.metrics
import ovsdb.metrics

README = Path(__file__).resolve().parents[1] / "README.md"
MODULES = {"controller": controller.metrics, "agent": ovsdb.metrics, "both": leases.metrics}


def documented() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """metric -> (type, label names, served by), from the table after the marker."""
    text = README.read_text()
    table = text[text.index("<!-- metrics table") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[3:]:
        name, kind, labels, served, _meaning = (c.strip() for c in line.strip("|").split("|"))
        rows[name.strip("`")] = (kind, tuple(re.findall(r"`(\w+)`", labels)), served)
    assert rows, "no metrics table in README.md"
    return rows


def defined() -> dict[str, tuple[str, tuple[str, ...], str]]:
    rows = {}
    for served, module in MODULES.items():
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase) and not metric._labelvalues:
                suffix = "_total" if metric._type == "counter" else ""
                rows[metric._name + suffix] = (metric._type, tuple(metric._labelnames), served)
    return rows


def test_every_metric_is_documented_with_its_type_labels_and_daemon():
    assert len(defined()) >= 30
    assert documented() == defined()


def names_served_by(daemon: str) -> set[str]:
    return {name for name, (_, _, served) in documented().items() if served in (daemon, "both")}
