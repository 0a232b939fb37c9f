"""Which vxflow this is: `vxflow --version`, each daemon's first log line, `vxflow_build_info`.

The version is the installed package's (its metadata), so a wheel, an
editable install and a source checkout installed by scripts/setup.sh all
report what pip installed. Importing this module registers the gauge: both
daemons import it, so both serve it.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Gauge


def _installed_version() -> str:
    try:
        return version("vxflow")
    except PackageNotFoundError:  # a source tree put on sys.path, never installed
        return "unknown"


VERSION = _installed_version()
BUILD_INFO = Gauge(
    "vxflow_build_info", "1, labelled with the vxflow version this daemon runs", ["version"]
)
BUILD_INFO.labels(VERSION).set(1)


def banner(daemon: str) -> str:
    """The daemon's first log line: what runs, so a log shows which version wrote it."""
    return f"vxflow {VERSION} {daemon} starting (Python {platform.python_version()})"
