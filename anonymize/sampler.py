"""Boomerang local sampling (Luzi et al., TMLR 2024): noise an image part of the way, then denoise it back.

For a level L in (0, 1], t_boom is the largest timestep of the scheduler's inference grid that is
<= L * T. The image (its VAE latent, for latent models) is noised with the scheduler's own ``add_noise``
at exactly t_boom, and the reverse loop runs through every grid timestep from t_boom down. With DDIM,
``latent="sample"`` and the same generators this is, step for step and draw for draw, what diffusers'
``StableDiffusionImg2ImgPipeline`` does at the strength whose start timestep is t_boom.

Randomness: one ``torch.Generator`` per image, used for that image's draws only (VAE sample, then the
noise, then any ancestral-step noise, in img2img's order), so an image's result does not depend on its
batch mates. A sampler holds its scheduler's state while it runs: use one sampler per thread.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from anonymize.loading import LoadedModel
from anonymize.settings import SamplerSettings, validate_level

# A float level times T can land a hair below a grid timestep (0.57 * 1000 may be 569.99...).
_LEVEL_TOLERANCE = 1e-6


def boomerang_grid(scheduler, settings: SamplerSettings, level: float, T: int, device=None) -> tuple[int, list[int]]:
    """(index of t_boom, the whole grid) for ``settings.steps`` on ``scheduler``: the t_boom rule.

    Raises:
        ValueError: ``level`` is not in (0, 1], the grid is invalid, or no grid timestep is <= level * T.
    """
    level = validate_level(level)
    scheduler.set_timesteps(settings.steps, device=device)
    grid = [int(t) for t in scheduler.timesteps]
    # Some configs break down at many steps: DPM-Solver repeats timesteps, DDIM with steps_offset 1
    # reaches t = T, past the end of the training schedule.
    if any(a <= b for a, b in zip(grid[:-1], grid[1:], strict=True)) or not all(0 <= t < T for t in grid):
        raise ValueError(
            f"{settings.steps} {settings.scheduler} steps give an invalid timestep grid for this "
            f"model's scheduler config (repeated timesteps or one outside 0..{T - 1}); use fewer steps"
        )
    limit = level * T + _LEVEL_TOLERANCE
    start = next((i for i, t in enumerate(grid) if t <= limit), None)
    if start is None:
        smallest = grid[-1] / T
        raise ValueError(
            f"level {level:g} is below the smallest timestep of the {settings.steps}-step "
            f"{settings.scheduler} grid ({grid[-1]} of {T}); the smallest usable level is {smallest:g}"
        )
    return start, grid


def planned_steps(settings: SamplerSettings, level: float) -> tuple[int, int]:
    """(t_boom, number of reverse model evaluations) at ``level``, from the scheduler config alone.

    What a run would record for that level, without loading the model (cost estimates, the gate's report).
    """
    from anonymize.loading import load_scheduler

    scheduler = load_scheduler(settings)
    start, grid = boomerang_grid(scheduler, settings, level, int(scheduler.config.num_train_timesteps))
    return grid[start], len(grid) - start


@dataclass
class BoomerangOutput:
    """Result of one Boomerang call.

    Attributes:
        images: the outputs, RGB, at model resolution, in the order of the inputs.
        t_boom: the timestep the inputs were noised to and the reverse loop started at.
        n_steps: reverse model evaluations per image (classifier-free guidance batches the two passes).
        arrays: the same images as floats in [0, 1], shape (batch, height, width, 3), before rounding.
    """

    images: list[Image.Image]
    t_boom: int
    n_steps: int
    arrays: np.ndarray


class BoomerangSampler:
    """Runs Boomerang on batches of model-sized RGB images with a loaded model and fixed settings."""

    def __init__(self, model: LoadedModel, settings: SamplerSettings) -> None:
        self.model = model
        self.settings = settings
        self.pipe = model.pipeline
        self.scheduler = model.pipeline.scheduler
        self.T = model.num_train_timesteps
        if model.kind == "latent":
            self.image_processor = self.pipe.image_processor
        else:
            from diffusers.image_processor import VaeImageProcessor

            self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False)
        # Only the stochastic schedulers (DDPM) take a generator in step(); passing it to others is an error.
        self._step_takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        self._text_cache: dict[str, torch.Tensor] = {}

    def schedule(self, level: float) -> tuple[int, list[int]]:
        """Set the scheduler for ``settings.steps`` and return (t_boom, the grid timesteps to run).

        Raises:
            ValueError: ``level`` is not in (0, 1], or no grid timestep is <= level * T.
        """
        start, grid = boomerang_grid(self.scheduler, self.settings, level, self.T, self.model.device)
        if hasattr(self.scheduler, "set_begin_index"):
            # Multistep solvers keep a step index; start it at t_boom, as img2img does at its start step.
            self.scheduler.set_begin_index(start * self.scheduler.order)
        return grid[start], grid[start:]

    def __call__(self, images: list[Image.Image], level: float, generators: list[torch.Generator]) -> BoomerangOutput:
        """Resample each image at ``level``; ``generators[i]`` drives every random draw for ``images[i]``."""
        # 1. Check inputs
        res = self.model.resolution
        if len(images) != len(generators):
            raise ValueError(f"got {len(images)} images but {len(generators)} generators; pass one per image")
        for i, img in enumerate(images):
            if img.size != (res, res) or img.mode != "RGB":
                raise ValueError(f"image {i} is {img.mode} {img.size[0]}x{img.size[1]}; expected RGB {res}x{res}")
        if not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError("generators must be torch.Generator objects, one per image")

        # 2. Set timesteps: t_boom and the grid below it
        t_boom, timesteps = self.schedule(level)
        if not images:
            return BoomerangOutput([], t_boom, len(timesteps), np.zeros((0, res, res, 3), np.float32))

        run = self._run_latent if self.model.kind == "latent" else self._run_pixel
        size = self.settings.model_batch or len(images)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), size):
                part, gens = images[start : start + size], generators[start : start + size]
                # Pad to the fixed shape; the padding's draws come from throwaway generators.
                pad = size - len(part)
                part = part + [part[0]] * pad
                gens = gens + [torch.Generator().manual_seed(0) for _ in range(pad)]
                if start:
                    self.schedule(level)  # multistep schedulers keep per-run state: reset it
                chunks.append(run(part, t_boom, timesteps, gens)[: size - pad])
        arrays = np.concatenate(chunks)

        # 8. Postprocess to PIL
        pil = self.image_processor.numpy_to_pil(arrays)
        return BoomerangOutput(pil, t_boom, len(timesteps), arrays)

    def _run_latent(self, images, t_boom, timesteps, generators) -> np.ndarray:
        pipe, s, device = self.pipe, self.settings, self.model.device
        batch = len(images)
        dtype = pipe.unet.dtype

        # 3. Encode prompt; classifier-free guidance batches [uncond, cond] as img2img does
        do_cfg = s.guidance_scale > 1
        prompt_embeds = self._encode_text(s.prompt).repeat(batch, 1, 1)
        if do_cfg:
            uncond = self._encode_text(s.negative_prompt).repeat(batch, 1, 1)
            prompt_embeds = torch.cat([uncond, prompt_embeds])

        # 4. Preprocess: PIL -> NCHW in [-1, 1]
        pixels = self.image_processor.preprocess(images).to(device=device, dtype=dtype)

        # 5. Prepare latents: encode one image at a time with its own generator, then noise to t_boom
        latents = []
        for i in range(batch):
            dist = pipe.vae.encode(pixels[i : i + 1]).latent_dist
            latents.append(dist.sample(generators[i]) if s.latent == "sample" else dist.mode())
        latents = pipe.vae.config.scaling_factor * torch.cat(latents)
        latents = self._add_noise(latents, t_boom, generators)

        # 6. Denoise from t_boom through every remaining grid timestep
        step_kwargs = {"generator": generators} if self._step_takes_generator else {}
        for t in timesteps:
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            if do_cfg:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + s.guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]

        # 7. Decode
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(decoded, output_type="np")

    def _run_pixel(self, images, t_boom, timesteps, generators) -> np.ndarray:
        unet = self.pipe.unet
        # 3-4. No text; preprocess: PIL -> NCHW in [-1, 1]
        sample = self.image_processor.preprocess(images).to(device=self.model.device, dtype=unet.dtype)
        # 5. Noise the image itself to t_boom
        sample = self._add_noise(sample, t_boom, generators)
        # 6. Denoise
        step_kwargs = {"generator": generators} if self._step_takes_generator else {}
        for t in timesteps:
            model_output = unet(self.scheduler.scale_model_input(sample, t), t, return_dict=False)[0]
            sample = self.scheduler.step(model_output, t, sample, **step_kwargs, return_dict=False)[0]
        # 7. No decoder: the sample is the image
        return self.image_processor.postprocess(sample, output_type="np")

    def _add_noise(self, clean: torch.Tensor, t_boom: int, generators) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        # A list of generators draws each image's noise from its own generator (on the CPU, then moved).
        noise = randn_tensor(clean.shape, generator=generators, device=clean.device, dtype=clean.dtype)
        t = torch.full((clean.shape[0],), t_boom, dtype=torch.long, device=clean.device)
        return self.scheduler.add_noise(clean, noise, t)

    def _encode_text(self, text: str) -> torch.Tensor:
        """CLIP hidden states for ``text``, shape (1, 77, d); cached, as the prompt rarely changes."""
        if text not in self._text_cache:
            pipe = self.pipe
            tokens = pipe.tokenizer(
                [text],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            mask = None
            if getattr(pipe.text_encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(self.model.device)
            hidden = pipe.text_encoder(tokens.input_ids.to(self.model.device), attention_mask=mask)[0]
            self._text_cache[text] = hidden.to(dtype=pipe.text_encoder.dtype)
        return self._text_cache[text]
