"""Enhance mode's tiling: upsampling, the tile grid, feathered weights, cutting and blending back.

Pure numpy and PIL: the model step is stood in for by crops of a known image (identity round trip) and
by crops shifted by a per-tile constant (a worst case for seams: every neighbour disagrees everywhere).
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from anonymize.tiling import (
    RESAMPLING_FILTERS,
    Tile,
    blend_tiles,
    cut_tiles,
    tile_grid,
    tile_weights,
    upsample,
)

TILE = 32


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def smoothstep(t: float) -> float:
    return t * t * (3 - 2 * t)


# upsample


@pytest.mark.parametrize("name", sorted(RESAMPLING_FILTERS))
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_size_mode_and_filter(name, scale):
    img = noise(7, 5)
    out = upsample(img, scale, name)
    assert out.mode == "RGB"
    assert out.size == (7 * scale, 5 * scale)
    expected = img if scale == 1 else img.resize((7 * scale, 5 * scale), RESAMPLING_FILTERS[name])
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_upsample_defaults_to_lanczos_and_converts_to_rgb():
    img = noise(9, 6).convert("L")
    out = upsample(img, 4)
    assert out.mode == "RGB" and out.size == (36, 24)
    expected = img.convert("RGB").resize((36, 24), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_upsample_nearest_repeats_pixels():
    img = noise(4, 3)
    out = np.asarray(upsample(img, 3, "nearest"))
    assert np.array_equal(out, np.asarray(img).repeat(3, axis=0).repeat(3, axis=1))


def test_upsample_scale_one_is_a_copy():
    img = noise(4, 3)
    out = upsample(img, 1)
    assert out is not img
    assert np.array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("scale", [0, -2, True, 2.0, "2", None])
def test_upsample_rejects_bad_scales(scale):
    with pytest.raises(ValueError, match="scale must be an integer >= 1"):
        upsample(noise(4, 4), scale)


def test_upsample_rejects_unknown_filters_and_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown resampling filter 'Lanczos'") as raised:
        upsample(noise(4, 4), 2, "Lanczos")
    for name in RESAMPLING_FILTERS:
        assert name in str(raised.value)


# tile_grid


def test_tile_grid_example_in_reading_order():
    # 92 = 32 + 3 * 20 and 72 = 32 + 2 * 20: with overlap 12 the tiles sit exactly 20 px apart.
    tiles = tile_grid((92, 72), TILE, 12)
    assert tiles == [Tile(left, top, TILE) for top in (0, 20, 40) for left in (0, 20, 40, 60)]


def test_tile_grid_spreads_spare_overlap_evenly():
    # 100 wide: 4 tiles at 0, 68/3, 136/3, 68 rounded; 32 high: one row.
    assert [t.left for t in tile_grid((100, 32), TILE, 8)] == [0, 23, 45, 68]


def test_tile_grid_of_an_image_the_size_of_a_tile_is_that_tile():
    assert tile_grid((TILE, TILE), TILE, 8) == [Tile(0, 0, TILE)]


def axis_positions(tiles: list[Tile], axis: str) -> list[int]:
    return sorted({getattr(t, axis) for t in tiles})


@pytest.mark.parametrize("tile", [1, 2, 5, 8, 16])
def test_tile_grid_covers_overlaps_and_is_minimal(tile):
    for overlap in range(tile):
        for length in range(tile, 5 * tile + 4):
            size = (length, tile + 3) if tile > 1 else (length, 2)
            tiles = tile_grid(size, tile, overlap)
            assert all(t.side == tile and t.fits(size) for t in tiles)
            assert tiles == sorted(tiles, key=lambda t: (t.top, t.left))
            lefts = axis_positions(tiles, "left")
            n = 1 if length == tile else math.ceil((length - overlap) / (tile - overlap))
            assert len(lefts) == n
            assert lefts == [round(i * (length - tile) / (n - 1)) for i in range(n)] if n > 1 else lefts == [0]
            assert lefts[0] == 0 and lefts[-1] + tile == length  # whole axis covered, last on the edge
            assert all(tile - (b - a) >= overlap for a, b in pairwise(lefts))
            # n - 1 tiles overlapping by `overlap` are too short: n is the fewest.
            assert n == 1 or (n - 1) * tile - (n - 2) * overlap < length
            assert len(tiles) == n * len(axis_positions(tiles, "top"))


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "message"),
    [
        ((64, 64), 0, 0, "tile must be an integer >= 1"),
        ((64, 64), True, 0, "tile must be an integer >= 1"),
        ((64, 64), 32.0, 0, "tile must be an integer >= 1"),
        ((64, 64), 32, -1, r"overlap must be an integer in \[0, tile\)"),
        ((64, 64), 32, 32, r"overlap must be an integer in \[0, tile\)"),
        ((64, 64), 32, 4.0, r"overlap must be an integer in \[0, tile\)"),
        ((31, 64), 32, 8, "31x64 image is smaller than one 32x32 tile; pad or resize"),
        ((64, 20), 32, 8, "64x20 image is smaller than one 32x32 tile"),
    ],
)
def test_tile_grid_rejects(size, tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        tile_grid(size, tile, overlap)


def test_tile_rejects_negative_positions_and_empty_sides():
    for bad in ((-1, 0, 4), (0, -1, 4), (0, 0, 0)):
        with pytest.raises(ValueError, match="a tile needs"):
            Tile(*bad)
    assert Tile(3, 4, 5).box == (3, 4, 8, 9)


# tile_weights


def test_tile_weights_ramp_only_toward_other_tiles():
    size, overlap = (92, 72), 12
    tiles = tile_grid(size, TILE, overlap)
    ramp = np.array([smoothstep((d + 1) / (overlap + 1)) for d in range(overlap)])
    for tile in tiles:
        weights = tile_weights(tile, size, overlap)
        assert weights.shape == (TILE, TILE) and weights.dtype == np.float32
        assert weights.min() > 0 and weights.max() == 1
        middle = weights[overlap:-overlap, overlap:-overlap]
        assert np.all(middle == 1)
        row = weights[TILE // 2]  # a row through the flat middle band: the horizontal ramp alone
        left_ramped, right_ramped = tile.left > 0, tile.left + TILE < size[0]
        assert np.allclose(row[:overlap], ramp if left_ramped else 1, atol=1e-6)
        assert np.allclose(row[::-1][:overlap], ramp if right_ramped else 1, atol=1e-6)
        column = weights[:, TILE // 2]
        assert np.allclose(column[:overlap], ramp if tile.top > 0 else 1, atol=1e-6)
        assert np.allclose(column[::-1][:overlap], ramp if tile.top + TILE < size[1] else 1, atol=1e-6)


def coverage(size: tuple[int, int], tiles: list[Tile], overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the tiles' weights, number of tiles) at each pixel, both (height, width)."""
    width, height = size
    total, count = np.zeros((height, width)), np.zeros((height, width), int)
    for tile in tiles:
        left, top, right, bottom = tile.box
        total[top:bottom, left:right] += tile_weights(tile, size, overlap)
        count[top:bottom, left:right] += 1
    return total, count


