"""The run's bookkeeping at scale, by simulation: no model, no Ray.

Synthetic finished tables (manifest, private outputs, distances for two recognizers; 1% error rows) are
written shard by shard with the product's own writers, then each pass the driver makes is timed in a fresh
process, with its peak memory (VmHWM above the resident size at the start of the pass, after imports):

  plan      resume planning of a finished job: pipeline.execution.anonymize_pass.run_pass up to "nothing to do"
  finalize  finalize of the finished job: thresholds restated, summary, report, run.json (pipeline.outputs.finalize)
  gate      the gate's decision pass: pipeline.release.gate.decide
  compact   compacting one shard of 4096 images from batch parts of 4 (pipeline.tables.compaction.compact_shard)
  discover  a job's discovery of a Parquet input of N ids, streamed (pipeline.execution.discovery.index_inputs:
            listing, keying, the shard cut and one list per shard under private/inputs/) and the identities
            table written from the lists, as pipeline.execution.job.prepare does
  discover_list  the discovery before it streamed, for comparison: every item and anon_id in one list
  attacks   the capped linkage attack (finalize's: --max-queries per level against every original) as Ray
            tasks over the embedding shards (pipeline.outputs.attack_tasks), on 2 Ray workers; the driver's peak
            memory is measured after ray.init
  gate_attack  the gate's attack (--gate-max-linkage: every output against every original) on a folder of
            --gate-n images in shards of --gate-shard-size, with 1 and 2 Ray workers (--workers): the
            throughput in pairs/s and its ratio
  diversity the sample-diversity summary (2 samples per image; pipeline.outputs.diversity_shards)
  matmul    the float32 matrix product rate here (1 thread), for the projection to a GPU node

The attacks and diversity run on a second simulated folder: private embeddings of --dims dimensions (one
recognizer, one level; the driver's memory does not grow with the dimension, the tasks' time does) and
private/identities.parquet.

    .venv/bin/python -m bench.bookkeeping --n 100000 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
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
from pipeline.tables.schemas import EMBEDDINGS_SCHEMA, IDENTITY_SCHEMA, MANIFEST_SCHEMA, OUTPUTS_SCHEMA  # noqa: E402
from pipeline.tables.shards import plan_shards, shard_name  # noqa: E402
from pipeline.tables.write import write_private_table  # noqa: E402

LEVEL = 0.7
FRESH_LEVEL = 0.9  # a level the simulated folder has no rows of (a fresh pass's plan)
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
    index = write_lists(layout, n, shard_size)
    (out / "ids.json").write_text(json.dumps({"n": n, "counts": index.counts}))


def write_lists(layout: RunLayout, n: int, shard_size: int):
    """The job's input lists (private/inputs/), as discovery writes them, for these simulated anon_ids (the
    simulation's setup: not measured)."""
    from pipeline.tables.input_lists import InputSpool, build_index
    from pipeline.tables.schemas import INPUT_LIST_SCHEMA

    keys, aids = image_ids(n), fake_anon_ids(n)
    spool = InputSpool(layout)
    for start in range(0, n, 1 << 16):
        part = keys[start : start + (1 << 16)]
        m = len(part)
        columns = {"key": part, "image_id": part, "sample": [0] * m, "anon_id": aids[start : start + m]}
        columns.update(source=[f"/data/{k}" for k in part], size=[20000] * m, mtime=[1.7e9] * m, position=[0] * m)
        spool.add(columns_table(columns, INPUT_LIST_SCHEMA))
    try:
        return build_index(layout, spool, shard_size)
    finally:
        spool.remove()


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


