"""Face-region Boomerang: detection, squares around faces, cutting, pasting and batching by face.

Real parts throughout: deepface's opencv detector on scikit-image's astronaut photo, and the tiny
random-weight latent model from conftest for the model step.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from samples import FACE_SIZE, scene, textured_background

from anonymize import (
    DEFAULT_FEATHER,
    DEFAULT_MARGIN,
    FACE_DETECTORS,
    FaceBox,
    FaceJob,
    Region,
    blend_mask,
    cut_region,
    detect_faces,
    face_jobs,
    make_generator,
    output_seed,
    pack_faces,
    paste_regions,
    region_for,
)
from anonymize import regions as regions_module

SECRET = b"region-tests-secret-0123456789"
LEVEL = 1.0

# opencv's Haar box for the face in skimage's 512 px astronaut (detect_faces on the bare photo).
ASTRONAUT_BOX = (177, 66, 95, 95)
# Pasted out of reading order on purpose, so the test sees detect_faces sort them.
PASTE_AT = ((100, 250), (520, 30))


def expected_box(at: tuple[int, int], size: int) -> tuple[float, float, float, float]:
    """Where the astronaut's face box lands when the photo is pasted at ``at``, scaled to ``size``."""
    scale = size / 512
    x, y, w, h = ASTRONAUT_BOX
    return (at[0] + x * scale, at[1] + y * scale, w * scale, h * scale)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


@pytest.fixture(scope="module")
def two_faces() -> Image.Image:
    return scene(900, 600, FACE_SIZE, PASTE_AT)


@pytest.fixture
def tiny_sampler(sampler_for):
    sampler, _ = sampler_for("latent", steps=2)
    return sampler


def outside_mask(size: tuple[int, int], regions: list[Region]) -> np.ndarray:
    """True for every pixel outside the union of ``regions``, as an (height, width) array."""
    width, height = size
    outside = np.ones((height, width), bool)
    for r in regions:
        left, top, right, bottom = r.box
        outside[top:bottom, left:right] = False
    return outside


def anonymize_regions(sampler, images: dict[str, Image.Image], jobs: list[FaceJob], batch_size: int):
    """The region-mode loop a caller writes: batches of faces, one seed per face. Returns (outputs, calls)."""
    pieces: dict[str, list[tuple[Region, Image.Image]]] = {key: [] for key in images}
    calls = 0
    res = sampler.model.resolution
    for batch in pack_faces(jobs, batch_size):
        squares = [cut_region(images[job.image_id], job.region, res) for job in batch]
        seeds = [output_seed(SECRET, 0, job.image_id, LEVEL, face_index=job.face_index) for job in batch]
        out = sampler(squares, LEVEL, [make_generator(s) for s in seeds])
        calls += 1
        for job, face in zip(batch, out.images, strict=True):
            pieces[job.image_id].append((job.region, face))
    return {key: paste_regions(images[key], pieces[key]) for key in images}, calls


# Detection


def test_detect_faces_finds_both_pasted_faces_in_reading_order(two_faces):
    boxes = detect_faces(two_faces, "opencv")
    assert len(boxes) == 2
    # Sorted top to bottom: the copy pasted at (520, 30) comes first.
    for box, at in zip(boxes, sorted(PASTE_AT, key=lambda p: (p[1], p[0])), strict=True):
        assert iou((box.x, box.y, box.w, box.h), expected_box(at, FACE_SIZE)) > 0.6
        assert 0 < box.confidence <= 1  # opencv's (100 - level weight) / 100, about 0.95 here
        assert all(isinstance(v, int) for v in (box.x, box.y, box.w, box.h))


def test_detect_faces_order_is_reading_order_not_detector_order(two_faces):
    boxes = detect_faces(two_faces)
    assert boxes == sorted(boxes, key=lambda b: (b.y, b.x))
    assert detect_faces(two_faces) == boxes  # and stable across calls


def test_detect_faces_without_a_face_is_empty():
    # deepface reports the whole image as one face with confidence 0 here; that must not come back.
    assert detect_faces(textured_background(900, 600, seed=3)) == []


