"""Full-reference quality metrics: scikit-image's PSNR and SSIM, with the edges (identity, tiny images) pinned down."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from evaluation.quality import psnr, quality_row, ssim


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def noisy_copy(image: np.ndarray, seed: int, amount: int = 20) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amount, amount + 1, image.shape)
    return np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("height", "width"), [(48, 64), (7, 7), (31, 17)])
def test_metrics_are_scikit_images(height, width):
    for seed in range(3):
        reference = random_image(height, width, seed)
        for test in (random_image(height, width, seed + 100), noisy_copy(reference, seed)):
            expected_psnr = peak_signal_noise_ratio(reference, test, data_range=255)
            expected_ssim = structural_similarity(reference, test, channel_axis=-1, data_range=255)
            assert psnr(reference, test) == pytest.approx(expected_psnr, abs=1e-12, rel=0)
            assert ssim(reference, test) == pytest.approx(expected_ssim, abs=1e-12, rel=0)
            row = quality_row(reference, test)
            assert set(row) == {"psnr", "ssim"}
            assert row == {"psnr": psnr(reference, test), "ssim": ssim(reference, test)}
            assert all(type(value) is float for value in row.values())


def test_closer_images_score_higher():
    reference = random_image(32, 32, 0)
    slightly, badly = noisy_copy(reference, 1, amount=5), noisy_copy(reference, 1, amount=60)
    assert psnr(reference, slightly) > psnr(reference, badly)
    assert ssim(reference, slightly) > ssim(reference, badly)


def test_identical_images_have_infinite_psnr_and_ssim_one():
    image = random_image(20, 30, 0)
    row = quality_row(image, image.copy())
    assert row == {"psnr": math.inf, "ssim": 1.0}


def test_psnr_of_a_known_mse():
    # Every pixel of every channel off by exactly 1 (no clipping): MSE = 1, so PSNR = 10 log10(255^2).
    reference = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    assert psnr(reference, reference + np.uint8(1)) == pytest.approx(10 * math.log10(255**2), abs=1e-9, rel=0)
    assert psnr(reference + np.uint8(1), reference) == pytest.approx(48.13080360867910, abs=1e-9, rel=0)


@pytest.mark.parametrize(("height", "width", "window"), [(5, 5, 5), (6, 9, 5), (4, 12, 3), (3, 3, 3), (9, 6, 5)])
def test_small_images_get_the_largest_odd_window_that_fits(height, width, window):
    reference, test = random_image(height, width, 1), random_image(height, width, 2)
    expected = structural_similarity(reference, test, win_size=window, channel_axis=-1, data_range=255)
    assert ssim(reference, test) == pytest.approx(expected, abs=1e-12, rel=0)
    assert ssim(reference, reference.copy()) == 1.0
    assert math.isfinite(quality_row(reference, test)["psnr"])


@pytest.mark.parametrize(("height", "width"), [(2, 10), (10, 2), (1, 1)])
def test_ssim_refuses_images_under_three_pixels(height, width):
    image = random_image(height, width, 0)
    with pytest.raises(ValueError, match=f"at least 3x3 pixels, got {width}x{height}"):
        ssim(image, image)
    assert psnr(image, image) == math.inf  # PSNR has no window: any size works


def test_mismatched_shapes_are_refused_with_both_shapes_named():
    a, b = random_image(10, 12, 0), random_image(12, 10, 0)
    for metric in (psnr, ssim, quality_row):
        with pytest.raises(ValueError, match=r"differ in shape: \(10, 12, 3\) and \(12, 10, 3\)"):
            metric(a, b)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((8, 8, 3), np.float64), "reference must be uint8, got float64"),
        (np.zeros((8, 8, 3), np.uint16), "reference must be uint8, got uint16"),
        (np.zeros((8, 8), np.uint8), r"reference must be RGB, shaped \(height, width, 3\), got shape \(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), r"reference must be RGB, shaped \(height, width, 3\), got shape \(8, 8, 4\)"),
        (np.zeros((0, 8, 3), np.uint8), r"reference is empty: shape \(0, 8, 3\)"),
        ([[[0, 0, 0]]], "reference must be a numpy array, got list"),
    ],
)
def test_only_uint8_rgb_arrays_are_accepted(bad, message):
    good = np.zeros((8, 8, 3), np.uint8)
    for metric in (psnr, ssim, quality_row):
        with pytest.raises(ValueError, match=message):
            metric(bad, good)
        with pytest.raises(ValueError, match=message.replace("reference", "test")):
            metric(good, bad)
