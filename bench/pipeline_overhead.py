"""Pipeline overhead: `boomerang anonymize` over N images vs a bare loop calling the same sampler.

Same model, settings, batches and per-image generators. The bare loop runs in this process on images
decoded beforehand (the strictest comparison: no Ray, no files, no PNG encoding). Runs are interleaved
(bare, pipeline, bare, pipeline, ...) because the machine may be shared, and medians are reported.

- steady-state ratio: the pipeline's images/s from its first manifest part to its last, over the bare
  loop's images/s on batches after the first (warm-up excluded on both sides);
- end-to-end ratio: the same with everything (start-up, model load, finalize) included;
- start-up: seconds from launching the command to its first manifest part, less one bare batch.

The bare loop is timed at the torch thread count the pipeline gives its anonymize actor and, for
reference, at every core (on a busy shared machine the latter can be slower).

    .venv/bin/python -m bench.pipeline_overhead --model medium --n 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench import common


def resolve_model(name: str) -> str:
    """'medium' or 'sd15' -> the built benchmark folder; 'tiny' -> the test model; else a path or hub id."""
    if name in ("medium", "sd15"):
        from bench.models import build

        return str(build(name))
    if name == "tiny":
        from anonymize import build_tiny_latent_pipeline

        return str(build_tiny_latent_pipeline(common.CACHE / "tiny-sd"))
    return name


def actor_threads() -> int:
    """The torch threads pipeline.execution.anonymize_pass gives each CPU anonymize actor: one (bytes independent of
    actors)."""
    from pipeline.execution.anonymize_pass import CPU_THREADS_PER_ACTOR

    return CPU_THREADS_PER_ACTOR


def bare_loop(
    model: str, folder: Path, ids: list[str], level: float, steps: int, batch: int, model_batch: int, threads
):
    """Per-batch seconds of the sampler alone, in the batches and with the generators the stage uses."""
    from anonymize import (
        BoomerangSampler,
        SamplerSettings,
        decode_image,
        load_model,
        make_generator,
        output_seed,
        to_model_input,
    )

    common.set_threads(threads)
    settings = SamplerSettings(model=model, steps=steps, model_batch=model_batch)
    loaded = load_model(settings)
    sampler = BoomerangSampler(loaded, settings)
    inputs = [to_model_input(decode_image((folder / i).read_bytes()), loaded.resolution)[0] for i in ids]
    times = []
    secret = os.urandom(32)  # the pipeline keys seeds by the run's secret; any key costs the same
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        generators = [make_generator(output_seed(secret, 0, i, level), loaded.device) for i in chunk]
        began = time.perf_counter()
        sampler(inputs[start : start + batch], level, generators)
        times.append(time.perf_counter() - began)
    return times


def pipeline_run(
    model: str, folder: Path, out: Path, level: float, steps: int, batch: int, model_batch: int, default_flags: bool
):
    argv = ["anonymize", str(folder), "--out", str(out), "--overwrite", "--model", model, "--steps", str(steps)]
    argv += ["--levels", str(level), "--batch-size", str(batch), "--model-batch", str(model_batch)]
    # One manifest part per batch, a fine clock: the write stage batches by --batch-size.
    argv += [] if default_flags else ["--workers", "1"]
    return common.run_cli(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium", help="medium | tiny | sd15 | a diffusers folder")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--default-flags",
        action="store_true",
        help="run the pipeline with its default plan (one actor per CPU) instead of --workers 1; compare with "
        "the bare loop on all cores (steady_vs_all_cores)",
    )
    args = common.parse(parser, {"model": "tiny", "n": 4, "steps": 2, "batch_size": 2, "model_batch": 2, "repeats": 1})

    model = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    ids = common.write_faces(work / "in", args.n, size=(128, 128))
    same = (args.level, args.steps, args.batch_size, args.model_batch)
    threads = actor_threads()
    all_cores = common.set_threads()
    rows = []
    for repeat in range(args.repeats):
        bare = bare_loop(model, work / "in", ids, *same, threads=threads)
        bare_all = bare_loop(model, work / "in", ids, *same, threads=all_cores) if all_cores != threads else bare
        run = pipeline_run(model, work / "in", work / "out", *same, default_flags=args.default_flags)
        rows.append({"repeat": repeat, **common.overhead_row(args.batch_size, bare, bare_all, run)})
        print(common.table(rows[-1:], list(rows[-1])), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = {k: common.median(r[k] for r in rows) for k in rows[0] if k != "repeat"}
    print(f"\nmodel {args.model}, N={args.n}, level {args.level}, {args.steps} steps, batch {args.batch_size}")
    print(f"actor torch threads {threads}; bare loop at {threads} and at {all_cores} threads; medians:")
    print(common.table([summary], list(summary)))
    print(common.save("pipeline_overhead", {"args": vars(args), "threads": threads, "rows": rows, "median": summary}))


if __name__ == "__main__":
    main()
