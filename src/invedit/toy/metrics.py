"""Measurements on shapes-world images: which palette colour a region shows, and masked PSNR."""

from __future__ import annotations

import numpy as np

from ..images import psnr
from .scenes import COLORS

SATURATION = 60  # max(rgb) − min(rgb) above this: an object pixel (backgrounds are achromatic)


_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float64)


def _nearest_index(rgb: np.ndarray) -> np.ndarray:
    """Index into the palette of the colour closest to each ``rgb`` (..., 3) (Euclidean in RGB)."""
    return ((np.asarray(rgb, dtype=np.float64)[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)


def nearest_color(rgb: np.ndarray) -> str:
    """Name of the palette colour closest to ``rgb`` (Euclidean in RGB)."""
    return _NAMES[int(_nearest_index(rgb))]


def region_color(image: np.ndarray, mask: np.ndarray, min_fraction: float = 0.2) -> str | None:
    """Palette colour of the saturated pixels inside ``mask`` (median RGB), or None when too few are saturated."""
    pixels = np.asarray(image, dtype=np.int32)[np.asarray(mask, dtype=bool)]
    if len(pixels) == 0:
        return None
    saturated = pixels[(pixels.max(1) - pixels.min(1)) > SATURATION]
    if len(saturated) < min_fraction * len(pixels):
        return None
    return nearest_color(np.median(saturated, axis=0))


def color_pixels(image: np.ndarray, color: str) -> np.ndarray:
    """Saturated (object) pixels whose nearest palette colour is ``color``."""
    return saturated_mask(image) & (_nearest_index(image) == _NAMES.index(color))


def majority_color(image: np.ndarray) -> str | None:
    """The palette colour most saturated pixels are nearest to (None when no pixel is saturated)."""
    saturated = saturated_mask(image)
    if not saturated.any():
        return None
    return _NAMES[int(np.bincount(_nearest_index(np.asarray(image)[saturated]), minlength=len(_NAMES)).argmax())]


def object_color(prompt: str, shape: str) -> str:
    """Colour word of the object ``shape`` in a shapes-world caption ("a red circle and a blue star on …")."""
    words = prompt.split()
    return words[words.index(shape) - 1]


#: an add edit succeeds when this share of the true object's area shows its colour where the source had background
ADDED_AREA = 0.4


def object_added(edited: np.ndarray, source: np.ndarray, color: str, true_mask: np.ndarray) -> bool:
    """An object of ``color`` was drawn on the source's background, anywhere (prompts name no place): at least
    `ADDED_AREA` of the true object's area."""
    added = color_pixels(edited, color) & ~saturated_mask(source)
    return bool(added.sum() >= ADDED_AREA * np.asarray(true_mask, dtype=bool).sum())


def object_removed(edited: np.ndarray, color: str, mask: np.ndarray) -> bool:
    """The removed object's colour no longer shows in its region."""
    return region_color(edited, mask) != color


def background_psnr(edited: np.ndarray, source: np.ndarray, edit_mask: np.ndarray) -> float:
    """PSNR between the edited and the source image outside the edit region."""
    return psnr(edited, source, ~np.asarray(edit_mask, dtype=bool))


def saturated_mask(image: np.ndarray) -> np.ndarray:
    """Pixels that belong to objects: saturated colour (backgrounds are achromatic)."""
    pixels = np.asarray(image, dtype=np.int32)
    return (pixels.max(-1) - pixels.min(-1)) > SATURATION


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (empty mask → empty)."""
    mask = np.asarray(mask, dtype=bool)
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


_ANGLES = {"circle": (0.0,), "square": tuple(np.arange(0, 90, 7.5)), "triangle": tuple(np.arange(0, 120, 10.0)),
           "star": tuple(np.arange(0, 72, 6.0))}


def _template(shape: str, cx: float, cy: float, area: float, angle: float, size: int) -> np.ndarray:
    """Mask of ``shape`` centred at (cx, cy) (pixels) with ``area`` pixels, on a ``size`` canvas."""
    from .scenes import SUPERSAMPLE, SceneObject, _render_object_mask

    n, scale = size * SUPERSAMPLE, SUPERSAMPLE * size / 64.0
    unit = _render_object_mask(SceneObject(shape, "red", 32.0, 32.0, 10.0, 0.0), 64 * SUPERSAMPLE, SUPERSAMPLE)
    unit_area = unit.sum() / SUPERSAMPLE**2  # pixels at r = 10 on a 64-px canvas
    r = 10.0 * np.sqrt(area / unit_area) * 64.0 / size
    obj = SceneObject(shape, "red", cx * 64.0 / size, cy * 64.0 / size, r, float(angle))
    hi = _render_object_mask(obj, n, scale)
    return hi.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) >= 0.5


def classify_shape(blob: np.ndarray) -> tuple[str | None, float]:
    """Shape whose template (same centroid and area, best rotation) overlaps ``blob`` most: (name, IoU)."""
    from .scenes import SHAPES

    blob = np.asarray(blob, dtype=bool)
    area = blob.sum()
    if area < 12:
        return None, 0.0
    ys, xs = np.nonzero(blob)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    best, best_iou = None, 0.0
    for shape in SHAPES:
        for angle in _ANGLES[shape]:
            t = _template(shape, cx, cy, area, angle, blob.shape[0])
            iou = (t & blob).sum() / max((t | blob).sum(), 1)
            if iou > best_iou:
                best, best_iou = shape, float(iou)
    return best, best_iou


def dominant_object(image: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) of the largest saturated blob of ``image`` (None where there is none)."""
    blob = largest_component(saturated_mask(image))
    if blob.sum() < 12:
        return None, None
    return region_color(image, blob), classify_shape(blob)[0]


def edit_succeeded(kind: str, item, edited: np.ndarray, source: np.ndarray, mask: np.ndarray) -> bool | None:
    """Did a shapes-world edit do what its kind asks (None: no criterion for this kind, i.e. background)?

    ``item`` has ``blend_words`` ("src tgt"), ``source_prompt`` and ``target_prompt`` (a `BenchItem`). Colour / shape:
    the target colour / shape is recognised in the edit region; add: an object of the target colour covers at
    least `ADDED_AREA` of the true object's area; delete: the removed object's colour is gone from its region.
    """
    src_word, tgt_word = item.blend_words.split()
    if kind == "color":
        return region_color(edited, mask) == tgt_word
    if kind == "shape":
        return classify_shape(largest_component(mask & saturated_mask(edited)))[0] == tgt_word
    if kind == "add":
        return object_added(edited, source, object_color(item.target_prompt, tgt_word), mask)
    if kind == "delete":
        return object_removed(edited, object_color(item.source_prompt, src_word), mask)
    return None
