"""The project's documents stand alone: nothing points outside the repository, and every
relative link resolves to a file in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted({*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md")})


def test_no_document_points_outside_the_repository() -> None:
    assert ROOT / "docs" / "architecture.md" in DOCS
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "ARCHITECTURE.md" not in text, doc


def test_relative_links_resolve() -> None:
    links = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            links += 1
            assert (doc.parent / target).resolve().is_relative_to(ROOT), (doc, target)
            assert (doc.parent / target).exists(), (doc, target)
    assert links >= 1  # the README's link to docs/architecture.md at least