def test_detect_faces_accepts_any_pil_mode(two_faces):
    assert detect_faces(two_faces.convert("RGBA")) == detect_faces(two_faces)


@pytest.mark.parametrize("name", ["nope", "skip", "OpenCV"])
def test_detect_faces_rejects_unknown_detectors(two_faces, name):
    with pytest.raises(ValueError, match=rf"'{name}'.*accepted: opencv, mtcnn"):
        detect_faces(two_faces, name)


def test_face_detectors_match_deepface_registry():
    from deepface.modules import modeling

    assert set(FACE_DETECTORS) == set(modeling.AVAILABLE_MODELS["face_detector"]) - {"skip"}


def test_deepface_is_imported_lazily():
    tree = ast.parse(Path(regions_module.__file__).read_text(encoding="utf-8"))
    top_level = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert "deepface" not in top_level


# Regions


def test_region_for_centres_the_enlarged_square_on_the_box():
    region = region_for(FaceBox(400, 300, 100, 100, 0.9), (1000, 1000))
    assert region.side == round(100 * (1 + 2 * DEFAULT_MARGIN)) == 180
    assert (region.left, region.top) == (360, 260)


def test_region_for_uses_the_longer_side_of_a_box():
    region = region_for(FaceBox(400, 300, 60, 100, 0.9), (1000, 1000), margin=0.5)
    assert region.side == 200
    assert (region.left + region.side / 2, region.top + region.side / 2) == (430, 350)


def test_region_for_margin_zero_is_the_box_itself():
    assert region_for(FaceBox(10, 20, 50, 50, 0.9), (200, 200), margin=0) == Region(10, 20, 50)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (FaceBox(0, 0, 50, 50, 0.9), Region(0, 0, 90)),  # top-left corner: shifted right and down
        (FaceBox(350, 250, 50, 50, 0.9), Region(310, 210, 90)),  # bottom-right corner: shifted back in
        (FaceBox(0, 125, 50, 50, 0.9), Region(0, 105, 90)),  # left border only
        (FaceBox(380, 0, 20, 20, 0.9), Region(364, 0, 36)),  # a small face right in the corner
    ],
)
def test_region_for_shifts_the_square_inside_the_image(box, expected):
    region = region_for(box, (400, 300))
    assert region == expected
    assert region.fits((400, 300))
    left, top, right, bottom = region.box
    assert left <= box.x and top <= box.y and box.x + box.w <= right and box.y + box.h <= bottom


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        (FaceBox(20, 10, 40, 40, 0.9), (100, 60), Region(10, 0, 60)),  # 72 px square in a 60 px tall image
        (FaceBox(0, 0, 80, 80, 0.9), (60, 60), Region(0, 0, 60)),  # the box is larger than the image
        (FaceBox(5, 5, 40, 40, 0.9), (50, 200), Region(0, 0, 50)),  # narrow image, face near the top
    ],
)
def test_region_for_clamps_the_side_to_a_small_image(box, size, expected):
    region = region_for(box, size)
    assert region == expected
    assert region.side == min(size)
    assert region.fits(size)


def test_region_for_rejects_bad_margins_and_sizes():
    box = FaceBox(0, 0, 10, 10, 0.9)
    for margin in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin"):
            region_for(box, (100, 100), margin)
    with pytest.raises(ValueError, match="image size"):
        region_for(box, (0, 100))


def test_frozen_dataclasses_validate():
    with pytest.raises(ValueError):
        FaceBox(0, 0, 0, 10, 0.9)
    with pytest.raises(ValueError):
        Region(-1, 0, 10)
    with pytest.raises(ValueError):
        Region(0, 0, 0)
    with pytest.raises(AttributeError):
        Region(0, 0, 10).side = 5  # type: ignore[misc]


# Cutting and pasting


def test_cut_region_crops_and_resizes_to_an_rgb_square(two_faces):
    region = Region(100, 50, 120)
    square = cut_region(two_faces.convert("RGBA"), region, 64)
    assert square.size == (64, 64) and square.mode == "RGB"
    exact = cut_region(two_faces, region, 120)  # at its own size the crop is not resampled
    assert np.array_equal(np.asarray(exact), np.asarray(two_faces)[50:170, 100:220])


