"""Edit masks: the region a mask-taking editor (KV-Edit) may change, read from a file, an image or an array.

A mask is in the pixel coordinates of the image it belongs to and has that image's size. White marks the region to
edit: a pixel is in it when its grey level is at least half (≥ 128 of 255; ≥ 0.5 for float arrays; True for
boolean ones). A mask with transparent pixels (a painted layer) is read by its alpha channel instead: painted = edit.
It is centre-cropped to a square exactly as the image is (`invedit.images.center_crop_resize`), and a latent cell
is in the edit region when any pixel of the image area it covers is (`EditMask.grid`: the crop cut into n × n
boxes, max-pooled). KV-Edit's official code interpolates the mask bilinearly to the latent grid and keeps every cell
above 0 (Xilluill/KV-Edit, ``models/kv_edit.py``): the same cells inside the region, at most one cell apart at its
edges.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InveditError
from .images import _open, transparent_alpha

#: Grey level (of 255) from which a mask pixel is in the edit region.
THRESHOLD = 128
_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}


@dataclass(frozen=True, eq=False)
class EditMask:
    """An edit region: ``pixels`` (bool, square), the mask centre-cropped like its image; True = edit.

    ``size``: the (width, height) of the mask as given, before the crop; ``source``: how it was given (a file name,
    "image", "array", a benchmark entry), for the record.
    """

    pixels: np.ndarray = field(repr=False)
    size: tuple[int, int]
    source: str = "array"

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, source: str = "array", name: str = "mask") -> EditMask:
        """The mask of a boolean (H, W) array in its image's coordinates: centre-cropped to a square.

        Raises:
            InveditError: an empty mask (no pixel in the edit region).
        """
        pixels = np.asarray(pixels, dtype=bool)
        h, w = pixels.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = pixels[top:top + side, left:left + side].copy()
        if not square.any():
            where = " inside the centre square the image is cropped to" if pixels.any() else ""
            raise InveditError(f"{name} is empty{where}: no pixel is white (white marks the region to edit)")
        square.setflags(write=False)
        return cls(square, (w, h), source)

    def grid(self, cells: int) -> np.ndarray:
        """The edit region on a ``cells`` × ``cells`` latent grid (bool): a cell is in it when any pixel of the
        image area it covers is (the square cut into boxes at ⌊k·S/cells⌋; a mask smaller than the grid is read
        by nearest neighbour)."""
        side = self.pixels.shape[0]
        starts = np.floor(np.arange(cells) * side / cells).astype(np.intp)
        rows = np.maximum.reduceat(self.pixels, starts, axis=0)
        return np.maximum.reduceat(rows, starts, axis=1)

    @property
    def fraction(self) -> float:
        """Share of the (cropped) image in the edit region."""
        return float(self.pixels.mean())

    def record(self) -> dict[str, Any]:
        """What an edit's record says about its mask (its pixels' SHA-256 identifies it)."""
        digest = hashlib.sha256(np.packbits(self.pixels).tobytes() + str(self.pixels.shape).encode()).hexdigest()
        return {"given": True, "source": self.source, "size": list(self.size),
                "edited_fraction": round(self.fraction, 6), "sha256": digest}


def read_mask(source: str | os.PathLike | Image.Image | np.ndarray, name: str | None = None) -> tuple[np.ndarray, str]:
    """(bool (H, W) array, a name for messages) of a mask file, PIL image or array (see the module docstring).

    Raises:
        InveditError: a missing or unreadable file, an unsupported image mode, an array of another shape or range.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or f"mask {source}"
        return _image_pixels(_open(source, "mask"), name), name
    if isinstance(source, Image.Image):
        name = name or "mask"
        return _image_pixels(source, name), name
    name = name or "mask"
    try:
        array = np.asarray(source.detach().cpu() if hasattr(source, "detach") else source)
    except (TypeError, ValueError, RuntimeError):
        raise InveditError(f"{name} must be an image file, a PIL image or a 2-D array, got "
                           f"{type(source).__name__}") from None
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or 0 in array.shape:
        raise InveditError(f"{name} array must be 2-D (height × width), got shape {tuple(array.shape)}")
    if array.dtype == bool:
        return array.copy(), name
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise InveditError(f"{name} array of integers must hold grey levels 0–255")
        return array >= THRESHOLD, name
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InveditError(f"{name} array of floats must hold values in [0, 1]")
        return array >= 0.5, name
    raise InveditError(f"{name} array must hold booleans, 0–255 integers or 0–1 floats, got {array.dtype}")


def _image_pixels(image: Image.Image, name: str) -> np.ndarray:
    """The edit region of a mask image: its alpha where it has transparent pixels, else its grey level ≥ 128."""
    if image.mode not in _MODES:
        raise InveditError(f"{name} has unsupported mode {image.mode!r}; save it as an 8-bit black-and-white PNG")
    alpha = transparent_alpha(image)
    if alpha is not None:
        return alpha >= THRESHOLD
    return np.asarray(image.convert("L")) >= THRESHOLD


def painted_pixels(layers: list[str | os.PathLike | Image.Image], name: str = "painted mask") -> np.ndarray | None:
    """The region painted on transparent layers (a brush in a browser's image editor): the union of the pixels whose
    alpha is at least half (≥ `THRESHOLD`), bool (H, W); None when nothing is painted (no layer, or only
    transparent ones).

    Raises:
        InveditError: an unreadable layer, or layers of different sizes.
    """
    region = None
    for layer in layers:
        image = _open(layer, name)
        alpha = np.asarray(image.convert("RGBA").getchannel("A")) >= THRESHOLD
        if region is not None and region.shape != alpha.shape:
            raise InveditError(f"{name}: its layers differ in size ({region.shape[1]}x{region.shape[0]} and "
                               f"{alpha.shape[1]}x{alpha.shape[0]} pixels)")
        region = alpha if region is None else region | alpha
    return region if region is not None and region.any() else None


def image_size(source: str | os.PathLike | Image.Image) -> tuple[int, int]:
    """(width, height) of an image file (read from its header) or PIL image.

    Raises:
        InveditError: the image's own reader's message for a file it cannot read.
    """
    if isinstance(source, Image.Image):
        return source.size
    try:
        with Image.open(source) as im:
            return im.size
    except Exception:  # noqa: BLE001 (the image reader gives the one-line message)
        return _open(source).size


def load_mask(source: str | os.PathLike | Image.Image | np.ndarray | EditMask,
              image: str | os.PathLike | Image.Image | tuple[int, int] | None, name: str | None = None) -> EditMask:
    """The `EditMask` of a mask given for ``image`` (a path, a PIL image, or its (width, height); None: an image
    already cropped to a square, e.g. an `invedit.Inverted`'s, whose original size is unknown).

    Raises:
        InveditError: an unreadable mask, one of another size than the image (another aspect than a square when
            ``image`` is None), or an empty one.
    """
    if isinstance(source, EditMask):
        return source
    pixels, name = read_mask(source, name)
    height, width = pixels.shape
    if image is None:
        if height != width:
            raise InveditError(f"{name} is {width}x{height} pixels; the inverted image is square: give a square mask "
                               "(it is scaled to the latent grid)")
    else:
        expected = image if isinstance(image, tuple) else image_size(image)
        if (width, height) != tuple(expected):
            raise InveditError(f"{name} is {width}x{height} pixels but the image is {expected[0]}x{expected[1]}: "
                               "give a mask of the image's size")
    origin = Path(source).name if isinstance(source, (str, os.PathLike)) else (
        "image" if isinstance(source, Image.Image) else "array")
    return EditMask.from_pixels(pixels, origin, name)
