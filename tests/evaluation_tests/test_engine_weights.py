"""Backend engine selection and weight files: where deepface looks, the one-line error, random files."""

from __future__ import annotations

import pytest

from evaluation import MissingWeights, check_weights, use_engine, weight_file, write_random_weights


def test_weight_file_is_where_deepface_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    weights = tmp_path / ".deepface" / "weights"
    assert weight_file("VGG-Face", "pytorch") == weights / "vgg_face_weights.pth"
    assert weight_file("Facenet", "onnx") == weights / "facenet_weights.onnx"
    assert weight_file("Facenet512", "pytorch") == weights / "facenet512_weights.pth"
    assert weight_file("SFace", "pytorch") == weights / "face_recognition_sface_2021dec.onnx"
    with pytest.raises(ValueError, match="model_name"):
        weight_file("NoSuchNet", "pytorch")
    with pytest.raises(ValueError, match="engine"):
        weight_file("Facenet", "tensorflow")


def test_missing_weights_is_one_line_naming_file_folder_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    with pytest.raises(MissingWeights) as info:
        check_weights(["Facenet"], "pytorch")
    message = str(info.value)
    assert "\n" not in message
    assert "facenet_weights.pth" in message
    assert str(tmp_path / ".deepface" / "weights") in message
    assert "DEEPFACE_HOME" in message


def test_deepface_home_defaults_to_the_user_home(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPFACE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weight_file("Facenet") == tmp_path / ".deepface" / "weights" / "facenet_weights.pth"


def test_random_weights_are_seeded_idempotent_and_load_in_deepface(tmp_path, weights):
    import torch

    first = write_random_weights(tmp_path / "a", ["Facenet"], seed=3)
    again = write_random_weights(tmp_path / "b", ["Facenet"], seed=3)
    other = write_random_weights(tmp_path / "c", ["Facenet"], seed=4)
    a, b, c = (torch.load(p[0], weights_only=True) for p in (first, again, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())

    stamp = first[0].stat().st_mtime_ns
    assert write_random_weights(tmp_path / "a", ["Facenet"], seed=99) == first
    assert first[0].stat().st_mtime_ns == stamp, "an existing file is left alone"
    assert not list((tmp_path / "a" / ".deepface" / "weights").glob("*.tmp"))

    # deepface's own loader accepts the file (strict state_dict load into its own class).
    from deepface.models.facial_recognition.pytorch import Facenet
    from deepface.models.facial_recognition.pytorch.TorchFacialRecognition import load_model_weights

    load_model_weights(Facenet.InceptionResNetV1(), str(first[0]))

    with pytest.raises(ValueError, match="model_names"):
        write_random_weights(tmp_path, ["ArcFace"])


def test_engine_is_checked_and_cannot_switch_once_deepface_resolved_it(weights):
    from deepface.commons import backend_utils

    assert backend_utils.get_backend_engine() == "pytorch"
    use_engine("pytorch")
    with pytest.raises(ValueError, match="engine"):
        use_engine("tensorflow")
    with pytest.raises(RuntimeError, match="already runs on 'pytorch'"):
        use_engine("onnx")


ONNX_SCRIPT = """
import json, sys
import numpy as np
from pathlib import Path
from evaluation import Recognizer, min_pair_distance, write_random_weights
from deepface import DeepFace

write_random_weights(Path(sys.argv[1]), ["Facenet"], engine="onnx", seed=0)
a = np.load(sys.argv[2])
b = np.ascontiguousarray(a[:, ::-1])
recognizer = Recognizer("Facenet", "skip", engine="onnx")
faces = recognizer.embed([a, b], enforce_detection=True)
verify = DeepFace.verify(a[:, :, ::-1].copy(), b[:, :, ::-1].copy(), model_name="Facenet", detector_backend="skip")
print(json.dumps({"ours": min_pair_distance(faces[0].embeddings, faces[1].embeddings), "verify": verify["distance"]}))
"""


def test_onnx_engine_runs_the_same_random_model(tmp_path, portrait, evaluators):
    """onnx files exported from the same seeded model give the pytorch engine's distances."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    pytest.importorskip("onnx", reason="exporting random weights to onnx needs the onnx package")
    from evaluation import Pair

    np.save(tmp_path / "portrait.npy", portrait)
    (tmp_path / "run.py").write_text(ONNX_SCRIPT)
    # deepface fixes its engine once per process: the onnx engine needs a process of its own.
    env = os.environ | {"DEEPFACE_HOME": str(tmp_path / "home"), "DEEPFACE_BACKEND_ENGINE": "onnx"}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "home"), str(tmp_path / "portrait.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours"] == pytest.approx(result["verify"], abs=1e-5)

    flipped = np.ascontiguousarray(portrait[:, ::-1])
    rows = evaluators("skip").evaluate([Pair("f", 0.5, 0, "p", portrait, flipped)])
    pytorch = next(row["distance"] for row in rows if row["recognizer"] == "Facenet")
    assert result["ours"] == pytest.approx(pytorch, abs=1e-4)
