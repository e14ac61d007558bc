"""Start-up: where a demo-size job's seconds go before its first output (issue 14's goal: <= 15 s here).

Runs `boomerang demo --out DIR` (7 sample images, tiny random-weight models, its own embedded Ray) as its own
process, `--repeats` times, and reports medians of the milestones the job records in run.json ("timings",
seconds since the process started; pipeline.timings) and of the first manifest part's appearance on disk:

- imported: the command line and the driver's modules loaded;
- prepared: inputs found, weights checked and hashed, the folder and its secret ready;
- ray: the embedded Ray started (or a cluster joined);
- first part: the first batch's manifest part written by an actor (its process start, imports, model load
  and one batch): the start-up the issue measures;
- finished: summary, attacks and report written.

    .venv/bin/python -m bench.startup --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import common

MILESTONES = ("imported", "prepared", "ray", "first_part", "first_output", "pass_done", "finished")


def one_run(out: Path) -> dict:
    """One `boomerang demo` in a fresh folder: its run.json timings, the first part's time, the wall time."""
    started = time.time()
    first_part: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if any(out.glob("manifest.parquet/part-*.parquet")):
                first_part.append(time.time() - started)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc = subprocess.run(
        [*common.BOOMERANG, "demo", "--out", str(out)], cwd=common.ROOT, capture_output=True, text=True
    )
    done.set()
    wall = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"boomerang demo exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    timings = json.loads((out / "run.json").read_text()).get("timings", {})
    return {**timings, "first_part": first_part[0] if first_part else None, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = common.parse(parser, {"repeats": 1})
    runs = []
    with tempfile.TemporaryDirectory(prefix="boomerang-startup-") as tmp:
        # The first demo builds the tiny models and random recognizers into the cache: not start-up. (A smoke
        # run's figures mean nothing: it skips the warm-up.)
        if not args.smoke:
            one_run(Path(tmp) / "warm")
        for i in range(args.repeats):
            out = Path(tmp) / f"run{i}"
            runs.append(one_run(out))
            shutil.rmtree(out, ignore_errors=True)
            print(f"run {i}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].items() if v is not None))
    rows = [
        {"milestone": m, "median s": round(common.median([r[m] for r in runs if r.get(m) is not None]), 2)}
        for m in (*MILESTONES, "wall")
        if any(r.get(m) is not None for r in runs)
    ]
    print(common.table(rows, ["milestone", "median s"]))
    common.save("startup", {"runs": runs, "medians": rows})


if __name__ == "__main__":
    main()
