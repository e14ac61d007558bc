"""Object-store output: the same `boomerang run` with `--out` on the local disk and on an S3 server.

The S3 server is moto's (a real HTTP S3 API, in this process, on localhost), so the figure is the cost of
the pipeline's request pattern (one PUT per image and part, listings never cached, the lock object's
heartbeat) over HTTP, not a cloud store's latency, which is higher per request and parallel across nodes.
Runs are interleaved (disk, S3, disk, S3, ...) and medians reported; the pass is run.json's timings from Ray
ready to the end of the Ray Data pass, the part that writes images and parts.

    .venv/bin/python -m bench.object_store --n 48 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common
from bench.eval_overhead import deepface_home
from bench.pipeline_overhead import resolve_model


def s3_server() -> tuple[object, dict[str, str]]:
    """moto's S3 server on a free local port, and the environment that sends s3fs to it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return server, env


def run(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([*common.BOOMERANG, *argv], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"boomerang {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def run_record(out: str) -> dict:
    import fsspec

    with fsspec.open(f"{out}/run.json") as handle:
        return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = common.parse(parser, {"n": 4, "repeats": 1, "steps": 2, "batch_size": 2})

    server, s3_env = s3_server()
    os.environ.update(s3_env)
    import fsspec

    fsspec.filesystem("s3").mkdir("bench")
    env = {**os.environ, **s3_env}
    work = Path(tempfile.mkdtemp(prefix="bench-object-store-"))
    common.write_faces(work / "in", args.n, size=(64, 64))
    base = ["run", str(work / "in"), "--model", resolve_model("tiny"), "--steps", str(args.steps)]
    base += ["--levels", "0.5", "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.batch_size)]
    base += ["--recognizers", "Facenet", "--detector", "skip", "--deepface-home", str(deepface_home(["Facenet"]))]
    results: dict[str, list[dict]] = {"disk": [], "s3": []}
    objects = 0
    try:
        for repeat in range(args.repeats):
            for store in ("disk", "s3"):
                out = str(work / f"out-{repeat}") if store == "disk" else f"s3://bench/run-{repeat}"
                wall = run([*base, "--out", out], env)
                timings = run_record(out)["timings"]
                results[store].append({"wall_s": wall, "pass_s": timings["pass_done"] - timings["ray"]})
                if store == "s3":
                    fs, root = fsspec.core.url_to_fs(out, use_listings_cache=False)
                    objects = len(fs.find(root))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()
    rows = []
    for store, runs in results.items():
        rows.append(
            {
                "out": "local disk" if store == "disk" else "S3 (moto, localhost)",
                "wall_s": common.median([r["wall_s"] for r in runs]),
                "pass_s": common.median([r["pass_s"] for r in runs]),
            }
        )
    for row in rows:
        row["pass_vs_disk"] = row["pass_s"] / rows[0]["pass_s"]
        row["wall_vs_disk"] = row["wall_s"] / rows[0]["wall_s"]
    print(f"\nboomerang run, {args.n} images 64x64, tiny model, {args.steps} steps, batch {args.batch_size}:")
    print(common.table(rows, list(rows[0])))
    print(f"objects in the finished S3 run folder: {objects} ({objects / args.n:.2f} per image)")
    print(common.save("object_store", {"args": vars(args), "rows": rows, "runs": results, "objects": objects}))


if __name__ == "__main__":
    main()
