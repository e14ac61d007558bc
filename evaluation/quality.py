"""Full-reference image quality for the enhancement benchmark: PSNR and SSIM, as in super-resolution papers.

The benchmark downsamples a high-resolution image, enhances it back (upsampling, then local sampling) and
compares the result with the original: ``quality_row(original, enhanced)`` gives one row of the results
table. Both metrics are scikit-image's, on 8-bit RGB arrays with a data range of 255, so the numbers are
comparable with published tables that use the same definitions:

- ``psnr``: peak signal-to-noise ratio in dB over all pixels and channels, ``10 log10(255^2 / MSE)``.
- ``ssim``: structural similarity, mean over the image of scikit-image's 7 x 7 uniform-window SSIM,
  averaged over the three channels.

Typical use::

    row = quality_row(np.asarray(original.convert("RGB")), np.asarray(enhanced.convert("RGB")))
    # {"psnr": 31.2, "ssim": 0.87}
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA_RANGE = 255  # 8-bit images

# scikit-image's default SSIM window side. Images smaller than this get the largest odd window that fits.
SSIM_WINDOW = 7

# The smallest window SSIM is defined on: a 1-pixel window has no variance to compare.
MIN_SSIM_WINDOW = 3


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio of ``test`` against ``reference``, in dB (higher is closer).

    Both are uint8 RGB arrays (height, width, 3) of the same shape. Identical images have no error and
    give ``math.inf``; scikit-image would divide by zero to get there, so it is returned directly.

    Raises:
        ValueError: an array is not uint8 RGB (height, width, 3), or the shapes differ.
    """
    _check_pair(reference, test)
    if np.array_equal(reference, test):
        return math.inf
    return float(peak_signal_noise_ratio(reference, test, data_range=DATA_RANGE))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Structural similarity of ``test`` and ``reference`` (1 for identical images), scikit-image's.

    ``structural_similarity`` with ``channel_axis=-1`` and ``data_range=255``: the mean SSIM over
    ``SSIM_WINDOW`` x ``SSIM_WINDOW`` uniform windows, averaged over the channels. An image narrower or
    shorter than 7 pixels gets the largest odd window that fits in it (5 for a 5 or 6 pixel side, 3 for a
    3 or 4 pixel side), which scikit-image would otherwise refuse; its values are then not comparable
    with 7-pixel-window ones.

    Raises:
        ValueError: an array is not uint8 RGB (height, width, 3), the shapes differ, or a side is under
            3 pixels (no window fits).
    """
    _check_pair(reference, test)
    height, width = reference.shape[:2]
    window = min(SSIM_WINDOW, height, width)
    if window % 2 == 0:
        window -= 1
    if window < MIN_SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {MIN_SSIM_WINDOW}x{MIN_SSIM_WINDOW} pixels, got {width}x{height}"
        )
    return float(structural_similarity(reference, test, win_size=window, channel_axis=-1, data_range=DATA_RANGE))


def quality_row(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """``{"psnr": psnr(reference, test), "ssim": ssim(reference, test)}``: one row of the quality table.

    Raises:
        ValueError: as ``psnr`` and ``ssim``.
    """
    return {"psnr": psnr(reference, test), "ssim": ssim(reference, test)}


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    for name, image in (("reference", reference), ("test", test)):
        if not isinstance(image, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name} must be RGB, shaped (height, width, 3), got shape {image.shape}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"{name} is empty: shape {image.shape}")
    if reference.shape != test.shape:
        raise ValueError(f"reference and test differ in shape: {reference.shape} and {test.shape}")
