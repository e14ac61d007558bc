"""Scaling: wall time and peak memory against the number of images, and model work against the level.

1. `boomerang run` (anonymize + evaluate) on N, 4N and 16N images with the tiny model: wall time,
   images per second, and the peak PSS of the whole job (the `boomerang` process and every process
   under it: raylet, GCS, Ray workers and actors), sampled every 0.25 s. PSS, unlike RSS, counts shared
   pages once, so the sum over processes is the job's real memory.
2. `boomerang anonymize` at levels 0.2 ... 1.0 in one job: reverse model evaluations per image (the
   manifest's n_steps) and sampler seconds per image (its `seconds`), with a least-squares line
   through each against the level; both should be linear in the level.

    .venv/bin/python -m bench.scaling --n 8 --steps 10
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench import common
from bench.eval_overhead import deepface_home
from bench.pipeline_overhead import resolve_model

LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)


def by_images(model: str, work: Path, n: int, steps: int, home: Path, factors=(1, 4, 16)) -> list[dict]:
    rows = []
    for factor in factors:
        count = n * factor
        folder = work / f"in-{count}"
        common.write_faces(folder, count, size=(96, 96))
        argv = ["run", str(folder), "--out", str(work / f"out-{count}"), "--overwrite", "--model", model]
        argv += ["--steps", str(steps), "--levels", "0.5", "--recognizers", "Facenet", "--detector", "skip"]
        argv += ["--deepface-home", str(home)]
        run = common.run_cli(argv, pss=True)
        rows.append(
            {
                "images": count,
                "wall_s": run["wall_s"],
                "images_per_s": count / run["wall_s"],
                "peak_pss_mib": run["peak_pss_mib"],
                "rows_done": run["run_json"]["pairs_done_this_run"],
            }
        )
        print(common.table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def by_level(model: str, work: Path, n: int, steps: int) -> tuple[list[dict], dict]:
    import pandas as pd

    folder = work / f"in-{n}"
    common.write_faces(folder, n, size=(96, 96))
    out = work / "levels"
    argv = ["anonymize", str(folder), "--out", str(out), "--overwrite", "--model", model, "--steps", str(steps)]
    argv += ["--levels", ",".join(map(str, LEVELS))]
    common.run_cli(argv)
    manifest = pd.read_parquet(out / "manifest.parquet")
    grouped = manifest.groupby("level").agg(n_steps=("n_steps", "first"), seconds=("seconds", "median"))
    rows = [{"level": float(lv), "n_steps": int(r.n_steps), "s_per_image": r.seconds} for lv, r in grouped.iterrows()]
    fits = {}
    for key in ("n_steps", "s_per_image"):
        x, y = np.array([r["level"] for r in rows]), np.array([r[key] for r in rows], float)
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        fits[key] = {"slope": slope, "intercept": intercept, "r2": 1 - residual.var() / y.var()}
    return rows, fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | medium | a diffusers folder")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--level-steps", type=int, default=20, help="steps for the level sweep")
    parser.add_argument("--factors", default="1,4,16", help="the job sizes, as multiples of --n")
    args = common.parse(parser, {"n": 2, "steps": 2, "level_steps": 10, "factors": "1"})

    model = resolve_model(args.model)
    home = deepface_home(["Facenet"])
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        factors = tuple(int(f) for f in args.factors.split(","))
        images = by_images(model, work, args.n, args.steps, home, factors)
        levels, fits = by_level(model, work, args.n * 2, args.level_steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nby number of images (boomerang run, level 0.5):")
    print(common.table(images, list(images[0])))
    print(f"\nby level (boomerang anonymize, {args.level_steps} steps):")
    print(common.table(levels, list(levels[0])))
    for key, fit in fits.items():
        print(f"{key} = {fit['slope']:.3g} * level + {fit['intercept']:.3g}   (R^2 {fit['r2']:.4f})")
    print(common.save("scaling", {"args": vars(args), "images": images, "levels": levels, "fits": fits}))


if __name__ == "__main__":
    main()
