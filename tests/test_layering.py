"""Imports point down only: each floor imports from the floors beneath it, never above.

The floors, bottom up: `daemons` (plumbing every daemon shares), `leases`
(etcd and the data model), `flows` (pure, over that model), then the edges:
the node's side (`ovsdb` and `cni`, one floor: the agent serves the CNI
plugin, which plugs ports through OVSDB) and the `controller`; the CLI
package `vxflow` on top. A lower floor that reaches up pulls the
CLI (and everything it imports) into every daemon and makes cycles easy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABOVE = {
    "daemons": {"leases", "flows", "ovsdb", "controller", "cni", "vxflow"},
    "leases": {"flows", "ovsdb", "controller", "cni", "vxflow"},
    "flows": {"ovsdb", "controller", "cni", "vxflow"},
    "ovsdb": {"controller", "vxflow"},
    "controller": {"ovsdb", "cni", "vxflow"},
    "cni": {"controller", "vxflow"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `path`, however deeply nested."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("floor", sorted(ABOVE))
def test_a_floor_imports_nothing_above_it(floor: str) -> None:
    modules = sorted((ROOT / floor).glob("*.py"))
    assert modules, f"no modules under {floor}/"
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for path in modules
        for line, package in sorted(imported_packages(path))
        if package in ABOVE[floor]
    ]
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from vxflow.cli import main\n    import controller.app\n")
    assert imported_packages(module) == {(2, "vxflow"), (3, "controller")}
