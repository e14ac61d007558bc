"""Package surface: evaluation imports lazily (the import direction is checked in tests/test_import_direction.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import evaluation

PACKAGE = Path(evaluation.__file__).parent


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
