import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from anonymize import BoomerangSampler, encode_png, make_generator


def record_unet_timesteps(unet):
    """Record the timestep of every UNet call (a real forward pre-hook, not a mock)."""
    seen = []
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(int(args[1])))
    return seen, handle


# Equivalence with diffusers img2img


@pytest.mark.parametrize(
    ("scheduler", "level", "guidance"),
    [
        ("ddim", 0.5, 7.5),
        ("ddim", 0.7, 7.5),
        ("ddim", 1.0, 7.5),
        ("ddim", 0.5, 1.0),
        ("dpm++", 0.5, 7.5),
        ("ddpm", 0.3, 7.5),
    ],
)
def test_matches_diffusers_img2img(sampler_for, random_image, scheduler, level, guidance):
    # With 10 steps these levels land on grid points, so img2img's strength = level starts at t_boom.
    sampler, s = sampler_for("latent", scheduler=scheduler, latent="sample", guidance_scale=guidance)
    images = [random_image(seed=1), random_image(seed=2)]
    out = sampler(images, level, [make_generator(11), make_generator(12)])

    img2img = StableDiffusionImg2ImgPipeline(**sampler.model.pipeline.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    ref = img2img(
        prompt=[s.prompt] * 2,
        negative_prompt=[s.negative_prompt] * 2,
        image=images,
        strength=level,
        num_inference_steps=s.steps,
        guidance_scale=s.guidance_scale,
        generator=[make_generator(11), make_generator(12)],
        output_type="np",
    ).images
    t_start = s.steps - int(s.steps * level)  # img2img's own rule for its first timestep
    assert int(img2img.scheduler.timesteps[t_start]) == out.t_boom
    np.testing.assert_allclose(out.arrays, ref, atol=1e-5, rtol=0)


# The t_boom rule

CASES = [
    # (kind, scheduler, steps, level, t_boom, n_steps)
    ("latent", "ddim", 10, 1.0, 901, 10),
    ("latent", "ddim", 10, 0.5, 401, 5),
    ("latent", "ddim", 10, 0.45, 401, 5),
    ("latent", "ddim", 10, 0.401, 401, 5),
    ("latent", "ddim", 10, 0.4, 301, 4),
    ("latent", "ddim", 10, 0.001, 1, 1),
    ("latent", "ddim", 50, 0.5, 481, 25),
    ("latent", "dpm++", 10, 1.0, 999, 10),
    ("latent", "dpm++", 10, 0.5, 500, 5),
    ("latent", "dpm++", 10, 0.55, 500, 5),
    ("latent", "dpm++", 50, 1.0, 999, 50),
    ("latent", "dpm++", 50, 0.3, 300, 15),
    ("latent", "ddpm", 10, 0.95, 901, 10),
    ("latent", "ddpm", 50, 1.0, 981, 50),
    ("pixel", "ddpm", 10, 0.3, 300, 4),
    ("pixel", "ddpm", 10, 0.0001, 0, 1),
    ("pixel", "ddpm", 1000, 1.0, 999, 1000),
    ("pixel", "ddpm", 1000, 0.5, 500, 501),
    ("pixel", "ddim", 1000, 0.2345, 234, 235),
]


@pytest.mark.parametrize(("kind", "scheduler", "steps", "level", "t_boom", "n_steps"), CASES)
def test_t_boom_is_the_largest_grid_timestep_at_or_below_level_times_T(
    sampler_for, kind, scheduler, steps, level, t_boom, n_steps
):
    sampler, _ = sampler_for(kind, scheduler=scheduler, steps=steps)
    got_t, timesteps = sampler.schedule(level)
    grid = [int(t) for t in sampler.scheduler.timesteps]
    assert (got_t, len(timesteps)) == (t_boom, n_steps)
    assert timesteps == grid[grid.index(t_boom) :]  # every remaining grid timestep, in order
    above = [t for t in grid if t > t_boom]
    assert not above or min(above) > level * 1000
    if hasattr(sampler.scheduler, "begin_index"):
        assert sampler.scheduler.begin_index == grid.index(t_boom)


@pytest.mark.parametrize(("scheduler", "smallest"), [("ddim", "0.001"), ("dpm++", "0.1"), ("ddpm", "0.001")])
def test_level_below_the_grid_is_refused(sampler_for, scheduler, smallest):
    sampler, _ = sampler_for("latent", scheduler=scheduler)
    with pytest.raises(ValueError, match=f"the smallest usable level is {smallest}$"):
        sampler.schedule(0.0005)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_grids_that_break_down_at_many_steps_are_refused(sampler_for, scheduler):
    # SD's config: DDIM with steps_offset 1 reaches t = 1000; DPM-Solver repeats timesteps.
    sampler, _ = sampler_for("latent", scheduler=scheduler, steps=1000)
    with pytest.raises(ValueError, match="invalid timestep grid"):
        sampler.schedule(0.5)


@pytest.mark.parametrize(
    ("level", "shown"), [(0, "0.0"), (-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"), ("x", "'x'")]
)
def test_invalid_levels_are_refused(sampler_for, random_image, level, shown):
    sampler, _ = sampler_for("latent")
    with pytest.raises(ValueError) as info:
        sampler([random_image()], level, [make_generator(0)])
    assert str(info.value) == f"level must be in (0, 1], got {shown}"


@pytest.mark.parametrize(("kind", "scheduler"), [("latent", "ddim"), ("latent", "dpm++"), ("pixel", "ddpm")])
def test_the_model_runs_exactly_at_the_grid_timesteps_from_t_boom(sampler_for, random_image, kind, scheduler):
    sampler, s = sampler_for(kind, scheduler=scheduler)
    res = sampler.model.resolution
    seen, handle = record_unet_timesteps(sampler.model.pipeline.unet)
    try:
        out = sampler([random_image(res, res)], 0.35, [make_generator(0)])
    finally:
        handle.remove()
    _, expected = sampler.schedule(0.35)
    assert seen == expected and out.n_steps == len(expected) and out.t_boom == expected[0]
    assert out.images[0].size == (res, res)


def test_pixel_ddpm_moves_further_from_the_input_with_the_level(sampler_for, random_image):
    sampler, _ = sampler_for("pixel", scheduler="ddpm")
    image = random_image(32, 32, seed=5)
    source = np.asarray(image).astype(float)

    def distance(level):
        out = sampler([image], level, [make_generator(1)])
        return np.abs(np.asarray(out.images[0]).astype(float) - source).mean(), out

    near, out = distance(0.0001)
    assert out.t_boom == 0 and near < 2.0  # t = 0: barely any noise, one step: nearly the input
    far, out = distance(1.0)
    assert out.t_boom == 900 and far > 10 * max(near, 1.0)


# Determinism and batch invariance


@pytest.mark.parametrize(("kind", "scheduler"), [("latent", "dpm++"), ("latent", "ddpm"), ("pixel", "ddpm")])
def test_same_seed_same_bytes_other_seed_other_bytes(sampler_for, random_image, kind, scheduler):
    sampler, _ = sampler_for(kind, scheduler=scheduler)
    res = sampler.model.resolution
    image = random_image(res, res, seed=9)

    def png(seed):
        return encode_png(sampler([image], 0.6, [make_generator(seed)]).images[0])

    first = png(123)
    assert png(123) == first
    assert png(124) != first


def test_latent_mode_and_sample_differ(sampler_for, random_image):
    # One loaded model for both settings: outputs of two loads may differ by float noise (~2e-6) whatever
    # the setting, so only one model's outputs can show that the setting itself changes the result.
    mode, settings = sampler_for("latent", scheduler="ddim", latent="mode")
    sample = BoomerangSampler(mode.model, dataclasses.replace(settings, latent="sample"))
    outputs = [s([random_image()], 0.3, [make_generator(0)]).arrays for s in (mode, sample)]
    assert np.abs(outputs[0] - outputs[1]).mean() > 1e-2  # far above float noise


@pytest.mark.parametrize(("scheduler", "latent"), [("dpm++", "mode"), ("ddpm", "sample")])
def test_an_image_does_not_depend_on_its_batch(sampler_for, random_image, scheduler, latent):
    sampler, _ = sampler_for("latent", scheduler=scheduler, latent=latent)
    images = [random_image(seed=20 + i) for i in range(8)]
    seeds = [1000 + i for i in range(8)]
    batch = sampler(images, 0.5, [make_generator(s) for s in seeds]).images
    for i in (0, 3):
        alone = sampler([images[i]], 0.5, [make_generator(seeds[i])]).images[0]
        diff = np.abs(np.asarray(alone).astype(int) - np.asarray(batch[i]).astype(int))
        assert diff.max() <= 1


@pytest.mark.parametrize("scheduler", ["dpm++", "ddpm"])
def test_a_fixed_model_batch_gives_the_same_bytes_alone_or_in_any_batch(sampler_for, random_image, scheduler):
    sampler, _ = sampler_for("latent", scheduler=scheduler, model_batch=4)
    images = [random_image(seed=40 + i) for i in range(5)]
    seeds = [2000 + i for i in range(5)]
    # Level 0.3: three model calls per batch, each of which would show a batch dependence as well as five.
    together = sampler(images, 0.3, [make_generator(s) for s in seeds]).images  # calls of 4 and 1 (+3 pad)
    reordered = sampler(images[::-1], 0.3, [make_generator(s) for s in seeds[::-1]]).images[::-1]
    for i in (0, 4):
        alone = sampler([images[i]], 0.3, [make_generator(seeds[i])]).images[0]
        assert encode_png(alone) == encode_png(together[i]) == encode_png(reordered[i])


# Input checks


def test_inputs_are_checked(sampler_for, random_image):
    sampler, _ = sampler_for("latent")
    with pytest.raises(ValueError, match="got 2 images but 1 generators"):
        sampler([random_image(), random_image()], 0.5, [make_generator(0)])
    with pytest.raises(ValueError, match="image 0 is RGB 32x32; expected RGB 64x64"):
        sampler([random_image(32, 32)], 0.5, [make_generator(0)])
    with pytest.raises(ValueError, match="image 0 is L 64x64"):
        sampler([random_image().convert("L")], 0.5, [make_generator(0)])
    with pytest.raises(ValueError, match="one per image"):
        sampler([random_image()], 0.5, [torch.manual_seed(0).initial_seed()])


def test_empty_batch(sampler_for):
    sampler, _ = sampler_for("latent", scheduler="ddim")
    out = sampler([], 0.5, [])
    assert (out.images, out.t_boom, out.n_steps, out.arrays.shape) == ([], 401, 5, (0, 64, 64, 3))
