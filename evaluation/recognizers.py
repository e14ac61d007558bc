"""Face embeddings from a deepface recognizer, exactly as ``DeepFace.verify`` computes them.

``verify(img1, img2, model_name, detector_backend, align)`` runs ``detection.extract_faces`` on
each image, then ``representation.represent(face[:, :, ::-1], detector_backend="skip")`` on each
face found, one face at a time. :class:`Recognizer` calls the same two deepface functions with the
same arguments, but embeds the faces of a whole batch of images in one ``represent`` call.

When the detector finds no face in an image, :meth:`Recognizer.embed` can instead cut it at face
areas found in another image (:meth:`Recognizer.faces_at`): the evaluation uses this to compare an
anonymized image at its original's face box rather than on the whole image.
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

# How the faces of an image were taken (FaceEmbeddings.taken_at).
DETECTED = "detected"  # the detector found them
WHOLE_IMAGE = "whole_image"  # the whole image is the face: detector "skip", or deepface's no-face fallback
GIVEN_AREAS = "given_areas"  # no face was found; cut at the areas given (another image's face boxes)
TAKEN_AT = (DETECTED, WHOLE_IMAGE, GIVEN_AREAS)

# What deepface and opencv raise on an image they cannot handle (no face, odd sizes, bad
# values): such an image becomes an error for itself, never for its batch.
IMAGE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, cv2.error)


@dataclass(frozen=True, eq=False)
class FaceAreas:
    """Where the faces of one image are, as deepface's ``extract_faces`` reported them.

    Attributes:
        areas: one deepface ``facial_area`` dict per face: ``x``, ``y``, ``w``, ``h`` (ints, pixels
            of the image, clipped to it) and ``left_eye``, ``right_eye`` ((x, y) or None; the eyes
            deepface aligned the face with), plus whatever else the detector reports.
        height, width: the size of the image the areas are in.
    """

    areas: tuple[dict, ...]
    height: int
    width: int

    def scaled_to(self, height: int, width: int) -> FaceAreas:
        """The same areas in an image of ``height`` x ``width`` showing the same scene (resized).

        Each axis scales on its own (x by the width ratio, y by the height ratio); box edges and
        eyes are rounded to whole pixels, as deepface's are.
        """
        if (height, width) == (self.height, self.width):
            return self
        sx, sy = width / self.width, height / self.height
        scaled = []
        for area in self.areas:
            x1, y1 = round(area["x"] * sx), round(area["y"] * sy)
            x2, y2 = round((area["x"] + area["w"]) * sx), round((area["y"] + area["h"]) * sy)
            scaled.append(
                {
                    "x": x1,
                    "y": y1,
                    "w": x2 - x1,
                    "h": y2 - y1,
                    "left_eye": _scale_point(area.get("left_eye"), sx, sy),
                    "right_eye": _scale_point(area.get("right_eye"), sx, sy),
                }
            )
        return FaceAreas(tuple(scaled), height, width)


@dataclass(frozen=True, eq=False)
class FaceEmbeddings:
    """What a recognizer saw in one image.

    Attributes:
        embeddings: (n_faces, d) float64, one row per face deepface extracted; the whole image is
            one "face" when none was found and detection was not enforced. None when no face was
            found with detection enforced, or on error.
        face_found: whether the detector found a face ("skip" always counts as found).
        error: why the image could not be embedded, else None.
        areas: where the embedded faces are in this image (one area per row of ``embeddings``),
            None when nothing was embedded. For an image cut at given areas, those areas scaled to it.
        taken_at: how the faces were taken: "detected", "whole_image" (detector "skip", or
            deepface's fallback when detection is not enforced) or "given_areas"; None when
            nothing was embedded.
    """

    embeddings: np.ndarray | None
    face_found: bool
    error: str | None = None
    areas: FaceAreas | None = None
    taken_at: str | None = None


@dataclass(frozen=True, eq=False)
class _Faces:
    faces: list[np.ndarray]
    face_found: bool
    areas: FaceAreas
    taken_at: str


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
        self._facial_area_region = deepface_module("deepface.models.Detector", engine).FacialAreaRegion
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

    def embed(
        self,
        images: Sequence[np.ndarray],
        enforce_detection: bool,
        areas_if_no_face: Sequence[FaceAreas | None] | None = None,
    ) -> list[FaceEmbeddings]:
        """Embed every face of every image; one :class:`FaceEmbeddings` per image, in order.

        ``images`` are RGB uint8 (H, W, 3) arrays. With ``enforce_detection`` an image without a
        face gives ``face_found=False, embeddings=None``; without it, the whole image is embedded
        (as deepface's ``enforce_detection=False`` does) and ``face_found`` is False. A failure on
        one image is reported in its ``error`` and does not affect the others.

        ``areas_if_no_face`` (one entry per image, or None) takes precedence over both for an
        image without a face that has areas: the image is cut at those areas, as
        :meth:`faces_at` does, ``face_found`` is False and ``taken_at`` is "given_areas".
        """
        if areas_if_no_face is None:
            areas_if_no_face = [None] * len(images)
        if len(areas_if_no_face) != len(images):
            raise ValueError(
                f"areas_if_no_face: one entry per image, got {len(areas_if_no_face)} for {len(images)} images"
            )
        extracted = [
            self._extract(image, enforce_detection, areas)
            for image, areas in zip(images, areas_if_no_face, strict=True)
        ]
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
                results.append(
                    FaceEmbeddings(np.stack(vectors[index]), item.face_found, areas=item.areas, taken_at=item.taken_at)
                )
        return results

    def faces_at(self, image: np.ndarray, areas: FaceAreas) -> list[np.ndarray]:
        """Cut ``image`` at face areas found in another, aligned image, as deepface cuts a detected face.

        ``image`` is RGB uint8 (H, W, 3); ``areas`` are scaled to its size first
        (:meth:`FaceAreas.scaled_to`). Each area goes through deepface's own ``extract_face`` step,
        exactly as if the detector had reported that box and those eyes in ``image``: with
        ``align`` the image gets the same black border ``detect_faces`` adds, the box is widened,
        rotated by the angle of the *given* eyes (the original's: the anonymized image is turned
        exactly as its original was, and no eye search runs on it) and cut; without ``align`` it is
        a plain crop. The result is then what ``extract_faces`` returns as "face": RGB, divided by
        255 (unless its maximum is at most 1, as deepface does), zero-sized crops dropped.

        So for ``image`` equal to the image the areas came from, the faces are deepface's detected
        faces pixel for pixel (for a box deepface reported unclipped). Areas whose eyes deepface
        did not report (e.g. detector "skip") are cut unrotated, as deepface cuts them.
        """
        problem = _image_problem(image)
        if problem:
            raise ValueError(problem)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        height, width = bgr.shape[:2]
        areas = areas.scaled_to(height, width)
        # detection.detect_faces: the border it adds before detecting when aligning.
        height_border, width_border = int(0.5 * height), int(0.5 * width)
        if self.align:
            padded = cv2.copyMakeBorder(
                bgr,
                height_border,
                height_border,
                width_border,
                width_border,
                cv2.BORDER_CONSTANT,
                value=[0, 0, 0],
            )
            dx, dy = width_border, height_border
        else:
            padded, dx, dy = bgr, 0, 0
        faces = []
        for area in areas.areas:
            region = self._facial_area_region(
                x=int(area["x"]) + dx,
                y=int(area["y"]) + dy,
                w=int(area["w"]),
                h=int(area["h"]),
                left_eye=_shift_point(area.get("left_eye"), dx, dy),
                right_eye=_shift_point(area.get("right_eye"), dx, dy),
                confidence=0,
            )
            detected = self._detection.extract_face(
                facial_area=region,
                img=padded,
                align=self.align,
                expand_percentage=0,
                width_border=width_border,
                height_border=height_border,
                # "opencv" only tells extract_face not to look for missing eyes: the angle must be
                # the original's, not one found (or not) in the anonymized image.
                detector_backend="opencv",
            )
            face = detected.img
            if face.shape[0] == 0 or face.shape[1] == 0:
                continue
            # detection.extract_faces, color_face="rgb", normalize_face=True.
            face = face[:, :, ::-1]
            if face.max() > 1:
                face = face / 255
            faces.append(face)
        return faces

    def _extract(
        self, image: np.ndarray, enforce_detection: bool, areas_if_no_face: FaceAreas | None = None
    ) -> FaceEmbeddings | _Faces:
        """The faces deepface extracts from one image, as verify hands them to represent."""
        problem = _image_problem(image)
        if problem:
            return FaceEmbeddings(None, False, problem)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        face_found = True
        taken_at = WHOLE_IMAGE if self.detector == "skip" else DETECTED
        try:
            # Detection enforced first, even when it is not wanted: deepface's fallback (the whole
            # image) is otherwise indistinguishable from a detected face.
            faces = self._extract_faces(bgr, enforce_detection=True)
        except self._face_not_detected:
            if areas_if_no_face is not None:
                return self._cut_at(image, areas_if_no_face)
            if enforce_detection:
                return FaceEmbeddings(None, False)
            face_found = False
            taken_at = WHOLE_IMAGE
            try:
                faces = self._extract_faces(bgr, enforce_detection=False)
            except IMAGE_ERRORS as err:
                return FaceEmbeddings(None, False, _message(err))
        except IMAGE_ERRORS as err:
            return FaceEmbeddings(None, False, _message(err))
        if not faces:
            # deepface drops zero-sized face crops; with nothing left there is nothing to embed.
            return FaceEmbeddings(None, False, "no usable face region")
        height, width = bgr.shape[:2]
        areas = FaceAreas(tuple(dict(face["facial_area"]) for face in faces), height, width)
        # verify flips each RGB face back to BGR before represent; so do we.
        return _Faces([face["face"][:, :, ::-1] for face in faces], face_found, areas, taken_at)

    def _cut_at(self, image: np.ndarray, areas: FaceAreas) -> FaceEmbeddings | _Faces:
        try:
            faces = self.faces_at(image, areas)
        except IMAGE_ERRORS as err:
            return FaceEmbeddings(None, False, _message(err))
        if not faces:
            return FaceEmbeddings(None, False, "no usable face region at the given face areas")
        height, width = image.shape[:2]
        # Each face as represent gets it from verify: BGR.
        return _Faces([face[:, :, ::-1] for face in faces], False, areas.scaled_to(height, width), GIVEN_AREAS)

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


def _scale_point(point, sx: float, sy: float) -> tuple[int, int] | None:
    return None if point is None else (round(point[0] * sx), round(point[1] * sy))


def _shift_point(point, dx: int, dy: int) -> tuple[int, int] | None:
    return None if point is None else (int(point[0]) + dx, int(point[1]) + dy)


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
