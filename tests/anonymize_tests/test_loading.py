import json
import shutil
import time

import numpy as np
import pytest
import torch
from huggingface_hub import constants

from anonymize import (
    BoomerangSampler,
    PickleRefused,
    SamplerSettings,
    WeightsNotFound,
    build_tiny_latent_pipeline,
    build_tiny_pixel_ddpm,
    load_model,
    make_generator,
)


def run_once(path, random_image, **fields):
    settings = SamplerSettings(model=str(path), steps=10, scheduler="ddim", **fields)
    sampler = BoomerangSampler(load_model(settings), settings)
    res = sampler.model.resolution
    return sampler([random_image(res, res, seed=3)], 0.4, [make_generator(7)]).arrays


def test_loaded_model_describes_itself(sampler_for, latent_path):
    model = sampler_for("latent")[0].model
    assert (model.kind, model.resolution, model.num_train_timesteps) == ("latent", 64, 1000)
    assert (model.device.type, model.dtype) == ("cpu", torch.float32)
    assert not any(m.training for m in model.pipeline.components.values() if isinstance(m, torch.nn.Module))
    record = model.provenance()
    json.dumps(record, allow_nan=False)  # goes into run.json as is
    assert record["model"] == str(latent_path)
    assert record["commit"] is None and len(record["weights_sha256"]) == 64
    assert record["scheduler"] == "DPMSolverMultistepScheduler"  # the default, dpm++
    assert (record["kind"], record["resolution"], record["dtype"]) == ("latent", 64, "float32")


@pytest.mark.parametrize(
    ("scheduler", "cls"),
    [("dpm++", "DPMSolverMultistepScheduler"), ("ddim", "DDIMScheduler"), ("ddpm", "DDPMScheduler")],
)
def test_scheduler_follows_settings(sampler_for, scheduler, cls):
    pipe = sampler_for("latent", scheduler=scheduler)[0].model.pipeline
    assert type(pipe.scheduler).__name__ == cls
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # the model's own schedule is kept
    if scheduler == "dpm++":
        assert pipe.scheduler.config.algorithm_type == "dpmsolver++"


def test_pixel_model_kind_and_native_resolution(sampler_for):
    model = sampler_for("pixel")[0].model
    assert (model.kind, model.resolution) == ("pixel", 32)


def test_resolution_override(latent_path):
    model = load_model(SamplerSettings(model=str(latent_path), resolution=32))
    assert model.resolution == 32


def test_rebuilt_weights_reload_to_the_same_output(tmp_path, latent_path, random_image):
    # Same seed, another folder: byte-identical weights, and the reloaded model samples identically.
    again = build_tiny_latent_pipeline(tmp_path / "again", seed=0)
    first = load_model(SamplerSettings(model=str(latent_path))).provenance()["weights_sha256"]
    assert load_model(SamplerSettings(model=str(again))).provenance()["weights_sha256"] == first
    np.testing.assert_array_equal(run_once(again, random_image), run_once(latent_path, random_image))


def test_other_seed_gives_other_weights(tmp_path, pixel_path):
    other = build_tiny_pixel_ddpm(tmp_path / "other", seed=1)
    hashes = {load_model(SamplerSettings(model=str(p))).provenance()["weights_sha256"] for p in (other, pixel_path)}
    assert len(hashes) == 2


def test_building_is_idempotent(latent_path):
    stamp = (latent_path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert build_tiny_latent_pipeline(latent_path) == latent_path
    assert time.perf_counter() - start < 1.0
    assert (latent_path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def test_building_refuses_a_folder_with_other_content(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a complete model"):
        build_tiny_pixel_ddpm(tmp_path / "busy")


@pytest.fixture(scope="module")
def pickle_only(tmp_path_factory, pixel_path):
    from diffusers import DiffusionPipeline

    folder = tmp_path_factory.mktemp("pickle") / "ddpm"
    DiffusionPipeline.from_pretrained(str(pixel_path)).save_pretrained(folder, safe_serialization=False)
    assert not list(folder.rglob("*.safetensors"))
    return folder


def test_pickle_only_weights_are_refused(pickle_only):
    with pytest.raises(PickleRefused) as info:
        load_model(SamplerSettings(model=str(pickle_only)))
    message = str(info.value)
    assert isinstance(info.value, WeightsNotFound)
    assert "\n" not in message
    assert str(pickle_only) in message and "unet/diffusion_pytorch_model.bin" in message
    assert "pass --allow-pickle if you trust the file" in message


def test_pickle_weights_load_when_allowed(pickle_only, pixel_path, random_image):
    model = load_model(SamplerSettings(model=str(pickle_only), allow_pickle=True))
    assert model.kind == "pixel" and len(model.provenance()["weights_sha256"]) == 64
    np.testing.assert_array_equal(
        run_once(pickle_only, random_image, allow_pickle=True), run_once(pixel_path, random_image)
    )


def test_missing_folder_is_one_clear_line(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(WeightsNotFound) as info:
        load_model(SamplerSettings(model=str(missing)))
    message = str(info.value)
    assert "\n" not in message
    assert repr(str(missing)) in message
    assert "pass --model /path/to/a/diffusers/folder, or put it in the Hugging Face cache (HF_HOME)" in message


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(WeightsNotFound, match="is not a diffusers pipeline \\(no model_index.json\\)"):
        load_model(SamplerSettings(model=str(tmp_path)))


@pytest.mark.parametrize("offline", [True, False])
def test_missing_hub_id_fails_fast_with_one_line(monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "boomerang-tests/no-such-model-anywhere"
    start = time.perf_counter()
    with pytest.raises(WeightsNotFound) as info:
        load_model(SamplerSettings(model=model))
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "\n" not in message
    assert repr(model) in message and constants.HF_HUB_CACHE in message
    assert "put it in the Hugging Face cache (HF_HOME) on a machine with network" in message


def test_hub_snapshot_in_the_cache_loads_offline(tmp_path, monkeypatch, latent_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--boomerang-tests--tiny"
    shutil.copytree(latent_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(SamplerSettings(model="boomerang-tests/tiny"))
    record = model.provenance()
    assert (model.kind, record["model"], record["commit"], record["weights_sha256"]) == (
        "latent",
        "boomerang-tests/tiny",
        commit,
        None,
    )


def test_folder_with_missing_weight_file(tmp_path, pixel_path):
    partial = tmp_path / "partial"
    shutil.copytree(pixel_path, partial)
    (partial / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFound) as info:
        load_model(SamplerSettings(model=str(partial)))
    assert "\n" not in str(info.value) and f"loading {partial} failed" in str(info.value)
