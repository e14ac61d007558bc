"""Face-region Boomerang: anonymize only the faces of an arbitrary photo.

Region mode leaves everything but the faces alone:

1. ``detect_faces``: find the faces (deepface's detectors), in a fixed top-to-bottom, left-to-right order
   so that a face's index, and with it its seed, does not change between runs.
2. ``region_for``: grow each face box into a square ``Region`` around it (hair, ears and jaw included),
   inside the image.
3. ``cut_region``: crop that square and resize it to the model's resolution. Only the crop is resized,
   never the whole photo, so a 24-megapixel image costs the same model work as a 512 px one.
4. The caller runs ``BoomerangSampler`` on the squares, one generator per face
   (``output_seed(..., face_index=job.face_index)``); ``FaceJob`` and ``pack_faces`` batch faces, not
   images, so a crowd in one photo and one face in each of many photos fill batches alike.
5. ``paste_regions``: resize each output back to its square and blend it into the original through a
   feathered mask. Every pixel outside the squares is the original's, byte for byte.

Typical use::

    boxes = detect_faces(img)
    jobs = face_jobs("img-001", boxes, img.size)
    pieces = []
    for batch in pack_faces(jobs, batch_size=8):
        squares = [cut_region(img, job.region, model.resolution) for job in batch]
        gens = [make_generator(output_seed(secret, run_seed, job.image_id, 0.7, face_index=job.face_index))
                for job in batch]
        out = sampler(squares, 0.7, gens)
        pieces += [(job.region, face) for job, face in zip(batch, out.images)]
    result = paste_regions(img, pieces)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image

# Detector boxes are tight: Haar, RetinaFace and the like frame roughly brows to lips and cheek to cheek,
# leaving out the hairline, ears, jaw and chin, which carry identity too. 0.4 of the box side on each
# side makes the square 1.8 box sides wide: for skimage's astronaut (a 95 px opencv box at 512 px) that
# reaches from above the hair to below the chin. It also leaves a band of 0.4 / 1.8 = 0.22 of the side
# between the box and the square's edge, wider than DEFAULT_FEATHER, so the feathered blend never fades
# out over the detected face itself. At 512 px model resolution the face then fills about 280 px of
# the square, a scale Stable Diffusion renders faces well at.
DEFAULT_MARGIN = 0.4

# Width of the blend's ramp, as a fraction of the square's side: wide enough to hide the seam between
# the model's output and the untouched photo, narrow enough (<= DEFAULT_MARGIN / (1 + 2 * DEFAULT_MARGIN)
# = 0.22) that the detected face box is replaced entirely.
DEFAULT_FEATHER = 0.2

# deepface 0.0.103's face detectors (modeling.AVAILABLE_MODELS["face_detector"]), less "skip": "skip"
# takes the whole image as the face, which is whole-image mode, not region mode.
FACE_DETECTORS = (
    "opencv",
    "mtcnn",
    "ssd",
    "dlib",
    "retinaface",
    "mediapipe",
    "yolov8n",
    "yolov8m",
    "yolov8l",
    "yolov11n",
    "yolov11s",
    "yolov11m",
    "yolov11l",
    "yolov12n",
    "yolov12s",
    "yolov12m",
    "yolov12l",
    "yunet",
    "fastmtcnn",
    "centerface",
)


REGION_MODES = ("image", "faces")
# What region mode does with an image in which the detector finds no face: "withhold" makes no output
# (status no_face_detected; a detector miss must not publish a face), "image" Boomerangs the whole image.
NO_FACE_CHOICES = ("withhold", "image")


@dataclass(frozen=True)
class RegionSettings:
    """Where Boomerang runs: on the whole image (``mode="image"``, the paper's setting) or on each face.

    Attributes:
        mode: "image" or "faces".
        detector: the deepface face detector that finds the faces (``FACE_DETECTORS``).
        margin: each side of the face box grows by this fraction of the box's longer side (``region_for``).
        feather: width of the blend back into the photo, as a fraction of the square's side (``paste_regions``).
        no_face: "withhold" (no output for an image without a detected face) or "image" (whole-image
            Boomerang for those).
    """

    mode: str = "image"
    detector: str = "opencv"
    margin: float = DEFAULT_MARGIN
    feather: float = DEFAULT_FEATHER
    no_face: str = "withhold"

    def __post_init__(self) -> None:
        if self.mode not in REGION_MODES:
            raise ValueError(f"region must be one of {', '.join(REGION_MODES)}, got {self.mode!r}")
        if self.detector not in FACE_DETECTORS:
            raise ValueError(
                f"region_detector must be a deepface face detector ({', '.join(FACE_DETECTORS)}), got {self.detector!r}"
            )
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (0 <= margin <= 5):
            raise ValueError(f"region_margin must be a number in [0, 5], got {margin!r}")
        if (
            isinstance(self.feather, bool)
            or not isinstance(self.feather, (int, float))
            or not (0 <= self.feather <= 0.5)
        ):
            raise ValueError(f"region_feather must be in [0, 0.5], got {self.feather!r}")
        if self.no_face not in NO_FACE_CHOICES:
            raise ValueError(f"no_face must be one of {', '.join(NO_FACE_CHOICES)}, got {self.no_face!r}")

    @property
    def faces(self) -> bool:
        return self.mode == "faces"


@dataclass(frozen=True)
class FaceBox:
    """A detected face: its box in the original image's pixels and the detector's confidence.

    ``confidence`` is on the detector's own scale (opencv's Haar cascade gives ``(100 - level weight) / 100``,
    about 0.9 to 0.97 for clear faces); it is not comparable across detectors.
    """

    x: int
    y: int
    w: int
    h: int
    confidence: float

    def __post_init__(self) -> None:
        if self.w < 1 or self.h < 1:
            raise ValueError(f"a face box needs a width and height of at least 1 pixel, got {self.w}x{self.h}")


@dataclass(frozen=True)
class Region:
    """The square of the original image that one face is anonymized in: ``side`` pixels from (left, top)."""

    left: int
    top: int
    side: int

    def __post_init__(self) -> None:
        if self.side < 1 or self.left < 0 or self.top < 0:
            raise ValueError(f"a {type(self).__name__.lower()} needs left, top >= 0 and side >= 1, got {self}")

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right and bottom exclusive: the box ``PIL.Image.crop`` takes."""
        return (self.left, self.top, self.left + self.side, self.top + self.side)

    def fits(self, image_size: tuple[int, int]) -> bool:
        """True when the square lies entirely inside an image of ``image_size`` (width, height)."""
        width, height = image_size
        return self.left + self.side <= width and self.top + self.side <= height


