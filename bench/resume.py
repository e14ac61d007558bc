"""Resume cost: re-running a finished `boomerang anonymize` job on N images (default 1,000).

The first run does every image; the second, the same command on the same --out, finds every pair in
the manifest and does none. Its time (Ray start-up, input listing, reading the manifest parts,
finalize) as a fraction of the first run's is the cost of resuming a job that has nothing left.
A third run after deleting a tenth of the manifest parts measures a partial resume.

    .venv/bin/python -m bench.resume --n 1000 --steps 4
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench import common
from bench.pipeline_overhead import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = common.parse(parser, {"n": 8, "steps": 2})

    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    common.write_faces(work / "in", args.n, size=(64, 64))
    argv = ["anonymize", str(work / "in"), "--out", str(work / "out"), "--model", resolve_model("tiny")]
    argv += ["--steps", str(args.steps), "--levels", str(args.level), "--batch-size", str(args.batch_size)]
    try:
        first = common.run_cli(argv)
        again = common.run_cli(argv)
        parts = sorted((work / "out" / "manifest.parquet").glob("part-*.parquet"))
        removed = parts[: max(1, len(parts) // 10)]
        removed_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in removed)
        for part in removed:
            part.unlink()
        partial = common.run_cli(argv)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        {"run": "first", "wall_s": first["wall_s"], "pairs_done": first["run_json"]["pairs_done_this_run"]},
        {"run": "rerun, all done", "wall_s": again["wall_s"], "pairs_done": again["run_json"]["pairs_done_this_run"]},
        {
            "run": f"rerun, {removed_rows} missing",
            "wall_s": partial["wall_s"],
            "pairs_done": partial["run_json"]["pairs_done_this_run"],
        },
    ]
    for row in rows:
        row["fraction_of_first"] = row["wall_s"] / first["wall_s"]
    print(f"\nboomerang anonymize, {args.n} images, tiny model, {args.steps} steps, level {args.level}:")
    print(common.table(rows, list(rows[0])))
    print(common.save("resume", {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
