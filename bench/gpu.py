"""GPU benchmark: the sampler's speed on one GPU, and `boomerang anonymize` on Ray against a bare loop.

    # On the GPU machine, from the repository root (one H200: under 8 minutes including the model build):
    set -o pipefail; PYTHONUNBUFFERED=1 python3 -m bench.gpu 2>&1 | tee $OUT/gpu.log; cp bench/results/gpu.json $OUT/
    # Here, on a CPU: every section end to end with the tiny random-weight model (a couple of minutes):
    .venv/bin/python -m bench.gpu --smoke

The model is the Stable Diffusion 1.5 architecture with seeded random weights (bench.models "sd15", built
once into .cache/bench/sd15-random; random weights cost what real ones cost), at 512 px, level 0.7,
DPM-Solver++ with 50 steps over the full schedule (35 denoising steps at 0.7), classifier-free guidance 7.5,
float16 on CUDA, through the project's own loader and sampler (anonymize.load_model, BoomerangSampler).
`--model FOLDER` runs a real diffusers folder instead. Python there needs this project's dependencies
(diffusers, transformers, ray[data], pyarrow, pandas, scikit-image for the sample photos) beside a CUDA
torch; without ray the two Ray sections are skipped with that reason.

Sections, in the order they run. Each has a --skip-* flag; when less of --budget-s (default 450) is left
than a section needs, it is skipped with the reason recorded, or its image count is cut to fit. Results go
to bench/results/gpu.json, rewritten after every section so that a run cut short keeps what it measured.

- matmul: the GPU's dense matmul rate, 8192^3 products in the run's dtype, median TFLOP/s; measured before
  and after the sweep and the higher kept. The denominator of `efficiency`.
- sweep: images/s of a bare loop calling the sampler at batch = model_batch = 1, 2, 4, 8, 16, 32: the median
  of --repeats calls after one warm-up call, torch.cuda.synchronize() around each; peak GPU memory.
  FLOPs per image are counted as bench.efficiency counts them (torch.utils.flop_counter over one whole
  sampler call at batch 1: VAE encode, every UNet call with guidance, VAE decode; for sd15 the meta-device
  count of bench.efficiency.sd15_flops is recorded beside it). tflops = GFLOP/image x images/s / 1000;
  efficiency = tflops / matmul TFLOP/s. The best batch (most images/s) is used by every later section.
- options: at the best batch, one row each: the default (diffusers' SDPA AttnProcessor2_0, from the sweep),
  the classic AttnProcessor, the UNet in channels_last, cudnn.benchmark on (CUDA only); images/s and the
  ratio to the default. The torch.compile row is added by the compile section.
- pipeline: `boomerang anonymize` in a subprocess (its own embedded Ray, one worker with one GPU) on --n
  face photos at the model's resolution, --batch-size = --model-batch = the best batch. Its clock is the
  output images' mtimes (the anonymize actor writes each batch's images as it finishes it; the manifest's
  batch parts are compacted before the command exits). steady_ratio = its images/s from the end of its
  first batch to the end of its last over the bare loop's images/s at that batch (warm-up excluded on both
  sides; 1.0 = no overhead); end_to_end_ratio includes start-up, model load and finalize; startup_s = seconds
  to the first batch less one bare batch; actor_sampler_images_per_s = the sampler's own speed inside the
  actor (the manifest's per-image seconds), which tells GPU-side slowness from gaps between calls.
- ray_baseline: what a user would copy from Ray's Stable Diffusion batch-inference example: Ray Data
  read_images -> map_batches(callable class holding diffusers' StableDiffusionImg2ImgPipeline from the same
  folder, DPM-Solver++, strength 0.7, 50 steps, guidance 7.5), batch_size=1, ActorPoolStrategy(size=1),
  num_gpus=1, over --baseline-n of the same photos, in a subprocess. Its steady images/s (from the first
  output's completion to the last's, stamped in the actor), first_output_s (start-up included), and ours
  over it: our pipeline's steady images/s, and our bare loop's at the best batch.
- compile: torch.compile(unet, mode=M) for each M of --compile-mode (default reduce-overhead, then
  max-autotune-no-cudagraphs) at the best batch, each in a subprocess (model load included) killed after
  --compile-budget-s or what is left of the budget; first_s is its first call (compilation included), then
  one more warm-up call and --repeats timed ones; a failure or time-out is recorded with its error text.
  Runs last: it is the section most likely to run long, and max-autotune rarely fits what is left.

--smoke runs the same sections on the CPU with the tiny test model (64 px, float32, 10 steps, batches 1
and 2, 4 images, one torch thread, Ray with 2 CPUs, the workers on CPUs); torch.compile only with
--compile-smoke. Its numbers prove the plumbing, nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench import common

STARTED = time.perf_counter()
LEVEL, GUIDANCE, PROMPT = 0.7, 7.5, "picture of a person"
GPU = {
    "model": "sd15",
    "device": "cuda",
    "dtype": "float16",
    "steps": 50,
    "batches": "1,2,4,8,16,32",
    "n": 256,
    "baseline_n": 32,
    "repeats": 3,
    "matmul_n": 8192,
    "threads": None,
    "ray_cpus": None,
}
SMOKE = {
    "model": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "steps": 10,
    "batches": "1,2",
    "n": 4,
    "baseline_n": 4,
    "repeats": 2,
    "matmul_n": 512,
    "threads": 1,
    "ray_cpus": 2,
}
MARGIN_S = 15  # kept back at the end for the last save


class Skip(Exception):
    """A section decided not to run (e.g. too little budget left); the message is the reason."""


# ---------------------------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def short(err: BaseException, limit: int = 400) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def matmul_tflops(device: str, dtype: torch.dtype, n: int, repeats: int = 7) -> float:
    """Dense n^3 matmul TFLOP/s (median of repeats of a few back-to-back products).

    Not bench.efficiency.matmul_rate: its 2048^3 products are too small to fill an H200.
    """
    inner = 10 if device.startswith("cuda") else 2
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b  # the first calls pay for kernel selection / thread start-up
    times = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        times.append((time.perf_counter() - began) / inner)
    return 2 * n**3 / common.median(times) / 1e12


def model_inputs(paths: list[str], resolution: int) -> list:
    """The photos as the stage feeds them to the sampler: decoded, squared to the model's resolution."""
    from anonymize import decode_image, to_model_input

    return [to_model_input(decode_image(Path(p).read_bytes()), resolution)[0] for p in paths]