def test_tile_weights_are_a_partition_of_unity_when_overlaps_are_exact():
    # 92 x 72 at overlap 12: every neighbouring pair overlaps by exactly 12, corners by 12 x 12 (4 tiles).
    total, count = coverage((92, 72), tile_grid((92, 72), TILE, 12), 12)
    assert count.max() == 4
    assert np.allclose(total, 1.0, atol=1e-6)


def test_single_tile_and_zero_overlap_weigh_one_everywhere():
    assert np.all(tile_weights(Tile(0, 0, TILE), (TILE, TILE), 8) == 1)
    for tile in tile_grid((64, 96), TILE, 0):
        assert np.all(tile_weights(tile, (64, 96), 0) == 1)


@pytest.mark.parametrize("tile", [8, 16, 32])
def test_a_tiles_normalised_share_changes_by_at_most_smoothsteps_slope(tile):
    # The bound the seam tolerance below rests on: for overlap <= tile / 2, a tile's weight divided by
    # the weight sum moves by at most 1.5 / (overlap + 1) between neighbouring pixels, whatever the spread
    # of the grid (exact overlaps, wider ones, three tiles deep). Weights are separable, so 1-D suffices.
    for overlap in range(1, tile // 2 + 1):
        for length in range(tile, 4 * tile + 3):
            size = (length, tile)
            tiles = tile_grid(size, tile, overlap)
            rows = []
            for t in tiles:
                row = np.zeros(length)
                row[t.left : t.left + tile] = tile_weights(t, size, overlap)[0]
                rows.append(row)
            shares = np.array(rows) / np.sum(rows, axis=0)
            assert np.abs(np.diff(shares, axis=1)).max() <= 1.5 / (overlap + 1) + 1e-6, (tile, overlap, length)


def test_tile_weights_reject_bad_overlaps_and_tiles_outside():
    with pytest.raises(ValueError, match=r"overlap must be an integer in \[0, side\)"):
        tile_weights(Tile(0, 0, TILE), (64, 64), TILE)
    with pytest.raises(ValueError, match=r"overlap must be an integer in \[0, side\)"):
        tile_weights(Tile(0, 0, TILE), (64, 64), -1)
    with pytest.raises(ValueError, match="does not lie inside the 40x64 image"):
        tile_weights(Tile(10, 0, TILE), (40, 64), 8)


# cut_tiles and blend_tiles


def test_cut_tiles_crops_rgb_squares_unresized():
    img = noise(70, 50).convert("RGBA")
    tiles = tile_grid(img.size, TILE, 8)
    crops = cut_tiles(img, tiles)
    rgb = np.asarray(img.convert("RGB"))
    assert len(crops) == len(tiles)
    for tile, crop in zip(tiles, crops, strict=True):
        assert crop.mode == "RGB" and crop.size == (TILE, TILE)
        left, top, right, bottom = tile.box
        assert np.array_equal(np.asarray(crop), rgb[top:bottom, left:right])


def test_cut_tiles_rejects_tiles_outside_the_image():
    with pytest.raises(ValueError, match="does not lie inside the 40x40 image"):
        cut_tiles(noise(40, 40), [Tile(0, 0, TILE), Tile(9, 0, TILE)])


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [
        ((32, 32), 32, 8),  # the size of one tile
        ((33, 47), 32, 8),
        ((100, 70), 32, 8),  # not multiples of anything
        ((92, 72), 32, 12),  # exact overlaps
        ((97, 129), 32, 16),
        ((64, 40), 32, 0),
        ((50, 45), 32, 31),  # as much overlap as there can be
        ((13, 9), 4, 1),
        ((5, 4), 1, 0),  # one tile a pixel
    ],
)
def test_blending_unchanged_tiles_gives_the_image_back_byte_for_byte(size, tile, overlap):
    img = noise(*size, seed=size[0] * 1000 + size[1])
    tiles = tile_grid(size, tile, overlap)
    out = blend_tiles(size, tiles, cut_tiles(img, tiles), overlap)
    assert out.mode == "RGB" and out.size == size
    assert np.array_equal(np.asarray(out), np.asarray(img))


