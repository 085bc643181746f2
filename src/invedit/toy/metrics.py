"""Measurements on shapes-world images: which palette colour a region shows, and masked PSNR."""

from __future__ import annotations

import numpy as np

from ..images import psnr
from .scenes import COLORS

SATURATION = 60  # max(rgb) − min(rgb) above this: an object pixel (backgrounds are achromatic)


def nearest_color(rgb: np.ndarray) -> str:
    """Name of the palette colour closest to ``rgb`` (Euclidean in RGB)."""
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((palette - np.asarray(rgb, dtype=np.float64)) ** 2).sum(1)))]


def region_color(image: np.ndarray, mask: np.ndarray, min_fraction: float = 0.2) -> str | None:
    """Palette colour of the saturated pixels inside ``mask`` (median RGB), or None when too few are saturated."""
    pixels = np.asarray(image, dtype=np.int32)[np.asarray(mask, dtype=bool)]
    if len(pixels) == 0:
        return None
    saturated = pixels[(pixels.max(1) - pixels.min(1)) > SATURATION]
    if len(saturated) < min_fraction * len(pixels):
        return None
    return nearest_color(np.median(saturated, axis=0))


def background_psnr(edited: np.ndarray, source: np.ndarray, edit_mask: np.ndarray) -> float:
    """PSNR between the edited and the source image outside the edit region."""
    return psnr(edited, source, ~np.asarray(edit_mask, dtype=bool))