def time_calls(sampler, squares: list, batch: int, repeats: int, device: str, warmups: int = 1) -> dict:
    """Seconds of sampler calls on ``batch`` images: the first (warm-up) call, then the median of ``repeats``."""
    from anonymize import make_generator

    images = [squares[i % len(squares)] for i in range(batch)]

    def call() -> float:
        generators = [make_generator(i) for i in range(batch)]
        sync(device)
        began = time.perf_counter()
        sampler(images, LEVEL, generators)
        sync(device)
        return time.perf_counter() - began

    first = [call() for _ in range(warmups)]
    times = [call() for _ in range(repeats)]
    return {
        "batch": batch,
        "first_s": first[0],
        "call_s": common.median(times),
        "images_per_s": batch / common.median(times),
        "times_s": times,
    }


def model_resolution(folder: Path) -> int:
    """A latent pipeline folder's native side in pixels, from its configs (no weights loaded)."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    size = unet["sample_size"]
    size = size if isinstance(size, int) else size[0]
    return size * 2 ** (len(vae["block_out_channels"]) - 1)


def gpu_peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def manifest_seconds(folder: Path) -> list[float]:
    """The manifest's per-image sampler seconds (the actor's call time over its images), ok rows only."""
    import pyarrow.parquet as pq

    values = []
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part, columns=["seconds", "status"]).to_pydict()
        values += [s for s, status in zip(table["seconds"], table["status"], strict=True) if status == "ok" and s]
    return values


def kill_own_children(marker: str) -> None:
    """End the process groups of this process's own children whose command line holds ``marker``.

    common.run_cli starts the CLI in its own session and does not end it on a timeout.
    """
    for pid in common.children_by_parent().get(os.getpid(), []):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # its own session: process group id == its pid


def run_worker(kind: str, spec: dict, timeout: float) -> dict:
    """Run `python -m bench.gpu --worker KIND` in its own session; its JSON result, or an error after ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        argv = [sys.executable, "-m", "bench.gpu", "--worker", kind, "--spec", str(spec_path)]
        argv += ["--result", str(result_path)]
        proc = subprocess.Popen(
            argv, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            return {"error": f"timed out after {timeout:.0f} s (budget)", "log_tail": log[-3000:]}
        if result_path.is_file():
            result = json.loads(result_path.read_text())
        else:
            result = {"error": f"worker exited {proc.returncode} without a result"}
        if "error" in result:
            result["log_tail"] = log[-3000:]
        return result


# ------------------------------------------------------------------------------------ subprocess workers


class Img2ImgPredictor:
    """Ray's Stable Diffusion batch-inference pattern: a callable class holding a diffusers pipeline.

    Defined at module level so that Ray pickles it by reference (`bench.gpu.Img2ImgPredictor`).
    """

    def __init__(self, model: str, device: str, dtype: str, steps: int, strength: float, guidance: float, threads):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline

        from anonymize.loading import _dtype_kwarg

        if threads:
            torch.set_num_threads(threads)
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            model,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
            use_safetensors=True,
            **{_dtype_kwarg(): getattr(torch, dtype)},
        )
        # The paper's sampler, as ours runs it (the folder's own scheduler is SD 1.5's PNDM).
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.steps, self.strength, self.guidance = steps, strength, guidance

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        images = [Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in batch["image"]]
        out = self.pipe(
            prompt=[PROMPT] * len(images),
            image=images,
            strength=self.strength,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            output_type="np",
        ).images
        pixels = (np.clip(np.nan_to_num(out), 0, 1) * 255).round().astype(np.uint8)
        # When the model finished this batch, on the wall clock the driver shares: the stage's own clock, as
        # our pipeline's image mtimes are (Ray Data may hand outputs to the driver in bunches).
        done = np.full(len(images), time.time())
        return {"path": np.asarray(batch["path"]), "image": pixels, "done_at": done}


