"""Runs last (file order): nothing the suite started may still be there."""

from __future__ import annotations

import pytest

from tests.emulation import run_tag
from tests.leftovers import names_with_tag, processes_of_this_run


@pytest.mark.integration
def test_suite_left_no_processes_namespaces_or_links() -> None:
    assert processes_of_this_run() == []
    assert names_with_tag(run_tag()) == []
