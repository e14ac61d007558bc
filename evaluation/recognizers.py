"""Face embeddings from a deepface recognizer, exactly as ``DeepFace.verify`` computes them.

``verify(img1, img2, model_name, detector_backend, align)`` runs ``detection.extract_faces`` on
each image, then ``representation.represent(face[:, :, ::-1], detector_backend="skip")`` on each
face found, one face at a time. :class:`Recognizer` calls the same two deepface functions with the
same arguments, but embeds the faces of a whole batch of images in one ``represent`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from evaluation.engine import deepface_module
from evaluation.weights import check_weights, weight_file

# Faces per forward pass: bounds memory (VGG-Face activations are ~50 MB per face) while still
# amortizing the per-call overhead.
DEFAULT_BATCH_SIZE = 32

# What deepface and opencv raise on an image they cannot handle (no face, odd sizes, bad
# values): such an image becomes an error for itself, never for its batch.
IMAGE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, cv2.error)


@dataclass(frozen=True, eq=False)
class FaceEmbeddings:
    """What a recognizer saw in one image.

    Attributes:
        embeddings: (n_faces, d) float64, one row per face deepface extracted; the whole image is
            one "face" when none was found and detection was not enforced. None when no face was
            found with detection enforced, or on error.
        face_found: whether the detector found a face ("skip" always counts as found).
        error: why the image could not be embedded, else None.
    """

    embeddings: np.ndarray | None
    face_found: bool
    error: str | None = None


@dataclass(frozen=True, eq=False)
class _Faces:
    faces: list[np.ndarray]
    face_found: bool


class Recognizer:
    """One deepface face-recognition model with its detector, built once per process.

    Args:
        model_name: deepface model name, e.g. "VGG-Face", "Facenet".
        detector: deepface detector backend, or "skip" to take the whole image as the face.
        align: deepface's eye alignment, as ``verify(align=...)``.
        engine: deepface backend engine, "pytorch" or "onnx".
        batch_size: faces per forward pass.

    Raises ``evaluation.weights.MissingWeights`` when the weight file is absent (instead of
    deepface's download attempt).
    """

    def __init__(
        self,
        model_name: str,
        detector: str = "opencv",
        align: bool = True,
        engine: str = "pytorch",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size!r}")
        self.model_name = model_name
        self.detector = detector
        self.align = align
        self.engine = engine
        self.batch_size = batch_size
        self._detection = deepface_module("deepface.modules.detection", engine)
        self._representation = deepface_module("deepface.modules.representation", engine)
        self._face_not_detected = deepface_module("deepface.modules.exceptions", engine).FaceNotDetected
        modeling = deepface_module("deepface.modules.modeling", engine)
        if _knows_weights(model_name, engine):
            check_weights([model_name], engine)
        # deepface caches built models in a module-level dict; building here, once, keeps the
        # weight loading out of the timed embedding calls and fails early on a bad name.
        self.model = modeling.build_model(task="facial_recognition", model_name=model_name)
        if detector != "skip":
            modeling.build_model(task="face_detector", model_name=detector)

    @property
    def dimension(self) -> int:
        """Length of one embedding."""
        return int(self.model.output_shape)

    def embed(self, images: Sequence[np.ndarray], enforce_detection: bool) -> list[FaceEmbeddings]:
        """Embed every face of every image; one :class:`FaceEmbeddings` per image, in order.

        ``images`` are RGB uint8 (H, W, 3) arrays. With ``enforce_detection`` an image without a
        face gives ``face_found=False, embeddings=None``; without it, the whole image is embedded
        (as deepface's ``enforce_detection=False`` does) and ``face_found`` is False. A failure on
        one image is reported in its ``error`` and does not affect the others.
        """
        extracted = [self._extract(image, enforce_detection) for image in images]
        # (image index, face) for every face of every image that has faces to embed.
        flat = [
            (index, face) for index, item in enumerate(extracted) if isinstance(item, _Faces) for face in item.faces
        ]
        vectors: dict[int, list[np.ndarray]] = {}
        errors: dict[int, str] = {}
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            try:
                found = self._represent([face for _, face in chunk])
            except IMAGE_ERRORS:
                # One bad face must not sink the batch: redo this chunk face by face.
                found = self._represent_each(chunk, errors)
            for (index, _), vector in zip(chunk, found, strict=True):
                if vector is not None:
                    vectors.setdefault(index, []).append(vector)

        results = []
        for index, item in enumerate(extracted):
            if isinstance(item, FaceEmbeddings):
                results.append(item)
            elif index in errors:
                results.append(FaceEmbeddings(None, False, errors[index]))
            else:
                results.append(FaceEmbeddings(np.stack(vectors[index]), item.face_found))
        return results

    def _extract(self, image: np.ndarray, enforce_detection: bool) -> FaceEmbeddings | _Faces:
        """The faces deepface extracts from one image, as verify hands them to represent."""
        problem = _image_problem(image)
        if problem:
            return FaceEmbeddings(None, False, problem)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        face_found = True
        try:
            # Detection enforced first, even when it is not wanted: deepface's fallback (the whole
            # image) is otherwise indistinguishable from a detected face.
            faces = self._extract_faces(bgr, enforce_detection=True)
        except self._face_not_detected:
            if enforce_detection:
                return FaceEmbeddings(None, False)
            face_found = False
            try:
                faces = self._extract_faces(bgr, enforce_detection=False)
            except IMAGE_ERRORS as err:
                return FaceEmbeddings(None, False, _message(err))
        except IMAGE_ERRORS as err:
            return FaceEmbeddings(None, False, _message(err))
        if not faces:
            # deepface drops zero-sized face crops; with nothing left there is nothing to embed.
            return FaceEmbeddings(None, False, "no usable face region")
        # verify flips each RGB face back to BGR before represent; so do we.
        return _Faces([face["face"][:, :, ::-1] for face in faces], face_found)

    def _extract_faces(self, bgr: np.ndarray, enforce_detection: bool) -> list[dict]:
        # The arguments verify passes (deepface 0.0.103, verification.__extract_faces_and_embeddings).
        return self._detection.extract_faces(
            img_path=bgr,
            detector_backend=self.detector,
            grayscale=False,
            enforce_detection=enforce_detection,
            align=self.align,
            expand_percentage=0,
            anti_spoofing=False,
        )

    def _represent(self, faces: list[np.ndarray]) -> list[np.ndarray]:
        result = self._representation.represent(
            img_path=list(faces),
            model_name=self.model_name,
            enforce_detection=True,
            detector_backend="skip",
            align=self.align,
            normalization="base",
        )
        # represent returns a flat list of dicts for one input and a list of lists for several;
        # with "skip" each input is one face, so each inner list has one dict.
        per_input = [result] if len(faces) == 1 else result
        # With a single face in the call, "embedding" is the model's whole output, which may
        # still carry the batch axis; reshape(-1) gives one vector either way.
        return [np.asarray(objs[0]["embedding"], dtype=np.float64).reshape(-1) for objs in per_input]

    def _represent_each(self, chunk, errors: dict[int, str]) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = []
        for index, face in chunk:
            try:
                found.append(self._represent([face])[0])
            except IMAGE_ERRORS as err:
                errors[index] = _message(err)
                found.append(None)
        return found


def _knows_weights(model_name: str, engine: str) -> bool:
    try:
        weight_file(model_name, engine)
    except ValueError:
        return False
    return True


def _image_problem(image) -> str | None:
    if not isinstance(image, np.ndarray):
        return f"image must be a numpy array, got {type(image).__name__}"
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return f"image is empty, shape {image.shape}"
    return None


def _message(err: BaseException) -> str:
    # One line for the error column: deepface's messages carry newlines and runs of spaces.
    return " ".join(f"{type(err).__name__}: {err}".split())
