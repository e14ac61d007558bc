import dataclasses
import math

import pytest

from anonymize import SamplerSettings, validate_level


def test_defaults_are_the_papers_notebook():
    s = SamplerSettings()
    assert s.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (s.prompt, s.negative_prompt, s.guidance_scale) == ("picture of a person", "", 7.5)
    assert (s.steps, s.scheduler, s.latent) == (50, "dpm++", "mode")
    assert (s.resolution, s.device, s.dtype, s.revision, s.allow_pickle) == (None, None, None, None, False)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplerSettings().steps = 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps must be an integer >= 1, got 0"),
        ("steps", 2.5, "steps must be an integer >= 1, got 2.5"),
        ("steps", True, "steps must be an integer >= 1, got True"),
        ("scheduler", "euler", "scheduler must be one of dpm++, ddim, ddpm, got 'euler'"),
        ("guidance_scale", -1.0, "guidance_scale must be a finite number >= 0, got -1.0"),
        ("guidance_scale", math.nan, "guidance_scale must be a finite number >= 0, got nan"),
        ("resolution", 100, "resolution must be None or a multiple of 8 that is >= 8, got 100"),
        ("resolution", 0, "resolution must be None or a multiple of 8 that is >= 8, got 0"),
        ("latent", "mean", "latent must be one of mode, sample, got 'mean'"),
        ("dtype", "fp8", "dtype must be None or one of float32, float16, bfloat16, got 'fp8'"),
        ("model", "", "model must be a hub id or a folder path, got ''"),
        ("allow_pickle", "yes", "allow_pickle must be True or False, got 'yes'"),
        ("prompt", None, "prompt must be a string, got None"),
    ],
)
def test_bad_settings_name_field_and_value(field, value, message):
    with pytest.raises(ValueError) as info:
        SamplerSettings(**{field: value})
    assert str(info.value) == message


@pytest.mark.parametrize("level", [1, 1.0, 0.5, 1e-6, 0.7000000000000001])
def test_valid_levels(level):
    assert validate_level(level) == float(level)


@pytest.mark.parametrize(
    ("level", "shown"),
    [(0, "0.0"), (-0.1, "-0.1"), (1.5, "1.5"), (math.nan, "nan"), ("x", "'x'"), (None, "None"), (True, "True")],
)
def test_invalid_levels_are_rejected_clearly(level, shown):
    with pytest.raises(ValueError) as info:
        validate_level(level)
    assert str(info.value) == f"level must be in (0, 1], got {shown}"