def ray_worker(spec: dict) -> dict:
    """Ray Data read_images -> map_batches(Img2ImgPredictor) over spec["paths"]; when each output was made.

    steady images/s: from the first output's completion to the last's, in the actor (``done_at``);
    first_output_s: from before ray.init to the first output reaching the driver.
    """
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    from bench.gpu import Img2ImgPredictor as Predictor  # by reference, not __main__'s copy

    began, began_wall = time.perf_counter(), time.time()
    ray.init(address="local", num_cpus=spec["ray_cpus"] or os.cpu_count(), include_dashboard=False)
    try:
        DataContext.get_current().enable_progress_bars = False
        res = spec["resolution"]
        ds = ray.data.read_images(spec["paths"], size=(res, res), mode="RGB", include_paths=True)
        ds = ds.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model": spec["model"],
                "device": spec["device"],
                "dtype": spec["dtype"],
                "steps": spec["steps"],
                "strength": LEVEL,
                "guidance": GUIDANCE,
                "threads": spec["threads"],
            },
            batch_size=1,
            compute=ActorPoolStrategy(size=1),
            num_gpus=spec["num_gpus"],
            num_cpus=spec["actor_cpus"],
        )
        arrivals, done = [], []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            arrivals.append(time.perf_counter() - began)
            done += [float(t) - began_wall for t in batch["done_at"]]
        wall = time.perf_counter() - began
    finally:
        ray.shutdown()
    steady, _ = common.steady_state([(t, 1) for t in sorted(done)])
    return {
        "rows": len(done),
        "wall_s": wall,
        "first_output_s": arrivals[0],
        "steady_images_per_s": steady,
        "done_s": sorted(done),
        "arrivals_s": arrivals,
    }


def compile_worker(spec: dict) -> dict:
    """torch.compile the UNet, then time the sampler at spec["batch"] (the first call compiles)."""
    from anonymize import BoomerangSampler, load_model

    if spec["threads"]:
        common.set_threads(spec["threads"])
    settings = sampler_settings(spec, spec["batch"])
    loaded = load_model(settings)
    loaded.pipeline.unet.compile(mode=spec["mode"])
    sampler = BoomerangSampler(loaded, settings)
    squares = model_inputs(spec["paths"], loaded.resolution)
    timing = time_calls(sampler, squares, spec["batch"], spec["repeats"], spec["device"], warmups=2)
    timing["compile_s"] = timing.pop("first_s")
    return timing


def worker_main(args) -> None:
    spec = json.loads(Path(args.spec).read_text())
    try:
        result = {"ray": ray_worker, "compile": compile_worker}[args.worker](spec)
    except BaseException as err:  # noqa: BLE001 - the parent records whatever went wrong
        result = {"error": short(err, 2000), "traceback": traceback.format_exc()[-4000:]}
    Path(args.result).write_text(json.dumps(result, default=str))