def fake_job(out: Path, n: int, secret: bytes = b""):
    """The finished job as a rerun sees it after discovery: its lists on disk, the index in the driver."""
    from pipeline.execution.discovery import attach_index
    from pipeline.execution.inputs import InputSet
    from pipeline.execution.job import Job
    from pipeline.tables.input_lists import InputIndex, lists_folder
    from pipeline.tables.shards import load_shards

    settings = JobSettings(
        input="unused",
        out=str(out),
        levels=(LEVEL,),
        gate=True,
        ladder=(LEVEL,),
        evaluation=_evaluation(),
    )
    layout = RunLayout.at(str(out))
    job = Job(settings, "run", layout, InputSet("folder", "/data", ()), secret, None)
    counts = {int(k): v for k, v in json.loads((out / "ids.json").read_text())["counts"].items()}
    attach_index(job, InputIndex(lists_folder(layout), load_shards(layout), counts), 1)
    return job


def _evaluation():
    from evaluation import EvaluationSettings

    return EvaluationSettings(recognizers=RECOGNIZERS, engine="onnx")


def build_embeddings(out: Path, n: int, shard_size: int, dims: int) -> None:
    """Private embeddings (one recognizer, one level) and identities (2 samples per image), shard by shard."""
    layout = RunLayout.at(str(out))
    layout.prepare(overwrite=False)
    ids = sorted(fake_anon_ids(n))
    plan_shards(layout, ids, shard_size)
    rng = np.random.default_rng(2)
    for shard in range(0, n, shard_size):
        aids = ids[shard : shard + shard_size]
        m = len(aids)
        original = rng.normal(size=(m, dims)).astype(np.float32)
        anonymized = (original + rng.normal(scale=1.0, size=(m, dims))).astype(np.float32)
        columns = {
            "anon_id": aids,
            "level": [LEVEL] * m,
            "recognizer": ["Facenet"] * m,
            "original": _vectors(original),
            "anonymized": _vectors(anonymized),
        }
        write_private_table(
            columns_table(columns, EMBEDDINGS_SCHEMA), layout.embeddings / shard_name(shard // shard_size)
        )
    order = fake_anon_ids(n)  # input order: image i's samples are consecutive ids there, scattered in the shards
    identities = {
        "anon_id": order,
        "image_id": [f"img_{i // 2:08d}" for i in range(n)],
        "source": [f"/data/img_{i // 2:08d}.jpg" for i in range(n)],
        "sample": [i % 2 for i in range(n)],
    }
    table = columns_table(identities, IDENTITY_SCHEMA).sort_by("anon_id")
    write_private_table(table, layout.identities)


def _vectors(rows: np.ndarray) -> pa.Array:
    offsets = pa.array(np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1)))


def write_input(path: Path, n: int) -> None:
    """A Parquet input of n ids (the `image` column is never read by discovery)."""
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": image_ids(n), "image": pa.nulls(n, pa.binary())}), path)


def child(what: str, out: Path, n: int, extra: str = "") -> dict:
    """One measurement in this (fresh) process: seconds and peak memory above the baseline."""
    if what in ("discover", "discover_list", "attacks", "gate_attack", "diversity", "matmul"):
        return child_new(what, out, n, extra)
    job = fake_job(out, n) if what in ("plan", "finalize", "gate") else None
    if what in ("plan_fresh", "plan_fresh_list"):  # a level with no outputs yet: every image is work
        job = fake_job(out, n, secret=bytes(32))
    if what == "gate":  # deepface's threshold table: imported before the baseline
        from pipeline.settings.gate_policy import gate_thresholds

        gate_thresholds(job.settings)
    base = _reset_peak()
    started = time.perf_counter()
    if what == "plan":
        from pipeline.execution.anonymize_pass import run_pass

        assert run_pass(job, (LEVEL,)) == 0
    elif what in ("plan_fresh", "plan_fresh_list"):
        from pipeline.execution.anonymize_pass import plan_pass

        plan = plan_pass(job, (FRESH_LEVEL,))
        assert plan.spool.rows == n
        if what == "plan_fresh_list":  # the work rows held in one list, as the driver did before the spool
            held = [row for table in plan.spool.tables() for row in table.to_pylist()]
            assert len(held) == n
        plan.spool.remove()
    elif what == "finalize":
        from pipeline.outputs.finalize import finalize

        assert finalize(job).counts["images"] == n
    elif what == "gate":
        from pipeline.release.gate import decide

        decision = decide(job)
        assert decision.n_released + decision.n_withheld == n
        decision.remove()
    elif what == "compact":
        seconds = compact_one(out, n)
        return {"seconds": seconds, "peak_mib": 0.0}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": (_peak() - base) / 1024}


