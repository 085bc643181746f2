"""PIE-Bench background metrics equal an independent numpy computation with the reference's settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from invedit.bench.metrics import background_metrics


def numpy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Gaussian SSIM (window 11, σ 1.5, data range 1, K = 0.01/0.03) averaged over every pixel and channel, the
    borders reflect-padded by 5 (what the reference evaluator's torchmetrics computes)."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(a: np.ndarray) -> np.ndarray:  # correlation with w, per channel, same size as the image
        a = np.pad(a, ((5, 5), (5, 5), (0, 0)), mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(a, (11, 11), axis=(0, 1))
        return np.einsum("hwcij,ij->hwc", windows, w)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(ssim.mean())


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    noise = rng.integers(-40, 41, source.shape)
    edited = np.clip(source.astype(int) + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((48, 40), dtype=bool)
    mask[10:30, 5:25] = True  # the edit region
    return source, edited, mask


def test_background_metrics_equal_numpy_on_the_masked_whole_image(pair):
    source, edited, mask = pair
    keep = (~mask)[..., None].astype(np.float64)
    x, y = source / 255.0 * keep, edited / 255.0 * keep  # zeros inside the edit region count, as in the reference
    mse = np.mean((x - y) ** 2)
    got = background_metrics(source, edited, mask)
    assert got["mse"] == pytest.approx(mse * 1e4, rel=1e-9)
    assert got["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert got["ssim"] == pytest.approx(numpy_ssim(x, y) * 1e2, rel=1e-9)  # both float64
    # the reference's definition is not "PSNR of the unedited pixels only": that one is lower here
    only = 10 * math.log10(1 / np.mean(((source - edited.astype(float)) / 255.0)[~mask] ** 2))
    assert got["psnr"] > only + 0.5


def test_identical_images_and_empty_background(pair):
    source, _, mask = pair
    same = background_metrics(source, source, mask)
    assert same["mse"] == 0 and same["psnr"] == math.inf and same["ssim"] == pytest.approx(100.0)
    everything = background_metrics(source, source, np.ones_like(mask))
    assert all(math.isnan(v) for v in everything.values())  # no unedited region: NaN, excluded from means


def test_shape_and_name_errors(pair):
    source, edited, mask = pair
    with pytest.raises(ValueError, match="differ"):
        background_metrics(source, edited, mask[:-1])
    with pytest.raises(ValueError, match="unknown background metric"):
        background_metrics(source, edited, mask, metrics=("psnr", "lpips"))