def smooth_image(width: int, height: int) -> np.ndarray:
    """A linear ramp: neighbouring pixels differ by 0 or 1 everywhere, so a seam has nowhere to hide."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.rint(10 + 0.45 * x + 0.55 * y)
    return np.repeat(base[:, :, None], 3, axis=2).astype(np.uint8)


def offset_outputs(image: np.ndarray, tiles: list[Tile], step: int) -> list[Image.Image]:
    """Each tile's crop brightened by ``step * k`` for tile k: neighbours disagree by a constant."""
    outputs = []
    for k, tile in enumerate(tiles):
        left, top, right, bottom = tile.box
        crop = image[top:bottom, left:right].astype(np.int64) + step * k
        outputs.append(Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)))
    return outputs


def hard_cut(size: tuple[int, int], tiles: list[Tile], outputs: list[Image.Image]) -> np.ndarray:
    """What pasting without feathering gives: each pixel from one tile, tiles cut at the overlaps' midlines."""
    width, height = size
    lefts, tops = axis_positions(tiles, "left"), axis_positions(tiles, "top")
    side = tiles[0].side

    def owner(positions: list[int], length: int) -> np.ndarray:
        cuts = [(a + b + side) // 2 for a, b in pairwise(positions)]  # midline of each overlap
        return np.searchsorted(cuts, np.arange(length), side="right")

    columns, rows = owner(lefts, width), owner(tops, height)
    result = np.zeros((height, width, 3), np.uint8)
    arrays = [np.asarray(output) for output in outputs]
    for y in range(height):
        for x in range(width):
            k = rows[y] * len(lefts) + columns[x]
            result[y, x] = arrays[k][y - tiles[k].top, x - tiles[k].left]
    return result


def midline_steps(image: np.ndarray, tiles: list[Tile]) -> tuple[int, int]:
    """Largest |difference| of neighbouring pixels across the midline of each overlap: (horizontal, vertical).

    For two tiles side by side, columns m - 1 and m, m the midline of their overlap, over the rows both
    cover; likewise rows for tiles one above the other.
    """
    signed = image.astype(np.int64)
    side = tiles[0].side
    horizontal = vertical = 0
    for a in tiles:
        for b in tiles:
            if b.top == a.top and b.left > a.left and b.left < a.left + side:
                m = (b.left + a.left + side) // 2
                rows = slice(a.top, a.top + side)
                horizontal = max(horizontal, int(np.abs(signed[rows, m] - signed[rows, m - 1]).max()))
            if b.left == a.left and b.top > a.top and b.top < a.top + side:
                m = (b.top + a.top + side) // 2
                columns = slice(a.left, a.left + side)
                vertical = max(vertical, int(np.abs(signed[m, columns] - signed[m - 1, columns]).max()))
    return horizontal, vertical


def interior_steps(image: np.ndarray, count: np.ndarray) -> tuple[int, int]:
    """Largest |difference| of neighbouring pixels that only one tile covers: (horizontal, vertical)."""
    signed = image.astype(np.int64)
    alone = count == 1
    across = np.abs(np.diff(signed, axis=1)).max(axis=2)[alone[:, 1:] & alone[:, :-1]]
    down = np.abs(np.diff(signed, axis=0)).max(axis=2)[alone[1:] & alone[:-1]]
    return int(across.max()), int(down.max())


@pytest.mark.parametrize(
    ("size", "overlap"),
    [
        ((92, 72), 12),  # every overlap exactly 12 px: the weights are a partition of unity
        ((100, 90), 8),  # overlaps of 9 to 13 px: normalisation does the work
    ],
)
def test_feathered_blend_has_no_seam_where_a_hard_cut_has_one(size, overlap):
    # Tile k is brightened by 8 k, so horizontal neighbours disagree by D = 8 and vertical ones by D = 8
    # times the tiles in a row. Nothing clips, so the blend is the image plus the blend of the offsets
    # (all weights multiply the same image value), rounded: a step between neighbouring pixels is at most
    # the image's own step, plus the blended offset's step, plus 1 for rounding. Where at most two tiles
    # meet along an axis (true of both grids here), the offset's step is a tile's share step times D, at
    # most 1.5 D / (overlap + 1) by the bound tested above. With the image's own step taken from the
    # interiors (0 or 1 everywhere on this ramp), that is the tolerance: 1.9 and 4.7 at overlap 12,
    # 2.3 and 6.3 at overlap 8, against the hard cut's 8 and 32 (give or take the ramp's 1).
    step = 8
    tiles = tile_grid(size, TILE, overlap)
    per_row = len(axis_positions(tiles, "left"))
    image = smooth_image(*size)
    assert int(image.max()) + step * (len(tiles) - 1) <= 255  # no clipping
    outputs = offset_outputs(image, tiles, step)
    blended = np.asarray(blend_tiles(size, tiles, outputs, overlap))
    _, count = coverage(size, tiles, overlap)
    inside = interior_steps(blended, count)
    seam = midline_steps(blended, tiles)
    tolerance = (1.5 * step / (overlap + 1) + 1, 1.5 * step * per_row / (overlap + 1) + 1)
    for measured, own, allowed in zip(seam, inside, tolerance, strict=True):
        assert measured <= own + allowed, (seam, inside, tolerance)

    # The same outputs pasted with hard edges: the metric sees the full offset at the midline.
    cut = hard_cut(size, tiles, outputs)
    hard = midline_steps(cut, tiles)
    for measured, own, allowed in zip(hard, inside, tolerance, strict=True):
        assert measured > own + allowed, (hard, inside, tolerance)
    assert hard[0] >= step - 1 and hard[1] >= step * per_row - 1


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (lambda crops: crops[:-1], "got 5 outputs for 6 tiles"),
        (lambda crops: crops[:2] + [crops[2].resize((31, 32))] + crops[3:], "output 2 is 31x32, but its tile"),
    ],
)
def test_blend_tiles_rejects_mismatched_outputs(outputs, message):
    img = noise(64, 50)
    tiles = tile_grid(img.size, TILE, 8)
    assert len(tiles) == 6
    with pytest.raises(ValueError, match=message):
        blend_tiles(img.size, tiles, outputs(cut_tiles(img, tiles)), 8)


def test_blend_tiles_rejects_uncovered_pixels_and_tiles_outside():
    img = noise(64, 32)
    tiles = tile_grid(img.size, TILE, 0)
    crops = cut_tiles(img, tiles)
    with pytest.raises(ValueError, match="leave pixels of the 64x32 image uncovered, e.g. \\(32, 0\\)"):
        blend_tiles(img.size, tiles[:1], crops[:1], 0)
    with pytest.raises(ValueError, match="does not lie inside the 60x32 image"):
        blend_tiles((60, 32), tiles, crops, 0)