@dataclass(frozen=True)
class FaceJob:
    """One unit of model work: face ``face_index`` of image ``image_id``, to be resampled in ``region``.

    ``image_id`` is whatever key the caller uses for the image (what ``output_seed`` takes as image_id);
    ``face_index`` is the face's place in ``detect_faces``'s order.
    """

    image_id: str
    face_index: int
    region: Region


def detect_faces(img: Image.Image, detector: str = "opencv") -> list[FaceBox]:
    """Find the faces in ``img`` with deepface's ``detector``, top to bottom, then left to right.

    An image with no face gives an empty list: deepface's own fallback, the whole image reported as one
    face with confidence 0, is dropped, since region mode must never resample a whole photo as a "face".
    The boxes are deepface's ``facial_area`` without alignment or expansion (``region_for`` adds the margin).

    Importing deepface takes about 0.3 s, so it happens here, on first use. The first detection fixes
    deepface's backend engine for the process (its ``DEEPFACE_BACKEND_ENGINE`` environment variable, else
    the first installed of tensorflow, pytorch, onnxruntime).

    Raises:
        ValueError: ``detector`` is not one of ``FACE_DETECTORS``.
    """
    if detector not in FACE_DETECTORS:
        raise ValueError(f"unknown face detector {detector!r}; accepted: {', '.join(FACE_DETECTORS)}")
    # detection.extract_faces is the function DeepFace.extract_faces forwards to; importing it directly
    # skips DeepFace.py's import-time work (resolving the engine, creating ~/.deepface).
    from deepface.modules import detection

    rgb = img.convert("RGB")
    width, height = rgb.size
    bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])  # deepface takes arrays as BGR, like cv2
    faces = detection.extract_faces(
        img_path=bgr, detector_backend=detector, enforce_detection=False, align=False, expand_percentage=0
    )
    boxes = []
    for face in faces:
        area = face["facial_area"]
        box = (int(area["x"]), int(area["y"]), int(area["w"]), int(area["h"]))
        confidence = float(face.get("confidence") or 0.0)
        if _is_no_face_fallback(box, confidence, width, height) or box[2] < 1 or box[3] < 1:
            continue
        boxes.append(FaceBox(*box, confidence=confidence))
    # Detectors list faces in their own order (opencv's depends on its scan); index faces by position.
    return sorted(boxes, key=lambda b: (b.y, b.x, b.h, b.w))


def _is_no_face_fallback(box: tuple[int, int, int, int], confidence: float, width: int, height: int) -> bool:
    # With enforce_detection=False and no face, deepface returns the whole image with confidence 0; its
    # border clamp makes that w = width - 1, h = height - 1.
    x, y, w, h = box
    return confidence == 0.0 and x == 0 and y == 0 and w >= width - 1 and h >= height - 1


def region_for(box: FaceBox, image_size: tuple[int, int], margin: float = DEFAULT_MARGIN) -> Region:
    """The square around ``box`` that its face is anonymized in, inside an image of ``image_size``.

    The square is centred on the box, ``max(w, h) * (1 + 2 * margin)`` pixels wide (rounded), then
    shifted as little as needed to lie inside the image; where the image is narrower or shorter than
    that, the side is cut to ``min(width, height)``.

    Raises:
        ValueError: ``margin`` is negative or not finite, or the image size is not positive.
    """
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    side = _round_half_up(max(box.w, box.h) * (1 + 2 * margin))
    side = max(1, min(side, width, height))
    left = _round_half_up(box.x + box.w / 2 - side / 2)
    top = _round_half_up(box.y + box.h / 2 - side / 2)
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return Region(left, top, side)


