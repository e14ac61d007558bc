"""Enhance mode: Boomerang's perceptual resolution enhancement, at any output size, in fixed-size tiles.

The paper's enhancement upsamples a low-resolution image by an integer factor with an ordinary filter,
then runs local sampling on it at a small level so the model redraws the detail the filter blurred. The
model works at one square resolution R (512 for Stable Diffusion, 32 or 64 for the tiny test models), so
an upsampled image larger than R is processed in overlapping R x R tiles:

1. ``upsample``: enlarge the image ``scale`` times with a named PIL filter (Lanczos by default).
2. ``tile_grid``: the fewest R x R tiles that cover it, overlapping by at least ``overlap`` pixels, evenly
   spread, none leaving the image.
3. ``cut_tiles``: crop them, at full resolution: no tile is ever resized.
4. The caller runs the model on the tiles, in batches of whatever size its memory allows: the model's
   memory depends on R and the batch size only, never on the image's size.
5. ``blend_tiles``: put the outputs back, each weighted by ``tile_weights`` (a smoothstep over the
   overlap on every side that borders another tile) and normalised by the sum of the weights, so
   neighbouring tiles fade into each other over the overlap instead of meeting at a seam.

Tiles that returned their input unchanged give the image back byte for byte.

Typical use::

    big = upsample(small, 4)
    tiles = tile_grid(big.size, model.resolution, overlap=64)
    crops = cut_tiles(big, tiles)
    outputs = []
    for start in range(0, len(crops), 8):  # 8 tiles a model call: memory set by R and 8 alone
        # generators: one per tile, seeded as the caller sees fit
        outputs += sampler(crops[start : start + 8], 0.2, generators[start : start + 8]).images
    result = blend_tiles(big.size, tiles, outputs, overlap=64)

An image smaller than the model's resolution in either dimension has no tiling: ``tile_grid`` refuses it,
and the caller pads or resizes it to at least R x R first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from anonymize.regions import Region, edge_distance

# The filters ``upsample`` accepts, by the names a settings file uses.
RESAMPLING_FILTERS: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Tile(Region):
    """One square the model processes: ``side`` pixels from (left, top) of the upsampled image (a face
    region's geometry: ``box``, ``fits``)."""


def upsample(img: Image.Image, scale: int, filter: str = "lanczos") -> Image.Image:
    """``img`` enlarged ``scale`` times with the PIL filter named ``filter``: RGB, exactly (w * scale, h * scale).

    A scale of 1 returns an RGB copy, unfiltered.

    Raises:
        ValueError: ``scale`` is not an integer >= 1 (a bool is not a scale), or ``filter`` is not one of
            ``RESAMPLING_FILTERS``.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if filter not in RESAMPLING_FILTERS:
        raise ValueError(f"unknown resampling filter {filter!r}; accepted: {', '.join(RESAMPLING_FILTERS)}")
    rgb = img.convert("RGB")  # a new image even when img is RGB already
    if scale == 1:
        return rgb
    width, height = rgb.size
    return rgb.resize((width * scale, height * scale), RESAMPLING_FILTERS[filter])


def tile_grid(size: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Square tiles of side ``tile`` that cover an image of ``size`` (width, height), in reading order.

    Along each axis of length L the grid has the fewest tiles that overlap by at least ``overlap`` pixels,
    ``n = 1`` if L == tile, else ``ceil((L - overlap) / (tile - overlap))``, at positions
    ``round(i * (L - tile) / (n - 1))`` (Python's round): the first tile starts at 0, the last ends on the
    image's edge, the spare overlap is spread evenly, and neighbours overlap by at least ``overlap``
    pixels despite the rounding (the proof is in ``_positions``).

    Tiles come row by row, top to bottom, and left to right within a row.

    Raises:
        ValueError: ``tile`` is not an integer >= 1, ``overlap`` is not an integer in [0, tile), or the
            image is smaller than ``tile`` in either dimension (pad or resize it to at least
            ``tile`` x ``tile`` first: a tile never leaves the image).
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be an integer >= 1, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be an integer in [0, tile) = [0, {tile}), got {overlap!r}")
    width, height = size
    if width < tile or height < tile:
        raise ValueError(
            f"a {width}x{height} image is smaller than one {tile}x{tile} tile; pad or resize it to at least "
            f"{tile}x{tile} first"
        )
    lefts = _positions(width, tile, overlap)
    tops = _positions(height, tile, overlap)
    return [Tile(left, top, tile) for top in tops for left in lefts]


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    if length == tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    span, gaps = length - tile, n - 1
    # The exact positions are s = span / gaps <= tile - overlap apart (n is large enough for that). Rounded,
    # two of them are less than s + 1 apart: reaching s + 1 would take both to be ties rounded opposite
    # ways, and i * s and (i + 1) * s cannot both be half-integers. So neighbours are at most
    # ceil(s) <= tile - overlap apart, and overlap by at least `overlap`. The division is exact enough:
    # a float quotient of integers is correctly rounded, and halves are representable, so ties are ties.
    return [round(i * span / gaps) for i in range(n)]


def tile_weights(tile: Tile, size: tuple[int, int], overlap: int) -> np.ndarray:
    """Weights (side, side), float32 in (0, 1], that ``blend_tiles`` gives ``tile``'s output.

    On each side of the tile that lies inside the image (so borders another tile of the grid), the weight
    rises over ``overlap`` pixels with a smoothstep: the pixel at distance d from that edge (d = 0 on the
    edge) gets ``smoothstep((d + 1) / (overlap + 1))``; from d = overlap inward it is 1. Sides on the
    image's border are not ramped, and neither is anything when ``overlap`` is 0. The weight at a pixel is
    the product of the horizontal and the vertical ramp.

    The weight is never 0, so every covered pixel has a positive weight sum and the normalised blend is
    defined everywhere, without an epsilon. And since smoothstep(1 - t) = 1 - smoothstep(t), where two
    tiles overlap by exactly ``overlap`` pixels their ramps add up to 1 on every pixel: the blend is then
    a plain cross-fade, with no normalisation needed.

    Keep ``overlap`` at most ``side / 2`` (64 for 512 px tiles is plenty). Then a tile's share of the
    normalised blend changes by at most 1.5 / (overlap + 1) per pixel (smoothstep's steepest slope, 1.5,
    over steps of 1 / (overlap + 1); the tests check it on every grid of 8, 16 or 32 px tiles up to four
    sides long), so two neighbours whose outputs differ by a constant D meet without a step larger than about
    1.5 * D / (overlap + 1). Above ``side / 2`` a tile's ramps from opposite sides overlap each other and
    the transition gets up to about twice as steep.

    Raises:
        ValueError: ``overlap`` is not in [0, tile.side), or the tile does not lie inside the image.
    """
    _check_overlap(overlap, tile.side)
    _check_fits(tile, size)
    width, height = size
    ramp_x = _ramp(tile.side, overlap, tile.left > 0, tile.left + tile.side < width)
    ramp_y = _ramp(tile.side, overlap, tile.top > 0, tile.top + tile.side < height)
    return np.outer(ramp_y, ramp_x).astype(np.float32)


def _ramp(side: int, overlap: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    t = np.clip((edge_distance(side, fade_start, fade_end) + 1.0) / (overlap + 1.0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)  # smoothstep: no kink where the ramp meets the flat middle


def cut_tiles(img: Image.Image, tiles: Sequence[Tile]) -> list[Image.Image]:
    """Crop each tile out of ``img``: RGB squares of exactly ``tile.side`` pixels, never resized.

    Raises:
        ValueError: a tile does not lie inside the image.
    """
    for tile in tiles:
        _check_fits(tile, img.size)
    rgb = img.convert("RGB")
    return [rgb.crop(tile.box) for tile in tiles]


def blend_tiles(
    size: tuple[int, int], tiles: Sequence[Tile], outputs: Sequence[Image.Image], overlap: int
) -> Image.Image:
    """Assemble the model's tile outputs into one RGB image of exactly ``size`` (width, height).

    Each pixel is the average of the outputs that cover it, weighted by ``tile_weights`` and normalised by
    the sum of those weights, rounded to the nearest integer. Where every output equals the same crop of
    one image, the result is that image, byte for byte. The sums are float32: for 8-bit values their
    error is far below the 0.5 that rounding could notice, at half the memory of float64 (16 bytes a
    pixel: a 24-megapixel image needs about 400 MB besides the outputs).

    Raises:
        ValueError: ``outputs`` and ``tiles`` differ in length, an output is not ``tile.side`` square,
            ``overlap`` is out of range for a tile, a tile does not lie inside the image, or the tiles
            leave some pixel uncovered.
    """
    if len(outputs) != len(tiles):
        raise ValueError(f"got {len(outputs)} outputs for {len(tiles)} tiles")
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    total = np.zeros((height, width, 3), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    for index, (tile, output) in enumerate(zip(tiles, outputs, strict=True)):
        if output.size != (tile.side, tile.side):
            raise ValueError(
                f"output {index} is {output.size[0]}x{output.size[1]}, but its tile {tile} needs "
                f"{tile.side}x{tile.side}"
            )
        weight = tile_weights(tile, size, overlap)
        left, top, right, bottom = tile.box
        total[top:bottom, left:right] += np.asarray(output.convert("RGB"), np.float32) * weight[:, :, None]
        weight_sum[top:bottom, left:right] += weight
    if not weight_sum.all():
        rows, cols = np.nonzero(weight_sum == 0)
        raise ValueError(f"the tiles leave pixels of the {width}x{height} image uncovered, e.g. ({cols[0]}, {rows[0]})")
    blended = total / weight_sum[:, :, None]
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def _check_overlap(overlap: int, side: int) -> None:
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < side:
        raise ValueError(f"overlap must be an integer in [0, side) = [0, {side}), got {overlap!r}")


def _check_fits(tile: Tile, image_size: tuple[int, int]) -> None:
    if not tile.fits(image_size):
        width, height = image_size
        raise ValueError(f"{tile} does not lie inside the {width}x{height} image")


@dataclass(frozen=True)
class EnhanceSettings:
    """Perceptual resolution enhancement (``boomerang enhance``).

    Attributes:
        scale: integer upsampling factor; outputs are exactly ``scale`` times the input's size.
        filter: the PIL filter that upsamples before the model (``RESAMPLING_FILTERS``), Lanczos by default.
        overlap: tiles overlap by this fraction of the model's resolution (a quarter by default).
        degrade: the benchmark: each input is first cut to a multiple of ``scale`` and downscaled by it
            (bicubic, as in the super-resolution literature), so the output can be compared with it.
    """

    scale: int = 4
    filter: str = "lanczos"
    overlap: float = 0.25
    degrade: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or not 1 <= self.scale <= 16:
            raise ValueError(f"scale must be an integer in [1, 16], got {self.scale!r}")
        if self.filter not in RESAMPLING_FILTERS:
            raise ValueError(f"filter must be one of {', '.join(RESAMPLING_FILTERS)}, got {self.filter!r}")
        if not 0 <= self.overlap <= 0.5:
            raise ValueError(f"overlap must be a fraction of the tile in [0, 0.5], got {self.overlap!r}")

    def overlap_pixels(self, resolution: int) -> int:
        return min(resolution - 1, round(self.overlap * resolution))


def degrade(img: Image.Image, scale: int) -> tuple[Image.Image, Image.Image]:
    """(reference, low): ``img`` cut to a multiple of ``scale`` (right and bottom), and that downscaled by
    ``scale`` with bicubic resampling: the pair an enhancement benchmark compares against."""
    rgb = img.convert("RGB")
    width, height = (rgb.width // scale) * scale, (rgb.height // scale) * scale
    if width < scale or height < scale:
        raise ValueError(f"a {rgb.width}x{rgb.height} image is smaller than the scale {scale}")
    reference = rgb.crop((0, 0, width, height))
    return reference, reference.resize((width // scale, height // scale), Image.Resampling.BICUBIC)


def pad_to(img: Image.Image, side: int) -> Image.Image:
    """``img`` padded right and bottom by repeating its edge pixels to at least ``side`` in each dimension
    (a copy when it is large enough): ``tile_grid`` needs an image no smaller than a tile."""
    array = np.asarray(img.convert("RGB"))
    height, width = array.shape[:2]
    pad = ((0, max(0, side - height)), (0, max(0, side - width)), (0, 0))
    return Image.fromarray(np.pad(array, pad, mode="edge"))
