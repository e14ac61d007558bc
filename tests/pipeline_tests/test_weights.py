"""`boomerang weights fetch|push` and `--weights-from` (pipeline.weights), with no outside network.

A real HTTP server on 127.0.0.1 stands in for deepface's download hosts: ``BOOMERANG_WEIGHTS_MIRROR`` (the
documented redirect) sends every deepface download to it. It serves the project's random-weight Facenet file and,
where ``face-recognition-models`` is installed, dlib's real public-domain files; it counts requests and can cut
a response short. moto's S3 server (tests/s3.py) stands in for an offline cluster's object store.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from samples import write_faces

from pipeline.cli import main
from pipeline.weights.needs import MANIFEST, MIRROR_ENV, WeightsError, needs
from pipeline.weights.store import fetch

FACENET = "facenet_weights.pth"


class WeightsHost:
    """Serves ``files`` (name -> path) at http://127.0.0.1:PORT/<name>; ``truncate[name] = n`` cuts the next n
    responses for it to half their body (with the full Content-Length)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.requests: dict[str, int] = {}
        self.truncate: dict[str, int] = {}
        self._lock = threading.Lock()
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                with host._lock:
                    host.requests[name] = host.requests.get(name, 0) + 1
                    cut = host.truncate.get(name, 0) > 0
                    if cut:
                        host.truncate[name] -= 1
                path = host.files.get(name)
                if path is None:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _keep_deepface_home():
    """Jobs and commands given --deepface-home set DEEPFACE_HOME for the process: put the session's back."""
    saved = os.environ.get("DEEPFACE_HOME")
    yield
    if saved is None:
        os.environ.pop("DEEPFACE_HOME", None)
    else:
        os.environ["DEEPFACE_HOME"] = saved


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(deepface_home) -> dict[str, Path]:
    files = {FACENET: deepface_home / ".deepface" / "weights" / FACENET}
    try:
        import face_recognition_models as models

        files["dlib_face_recognition_resnet_model_v1.dat"] = Path(models.face_recognition_model_location())
        files["shape_predictor_5_face_landmarks.dat"] = Path(models.pose_predictor_five_point_model_location())
    except ImportError:
        pass
    return files


@pytest.fixture
def host(served, monkeypatch):
    server = WeightsHost(served)
    monkeypatch.setenv(MIRROR_ENV, server.url)
    yield server
    server.close()


def test_two_concurrent_fetches_download_each_file_once(host, served, tmp_path):
    home = tmp_path / "home"
    argv = ["weights", "fetch", "--recognizers", _recognizers(served), "--no-model", "--deepface-home", str(home)]
    if "shape_predictor_5_face_landmarks.dat" in served:
        argv += ["--detector", "dlib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    folder = home / ".deepface" / "weights"
    record = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(host.requests) == set(served)
    for name, source in served.items():
        assert host.requests[name] == 1, f"{name} was downloaded {host.requests[name]} times"
        assert sha256(folder / name) == sha256(source) == record[name]["sha256"]
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp"))]
    for out in outs:
        assert len(out.splitlines()) == len(served) and all(" verified at " in line for line in out.splitlines())


def _recognizers(served) -> str:
    return "Facenet,Dlib" if "dlib_face_recognition_resnet_model_v1.dat" in served else "Facenet"


@pytest.mark.heavy
def test_fetch_from_the_mirror_then_a_job_runs(host, served, tmp_path, ray_runtime, tiny_sd, monkeypatch):
    home = tmp_path / "home"
    recognizers = _recognizers(served)
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    fetch(needs(recognizers=recognizers.split(",")))
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 2)
    extra = ("--model", str(tiny_sd), "--steps", "10")
    status, _, err = _run_with_home(data, out, home, *extra, recognizers=recognizers)
    assert status == 0, err
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    assert set(distances["recognizer"]) == set(recognizers.split(","))
    assert (distances["status"] == "ok").all()