def test_cut_region_rejects_a_region_outside_the_image(two_faces):
    with pytest.raises(ValueError, match="does not lie inside the 900x600 image"):
        cut_region(two_faces, Region(850, 0, 100), 64)


def test_blend_mask_is_one_inside_and_zero_on_interior_edges():
    region = Region(100, 100, 100)
    mask = blend_mask(region, (400, 400))
    assert mask.shape == (100, 100) and mask.dtype == np.float32
    assert mask[50, 50] == 1.0
    assert np.all(mask[0, :] == 0) and np.all(mask[-1, :] == 0) and np.all(mask[:, 0] == 0) and np.all(mask[:, -1] == 0)
    feather_px = int(DEFAULT_FEATHER * 100)
    assert np.all(mask[feather_px:-feather_px, feather_px:-feather_px] == 1.0)
    ramp = mask[50, : feather_px + 1]
    assert np.all(np.diff(ramp) > 0)  # rises monotonically over the feather band


def test_blend_mask_does_not_fade_toward_the_image_border():
    # A face cut by the image's edge must be replaced up to that edge, not faded back to the original.
    mask = blend_mask(Region(0, 100, 100), (400, 400))
    assert np.array_equal(mask[:, 0], mask[:, 50])  # no fade along x at the left border
    assert np.all(mask[:, -1] == 0)  # still fades into the photo on the right
    corner = blend_mask(Region(0, 0, 100), (100, 100))  # the region is the whole image
    assert np.all(corner == 1.0)


def test_paste_regions_leaves_every_pixel_outside_the_regions_untouched(random_image):
    original = random_image(300, 200, seed=5)
    rng = np.random.default_rng(1)
    regions = [Region(10, 10, 80), Region(60, 40, 100), Region(220, 120, 80)]  # two overlap; one in a corner
    pieces = [(r, Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))) for r in regions]
    out = paste_regions(original, pieces)
    assert out.size == original.size and out.mode == "RGB"
    before, after = np.asarray(original), np.asarray(out)
    outside = outside_mask(original.size, regions)
    assert np.array_equal(after[outside], before[outside])
    for r in regions:
        left, top, right, bottom = r.box
        assert not np.array_equal(after[top:bottom, left:right], before[top:bottom, left:right])
    # The interior rim of a square has weight 0: its bytes are the original's too.
    assert np.array_equal(after[10, 10:90], before[10, 10:90])
    assert np.array_equal(np.asarray(original), before)  # the input itself is not modified


def test_paste_regions_later_pieces_go_over_earlier_ones(random_image):
    original = random_image(100, 100, seed=2)
    black, white = Image.new("RGB", (40, 40), (0, 0, 0)), Image.new("RGB", (40, 40), (255, 255, 255))
    region = Region(30, 30, 40)
    out = paste_regions(original, [(region, black), (region, white)], feather=0)
    assert np.all(np.asarray(out)[30:70, 30:70] == 255)


def test_paste_regions_feather_zero_is_a_hard_paste(random_image):
    original = random_image(100, 100, seed=3)
    piece = random_image(40, 40, seed=4)
    out = paste_regions(original, [(Region(10, 20, 40), piece)], feather=0)
    assert np.array_equal(np.asarray(out)[20:60, 10:50], np.asarray(piece))


def test_paste_regions_rejects_bad_feather_and_regions(random_image):
    original = random_image(100, 100, seed=3)
    piece = random_image(40, 40, seed=4)
    for feather in (-0.1, 0.6, float("nan")):
        with pytest.raises(ValueError, match="feather"):
            paste_regions(original, [(Region(0, 0, 40), piece)], feather=feather)
    with pytest.raises(ValueError, match="does not lie inside"):
        paste_regions(original, [(Region(80, 0, 40), piece)])


# The whole path, with the tiny model


