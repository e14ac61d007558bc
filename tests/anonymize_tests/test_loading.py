import json
import shutil

import pytest
import torch
from huggingface_hub import constants

import anonymize.tiny_models
from anonymize import (
    PickleRefused,
    SamplerSettings,
    WeightsNotFound,
    build_tiny_latent_pipeline,
    build_tiny_pixel_ddpm,
    load_model,
)


def _config(component) -> dict | None:
    """A component's config without the folder it was loaded from."""
    config = getattr(component, "config", None)
    if config is None:
        return None
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if k != "_name_or_path"}


def assert_same_model(a, b) -> None:
    """Two loaded models are the same model: the same components, configs, tokenizer and every tensor, bit for bit.

    This, and not equal sampler outputs, is what a loading claim is about. Two loads of identical
    weights (safetensors maps the file, pickle copies it) may sit at differently aligned addresses, and
    CPU kernels then take other vector paths and round differently: CI saw outputs 2e-6 apart on a loaded
    machine. Equal tensors, configs and tokenizer make the same function; determinism of one loaded model
    is tested in test_sampler.py.
    """
    described = ("kind", "resolution", "dtype", "num_train_timesteps")
    assert [getattr(a, k) for k in described] == [getattr(b, k) for k in described]
    left, right = a.pipeline.components, b.pipeline.components
    assert left.keys() == right.keys()
    modules = 0
    for name, x in left.items():
        y = right[name]
        assert type(x) is type(y), name
        assert _config(x) == _config(y), name
        if isinstance(x, torch.nn.Module):
            sx, sy = x.state_dict(), y.state_dict()
            assert sx and sx.keys() == sy.keys(), name
            for key, tensor in sx.items():
                assert tensor.dtype == sy[key].dtype and torch.equal(tensor, sy[key]), f"{name}.{key} differs"
            modules += 1
        elif hasattr(x, "get_vocab"):  # the tokenizer
            assert x.get_vocab() == y.get_vocab(), name
            assert x("picture of a person").input_ids == y("picture of a person").input_ids, name
    assert modules >= 1


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


def test_rebuilt_weights_reload_to_the_same_model(tmp_path, sampler_for):
    # Same seed, another folder: byte-identical weight files, and the reloaded model is the same model
    # (every tensor, config and the tokenizer), so it is the same function of its inputs.
    first = sampler_for("latent")[0].model  # latent_path, default settings
    again = load_model(SamplerSettings(model=str(build_tiny_latent_pipeline(tmp_path / "again", seed=0))))
    assert again.provenance()["weights_sha256"] == first.provenance()["weights_sha256"]
    assert_same_model(again, first)


def test_other_seed_gives_other_weights(tmp_path, pixel_path):
    other = build_tiny_pixel_ddpm(tmp_path / "other", seed=1)
    hashes = {load_model(SamplerSettings(model=str(p))).provenance()["weights_sha256"] for p in (other, pixel_path)}
    assert len(hashes) == 2


def test_building_is_idempotent(latent_path, monkeypatch):
    # A complete folder comes back as it is: no component is built, no staging folder made, no file touched.
    import diffusers
    import transformers

    def must_not_run(*args, **kwargs):
        raise AssertionError("build_tiny_latent_pipeline built into a folder that was already complete")

    for name in ("UNet2DConditionModel", "AutoencoderKL"):
        monkeypatch.setattr(diffusers, name, must_not_run)
    monkeypatch.setattr(transformers, "CLIPTextModel", must_not_run)
    monkeypatch.setattr(anonymize.tiny_models.tempfile, "mkdtemp", must_not_run)
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in latent_path.rglob("*")}
    assert build_tiny_latent_pipeline(latent_path) == latent_path
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in latent_path.rglob("*")} == files


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


def test_pickle_weights_load_when_allowed(pickle_only, sampler_for):
    model = load_model(SamplerSettings(model=str(pickle_only), allow_pickle=True))
    assert model.kind == "pixel" and len(model.provenance()["weights_sha256"]) == 64
    # The pickle files hold the safetensors model they were saved from: the same tensors, bit for bit.
    assert_same_model(model, sampler_for("pixel")[0].model)


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


