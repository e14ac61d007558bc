"""Where deepface downloads the weight files a recognizer or face detector needs, read from the installed deepface.

deepface keeps each model's download URLs (a primary and backups) as module attributes next to the model's
code, and names the file after the URL (less ``.bz2``/``.zip`` when the URL serves it compressed). Reading
them from the installed package keeps the sources those of the deepface version that will load the files.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

from evaluation.engine import deepface_module
from evaluation.weights import weight_file

COMPRESSED = ("bz2", "zip")
# Detectors that need no file in .deepface/weights: opencv's Haar cascades ship with opencv-contrib-python
# (cv2.data), "skip" detects nothing, and the others bring their weights in their own pip packages.
NO_FILES = ("opencv", "skip", "mtcnn", "fastmtcnn", "mediapipe")
# Detectors whose package downloads its own weights outside deepface's downloader.
UNMANAGED = ("retinaface",)


@dataclass(frozen=True)
class WeightSource:
    """One file deepface looks for in ``.deepface/weights``.

    Attributes:
        name: the file's name there (``buffalo_l/…``-style names are not supported).
        urls: deepface's download URLs, primary first; each serves the file, compressed when ``compress`` is set.
        compress: "bz2" or "zip" when the URLs serve it compressed, else None.
        owner: what needs it, e.g. "recognizer Facenet" or "detector dlib".
    """

    name: str
    urls: tuple[str, ...]
    compress: str | None
    owner: str


def recognizer_sources(model_name: str, engine: str = "pytorch") -> list[WeightSource]:
    """The file deepface's ``model_name`` recognizer loads on ``engine``, with its download URLs.

    Raises ValueError for a recognizer whose file deepface does not download from a URL it names.
    """
    target = weight_file(model_name, engine).name
    module = _model_module("facial_recognition", model_name, engine)
    for urls in _url_groups(module):
        name, compress = _file_name(urls[0])
        if name == target:
            return [WeightSource(name, urls, compress, f"recognizer {model_name}")]
    raise ValueError(f"recognizer {model_name}: deepface {engine} names no download URL for {target}")


def recognizer_file(model_name: str, engine: str = "pytorch") -> WeightSource:
    """The file ``model_name`` loads on ``engine``, named without importing deepface (no URLs)."""
    return WeightSource(weight_file(model_name, engine).name, (), None, f"recognizer {model_name}")


def detector_sources(detector: str, engine: str = "pytorch") -> list[WeightSource]:
    """The files deepface's face detector ``detector`` loads, with their download URLs (none for NO_FILES)."""
    if detector in NO_FILES:
        return []
    if detector in UNMANAGED:
        raise ValueError(
            f"detector {detector}: its own package downloads its weights; run it once with network, "
            "or use another detector (dlib, yunet, ssd, centerface, yolov*)"
        )
    module = _model_module("face_detector", detector, engine)
    if detector.startswith("yolo"):
        file_name, url = module.YoloModel[detector.removeprefix("yolo").upper()].value
        return [WeightSource(file_name, (url,), None, f"detector {detector}")]
    found = []
    for urls in _url_groups(module):
        name, compress = _file_name(urls[0])
        found.append(WeightSource(name, urls, compress, f"detector {detector}"))
    return found


def job_sources(
    recognizers: Iterable[str], detectors: Iterable[str], engine: str = "pytorch", urls: bool = True
) -> list[WeightSource]:
    """Every file the recognizers and detectors need, each once, in a stable order. With ``urls=False`` the
    recognizers' files are named without importing deepface (and carry no URLs)."""
    found: dict[str, WeightSource] = {}
    for name in recognizers:
        if not urls:
            found.setdefault(weight_file(name, engine).name, recognizer_file(name, engine))
            continue
        for source in recognizer_sources(name, engine):
            found.setdefault(source.name, source)
    for name in detectors:
        for source in detector_sources(name, engine):
            found.setdefault(source.name, source)
    return list(found.values())


def _model_module(task: str, model_name: str, engine: str) -> ModuleType:
    modeling = deepface_module("deepface.modules.modeling", engine)
    exceptions = deepface_module("deepface.modules.exceptions", engine)
    try:
        model_class = modeling.get_model_class(task=task, model_name=model_name)
    except exceptions.UnimplementedError as err:
        raise ValueError(" ".join(str(err).split())) from None
    return importlib.import_module(model_class.__module__)


def _url_groups(module: ModuleType) -> list[tuple[str, ...]]:
    """Each URL attribute of ``module`` (a URL or a list of them), in definition order; templates left out."""
    groups = []
    for value in vars(module).values():
        urls = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else ()
        is_url = all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls)
        if urls and is_url and not any("{" in u for u in urls):
            groups.append(urls)
    return groups


def _file_name(url: str) -> tuple[str, str | None]:
    name = url.rsplit("/", 1)[-1]
    for ext in COMPRESSED:
        if name.endswith(f".{ext}"):
            return name[: -len(ext) - 1], ext
    return name, None
