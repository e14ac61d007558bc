"""Every benchmark script runs at its smoke size (`--smoke`), so a change to the product's writers, readers or
command line that breaks a benchmark fails here, not for the next person measuring (docs/benchmarks.md).

The scripts run as their docs quote them (`python -m bench.<name> --smoke`), each in its own process; their
figures mean nothing at these sizes and are not checked, only that the script finished and saved its result.
Those that run whole `boomerang` jobs are in the heavy tier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (command after `python -m bench.`, the result file it saves or None, whether it runs whole jobs)
SCRIPTS = [
    (["attacks"], None, False),
    (["bookkeeping"], None, False),
    (["models", "sd15"], None, False),
    (["efficiency"], "efficiency", False),
    (["pipeline_overhead"], "pipeline_overhead", True),
    (["resume"], "resume", True),
    (["eval_overhead"], "eval_overhead", True),
    (["scaling"], "scaling", True),
    (["startup"], "startup", True),
    (["regions"], "regions", True),
    (["object_store"], "object_store", True),
    (["soak"], "soak", True),
    (["gpu"], None, True),
]


@pytest.mark.parametrize(
    ("argv", "saves"),
    [pytest.param(a, s, id=a[0], marks=[pytest.mark.heavy] if jobs else []) for a, s, jobs in SCRIPTS],
)
def test_every_bench_script_runs_at_its_smoke_size(argv, saves, model_cache):
    env = {**os.environ, "BOOMERANG_CACHE": str(model_cache.parent), "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{argv[0]}", *argv[1:], "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if saves:
        saved = json.loads((ROOT / "bench" / "results" / f"{saves}-smoke.json").read_text())
        assert "--smoke" in saved["command"] and saved["machine"]


def test_every_bench_script_is_in_the_smoke_list():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"__init__", "common"}
    assert scripts == {argv[0] for argv, _, _ in SCRIPTS}
