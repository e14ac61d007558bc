"""Package boundaries: evaluation never imports pipeline or anonymize, and imports lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import evaluation

PACKAGE = Path(evaluation.__file__).parent


def test_evaluation_never_imports_pipeline_or_anonymize():
    for source in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("pipeline", "anonymize"), f"{source.name} imports {name}"


def test_settings_import_does_not_load_deepface_or_heavy_libraries():
    code = (
        "import sys; from evaluation import EvaluationSettings; EvaluationSettings(); "
        "print(sorted(m for m in ('deepface', 'cv2', 'torch', 'matplotlib', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None, name