def face_jobs(
    image_id: str, boxes: Sequence[FaceBox], image_size: tuple[int, int], margin: float = DEFAULT_MARGIN
) -> list[FaceJob]:
    """One ``FaceJob`` per box, ``face_index`` being the box's position in ``boxes`` (``detect_faces``'s order)."""
    return [FaceJob(image_id, i, region_for(box, image_size, margin)) for i, box in enumerate(boxes)]


def pack_faces(jobs: Iterable[FaceJob], batch_size: int) -> Iterator[list[FaceJob]]:
    """Yield ``jobs`` in order, in lists of ``batch_size`` (the last may be shorter), across images.

    Raises:
        ValueError: ``batch_size`` is not an integer >= 1 (at the call, not at the first batch).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return _batches(iter(jobs), batch_size)


def _batches(jobs: Iterator[FaceJob], size: int) -> Iterator[list[FaceJob]]:
    while batch := list(islice(jobs, size)):
        yield batch


def cut_region(img: Image.Image, region: Region, resolution: int) -> Image.Image:
    """Crop ``region`` out of ``img`` and resize it (Lanczos) to an RGB ``resolution`` x ``resolution`` square.

    Raises:
        ValueError: the region does not lie inside the image, or ``resolution`` is below 1.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution!r}")
    _check_fits(region, img.size)
    square = img.crop(region.box).convert("RGB")
    if square.size != (resolution, resolution):
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return square


def blend_mask(region: Region, image_size: tuple[int, int], feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """Weights (side, side), float32 in [0, 1], that ``paste_regions`` gives the model's output in ``region``.

    1 in the middle, falling with a smoothstep over ``feather * side`` pixels to exactly 0 on the square's
    outermost pixels, so the output fades into the untouched photo without a seam. Sides of the square
    that lie on the image's border are not feathered: there is nothing beyond them to blend with, and
    fading there would keep original pixels of a face the border cuts through.
    """
    width, height = image_size
    ramp_x = _ramp(region.side, feather, region.left > 0, region.left + region.side < width)
    ramp_y = _ramp(region.side, feather, region.top > 0, region.top + region.side < height)
    return np.outer(ramp_y, ramp_x).astype(np.float32)


def _ramp(side: int, feather: float, fade_start: bool, fade_end: bool) -> np.ndarray:
    width = feather * side
    if width < 1:  # under a pixel there is no ramp to draw: a hard edge
        return np.ones(side, np.float64)
    t = np.clip(edge_distance(side, fade_start, fade_end) / width, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)  # smoothstep: no kink where the ramp meets the flat middle


def edge_distance(side: int, from_start: bool, from_end: bool) -> np.ndarray:
    """Each of ``side`` pixels' distance to the nearest of the square's edges that fade (inf where none does)."""
    i = np.arange(side, dtype=np.float64)
    distance = np.full(side, np.inf)
    if from_start:
        distance = np.minimum(distance, i)
    if from_end:
        distance = np.minimum(distance, side - 1 - i)
    return distance


def paste_regions(
    original: Image.Image, pieces: Sequence[tuple[Region, Image.Image]], feather: float = DEFAULT_FEATHER
) -> Image.Image:
    """Blend each model output back into ``original`` at its region; return a new RGB image of the same size.

    Each piece is resized (Lanczos) to its region's side and blended through ``blend_mask``; later pieces
    blend over earlier ones where regions overlap. Pixels outside every region are the original's (in
    RGB), byte for byte, and the original is never resized.

    Raises:
        ValueError: ``feather`` is not in [0, 0.5], or a region does not lie inside the image.
    """
    if not (0.0 <= feather <= 0.5):  # also false for NaN
        raise ValueError(f"feather must be in [0, 0.5] (a fraction of the region's side), got {feather!r}")
    result = np.array(original.convert("RGB"), dtype=np.uint8)  # a copy: the original stays as it was
    for region, piece in pieces:
        _check_fits(region, original.size)
        piece = piece.convert("RGB")
        if piece.size != (region.side, region.side):
            piece = piece.resize((region.side, region.side), Image.Resampling.LANCZOS)
        weight = blend_mask(region, original.size, feather)[:, :, None]
        left, top, right, bottom = region.box
        under = result[top:bottom, left:right].astype(np.float32)
        # Where the weight is 0 this is exactly `under` again, so a zero-weight rim keeps its bytes.
        blended = under * (1.0 - weight) + np.asarray(piece, np.float32) * weight
        result[top:bottom, left:right] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return Image.fromarray(result)


def _check_fits(region: Region, image_size: tuple[int, int]) -> None:
    if not region.fits(image_size):
        width, height = image_size
        raise ValueError(f"{region} does not lie inside the {width}x{height} image")


def _round_half_up(value: float) -> int:
    # Python's round() goes to even at .5; half-up keeps a centred square's placement unsurprising.
    return math.floor(value + 0.5)
