"""Model efficiency: how close the sampler runs to the machine's own dense matmul rate.

    efficiency = FLOPs per image (torch.utils.flop_counter) x images per second / matmul FLOP/s

all three measured in the same run, at the same torch thread count, dtype and device. FLOPs are
counted on one full sampler call (VAE encode, every reverse step with classifier-free guidance, VAE
decode); images/s is the median over batches after a warm-up batch; the matmul rate is a 1024^3 (2048^3
on a GPU) dense matmul in the sampler's dtype.

The real Stable Diffusion 1.5 architecture (random weights, bench.models.SPECS["sd15"]) is counted on
the meta device (no memory, no time): FLOPs per image at 512 px = VAE encode + steps x UNet(batch 2) +
VAE decode. `--sd15-step` also times one real UNet call at 512 px on this machine, which with the count
gives its efficiency without running a whole image (minutes per image on a CPU).

    .venv/bin/python -m bench.efficiency --model medium --sd15-step
    # on a GPU:  --device cuda --dtype float16 (or bfloat16); diffusers uses SDPA attention by default
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import common
from bench.pipeline_overhead import resolve_model


def sampler_rate(model: str, level: float, steps: int, batch: int, repeats: int, device, dtype) -> dict:
    """FLOPs per image of one sampler call, and images/s over ``repeats`` timed calls after a warm-up."""
    from PIL import Image

    from anonymize import BoomerangSampler, SamplerSettings, load_model

    settings = SamplerSettings(model=model, steps=steps, model_batch=batch, device=device, dtype=dtype)
    loaded = load_model(settings)
    sampler = BoomerangSampler(loaded, settings)
    rng = torch.Generator().manual_seed(0)
    size = loaded.resolution
    images = [
        Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.uint8).numpy())
        for _ in range(batch)
    ]

    def call():
        sampler(images, level, [torch.Generator().manual_seed(i) for i in range(batch)])
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        call()  # also the warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    n_steps = len(sampler.schedule(level)[1])
    return {
        "resolution": size,
        "n_steps": n_steps,
        "gflop_per_image": counter.get_total_flops() / batch / 1e9,
        "images_per_s": batch / common.median(times),
        "dtype": str(loaded.pipeline.unet.dtype).removeprefix("torch."),
    }


def sd15_flops(steps_run: int, resolution: int = 512) -> dict:
    """GFLOPs of SD 1.5's components at ``resolution``, counted on the meta device."""
    from bench.models import components

    unet, vae, _ = components("sd15", meta=True)
    latent = resolution // 8
    with torch.device("meta"), torch.inference_mode():
        pixels = torch.empty(1, 3, resolution, resolution)
        latents2 = torch.empty(2, 4, latent, latent)  # [uncond, cond]: classifier-free guidance
        context = torch.empty(2, 77, 768)
        flops = {}
        for name, fn in (
            ("vae_encode", lambda: vae.encode(pixels)),
            ("unet_cfg_step", lambda: unet(latents2, 500, encoder_hidden_states=context)),
            ("vae_decode", lambda: vae.decode(latents2[:1])),
        ):
            with FlopCounterMode(display=False) as counter:
                fn()
            flops[name] = counter.get_total_flops() / 1e9
    flops["per_image"] = flops["vae_encode"] + steps_run * flops["unet_cfg_step"] + flops["vae_decode"]
    return flops


def sd15_step_seconds(resolution: int, device: str, dtype: torch.dtype) -> float:
    """Seconds of one real SD 1.5 UNet call (batch 2, random weights) after one warm-up call."""
    from bench.models import components

    unet, _, _ = components("sd15")
    unet = unet.to(device=device, dtype=dtype)
    latent = resolution // 8
    x = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 77, 768, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            began = time.perf_counter()
            unet(x, 500, encoder_hidden_states=context)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
    return times[-1]


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Dense matmul GFLOP/s on ``device`` in ``dtype`` (median of 7)."""
    n = 2048 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(9):
        began = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:  # the first calls pay for thread start-up / kernel selection
            times.append(time.perf_counter() - began)
    return 2 * n**3 / common.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium", help="tiny | medium | a diffusers folder")
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--sd15-step", action="store_true", help="also time one real SD 1.5 UNet call")
    parser.add_argument("--sd15-resolution", type=int, default=512)
    args = common.parse(parser, {"model": "tiny", "steps": 2, "batch": 1, "repeats": 1})

    threads = common.set_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for model in args.model.split(","):
        # Matmul rate right before and after each model: the machine may be shared, keep them close.
        before = matmul_rate(args.device, dtype)
        rate = sampler_rate(
            resolve_model(model), args.level, args.steps, args.batch, args.repeats, args.device, args.dtype
        )
        peak = max(before, matmul_rate(args.device, dtype))
        achieved = rate["gflop_per_image"] * rate["images_per_s"]
        rows.append(
            {"model": model, **rate, "achieved_gflops": achieved, "matmul_gflops": peak, "efficiency": achieved / peak}
        )
        print(common.table(rows[-1:], list(rows[-1])), flush=True)

    steps_run = round(args.level * 50)  # the paper's 50 DPM-Solver++ steps at this level
    sd15 = sd15_flops(steps_run, args.sd15_resolution)
    print(f"\nSD 1.5 architecture at {args.sd15_resolution} px, GFLOPs (meta-device count):")
    print(common.table([sd15], list(sd15)))
    if args.sd15_step:
        seconds = sd15_step_seconds(args.sd15_resolution, args.device, dtype)
        peak = matmul_rate(args.device, dtype)
        achieved = sd15["unet_cfg_step"] / seconds
        sd15.update(
            step_s=seconds,
            step_gflops=achieved,
            matmul_gflops=peak,
            step_efficiency=achieved / peak,
            est_s_per_image=sd15["per_image"] / achieved,
        )
        print(
            f"one SD 1.5 UNet call (batch 2): {seconds:.2f} s, {achieved:.1f} GFLOP/s, "
            f"{achieved / peak:.0%} of matmul {peak:.1f} GFLOP/s; about {sd15['est_s_per_image']:.0f} s per image "
            f"at level {args.level} ({steps_run} steps)"
        )
    print(f"torch threads {threads}, device {args.device}, dtype {args.dtype}")
    print(common.save("efficiency", {"args": vars(args), "threads": threads, "rows": rows, "sd15": sd15}))


if __name__ == "__main__":
    main()
