"""The run's bookkeeping at scale, by simulation: no model, no Ray.

Synthetic finished tables (manifest, private outputs, distances for two recognizers; 1% error rows) are
written shard by shard with the product's own writers, then each pass the driver makes is timed in a fresh
process, with its peak memory (ru_maxrss above the process's after imports):

  plan      resume planning of a finished job: pipeline.execution.anonymize_pass.run_pass up to "nothing to do"
  finalize  finalize of the finished job: thresholds restated, summary, report, run.json (pipeline.outputs.finalize)
  gate      the gate's decision pass: pipeline.release.gate.decide
  compact   compacting one shard of 4096 images from batch parts of 4 (pipeline.tables.compaction.compact_shard)

    .venv/bin/python bench/bookkeeping.py --n 100000 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from evaluation import DISTANCES_SCHEMA, write_parquet_atomic  # noqa: E402
from pipeline.folder.layout import RunLayout  # noqa: E402
from pipeline.settings.config import DEFAULT_SHARD_SIZE, JobSettings  # noqa: E402
from pipeline.tables.batch_parts import write_batch  # noqa: E402
from pipeline.tables.markers import with_marker  # noqa: E402
from pipeline.tables.schemas import MANIFEST_SCHEMA, OUTPUTS_SCHEMA  # noqa: E402
from pipeline.tables.shards import plan_shards, shard_name  # noqa: E402
from pipeline.tables.write import write_private_table  # noqa: E402

LEVEL = 0.7
RECOGNIZERS = ("VGG-Face", "Facenet")


def image_ids(n: int) -> list[str]:
    return [f"person_{i // 10:07d}/img_{i:08d}.jpg" for i in range(n)]


def fake_anon_ids(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"{v:024x}" for v in rng.integers(0, 2**62, size=n, dtype=np.int64)]


def build(out: Path, n: int, shard_size: int) -> None:
    """A finished run's tables, one file per shard per table, as compaction leaves them."""
    layout = RunLayout.at(str(out))
    layout.prepare(overwrite=False)
    ids = fake_anon_ids(n)
    shards = plan_shards(layout, ids, shard_size)
    rng = np.random.default_rng(1)
    ordered = sorted(ids)
    for shard in range(shards.count):
        aids = ordered[shard * shard_size : (shard + 1) * shard_size]
        write_shard(layout, shard, aids, rng)
    (out / "ids.json").write_text(json.dumps({"n": n}))


def write_shard(layout: RunLayout, shard: int, aids: list[str], rng) -> None:
    m = len(aids)
    error = rng.random(m) < 0.01
    status = np.where(error, "error", "ok")
    manifest = {
        "anon_id": aids,
        "level": [LEVEL] * m,
        "t_boom": [35] * m,
        "n_steps": [15] * m,
        "status": status.tolist(),
        "error": [("corrupt: image is truncated or corrupt" if e else None) for e in error],
        "error_kind": [("input" if e else None) for e in error],
        "output_path": [f"images/level=0.70/{a}.png" for a in aids],
        "sha256_output": ["0" * 64] * m,
        "seconds": rng.random(m).tolist(),
    }
    outputs = {
        "anon_id": aids,
        "level": [LEVEL] * m,
        "seed": rng.integers(0, 2**62, m).tolist(),
        "source_sha256": ["1" * 64] * m,
        "source_size": [20000] * m,
        "source_mtime": [1.7e9] * m,
        "error_detail": [None] * m,
    }
    distance = rng.random(2 * m)
    ok = np.repeat(~error, 2)
    distances = {
        "anon_id": np.repeat(aids, 2).tolist(),
        "level": [LEVEL] * 2 * m,
        "t_boom": [35] * 2 * m,
        "recognizer": list(RECOGNIZERS) * m,
        "metric": ["cosine"] * 2 * m,
        "distance": [float(d) if o else None for d, o in zip(distance, ok, strict=True)],
        "threshold": [0.4] * 2 * m,
        "cleared": [bool(d > 0.4) if o else None for d, o in zip(distance, ok, strict=True)],
        "face_original": [True] * 2 * m,
        "face_anonymized": [True if o else None for o in ok],
        "compared_at": ["detected" if o else None for o in ok],
        "status": ["ok" if o else "error" for o in ok],
        "error": [None if o else "corrupt: image is truncated or corrupt" for o in ok],
    }
    name = shard_name(shard)
    write_parquet_atomic(columns_table(distances, DISTANCES_SCHEMA), layout.distances / name)
    write_private_table(columns_table(outputs, OUTPUTS_SCHEMA), layout.outputs / name)
    # The manifest last, with the marker compaction writes (every row here has its distances).
    manifest_table = with_marker(columns_table(manifest, MANIFEST_SCHEMA), evaluated=True)
    write_parquet_atomic(manifest_table, layout.manifest / name)


