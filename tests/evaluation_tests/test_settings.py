"""EvaluationSettings: defaults, per-recognizer thresholds, validation naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from evaluation import EvaluationSettings


def test_defaults_are_the_papers_setting():
    settings = EvaluationSettings()
    assert settings.recognizers == ("VGG-Face", "Facenet")
    assert settings.detector == "opencv"
    assert settings.engine == "pytorch"
    assert settings.metric == "cosine"
    assert settings.align is True
    assert settings.no_face_anonymized == "original_box"
    assert EvaluationSettings(no_face_anonymized="whole_image").no_face_anonymized == "whole_image"
    assert settings.threshold_for("VGG-Face") == settings.threshold_for("Facenet") == 0.4


def test_per_recognizer_threshold_overrides_the_global_one():
    settings = EvaluationSettings(threshold=0.5, thresholds=[("Facenet", 0.3)])
    assert settings.threshold_for("Facenet") == 0.3
    assert settings.threshold_for("VGG-Face") == 0.5
    assert settings.thresholds == (("Facenet", 0.3),)


def test_lists_become_tuples_and_settings_are_frozen_and_hashable():
    settings = EvaluationSettings(recognizers=["Facenet512"], detector="skip")
    assert settings.recognizers == ("Facenet512",)
    hash(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.threshold = 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"recognizers": ()}, "recognizers"),
        ({"recognizers": "VGG-Face"}, "recognizers"),
        ({"recognizers": ("Facenet", "Facenet")}, "recognizers"),
        ({"recognizers": ("",)}, "recognizers"),
        ({"detector": ""}, "detector"),
        ({"engine": "tensorflow"}, "engine"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "0.4"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"thresholds": (("ArcFace", 0.5),)}, "thresholds"),
        ({"thresholds": (("Facenet", 3.0),)}, "thresholds"),
        ({"thresholds": (("Facenet", 0.3), ("Facenet", 0.2))}, "thresholds"),
        ({"thresholds": ("Facenet",)}, "thresholds"),
        ({"metric": "euclidean"}, "metric"),
        ({"align": "yes"}, "align"),
        ({"no_face_anonymized": "whole"}, "no_face_anonymized"),
        ({"no_face_anonymized": None}, "no_face_anonymized"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}\b") as info:
        EvaluationSettings(**kwargs)
    bad = next(iter(kwargs.values()))
    if isinstance(bad, str) and bad:
        assert repr(bad) in str(info.value) or bad in str(info.value)


def test_a_recognizer_the_paper_did_not_use_defaults_to_deepfaces_own_threshold():
    from deepface.config.threshold import thresholds

    settings = EvaluationSettings(recognizers=("Facenet", "Dlib", "ArcFace"))
    assert settings.threshold_for("Facenet") == 0.4
    assert settings.threshold_for("Dlib") == thresholds["Dlib"]["cosine"] != 0.4
    assert settings.threshold_for("ArcFace") == thresholds["ArcFace"]["cosine"]
    # An explicit global threshold applies to every recognizer.
    assert EvaluationSettings(recognizers=("Dlib",), threshold=0.4).threshold_for("Dlib") == 0.4
