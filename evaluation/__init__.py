"""Measure how anonymous anonymized faces are.

Modules, one job each:

- ``settings``: :class:`EvaluationSettings`, the validated evaluation knobs.
- ``engine``: picks deepface's backend engine before deepface is imported.
- ``weights``: where deepface looks for weight files; random-weight files for offline runs.
- ``recognizers``: :class:`Recognizer`, deepface embeddings exactly as ``DeepFace.verify`` computes them.
- ``distances``: cosine distance, minimum over face pairs, the cleared rule (pure numpy).
- ``evaluator``: :class:`PairEvaluator`, one row per (pair, recognizer).
- ``summary``: per (level, recognizer) statistics with Wilson intervals (pure pandas/numpy).
- ``attacks``: linkage and re-identification attack ranks, exact and chunked; hit@k rates.
- ``tables``: Parquet schemas and their writes.
- ``files``: the one atomic file writer (temporary file, fsync, rename), which pipeline reuses.
- ``report``: the self-contained HTML compliance report.

This package never imports ``pipeline`` or ``anonymize``.
"""

from __future__ import annotations

import importlib

# Public name -> module. Loaded on first use, so that `from evaluation import EvaluationSettings`
# (the CLI, the config loader) does not import opencv, pyarrow and matplotlib.
_EXPORTS = {
    "EvaluationSettings": "settings",
    "use_engine": "engine",
    "MissingWeights": "weights",
    "check_weights": "weights",
    "link_dlib_weights": "weights",
    "weight_file": "weights",
    "write_random_weights": "weights",
    "is_random_weights": "weights",
    "weight_file_sha256": "weights",
    "FaceEmbeddings": "recognizers",
    "Recognizer": "recognizers",
    "cosine_distance": "distances",
    "is_cleared": "distances",
    "min_pair_distance": "distances",
    "Pair": "evaluator",
    "PairEvaluator": "evaluator",
    "error_rows": "evaluator",
    "PartialStats": "summary",
    "merge_partials": "summary",
    "partial_stats": "summary",
    "summarize": "summary",
    "summary_from_partials": "summary",
    "wilson_interval": "summary",
    "SUMMARY_COLUMNS": "summary",
    "psnr": "quality",
    "ssim": "quality",
    "quality_row": "quality",
    "rank_of_true": "attacks",
    "reid_rank": "attacks",
    "hit_rates": "attacks",
    "chance_rate": "attacks",
    "reid_chance_rate": "attacks",
    "DISTANCES_SCHEMA": "tables",
    "SUMMARY_SCHEMA": "tables",
    "distances_table": "tables",
    "read_distances": "tables",
    "read_summary": "tables",
    "summary_table": "tables",
    "write_parquet_atomic": "tables",
    "write_report": "report",
    "render_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"evaluation.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
