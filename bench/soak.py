"""Soak: a `boomerang run` whose run folder is on an S3 server behind a fault proxy that fails or slows about 5%
of all requests, against the same job through the same proxy with no faults.

The S3 server is moto's (bench.object_store.s3_server, real HTTP on localhost); the proxy is the tests' fault
proxy (tests/faultproxy.py, loaded by its path: it is standard-library code that imports nothing of the product,
and loading the file rather than importing `tests.faultproxy` needs no `tests` package, which a `tests` package
installed in site-packages would shadow). Every request of the job, the driver's and each Ray worker's (reads,
writes, listings, the lock's heartbeat), independently: 2% answered 503, 1.5% reset (TCP RST before an
answer), 1.5% held `--delay` seconds then passed on (seeded draws). botocore's and s3fs's own retries are on,
as in production. A faulted run that exits non-zero is run again, the same command, under the same faults,
until it exits 0 (at most `--max-reruns` times): the reruns needed are reported. Then, read directly from the
server: rows lost (pairs without a manifest row, or without distance rows) and duplicated, for the manifest and
the distances, and whether the images equal the clean run's byte for byte (same --secret-file: same names and
seeds). Clean and faulted runs alternate (clean, faulted, faulted, clean, ...); medians and their ratio.

    .venv/bin/python -m bench.soak --n 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.eval_overhead import deepface_home
from bench.object_store import s3_server
from bench.pipeline_overhead import resolve_model

ROOT = Path(__file__).resolve().parent.parent
# (kind, share of all requests): 5% in all.
FAULTS = (("503", 0.02), ("reset", 0.015), ("slow", 0.015))


def load_faultproxy():
    spec = importlib.util.spec_from_file_location("faultproxy", ROOT / "tests" / "faultproxy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["faultproxy"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def attempt(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [*common.BOOMERANG, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [""]
    return proc.returncode, time.perf_counter() - started, last[0]


def check(fs, root: str, n: int, levels: int) -> dict:
    """Rows lost and duplicated in the finished run folder, read from the server directly."""
    import pyarrow.parquet as pq

    found = {}
    for table in ("manifest.parquet", "evaluation/distances.parquet"):
        files = [f for f in fs.find(f"{root}/{table}") if f.rsplit("/", 1)[-1].startswith("part-")]
        keys = []
        for f in files:
            data = pq.read_table(f, filesystem=fs, columns=["anon_id", "level"])
            keys += list(zip(data["anon_id"].to_pylist(), data["level"].to_pylist(), strict=True))
        name = table.split("/")[-1].split(".")[0]
        pairs = set(keys)
        found[f"{name}_lost"] = n * levels - len(pairs)
        found[f"{name}_duplicates"] = len(keys) - len(pairs)  # one row per pair in each (one recognizer)
    return found


def image_etags(fs, root: str) -> dict[str, str]:
    listing = fs.find(f"{root}/images", detail=True)
    return {key[len(root) :]: info.get("ETag") for key, info in listing.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds a slow answer is held")
    parser.add_argument("--max-reruns", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = common.parse(parser, {"n": 4, "repeats": 1, "steps": 2, "batch_size": 2})

    faultproxy = load_faultproxy()
    server, s3_env = s3_server()
    os.environ.update(s3_env)
    import fsspec

    direct = fsspec.filesystem("s3", use_listings_cache=False)
    direct.mkdir("soak")
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    common.write_faces(work / "in", args.n, size=(64, 64))
    (work / "secret").write_text(bytes(range(32)).hex() + "\n")
    base = ["run", str(work / "in"), "--model", resolve_model("tiny"), "--steps", str(args.steps)]
    base += ["--levels", "0.5", "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.batch_size)]
    base += ["--recognizers", "Facenet", "--detector", "skip", "--deepface-home", str(deepface_home(["Facenet"]))]
    base += ["--secret-file", str(work / "secret")]
    timeout = 600 + 10 * args.n * args.steps
    runs: dict[str, list[dict]] = {"clean": [], "faults": []}
    try:
        with faultproxy.FaultProxy(s3_env["AWS_ENDPOINT_URL"]) as proxy:
            env = {**os.environ, **s3_env, "AWS_ENDPOINT_URL": proxy.endpoint}
            for repeat in range(args.repeats):
                # Alternating which goes first spreads a warm cache's advantage over both (with --repeats > 1).
                for mode in ("clean", "faults") if repeat % 2 == 0 else ("faults", "clean"):
                    out = f"s3://soak/{mode}-{repeat}"
                    proxy.clear()
                    seen = len(proxy.requests)
                    faults = []
                    if mode == "faults":
                        faults = [
                            proxy.inject(
                                kind, rate=rate, count=10**9, seconds=10**6, delay=args.delay, seed=args.seed + i
                            )
                            for i, (kind, rate) in enumerate(FAULTS)
                        ]
                    attempts = []
                    while True:
                        status, wall, last = attempt([*base, "--out", out], env, timeout)
                        attempts.append({"status": status, "wall_s": wall, "last_line": last if status else ""})
                        if status == 0 or len(attempts) > args.max_reruns:
                            break
                    proxy.clear()
                    row = {
                        "wall_s": sum(a["wall_s"] for a in attempts),
                        "reruns": len(attempts) - 1,
                        "finished": attempts[-1]["status"] == 0,
                        "requests": len(proxy.requests) - seen,
                        "faults": {f.kind: f.used for f in faults},
                        "attempts": attempts,
                        **check(direct, f"soak/{mode}-{repeat}", args.n, 1),
                    }
                    row["faulted_share"] = sum(row["faults"].values()) / max(row["requests"], 1)
                    runs[mode].append(row)
                    print(
                        f"{mode} {repeat}: {row['wall_s']:.1f} s, {row['reruns']} rerun(s), {row['requests']} requests"
                    )
            for repeat, row in enumerate(runs["faults"]):
                clean = image_etags(direct, f"soak/clean-{repeat}")
                row["images_identical_to_clean"] = clean == image_etags(direct, f"soak/faults-{repeat}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()
    clean_wall = common.median([r["wall_s"] for r in runs["clean"]])
    rows = []
    for mode, label in (("clean", "no faults"), ("faults", "5% of requests 503 / reset / slow")):
        done = runs[mode]
        rows.append(
            {
                "proxy": label,
                "wall_s": common.median([r["wall_s"] for r in done]),
                "wall_vs_clean": common.median([r["wall_s"] for r in done]) / clean_wall,
                "reruns": max(r["reruns"] for r in done),
                "requests": common.median([r["requests"] for r in done]),
                "faulted": f"{100 * common.median([r['faulted_share'] for r in done]):.1f}%",
                "manifest_lost": max(r["manifest_lost"] for r in done),
                "manifest_dup": max(r["manifest_duplicates"] for r in done),
                "distances_lost": max(r["distances_lost"] for r in done),
                "distances_dup": max(r["distances_duplicates"] for r in done),
            }
        )
    identical = all(r.get("images_identical_to_clean") for r in runs["faults"])
    print(
        f"\nboomerang run, {args.n} images 64x64, tiny model, {args.steps} steps, batch {args.batch_size}, --out on S3:"
    )
    print(common.table(rows, list(rows[0])))
    print(f"images of every faulted run identical to the clean run's: {identical}")
    unfinished = [r for m in runs.values() for r in m if not r["finished"]]
    print(
        common.save("soak", {"args": vars(args), "faults": FAULTS, "rows": rows, "runs": runs, "identical": identical})
    )
    if unfinished or any(
        r[k] for r in rows for k in ("manifest_lost", "manifest_dup", "distances_lost", "distances_dup")
    ):
        sys.exit(1)  # the promise broke: the saved record says where


if __name__ == "__main__":
    main()
