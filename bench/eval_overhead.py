"""Evaluation overhead: `boomerang evaluate` vs a bare loop of `DeepFace.represent` batches on the same pairs.

The pairs come from a quick `boomerang anonymize` run with the tiny model. The bare loop reads and
decodes each batch of pairs, embeds originals and anonymized images with one batched
`DeepFace.represent` call each (detector "skip", as the command is run), and takes cosine distances:
the least work that gives the same numbers. Runs are interleaved and medians reported; ratios as in
bench.pipeline_overhead (steady state from the first manifest part to the last, and end to end).

    .venv/bin/python -m bench.eval_overhead --n 48 --recognizers Facenet --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from bench.pipeline_overhead import resolve_model


def deepface_home(recognizers: list[str]) -> Path:
    from evaluation import write_random_weights

    home = common.CACHE / "deepface"
    write_random_weights(home, tuple(recognizers), engine="pytorch", seed=0)
    return home


def pairs_of(anonymized: Path, originals: Path) -> list[tuple[Path, Path]]:
    """(original, anonymized) file pairs of a boomerang output folder, through its private identities."""
    import pandas as pd

    manifest = pd.read_parquet(anonymized / "manifest.parquet")
    ids = pd.read_parquet(anonymized / "private" / "identities.parquet").set_index("anon_id")["image_id"]
    manifest = manifest[manifest["status"] == "ok"].sort_values("anon_id")
    return [(originals / ids[r.anon_id], anonymized / r.output_path) for r in manifest.itertuples()]


def bare_loop(pairs, recognizers: list[str], batch: int, threads: int) -> list[float]:
    """Per-batch seconds of decode + DeepFace.represent (originals, anonymized) + cosine distance."""
    from anonymize import decode_image  # the same decoder the stage uses

    common.set_threads(threads)
    from deepface import DeepFace

    def bgr(path: Path) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(decode_image(path.read_bytes()))[:, :, ::-1])

    for name in recognizers:  # build each model once, outside the clock, as the stage's actor does
        DeepFace.represent(bgr(pairs[0][0]), model_name=name, detector_backend="skip", enforce_detection=False)
    times = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        began = time.perf_counter()
        originals, anonymized = [bgr(o) for o, _ in chunk], [bgr(a) for _, a in chunk]
        for name in recognizers:
            vectors = [
                np.array([r[0]["embedding"] for r in _as_lists(DeepFace.represent(images, model_name=name, **_KW))])
                for images in (originals, anonymized)
            ]
            a, b = vectors
            _ = 1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        times.append(time.perf_counter() - began)
    return times


_KW = {"detector_backend": "skip", "enforce_detection": False, "align": True, "normalization": "base"}


def _as_lists(result):
    # represent gives a list of dicts for one image and a list of lists for several.
    return [result] if result and isinstance(result[0], dict) else result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--recognizers", default="Facenet")
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--default-flags",
        action="store_true",
        help="evaluate with the default plan (an actor per CPU) instead of --eval-workers 1; compare with the "
        "bare loop on all cores (steady_vs_all_cores)",
    )
    args = common.parse(parser, {"n": 4, "repeats": 1, "eval_batch_size": 2})
    recognizers = args.recognizers.split(",")

    home = deepface_home(recognizers)
    os.environ["DEEPFACE_HOME"] = str(home)  # deepface reads it when it loads weights, in the bare loop too
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    common.write_faces(work / "in", args.n, size=(160, 160))
    tiny = resolve_model("tiny")
    common.run_cli(["anonymize", str(work / "in"), "--out", str(work / "anon"), "--model", tiny, "--steps", "4"])
    pairs = pairs_of(work / "anon", work / "in")
    argv = ["evaluate", "--originals", str(work / "in"), "--anonymized", str(work / "anon"), "--out"]
    argv += [str(work / "eval"), "--overwrite", "--recognizers", args.recognizers, "--detector", "skip"]
    argv += ["--deepface-home", str(home), "--eval-batch-size", str(args.eval_batch_size)]
    argv += [] if args.default_flags else ["--eval-workers", "1"]
    all_cores = common.set_threads()
    rows = []
    for repeat in range(args.repeats):
        bare = bare_loop(pairs, recognizers, args.eval_batch_size, threads=1)  # EvaluateConfig's threads
        bare_all = bare_loop(pairs, recognizers, args.eval_batch_size, threads=all_cores)
        run = common.run_cli(argv)
        rows.append(
            {"repeat": repeat, "pairs": len(pairs), **common.overhead_row(args.eval_batch_size, bare, bare_all, run)}
        )
        print(common.table(rows[-1:], list(rows[-1])), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = {k: common.median(r[k] for r in rows) for k in rows[0] if k != "repeat"}
    print(f"\nevaluate {len(pairs)} pairs, recognizers {args.recognizers}, batch {args.eval_batch_size}; medians:")
    print(common.table([summary], list(summary)))
    print(common.save("eval_overhead", {"args": vars(args), "rows": rows, "median": summary}))


if __name__ == "__main__":
    main()