def child_new(what: str, out: Path, n: int, extra: str) -> dict:
    if what == "matmul":
        return matmul_rate()
    if what == "discover":
        import shutil

        from pipeline.execution.discovery import index_inputs
        from pipeline.execution.inputs import describe
        from pipeline.tables.identities import write_identities_from

        shutil.rmtree(out / "discovered", ignore_errors=True)  # a repeat's: discovery starts afresh
        layout = RunLayout.at(str(out / "discovered"))
        layout.prepare(overwrite=False)
        base = _reset_peak()
        started = time.perf_counter()
        index = index_inputs(layout, describe(str(out / "input.parquet")), b"k" * 32, shard_size=DEFAULT_SHARD_SIZE)
        write_identities_from(layout, index)
        assert index.total == n and index.shards.count >= 1
    elif what == "discover_list":
        from pipeline.execution.inputs import discover
        from pipeline.folder.secret import anon_id
        from pipeline.tables.shards import Shards

        base = _reset_peak()
        started = time.perf_counter()
        inputs = discover(str(out / "input.parquet"))
        keyed = {item.image_id: anon_id(b"k" * 32, item.image_id) for item in inputs.items}
        shards = Shards.cut(keyed.values(), DEFAULT_SHARD_SIZE)
        assert len(keyed) == n and shards.count >= 1
    elif what in ("attacks", "gate_attack"):
        import ray

        from pipeline.outputs.linkage_attack import linkable, linkage_attack

        workers, cap = (int(v) for v in extra.split(","))
        layout = RunLayout.at(str(out / ("emb" if what == "attacks" else "gate-emb")))
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        # Not measured: the workers' start and imports (one worker per CPU, each kept busy so that all start),
        # and one run of the same attack.
        ray.get([ray.remote(_warm).remote() for _ in range(workers)])
        linkage_attack(layout, max_queries=cap, reid=False) if what == "attacks" else linkable(layout, 1)
        base = _reset_peak()
        started = time.perf_counter()
        if what == "attacks":
            attacks = linkage_attack(layout, max_queries=cap, reid=False)
            assert len(attacks) == min(cap, n) and (attacks["gallery_size"] == n).all()
            pairs = len(attacks) * n
        else:
            close = linkable(layout, 1)
            assert len(close) <= n
            pairs = n * n
        seconds = time.perf_counter() - started
        peak = _peak()
        ray.shutdown()
        return {"seconds": seconds, "peak_mib": (peak - base) / 1024, "pairs_per_s": pairs / seconds}
    elif what == "diversity":
        from pipeline.outputs.diversity import sample_diversity

        base = _reset_peak()
        started = time.perf_counter()
        found = sample_diversity(RunLayout.at(str(out / "emb")))
        assert int(found["diversity_images"].iloc[0]) == n // 2
    seconds = time.perf_counter() - started
    peak = _peak()
    return {"seconds": seconds, "peak_mib": (peak - base) / 1024}