def test_region_mode_changes_the_faces_and_nothing_else(two_faces, tiny_sampler):
    boxes = detect_faces(two_faces)
    assert len(boxes) == 2
    jobs = face_jobs("scene", boxes, two_faces.size)
    outputs, calls = anonymize_regions(tiny_sampler, {"scene": two_faces}, jobs, batch_size=8)
    out = outputs["scene"]
    assert out.size == two_faces.size and out.mode == "RGB"
    before, after = np.asarray(two_faces), np.asarray(out)
    regions = [job.region for job in jobs]
    outside = outside_mask(two_faces.size, regions)
    assert np.array_equal(after[outside], before[outside])
    for box in boxes:  # the face box itself lies in the weight-1 middle: it is wholly the model's
        face_before = before[box.y : box.y + box.h, box.x : box.x + box.w].astype(int)
        face_after = after[box.y : box.y + box.h, box.x : box.x + box.w].astype(int)
        assert np.abs(face_after - face_before).mean() > 10
    assert calls == 1


def test_large_image_keeps_its_size_and_only_crops_are_resized(tiny_sampler, monkeypatch):
    size = 600
    at = ((400, 300), (2000, 1100))
    img = scene(3000, 2000, size, at)
    # Boxes where the pasted faces are, rather than a 4 s Haar scan of 6 megapixels.
    boxes = [FaceBox(*(round(v) for v in expected_box(p, size)), confidence=1.0) for p in at]
    jobs = face_jobs("big", boxes, img.size)

    resized = []
    original_resize = Image.Image.resize

    def recording_resize(self, new_size, *args, **kwargs):
        resized.append((self.size, tuple(new_size)))
        return original_resize(self, new_size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    outputs, _ = anonymize_regions(tiny_sampler, {"big": img}, jobs, batch_size=8)
    monkeypatch.undo()

    out = outputs["big"]
    assert out.size == (3000, 2000)
    res = tiny_sampler.model.resolution
    allowed = {(res, res)} | {(job.region.side, job.region.side) for job in jobs}
    assert resized  # the crops did go through resize
    for source, target in resized:
        assert source in allowed and target in allowed, f"resized {source} to {target}"
    outside = outside_mask(img.size, [job.region for job in jobs])
    assert np.array_equal(np.asarray(out)[outside], np.asarray(img)[outside])


# Batching by face


def grid_boxes(n: int, cell: int = 100, face: int = 50) -> list[FaceBox]:
    cols = 5
    return [FaceBox((i % cols) * cell + 25, (i // cols) * cell + 25, face, face, 0.9) for i in range(n)]


def test_pack_faces_batches_faces_not_images():
    crowd = face_jobs("crowd", grid_boxes(20), (500, 400))
    singles = [job for i in range(20) for job in face_jobs(f"img-{i}", grid_boxes(1), (100, 100))]
    crowd_batches, single_batches = list(pack_faces(crowd, 8)), list(pack_faces(singles, 8))
    assert [len(b) for b in crowd_batches] == [len(b) for b in single_batches] == [8, 8, 4]
    assert [job for batch in single_batches for job in batch] == singles  # order kept across images
    assert [job.face_index for job in crowd] == list(range(20))


def test_pack_faces_edge_cases():
    jobs = face_jobs("a", grid_boxes(3), (500, 400))
    assert list(pack_faces([], 4)) == []
    assert [len(b) for b in pack_faces(iter(jobs), 1)] == [1, 1, 1]
    assert [len(b) for b in pack_faces(jobs, 100)] == [3]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            pack_faces(jobs, bad)  # raised at the call, before any batch is asked for


def test_crowd_and_singles_take_the_same_number_of_sampler_calls(tiny_sampler, random_image):
    crowd = {"crowd": random_image(500, 400, seed=7)}
    crowd_jobs = face_jobs("crowd", grid_boxes(20), (500, 400))
    singles = {f"img-{i}": random_image(100, 100, seed=100 + i) for i in range(20)}
    single_jobs = [job for key in singles for job in face_jobs(key, grid_boxes(1), (100, 100))]

    crowd_out, crowd_calls = anonymize_regions(tiny_sampler, crowd, crowd_jobs, batch_size=8)
    single_out, single_calls = anonymize_regions(tiny_sampler, singles, single_jobs, batch_size=8)
    assert crowd_calls == single_calls == 3
    assert crowd_out["crowd"].size == (500, 400)
    assert all(single_out[key].size == (100, 100) for key in singles)