def sampler_settings(cfg: dict, batch: int):
    from anonymize import SamplerSettings

    return SamplerSettings(
        model=cfg["model"],
        steps=cfg["steps"],
        scheduler="dpm++",
        guidance_scale=GUIDANCE,
        prompt=PROMPT,
        dtype=cfg["dtype"],
        device=cfg["device"],
        model_batch=batch,
    )


# ---------------------------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        base = SMOKE if args.smoke else GPU
        cfg = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
        cfg["batches"] = [int(b) for b in str(cfg["batches"]).split(",")]
        self.cfg = cfg
        self.on_gpu = cfg["device"].startswith("cuda")
        self.result: dict = {"smoke": args.smoke, "args": vars(args), "config": cfg, "sections": {}}
        self.loaded = None
        self.best: dict | None = None  # the sweep's row at the best batch
        self.rows_by_batch: dict[int, dict] = {}
        self.pipeline_ips: float | None = None

    # -- bookkeeping

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - STARTED)

    def save(self) -> Path:
        self.result["elapsed_s"] = time.perf_counter() - STARTED
        return common.save("gpu", self.result)

    def section(self, name: str, fn, *, skip: str | None = None, need_s: float = 0) -> None:
        record: dict = {}
        if skip:
            record = {"status": "skipped", "reason": skip}
        elif self.left() < need_s + MARGIN_S:
            record = {"status": "skipped", "reason": f"budget: {self.left():.0f} s left, needs about {need_s:.0f} s"}
        else:
            print(f"\n== {name} ({self.left():.0f} s of budget left)", flush=True)
            began = time.perf_counter()
            try:
                fn()
                record = {"status": "ok"}
            except Skip as why:
                record = {"status": "skipped", "reason": str(why)}
            except Exception as err:  # noqa: BLE001 - one section failing must not lose the others
                record = {"status": "failed", "error": short(err, 2000), "traceback": traceback.format_exc()[-4000:]}
                free_memory(self.cfg["device"])
            record["seconds"] = round(time.perf_counter() - began, 1)
        self.result["sections"][name] = record
        line = f"-- {name}: {record['status']}"
        if record["status"] != "ok":
            line += f" ({record.get('reason') or record.get('error')})"
        print(line, flush=True)
        self.save()

    def faces(self, n: int) -> tuple[Path, list[str]]:
        """(folder, paths) of n face photos at the model's resolution, written once per count into .cache/bench."""
        res = self.resolution
        folder = common.CACHE / f"gpu-faces-{res}px-{n}"
        ids = common.write_faces(folder, n, size=(res, res))
        return folder, [str(folder / i) for i in ids]

    # -- sections

    def model(self) -> None:
        name = self.cfg["model"]
        began = time.perf_counter()
        if name == "tiny":
            from anonymize import build_tiny_latent_pipeline

            folder = build_tiny_latent_pipeline(common.CACHE / "tiny-sd", seed=0)
        elif name in ("sd15", "medium"):
            from bench.models import build

            folder = build(name)
        else:
            folder = Path(name)
        self.folder = Path(folder).resolve()
        self.resolution = model_resolution(self.folder)
        self.result["model"] = {
            "name": name,
            "folder": str(self.folder),
            "resolution": self.resolution,
            "build_or_find_s": time.perf_counter() - began,
        }
        if name in ("sd15", "medium"):
            from bench.models import parameter_count

            self.result["model"]["parameters"] = parameter_count(name)
        print(common.table([self.result["model"]], ["name", "resolution", "build_or_find_s", "folder"]))

    def matmul(self, when: str) -> None:
        dtype = getattr(torch, self.cfg["dtype"])
        rate = matmul_tflops(self.cfg["device"], dtype, self.cfg["matmul_n"])
        rates = self.result.setdefault("matmul", {"n": self.cfg["matmul_n"], "dtype": self.cfg["dtype"]})
        rates[f"{when}_tflops"] = rate
        rates["tflops"] = max(rate, rates.get("tflops", 0.0))
        print(f"matmul {self.cfg['matmul_n']}^3 {self.cfg['dtype']} ({when}): {rate:.1f} TFLOP/s", flush=True)

    def sweep(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        from anonymize import BoomerangSampler, load_model, make_generator

        cfg, device = {**self.cfg, "model": str(self.folder)}, self.cfg["device"]
        began = time.perf_counter()
        self.loaded = load_model(sampler_settings(cfg, 1))
        load_s = time.perf_counter() - began
        unet = self.loaded.pipeline.unet
        squares = model_inputs(self.faces(max(cfg["batches"]))[1], self.loaded.resolution)
        attention = sorted({type(p).__name__ for p in unet.attn_processors.values()})
        # FLOPs of one whole call at batch 1 (also the first warm-up).
        with FlopCounterMode(display=False) as counter:
            out = BoomerangSampler(self.loaded, sampler_settings(cfg, 1))(squares[:1], LEVEL, [make_generator(0)])
        flops = {
            "gflop_per_image": counter.get_total_flops() / 1e9,
            "n_steps": out.n_steps,
            "t_boom": out.t_boom,
            "unet_calls_per_image": out.n_steps,
            "load_s": load_s,
            "counted_call_s": time.perf_counter() - began - load_s,
            "attention_processors": attention,
            "dtype": str(unet.dtype).removeprefix("torch."),
        }
        if self.cfg["model"] == "sd15":
            from bench.efficiency import sd15_flops

            flops["sd15_meta_gflops"] = sd15_flops(out.n_steps, self.resolution)
        self.result["flops"] = flops
        print(common.table([flops], ["gflop_per_image", "n_steps", "t_boom", "load_s", "attention_processors"]))

        rows, reserve = [], (0.35 * self.args.budget_s if self.on_gpu else 0)
        self.result["sweep"] = {"rows": rows, "skipped": []}
        columns = ["batch", "images_per_s", "call_s", "first_s", "peak_gib"]
        for batch in cfg["batches"]:
            if rows:
                last = rows[-1]
                estimate = (1 + cfg["repeats"]) * batch / last["images_per_s"]
                if estimate > self.left() - reserve - MARGIN_S:
                    self.result["sweep"]["skipped"].append(
                        {"batch": batch, "reason": f"budget: about {estimate:.0f} s, {self.left():.0f} s left"}
                    )
                    continue
            if self.on_gpu:
                torch.cuda.reset_peak_memory_stats()
            sampler = BoomerangSampler(self.loaded, sampler_settings(cfg, batch))
            try:
                row = time_calls(sampler, squares, batch, cfg["repeats"], device)
            except torch.OutOfMemoryError as err:
                self.result["sweep"]["skipped"].append({"batch": batch, "reason": short(err)})
                free_memory(device)
                break
            row["peak_gib"] = gpu_peak_gib(device)
            rows.append(row)
            self.rows_by_batch[batch] = row
            print(common.table(rows[-1:], columns), flush=True)
        if not rows:
            raise RuntimeError("no batch size could be timed")

        if not self.args.skip_matmul:
            self.matmul("after_sweep")
        peak = self.result.get("matmul", {}).get("tflops")
        for row in rows:
            row["tflops"] = flops["gflop_per_image"] * row["images_per_s"] / 1e3
            row["efficiency"] = row["tflops"] / peak if peak else None
        self.best = max(rows, key=lambda r: r["images_per_s"])
        self.result["sweep"]["best_batch"] = self.best["batch"]
        print(f"\nbare loop, {self.cfg['model']} at {self.resolution} px, {flops['n_steps']} steps, {cfg['dtype']}:")
        print(common.table(rows, [*columns, "tflops", "efficiency"]))
        print(f"best batch: {self.best['batch']} ({self.best['images_per_s']:.3g} images/s)", flush=True)

    def options(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        from anonymize import BoomerangSampler

        if self.best is None or self.loaded is None:
            raise Skip("no sweep result")
        cfg, device, batch = {**self.cfg, "model": str(self.folder)}, self.cfg["device"], self.best["batch"]
        unet = self.loaded.pipeline.unet
        original = unet.attn_processors
        default = self.result["flops"]["attention_processors"]
        rows = [{"option": f"default ({'+'.join(default)})", "images_per_s": self.best["images_per_s"], "ratio": 1.0}]
        self.result["options"] = {"batch": batch, "rows": rows, "skipped": []}

        cudnn_was = torch.backends.cudnn.benchmark

        def cudnn(on: bool) -> None:
            torch.backends.cudnn.benchmark = on

        # (name, expected slowdown for the budget check, apply, undo)
        variants = [
            (
                "attention: classic AttnProcessor",
                2.0,
                lambda: unet.set_attn_processor(AttnProcessor()),
                lambda: unet.set_attn_processor(original),
            ),
            (
                "unet channels_last",
                1.0,
                lambda: unet.to(memory_format=torch.channels_last),
                lambda: unet.to(memory_format=torch.contiguous_format),
            ),
        ]
        if self.on_gpu:
            variants.append(("cudnn.benchmark=True", 1.0, lambda: cudnn(True), lambda: cudnn(cudnn_was)))
        sampler = BoomerangSampler(self.loaded, sampler_settings(cfg, batch))
        for name, slowdown, apply, undo in variants:
            estimate = (1 + cfg["repeats"]) * batch / self.best["images_per_s"] * slowdown
            if estimate > self.left() - MARGIN_S - (60 if self.on_gpu else 0):
                self.result["options"]["skipped"].append({"option": name, "reason": f"budget: about {estimate:.0f} s"})
                continue
            apply()
            try:
                if self.on_gpu:
                    torch.cuda.reset_peak_memory_stats()
                row = time_calls(sampler, self.squares(batch), batch, cfg["repeats"], device)
                rows.append(
                    {
                        "option": name,
                        "images_per_s": row["images_per_s"],
                        "ratio": row["images_per_s"] / self.best["images_per_s"],
                        "first_s": row["first_s"],
                        "peak_gib": gpu_peak_gib(device),
                    }
                )
            except Exception as err:  # noqa: BLE001 - e.g. out of memory with the classic attention
                rows.append({"option": name, "error": short(err)})
                free_memory(device)
            finally:
                undo()
            print(common.table(rows[-1:], ["option", "images_per_s", "ratio", "first_s", "peak_gib"]), flush=True)
        print(f"\noptions at batch {batch}:")
        print(common.table(rows, ["option", "images_per_s", "ratio", "first_s", "peak_gib", "error"]))

    def squares(self, batch: int) -> list:
        if not hasattr(self, "_squares"):
            self._squares = model_inputs(self.faces(max(self.cfg["batches"]))[1], self.resolution)
        return self._squares[:batch]

    def release_model(self) -> None:
        self.loaded = None
        free_memory(self.cfg["device"])

    def pipeline(self) -> None:
        if self.best is None:
            raise Skip("no sweep result to compare with")
        cfg, batch = self.cfg, self.best["batch"]
        bare = self.best["images_per_s"]
        startup = 45 if self.on_gpu else 40
        reserve = 0 if self.args.skip_ray_baseline or self.args.skip_ray else self.baseline_need_s(8)
        fit = int((self.left() - MARGIN_S - reserve - startup) * bare / 1.5)
        n = min(cfg["n"], fit) // batch * batch
        if n < 2 * batch:
            raise Skip(f"budget: {self.left():.0f} s left fits {max(fit, 0)} images, need two batches of {batch}")
        folder, _ = self.faces(n)
        work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
        argv = ["anonymize", str(folder), "--out", str(work / "out"), "--overwrite"]
        argv += ["--model", str(self.folder), "--steps", str(cfg["steps"]), "--levels", str(LEVEL)]
        argv += ["--guidance-scale", str(GUIDANCE), "--scheduler", "dpm++", "--prompt", PROMPT]
        argv += ["--batch-size", str(batch), "--model-batch", str(batch), "--workers", "1"]
        argv += ["--gpus-per-worker", "1" if self.on_gpu else "0", "--dtype", cfg["dtype"], "--device", cfg["device"]]
        timeout = self.left() - MARGIN_S - reserve
        print(f"boomerang {' '.join(argv)}  (N={n}, timeout {timeout:.0f} s)", flush=True)
        started_wall = time.time()  # run_cli's own start, to within microseconds
        try:
            run = common.run_cli(argv, timeout=timeout)
            # The clock: output images' mtimes. The driver compacts a finished shard's manifest parts into one
            # file before it exits, so the parts that common.steady_state reads are gone by then; the images
            # are written by the anonymize actor as each batch finishes, the end of the stage that holds the GPU.
            done = sorted(p.stat().st_mtime - started_wall for p in (work / "out" / "images").rglob("*.png"))
            actor_seconds = manifest_seconds(work / "out" / "manifest.parquet")
        except subprocess.TimeoutExpired:
            kill_own_children("pipeline.cli")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        batches = [(done[min(i + batch, len(done)) - 1], min(batch, len(done) - i)) for i in range(0, len(done), batch)]
        steady, first_part = common.steady_state(batches)
        wall = run["wall_s"]
        record = {
            "n": n,
            "batch": batch,
            "images": len(done),
            "wall_s": wall,
            "steady_images_per_s": steady,
            # The sampler's own speed inside the actor (the manifest's per-image seconds around each call).
            "actor_sampler_images_per_s": 1 / common.median(actor_seconds) if actor_seconds else None,
            "bare_images_per_s": bare,
            "steady_ratio": steady / bare,
            "end_to_end_images_per_s": n / wall,
            "end_to_end_ratio": n / bare / wall,
            "startup_s": first_part - batch / bare,
            "run_status": run["run_json"].get("status"),
            "argv": argv,
        }
        self.pipeline_ips = steady
        self.result["pipeline"] = record
        print(common.table([record], ["n", "batch", "wall_s", "steady_images_per_s", "bare_images_per_s"]))
        print(common.table([record], ["steady_ratio", "end_to_end_ratio", "startup_s", "images", "run_status"]))
        print(common.table([record], ["actor_sampler_images_per_s"]))

    def baseline_need_s(self, n: int) -> float:
        ips = self.rows_by_batch.get(1, self.best or {}).get("images_per_s") or 1.0
        return 50 + 1.3 * n / ips

    def ray_baseline(self) -> None:
        if self.best is None:
            raise Skip("no sweep result to compare with")
        cfg = self.cfg
        ips = self.rows_by_batch.get(1, self.best)["images_per_s"]  # about what img2img does at batch 1
        fit = int((self.left() - MARGIN_S - 50) * ips / 1.3)
        n = min(cfg["baseline_n"], fit)
        if n < 4:
            raise Skip(f"budget: {self.left():.0f} s left fits {max(fit, 0)} images at batch 1")
        _, paths = self.faces(n)
        spec = {
            "paths": paths,
            "model": str(self.folder),
            "resolution": self.resolution,
            "device": cfg["device"],
            "dtype": cfg["dtype"],
            "steps": cfg["steps"],
            "threads": cfg["threads"],
            "ray_cpus": cfg["ray_cpus"],
            "num_gpus": 1 if self.on_gpu else 0,
            "actor_cpus": 1,
        }
        timeout = self.left() - MARGIN_S
        print(f"Ray Data map_batches + StableDiffusionImg2ImgPipeline, batch 1, N={n} (timeout {timeout:.0f} s)")
        out = run_worker("ray", spec, timeout)
        if "error" in out:
            self.result["ray_baseline"] = {"n": n, **out}
            raise RuntimeError(out["error"])
        record = {
            "n": n,
            "steps_run": int(cfg["steps"] * LEVEL),
            "wall_s": out["wall_s"],
            "first_output_s": out["first_output_s"],
            "steady_images_per_s": out["steady_images_per_s"],
            "end_to_end_images_per_s": n / out["wall_s"],
            "ours_bare_images_per_s": self.best["images_per_s"],
            "ours_bare_over_baseline": self.best["images_per_s"] / out["steady_images_per_s"],
            "ours_pipeline_images_per_s": self.pipeline_ips,
            "ours_pipeline_over_baseline": (self.pipeline_ips / out["steady_images_per_s"])
            if self.pipeline_ips
            else None,
            "rows": out["rows"],
        }
        self.result["ray_baseline"] = record
        print(common.table([record], ["n", "wall_s", "first_output_s", "steady_images_per_s", "rows"]))
        print(common.table([record], ["ours_pipeline_over_baseline", "ours_bare_over_baseline"]))

    def compile(self) -> None:
        if self.best is None:
            raise Skip("no sweep result to compare with")
        cfg, batch = self.cfg, self.best["batch"]
        default = {"option": "default (from the sweep)", "images_per_s": self.best["images_per_s"], "ratio": 1.0}
        rows = self.result.setdefault("options", {"batch": batch, "rows": [default], "skipped": []})["rows"]
        for mode in self.args.compile_mode.split(","):
            timeout = min(self.args.compile_budget_s, self.left() - MARGIN_S)
            if timeout < (60 if self.on_gpu else 30):
                rows.append({"option": f"torch.compile({mode})", "error": f"skipped: {self.left():.0f} s left"})
                continue
            spec = {**cfg, "model": str(self.folder), "batch": batch, "mode": mode, "paths": self.faces(batch)[1]}
            print(f"torch.compile(unet, mode={mode!r}) at batch {batch} (timeout {timeout:.0f} s)", flush=True)
            out = run_worker("compile", spec, timeout)
            row = {"option": f"torch.compile({mode})"}
            if "error" in out:
                row.update(error=out["error"], log_tail=out.get("log_tail", "")[-1500:])
            else:
                ratio = out["images_per_s"] / self.best["images_per_s"]
                row.update(images_per_s=out["images_per_s"], ratio=ratio, first_s=out["compile_s"])
            rows.append(row)
            print(common.table(rows[-1:], ["option", "images_per_s", "ratio", "first_s", "error"]), flush=True)

    def summary(self) -> None:
        r = self.result
        line = {
            "best_batch": (self.best or {}).get("batch"),
            "bare_images_per_s": (self.best or {}).get("images_per_s"),
            "efficiency": (self.best or {}).get("efficiency"),
            "pipeline_steady_ratio": r.get("pipeline", {}).get("steady_ratio"),
            "ours_over_ray_baseline": r.get("ray_baseline", {}).get("ours_pipeline_over_baseline"),
        }
        r["summary"] = line
        print("\nsummary:")
        print(common.table([line], list(line)))
        print(common.table([{"section": k, **v} for k, v in r["sections"].items()], ["section", "status", "seconds"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU plumbing run with the tiny model")
    parser.add_argument("--budget-s", type=float, default=450, help="whole-run budget; later sections give way")
    parser.add_argument("--model", help="sd15 (default) | medium | tiny | a diffusers folder")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--steps", type=int, help="steps over the full schedule (default 50)")
    parser.add_argument("--batches", help="sweep batch sizes, e.g. 1,2,4,8,16,32")
    parser.add_argument("--n", type=int, help="images for the pipeline section (default 256)")
    parser.add_argument("--baseline-n", type=int, help="images for the Ray baseline (default 32)")
    parser.add_argument("--repeats", type=int, help="timed calls per batch size (default 3)")
    parser.add_argument("--matmul-n", type=int, help="matmul side (default 8192)")
    parser.add_argument("--threads", type=int, help="torch threads in this process (default: all cores)")
    parser.add_argument("--ray-cpus", type=int, help="CPUs of the baseline's Ray (default: all)")
    parser.add_argument(
        "--compile-mode",
        default="reduce-overhead,max-autotune-no-cudagraphs",
        help="torch.compile modes to try, in order, while the budget lasts",
    )
    parser.add_argument("--compile-budget-s", type=float, default=200, help="per torch.compile mode, compile included")
    parser.add_argument("--compile-smoke", action="store_true", help="with --smoke, also run torch.compile on CPU")
    for name in ("matmul", "sweep", "options", "pipeline", "ray-baseline", "ray", "compile"):
        parser.add_argument(f"--skip-{name}", action="store_true")
    parser.add_argument("--worker", choices=("ray", "compile"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    bench = Bench(args)
    cfg = bench.cfg
    if cfg["threads"]:
        common.set_threads(cfg["threads"])
    if bench.on_gpu and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --smoke for the CPU plumbing check")
    if args.skip_sweep:
        # The later sections need a bare-loop reference: time only the largest batch.
        cfg["batches"] = cfg["batches"][-1:]
    no_ray = "ray is not installed" if importlib.util.find_spec("ray") is None else None
    print(f"bench.gpu: {common.machine()}", flush=True)

    bench.section("model", bench.model)
    if bench.result["sections"]["model"]["status"] != "ok":
        bench.save()
        sys.exit(f"model: {bench.result['sections']['model'].get('error')}")
    bench.section("matmul", lambda: bench.matmul("before_sweep"), skip="--skip-matmul" if args.skip_matmul else None)
    bench.section("sweep", bench.sweep)
    bench.section("options", bench.options, skip="--skip-options" if args.skip_options else None)
    bench.release_model()
    skip_pipeline = "--skip-pipeline" if args.skip_pipeline else "--skip-ray" if args.skip_ray else no_ray
    bench.section("pipeline", bench.pipeline, skip=skip_pipeline, need_s=60)
    skip_base = "--skip-ray-baseline" if args.skip_ray_baseline else "--skip-ray" if args.skip_ray else no_ray
    bench.section("ray_baseline", bench.ray_baseline, skip=skip_base, need_s=60)
    skip_compile = "--skip-compile" if args.skip_compile else None
    if args.smoke and not args.compile_smoke:
        skip_compile = skip_compile or "smoke: pass --compile-smoke to compile on the CPU"
    bench.section("compile", bench.compile, skip=skip_compile, need_s=60 if bench.on_gpu else 30)
    if "options" in bench.result:
        print(f"\noptions at batch {bench.result['options']['batch']}:")
        print(common.table(bench.result["options"]["rows"], ["option", "images_per_s", "ratio", "first_s", "error"]))
    bench.summary()
    print(bench.save())


if __name__ == "__main__":
    main()