def test_a_truncated_download_is_retried_and_never_left_in_place(host, served, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    folder = home / ".deepface" / "weights"
    host.truncate[FACENET] = 1
    fetch(needs(recognizers=["Facenet"]))
    assert host.requests[FACENET] == 2
    assert sha256(folder / FACENET) == sha256(served[FACENET])

    (folder / FACENET).unlink()
    host.truncate[FACENET] = 99
    with pytest.raises(WeightsError) as caught:
        fetch(needs(recognizers=["Facenet"]))
    message = str(caught.value)
    assert "\n" not in message and FACENET in message and "bytes" in message
    assert not (folder / FACENET).exists()
    assert not [p.name for p in folder.iterdir() if FACENET in p.name]  # no partial file of any name


def test_offline_refusal_names_the_fetch_command(tmp_path):
    data = tmp_path / "in"
    write_faces(data, 1)
    home = tmp_path / "empty-home"
    status, _, err = _run_with_home(data, tmp_path / "out", home)
    assert status == 2
    line = err.strip().splitlines()[-1]
    assert "boomerang weights fetch --recognizers Facenet" in line and str(home) in line


def _run_with_home(data: Path, out: Path, home: Path, *extra: str, recognizers: str = "Facenet"):
    """`boomerang run` with this DEEPFACE_HOME (the `cli` fixture would name the session's after it)."""
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(
            ["run", str(data), "--out", str(out), "--recognizers", recognizers, "--detector", "skip"]
            + ["--deepface-home", str(home), *extra]
        )
    return status, "", stderr.getvalue()


def test_push_to_s3_then_fetch_from_it_fills_an_empty_cache(s3_server, tmp_path, tiny_sd, deepface_home, monkeypatch):
    store = f"{s3_server.bucket('weights')}/w"
    pushed = main(
        ["weights", "push", store, "--recognizers", "Facenet", "--model", str(tiny_sd)]
        + ["--deepface-home", str(deepface_home)]
    )
    assert pushed == 0
    home, model = tmp_path / "node" / "home", tmp_path / "node" / "models" / tiny_sd.name
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    lines = fetch(needs(recognizers=["Facenet"], model=str(model)), source=store)
    assert len(lines) == 2 and all(" random (demo weights" in line for line in lines), lines  # still marked
    source = deepface_home / ".deepface" / "weights" / FACENET
    assert sha256(home / ".deepface" / "weights" / FACENET) == sha256(source)
    copied = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    wanted = sorted(p.relative_to(tiny_sd).as_posix() for p in tiny_sd.rglob("*") if p.is_file())
    assert copied == sorted([*wanted, MANIFEST])
    assert all((model / rel).read_bytes() == (tiny_sd / rel).read_bytes() for rel in wanted)


def test_a_tampered_file_in_the_store_stops_the_job_in_one_line(s3_server, tmp_path, tiny_sd, deepface_home):
    import fsspec

    store = f"{s3_server.bucket('weights')}/tampered"
    home = ["--deepface-home", str(deepface_home)]
    assert main(["weights", "push", store, "--recognizers", "Facenet", "--model", str(tiny_sd), *home]) == 0
    fs, root = fsspec.core.url_to_fs(store)
    key = f"{root}/models/{tiny_sd.name}/unet/diffusion_pytorch_model.safetensors"
    data = bytearray(fs.cat_file(key))
    data[-1] ^= 0xFF  # same size, other bytes
    fs.pipe_file(key, bytes(data))

    inputs, out = tmp_path / "in", tmp_path / "out"
    write_faces(inputs, 1)
    status, _, err = _run_with_home(
        inputs, out, tmp_path / "home", "--model", str(tmp_path / "m" / tiny_sd.name), "--weights-from", store
    )
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unet/diffusion_pytorch_model.safetensors" in lines[0] and "sha256" in lines[0]
    assert not (out / "manifest.parquet").exists() and not (out / "images").exists()
    assert not (tmp_path / "m" / tiny_sd.name / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_a_hub_model_pushed_from_one_cache_fills_another_and_loads_offline(tmp_path, monkeypatch, tiny_sd):
    import shutil

    from huggingface_hub import constants

    from anonymize import SamplerSettings, load_model
    from pipeline.weights.store import push

    commit = "0123456789abcdef0123456789abcdef01234567"
    model = "boomerang-tests/tiny"
    first = tmp_path / "cache-a" / "models--boomerang-tests--tiny"
    shutil.copytree(tiny_sd, first / "snapshots" / commit)
    (first / "refs").mkdir()
    (first / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache-a"))
    store = tmp_path / "store"
    push(needs(model=model), str(store))
    entry = json.loads((store / MANIFEST).read_text())["models"]["boomerang-tests--tiny"]
    assert entry["commit"] == commit and "unet/diffusion_pytorch_model.safetensors" in entry["files"]

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache-b"))
    fetch(needs(model=model), source=str(store))
    snapshot = tmp_path / "cache-b" / "models--boomerang-tests--tiny" / "snapshots" / commit
    assert sha256(snapshot / "unet" / "diffusion_pytorch_model.safetensors") == sha256(
        tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"
    )
    loaded = load_model(SamplerSettings(model=model, device="cpu"))
    assert loaded.commit == commit and loaded.kind == "latent"


def test_hub_patterns_take_only_the_used_components():
    from pipeline.weights.needs import hub_patterns

    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None],
    }
    allow, ignore = hub_patterns(index)
    assert not [p for p in allow if p.startswith(("safety_checker", "feature_extractor", "image_encoder"))]
    assert "unet/*.safetensors" in allow and "*.fp16.*" in ignore and not [p for p in allow if p.endswith(".bin")]
    allow16, ignore16 = hub_patterns(index, variant="fp16")
    assert "unet/*.fp16.safetensors" in allow16 and "unet/*.safetensors" not in allow16 and ignore16 == []


@pytest.mark.heavy
def test_a_two_node_job_fills_each_node_from_the_store(s3_server, tmp_path, monkeypatch, tiny_sd, deepface_home):
    """`--weights-from s3://...` on two nodes with empty caches: the driver's node is filled by the driver, the
    other by its first actors; the outputs are byte for byte those of a run with local weights."""
    import shutil

    from huggingface_hub import constants

    from pipeline.weights.store import push

    commit, model = "89abcdef0123456789abcdef0123456789abcdef", "boomerang-tests/tiny-cluster"
    cache = tmp_path / "hf-source" / "models--boomerang-tests--tiny-cluster"
    shutil.copytree(tiny_sd, cache / "snapshots" / commit)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-source"))
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    store = f"{s3_server.bucket('weights')}/cluster"
    push(needs(recognizers=["Facenet"], model=model), store)

    data = tmp_path / "in"
    write_faces(data, 4, size=(64, 64))
    driver, node = tmp_path / "driver", tmp_path / "node"
    # Nothing of another test's Ray address or token authentication (a head started with RAY_AUTH_MODE=token
    # and no token in this HOME stops at once: "Check failed: has_token").
    dropped = ("DEEPFACE_HOME", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env |= {"PYTHONPATH": os.pathsep.join(sys.path), "HOME": str(driver), "HF_HUB_CACHE": str(driver / "hf")}
    env |= {"HF_HUB_OFFLINE": "1"}
    staged, local = tmp_path / "staged", tmp_path / "local"
    script = Path(__file__).parent / "cluster_weights_job.py"
    argv = [store, str(data), str(staged), str(local), model, str(tiny_sd), str(deepface_home)]
    argv += [str(node / "home"), str(node / "hf")]
    proc = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"status"')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result == {"status": [0, 0], "nodes": 2}, proc.stderr[-3000:]

    facenet = deepface_home / ".deepface" / "weights" / FACENET
    unet = "unet/diffusion_pytorch_model.safetensors"
    for root in (driver, node):  # both nodes' caches, each filled from the bucket
        home = driver if root == driver else node / "home"
        snapshot = root / "hf" / "models--boomerang-tests--tiny-cluster" / "snapshots" / commit
        assert sha256(home / ".deepface" / "weights" / FACENET) == sha256(facenet), root
        assert sha256(snapshot / unet) == sha256(tiny_sd / unet), root
        assert not (snapshot / "safety_checker").exists()
    outputs = [sorted(pd.read_parquet(r / "manifest.parquet")["output_path"].dropna()) for r in (staged, local)]
    assert len(outputs[0]) == 4 and outputs[0] == outputs[1]
    for rel in outputs[0]:
        assert (staged / rel).read_bytes() == (local / rel).read_bytes()


def test_doctor_lists_each_needed_file_verified_random_or_missing_with_its_command(
    tmp_path, tiny_sd, deepface_home, capsys
):
    store = tmp_path / "store"
    home = ["--deepface-home", str(deepface_home)]
    assert main(["weights", "push", str(store), "--recognizers", "Facenet", "--no-model", *home]) == 0
    data = json.loads((store / MANIFEST).read_text())
    data["files"][f"deepface/{FACENET}"].pop("random")  # served as if it were a real file
    (store / MANIFEST).write_text(json.dumps(data))
    node = tmp_path / "node"
    argv = ["weights", "fetch", "--from", str(store), "--recognizers", "Facenet", "--no-model"]
    assert main([*argv, "--deepface-home", str(node)]) == 0
    capsys.readouterr()

    status = main(
        ["doctor", "--model", str(tiny_sd), "--recognizers", "Facenet,ArcFace", "--deepface-home", str(node)]
        + ["--region-detector", "yunet"]
    )
    out = capsys.readouterr().out
    assert status == 1
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert "present, verified against weights.json" in lines["Facenet"]
    assert "MISSING: fetch it with `boomerang weights fetch --recognizers ArcFace" in lines["ArcFace"]
    yunet = next(line for line in out.splitlines() if "face_detection_yunet" in line)
    assert "MISSING: fetch it with `boomerang weights fetch" in yunet and "yunet" in yunet.split("`")[1]
    assert "weights: random (demo weights" in out  # the tiny model


def test_doctor_takes_runs_weight_flags_and_counts_what_the_store_fills(tmp_path, tiny_sd, deepface_home, capsys):
    """Issue 24, item 6: `doctor` takes run's --weights-from (and --deepface-home, --model): a file absent on this
    node but listed by the store is not missing, since a job copies it here first; a store that lacks one is."""
    store = tmp_path / "store"
    home = ["--deepface-home", str(deepface_home)]
    assert main(["weights", "push", str(store), "--recognizers", "Facenet", "--model", str(tiny_sd), *home]) == 0
    empty = tmp_path / "empty node"
    empty.mkdir()
    doctor = ["doctor", "--model", str(tiny_sd), "--deepface-home", str(empty), "--weights-from", str(store)]
    capsys.readouterr()

    assert main([*doctor, "--recognizers", "Facenet"]) == 0
    out = capsys.readouterr().out
    assert f"weights store {store}: lists every file above" in out
    assert out.rstrip().splitlines()[-1].startswith("ready: every required part is present, but model ")
    assert out.rstrip().endswith("random weights: numbers not meaningful")

    assert main([*doctor, "--recognizers", "Facenet,ArcFace"]) == 1
    out = capsys.readouterr().out
    assert f"weights store: --weights-from {store}: it lacks deepface/arcface" in out
    assert out.rstrip().splitlines()[-1] == "NOT ready: missing a usable --weights-from store"