def _reset_peak() -> int:
    """The process's resident KiB now, with its peak (VmHWM) reset to it (Linux: /proc/self/clear_refs "5"):
    a warm-up before the measurement does not hide the measured pass's peak, as ru_maxrss would."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _warm() -> None:
    import torch  # noqa: F401

    import pipeline.outputs.attack_tasks  # noqa: F401

    time.sleep(2)


def matmul_rate(dims: int = 128) -> dict:
    """float32 GFLOP/s of one thread on the attack's shape (a chunk of queries x a shard's gallery)."""
    import torch

    torch.set_num_threads(1)
    q = torch.randn(4096, dims)
    g = torch.randn(4096, dims)
    (q @ g.T).sum()
    started, rounds = time.perf_counter(), 0
    while time.perf_counter() - started < 1.0:
        q @ g.T
        rounds += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": 0.0, "gflops": 2 * 4096 * 4096 * dims * rounds / seconds / 1e9}


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


def measure(what: str, out: Path, n: int, repeats: int, extra: str = "") -> dict:
    runs = []
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, __file__, "--child", what, str(out), str(n), extra],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "DEEPFACE_BACKEND_ENGINE": "onnx"},
        )
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    found = {"seconds": statistics.median(r["seconds"] for r in runs), "peak_mib": max(r["peak_mib"] for r in runs)}
    for key in ("pairs_per_s", "gflops"):
        if key in runs[0]:
            found[key] = statistics.median(r[key] for r in runs)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--dims", type=int, default=64, help="embedding dimensions of the attack's simulation")
    parser.add_argument("--max-queries", type=int, default=10_000, help="the capped attack's queries per level")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray workers for the gate's attack")
    parser.add_argument("--gate-n", type=int, default=20_000, help="images of the gate's attack (every pair)")
    parser.add_argument("--gate-shard-size", type=int, default=1000)
    parser.add_argument(
        "--phases",
        nargs="+",
        default=["plan", "finalize", "gate", "compact", "discover", "attacks", "diversity", "gate_attack"],
    )
    parser.add_argument("--child", nargs=4, metavar=("WHAT", "OUT", "N", "EXTRA"))
    smoke = {"n": [2000], "repeats": 1, "shard_size": 500, "dims": 16, "max_queries": 200, "workers": [2]}
    smoke.update(gate_n=500, gate_shard_size=100)
    args = common.parse(parser, smoke)
    if args.child:
        what, out, n, extra = args.child
        print(json.dumps(child(what, Path(out), int(n), extra)))
        return
    if "gate_attack" in args.phases or "attacks" in args.phases:
        print(json.dumps({"matmul": measure("matmul", Path("."), 0, 1)}), flush=True)
    if "gate_attack" in args.phases:
        with tempfile.TemporaryDirectory(prefix="bookkeeping-") as tmp:
            build_embeddings(Path(tmp) / "gate-emb", args.gate_n, args.gate_shard_size, args.dims)
            row = {"gate_attack_n": args.gate_n, "shard_size": args.gate_shard_size, "dims": args.dims}
            for workers in args.workers:
                extra = f"{workers},0"
                row[f"gate_attack_{workers}w"] = measure("gate_attack", Path(tmp), args.gate_n, args.repeats, extra)
            print(json.dumps(row), flush=True)
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="bookkeeping-") as tmp:
            out = Path(tmp) / "out"
            started = time.perf_counter()
            if {"plan", "plan_fresh", "plan_fresh_list", "finalize", "gate"} & set(args.phases):
                build(out, n, args.shard_size)
            else:
                out.mkdir(parents=True)
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
            if {"discover", "discover_list"} & set(args.phases):
                write_input(out / "input.parquet", n)
            if {"attacks", "diversity"} & set(args.phases):
                started = time.perf_counter()
                build_embeddings(out / "emb", n, args.shard_size, args.dims)
                row["build_embeddings_s"] = round(time.perf_counter() - started, 1)
            for what in args.phases:
                if what == "compact":
                    row[what] = measure(what, out, args.shard_size, 1)
                elif what == "attacks":
                    row[what] = measure(what, out, n, args.repeats, f"2,{args.max_queries}")
                elif what == "gate_attack":
                    continue
                else:
                    row[what] = measure(what, out, n, args.repeats)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