def columns_table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    """The product's schema filled from `columns`; a column the simulation does not model (one a later mode
    added, such as region mode's `face`) is null, as the product writes it outside that mode."""
    n = len(next(iter(columns.values())))
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays([pa.array(a, type=f.type) for a, f in zip(arrays, schema, strict=True)], schema=schema)


def fake_job(out: Path, n: int):
    from pipeline.execution.inputs import InputItem, InputSet
    from pipeline.execution.job import Job

    settings = JobSettings(
        input="unused",
        out=str(out),
        levels=(LEVEL,),
        gate=True,
        ladder=(LEVEL,),
        evaluation=_evaluation(),
    )
    items = tuple(InputItem(i, f"/data/{i}", size=20000, mtime=1.7e9) for i in image_ids(n))
    job = Job(settings, "run", RunLayout.at(str(out)), InputSet("folder", "/data", items), b"", None)
    job.anon_ids = dict(zip(image_ids(n), fake_anon_ids(n), strict=True))
    return job


def _evaluation():
    from evaluation import EvaluationSettings

    return EvaluationSettings(recognizers=RECOGNIZERS, engine="onnx")


def child(what: str, out: Path, n: int) -> dict:
    """One measurement in this (fresh) process: seconds and peak memory above the baseline."""
    job = fake_job(out, n) if what in ("plan", "finalize", "gate") else None
    if what == "gate":  # deepface's threshold table: imported before the baseline
        from pipeline.settings.gate_policy import gate_thresholds

        gate_thresholds(job.settings)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if what == "plan":
        from pipeline.execution.anonymize_pass import run_pass

        assert run_pass(job, (LEVEL,)) == 0
    elif what == "finalize":
        from pipeline.outputs.finalize import finalize

        assert finalize(job).counts["images"] == n
    elif what == "gate":
        from pipeline.release.gate import decide

        decision = decide(job)
        assert len(decision.released) + len(decision.withheld) == n
    elif what == "compact":
        seconds = compact_one(out, n)
        return {"seconds": seconds, "peak_mib": 0.0}
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": (peak - base) / 1024}


def compact_one(out: Path, size: int) -> float:
    """One shard's worth of batch parts (`size` images, --shard-size, in batches of 4), then its compaction."""
    from pipeline.tables.compaction import compact_shard

    layout = RunLayout.at(str(out / "compact"))
    layout.prepare(overwrite=False)
    ids = sorted(fake_anon_ids(size))
    plan_shards(layout, ids, size)
    for i in range(0, len(ids), 4):
        rows = [{"anon_id": a, "level": LEVEL, "status": "ok", "seed": 1} for a in ids[i : i + 4]]
        write_batch(layout, rows, [])
    started = time.perf_counter()
    compact_shard(layout, 0)
    return time.perf_counter() - started


def measure(what: str, out: Path, n: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, __file__, "--child", what, str(out), str(n)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "DEEPFACE_BACKEND_ENGINE": "onnx"},
        )
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_mib": max(r["peak_mib"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "OUT", "N"))
    args = common.parse(parser, {"n": [2000], "repeats": 1, "shard_size": 500})
    if args.child:
        what, out, n = args.child
        print(json.dumps(child(what, Path(out), int(n))))
        return
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="bookkeeping-") as tmp:
            out = Path(tmp) / "out"
            started = time.perf_counter()
            build(out, n, args.shard_size)
            built = time.perf_counter() - started
            files = {
                name: len([p for p in folder.glob("part-*.parquet")])
                for name, folder in (
                    ("manifest", out / "manifest.parquet"),
                    ("outputs", out / "private" / "outputs.parquet"),
                    ("distances", out / "evaluation" / "distances.parquet"),
                )
            }
            row = {"n": n, "shard_size": args.shard_size, "build_s": round(built, 1), "files": files}
            for what in ("plan", "finalize", "gate", "compact"):
                if what == "compact":
                    row[what] = measure(what, out, args.shard_size, 1)
                else:
                    row[what] = measure(what, out, n, args.repeats)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
