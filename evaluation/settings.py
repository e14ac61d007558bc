"""The evaluation's settings, validated once when they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from evaluation.engine import ENGINES

# The paper's setting, for the two recognizers the paper used; any other recognizer defaults to
# deepface's own threshold (0.4 means nothing for, say, Dlib, whose same-person distances are < 0.07).
DEFAULT_THRESHOLD = 0.4
PAPER_RECOGNIZERS = ("VGG-Face", "Facenet")

# Where an anonymized image with no detected face is compared (EvaluationSettings.no_face_anonymized).
NO_FACE_ANONYMIZED = ("original_box", "whole_image")


@dataclass(frozen=True)
class EvaluationSettings:
    """How anonymized images are compared with their originals.

    Attributes:
        recognizers: deepface model names ("VGG-Face", "Facenet", "Facenet512", "ArcFace", ...).
        detector: deepface detector backend; "skip" takes the whole image as the face.
        engine: deepface backend engine, "pytorch" or "onnx".
        threshold: cosine distance above which a pair is cleared (not matched), for every recognizer;
            None: the paper's 0.4 for VGG-Face and Facenet, deepface's own for other models.
        thresholds: per-recognizer overrides, ((model name, threshold), ...).
        metric: distance metric; only "cosine" is supported.
        align: deepface's face alignment, as in ``DeepFace.verify(align=...)``.
        no_face_anonymized: where an anonymized image in which the detector finds no face is
            compared. "original_box" (the default): at its original's face box (the images are
            aligned, and an attacker knows where the face was), cut and aligned as the original's
            face was. "whole_image": the whole anonymized image, deepface's own fallback
            (``verify(enforce_detection=False)``), which rewards merely defeating the detector.
    """

    recognizers: tuple[str, ...] = ("VGG-Face", "Facenet")
    detector: str = "opencv"
    engine: str = "pytorch"
    threshold: float | None = None
    thresholds: tuple[tuple[str, float], ...] = ()
    metric: str = "cosine"
    align: bool = True
    no_face_anonymized: str = "original_box"

    def __post_init__(self) -> None:
        # Accept lists from config files, store tuples so the settings stay hashable.
        object.__setattr__(self, "recognizers", _as_tuple("recognizers", self.recognizers))
        object.__setattr__(
            self, "thresholds", tuple(_as_pair(item) for item in _as_tuple("thresholds", self.thresholds))
        )
        if not self.recognizers:
            raise ValueError("recognizers: name at least one deepface model, got ()")
        for name in self.recognizers:
            if not isinstance(name, str) or not name:
                raise ValueError(f"recognizers: each must be a deepface model name, got {name!r}")
        if len(set(self.recognizers)) != len(self.recognizers):
            raise ValueError(f"recognizers: each model once, got {self.recognizers!r}")
        if not isinstance(self.detector, str) or not self.detector:
            raise ValueError(f"detector: must be a deepface detector name or 'skip', got {self.detector!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: must be one of {ENGINES}, got {self.engine!r}")
        if self.threshold is not None:
            _check_threshold("threshold", self.threshold)
            object.__setattr__(self, "threshold", float(self.threshold))
        names = [name for name, _ in self.thresholds]
        for name, value in self.thresholds:
            if name not in self.recognizers:
                raise ValueError(f"thresholds: {name!r} is not among recognizers {self.recognizers!r}")
            _check_threshold(f"thresholds[{name!r}]", value)
        if len(set(names)) != len(names):
            raise ValueError(f"thresholds: each recognizer once, got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", tuple((name, float(value)) for name, value in self.thresholds))
        if self.metric != "cosine":
            raise ValueError(f"metric: only 'cosine' is supported, got {self.metric!r}")
        if not isinstance(self.align, bool):
            raise ValueError(f"align: must be True or False, got {self.align!r}")
        if not isinstance(self.no_face_anonymized, str) or self.no_face_anonymized not in NO_FACE_ANONYMIZED:
            raise ValueError(
                f"no_face_anonymized: must be one of {NO_FACE_ANONYMIZED}, got {self.no_face_anonymized!r}"
            )

    def threshold_for(self, name: str) -> float:
        """The threshold for recognizer ``name``: its override, else the global threshold, else the
        paper's 0.4 for VGG-Face and Facenet and deepface's own for any other model (0.4 if it has none)."""
        overrides = dict(self.thresholds)
        if name in overrides:
            return float(overrides[name])
        if self.threshold is not None:
            return self.threshold
        if name in PAPER_RECOGNIZERS:
            return DEFAULT_THRESHOLD
        from evaluation.engine import deepface_module

        own = deepface_module("deepface.config.threshold", self.engine).thresholds.get(name, {}).get(self.metric)
        return DEFAULT_THRESHOLD if own is None else float(own)


def _as_tuple(field: str, value) -> tuple:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ValueError(f"{field}: must be a sequence, got {value!r}")
    return tuple(value)


def _as_pair(item) -> tuple[str, float]:
    if isinstance(item, str) or not hasattr(item, "__len__") or len(item) != 2:
        raise ValueError(f"thresholds: each item must be (recognizer, threshold), got {item!r}")
    name, value = item
    return name, value


def _check_threshold(field: str, value) -> None:
    # A cosine distance lies in [0, 2]; bool is an int subclass but never a meaningful threshold.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number, got {value!r}")
    if not 0.0 <= value <= 2.0:
        raise ValueError(f"{field}: a cosine distance threshold lies in [0, 2], got {value!r}")
