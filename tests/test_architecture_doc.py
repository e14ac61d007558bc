"""docs/architecture.md has one line per module: its module lists equal the tree (a module added, renamed
or removed without its line fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def documented(package: str) -> set[str]:
    """The `name.py` entries of the doc's `### package/` section."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split(f"### {package}/", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^- `([a-z_]+\.py)`", section, flags=re.M))


@pytest.mark.parametrize("package", ["anonymize", "evaluation", "pipeline"])
def test_the_architecture_page_lists_every_module_and_no_other(package):
    tree = {p.name for p in (ROOT / package).glob("*.py")} - {"__init__.py"}
    assert documented(package) == tree
