"""Import direction: pipeline may import anonymize and evaluation; those two never import each other or pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"anonymize": {"pipeline", "evaluation"}, "evaluation": {"pipeline", "anonymize"}}


def imported_packages(source: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_libraries_never_import_the_application_or_each_other(package):
    sources = sorted((ROOT / package).rglob("*.py"))
    assert sources
    for source in sources:
        bad = imported_packages(source) & FORBIDDEN[package]
        assert not bad, f"{source.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_driver_starts_without_torch_or_diffusers():
    """The command line and the driver's modules load without torch and diffusers (about 3 s on this
    machine); only the actors that run a model, and the attack's matrix products, import them."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline.cli, pipeline.commands.run, pipeline.commands.evaluate, pipeline.commands.report, "
        "pipeline.execution.anonymize_pass, pipeline.release.gate, pipeline.execution.evaluate_pairs\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
