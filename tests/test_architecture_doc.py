"""docs/architecture.md has one line per module: its module lists equal the tree (a module added, renamed
or removed without its line fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def documented(package: str) -> set[str]:
    """The `name.py` / `sub/name.py` entries of the doc's `### package/` section (its `####` subsections too)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split(f"### {package}/", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^- `([a-z_/]+\.py)`", section, flags=re.M))


@pytest.mark.parametrize("package", ["anonymize", "evaluation", "pipeline"])
def test_the_architecture_page_lists_every_module_and_no_other(package):
    tree = {p.relative_to(ROOT / package).as_posix() for p in (ROOT / package).rglob("*.py")}
    tree = {name for name in tree if not name.endswith("__init__.py")}
    assert documented(package) == tree


def test_each_pipeline_subpackage_is_a_subsection_of_the_page():
    """The pipeline section is grouped by subpackage: every `sub/name.py` line sits under `#### sub/`."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("### pipeline/", 1)[1].split("\n### ", 1)[0]
    for block in section.split("\n#### ")[1:]:
        heading, _, lines = block.partition("\n")
        names = re.findall(r"^- `([a-z_/]+\.py)`", lines, flags=re.M)
        folder = heading.split(" ", 1)[0]
        expected = "" if folder == "pipeline/" else folder
        assert names and all(
            name.rpartition("/")[0] + "/" == expected or (not expected and "/" not in name) for name in names
        ), heading
