"""Fixtures for the evaluation tests: real deepface on random-weight files, real face photos.

deepface resolves its backend engine once, on first use, and creates folders under DEEPFACE_HOME
when ``deepface.DeepFace`` is imported: both variables are set here, before any test imports it.
The weight files come from the session-wide ``deepface_home`` fixture (tests/conftest.py), which
writes them with ``evaluation.write_random_weights`` and points DEEPFACE_HOME at them: the
VGG-Face file is 580 MB, so it is written once per session for every test folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ["DEEPFACE_BACKEND_ENGINE"] = "pytorch"
if "DEEPFACE_HOME" not in os.environ:
    # Until deepface_home takes over: keeps deepface's import-time folder creation out of ~.
    _scratch = tempfile.mkdtemp(prefix="evaluation-tests-deepface-")
    os.environ["DEEPFACE_HOME"] = _scratch
    atexit.register(shutil.rmtree, _scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def weights(deepface_home):
    """DEEPFACE_HOME holding random-weight VGG-Face and Facenet (pytorch) files."""
    from evaluation import weight_file

    for name in ("VGG-Face", "Facenet"):
        assert weight_file(name, "pytorch").is_file()
    return deepface_home


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's public-domain astronaut portrait (Eileen Collins), RGB uint8 512x512."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def portrait(astronaut) -> np.ndarray:
    """Head and shoulders, 320x320: the face is ~95 px wide and both eyes are found."""
    return np.ascontiguousarray(astronaut[0:320, 80:400])


@pytest.fixture(scope="session")
def face_variants(portrait) -> dict[str, np.ndarray]:
    """The portrait and plausible "anonymized" versions of it: crops, flips, shifts, brightness."""
    a = portrait
    return {
        "same": a.copy(),
        "flip": np.ascontiguousarray(a[:, ::-1]),
        "crop": np.ascontiguousarray(a[10:300, 20:310]),
        "shift": np.roll(a, (9, -13), axis=(0, 1)),
        "bright": np.clip(a.astype(np.int16) + 40, 0, 255).astype(np.uint8),
        "dark": (a * 0.6).astype(np.uint8),
    }


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """A photo of a cup of coffee: no face in it."""
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="session")
def verify(weights):
    """``DeepFace.verify`` on RGB arrays: the reference the evaluation must reproduce."""
    from deepface import DeepFace

    def run(original, anonymized, model_name, detector, enforce_detection=True):
        return DeepFace.verify(
            np.ascontiguousarray(original[:, :, ::-1]),
            np.ascontiguousarray(anonymized[:, :, ::-1]),
            model_name=model_name,
            distance_metric="cosine",
            detector_backend=detector,
            align=True,
            enforce_detection=enforce_detection,
        )["distance"]

    return run


@pytest.fixture(scope="session")
def evaluators(weights):
    """PairEvaluator per detector, built once (each loads its recognizers)."""
    from evaluation import EvaluationSettings, PairEvaluator

    cache = {}

    def get(detector: str = "opencv", **overrides):
        key = (detector, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = PairEvaluator(EvaluationSettings(detector=detector, **overrides))
        return cache[key]

    return get


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch and opencv on one thread here, and restore the settings after each module.

    On this 2-core machine, shared with other test processes, two OpenMP threads made a batch-1
    Facenet forward pass 20x slower (2 s instead of 0.1 s), and DeepFace.verify, the reference,
    embeds one face at a time.
    """
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])