@pytest.fixture
def no_network(monkeypatch):
    """huggingface_hub with no network: every HTTP request it makes fails at once with a connection error.

    Records the requests, every network download attempt (``DiffusionPipeline.download`` without
    ``local_files_only``) and every wait in huggingface_hub's retry loop, so "fails fast" is checked by
    what the loader did, not by the clock; and the test is the same on a CI machine that has network.
    """
    import time
    from types import SimpleNamespace

    import httpx2
    from diffusers import DiffusionPipeline
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    seen = SimpleNamespace(requests=[], downloads=[], waits=[])

    def refuse(request):
        seen.requests.append(str(request.url))
        raise httpx2.ConnectError("no network (test)", request=request)

    class NoWaiting:  # huggingface_hub's `time`, with sleep recorded instead of slept
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            seen.waits.append(seconds)

    download = DiffusionPipeline.download.__func__

    def recording_download(cls, *args, **kwargs):
        if not kwargs.get("local_files_only"):
            seen.downloads.append(args[0] if args else kwargs.get("pretrained_model_name"))
        return download(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(recording_download))
    monkeypatch.setattr(_http, "time", NoWaiting())
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    yield seen
    set_client_factory(_http.default_client_factory)


@pytest.mark.parametrize("offline", [True, False])
def test_missing_hub_id_fails_fast_with_one_line(monkeypatch, no_network, offline):
    # Fails fast: offline, no request at all; online, one download attempt and no retry waits.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # the test session runs offline (tests/conftest.py): lift it for this case
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    model = "boomerang-tests/no-such-model-anywhere"
    with pytest.raises(WeightsNotFound) as info:
        load_model(SamplerSettings(model=model))
    message = str(info.value)
    assert "\n" not in message
    assert repr(model) in message and constants.HF_HUB_CACHE in message
    assert "put it in the Hugging Face cache (HF_HOME) on a machine with network" in message
    assert not no_network.waits, "the loader waited to retry the hub"
    if offline:
        assert "(offline mode)" in message
        assert (no_network.downloads, no_network.requests) == ([], [])
    else:
        assert "fetching it from the hub failed" in message
        assert no_network.downloads == [model]
        assert any(model in url for url in no_network.requests)  # it did ask the hub


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


@pytest.fixture(scope="module")
def with_safety_checker(tmp_path_factory, latent_path):
    """A Stable-Diffusion-layout folder as the hub ships one: the tiny pipeline plus a tiny random CLIP safety
    checker and its image processor, saved with save_pretrained."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    base = StableDiffusionPipeline.from_pretrained(latent_path, local_files_only=True)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={**small, "vocab_size": 1000},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    pipe = StableDiffusionPipeline(
        **{k: v for k, v in base.components.items() if k not in ("safety_checker", "feature_extractor")},
        safety_checker=StableDiffusionSafetyChecker(config).eval(),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        requires_safety_checker=True,
    )
    folder = tmp_path_factory.mktemp("sd-with-safety-checker")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def test_safety_checker_and_feature_extractor_are_never_loaded(with_safety_checker):
    from diffusers import DiffusionPipeline

    assert (with_safety_checker / "safety_checker" / "model.safetensors").is_file()
    assert (with_safety_checker / "feature_extractor" / "preprocessor_config.json").is_file()
    # diffusers' own default loads them: the folder is the layout the hub ships.
    plain = DiffusionPipeline.from_pretrained(with_safety_checker, local_files_only=True)
    assert plain.safety_checker is not None and plain.feature_extractor is not None

    loaded = load_model(SamplerSettings(model=str(with_safety_checker), device="cpu"))
    components = loaded.pipeline.components
    assert components["safety_checker"] is None and components["feature_extractor"] is None
    modules = sorted(name for name, c in components.items() if isinstance(c, torch.nn.Module))
    assert modules == ["text_encoder", "unet", "vae"]
    counted = sum(p.numel() for c in components.values() if isinstance(c, torch.nn.Module) for p in c.parameters())
    plain_modules = [c for c in plain.components.values() if isinstance(c, torch.nn.Module)]
    checker = sum(p.numel() for p in plain.safety_checker.parameters())
    assert counted == sum(p.numel() for c in plain_modules for p in c.parameters()) - checker


def test_a_folder_of_fp16_variant_files_loads(tmp_path, latent_path):
    """`boomerang weights fetch --variant fp16` takes only a model's *.fp16.safetensors: such a folder loads."""
    from diffusers import DiffusionPipeline

    folder = tmp_path / "fp16"
    DiffusionPipeline.from_pretrained(latent_path, local_files_only=True).save_pretrained(folder, variant="fp16")
    assert sorted(p.name for p in folder.glob("unet/*.safetensors")) == ["diffusion_pytorch_model.fp16.safetensors"]
    model = load_model(SamplerSettings(model=str(folder), device="cpu"))
    assert model.kind == "latent"
