"""Settings reach run.json, both reports and the dataset card through `JobSettings.public_dict`, which leaves out
the fields named in `_NOT_PUBLIC`: a list of what to hide, so a new setting is public unless someone remembers.
This test makes the choice explicit for every text setting: each one either is a closed set of values (the
settings refuse a path), or is hidden, or is listed here as shown as given (text the user typed for the
purpose, like a prompt). A new text setting fails here until it is put in one of those."""

from __future__ import annotations

import json
import typing
from dataclasses import fields

import pytest

from anonymize import SamplerSettings
from anonymize.regions import RegionSettings
from anonymize.tiling import EnhanceSettings
from evaluation import EvaluationSettings
from pipeline.settings.config import _ENHANCE_KEYS, _REGION_KEYS, JobSettings, SettingsError, build_settings

# Free text shown as the user gave it: a prompt, a label, column names, a Ray address, a hub revision.
SHOWN_AS_GIVEN = {
    "prompt",
    "negative_prompt",
    "label",
    "id_column",
    "image_column",
    "identity_column",
    "address",
    "revision",
    "device",
    "dtype",
    # deepface's names of models and detectors: checked when they load, not when the settings are built.
    "recognizers",
    "detector",
}

PATH = "/data/lfw/Hermione_Quillfeather/Hermione_Quillfeather_0001.jpg"


def _text_settings() -> list[tuple[str, str]]:
    """(flag, field) of every setting whose value may be text."""
    found = []
    sections = {
        SamplerSettings: {},
        EvaluationSettings: {},
        RegionSettings: {v: k for k, v in _REGION_KEYS.items()},
        EnhanceSettings: {v: k for k, v in _ENHANCE_KEYS.items()},
        JobSettings: {},
    }
    for cls, flags in sections.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            kind = hints[f.name]
            if kind is str or str in typing.get_args(kind):
                found.append((flags.get(f.name, f.name), f.name))
    return found


@pytest.mark.parametrize(("flag", "name"), _text_settings(), ids=lambda v: v)
def test_no_text_setting_publishes_a_path_unless_declared(flag, name):
    values = {"out": "/tmp/out", flag: PATH}
    try:
        settings = build_settings(values)
    except (SettingsError, ValueError, TypeError):
        return  # a closed set of values: a path is refused
    public = json.dumps(settings.public_dict("0" * 64))
    shown = "Hermione" in public
    assert not shown or name in SHOWN_AS_GIVEN, (
        f"setting {name!r} puts a path in run.json and the reports: hide it (pipeline.settings.config._NOT_PUBLIC) "
        "or, if it is text the user types to be shown, add it to SHOWN_AS_GIVEN"
    )
