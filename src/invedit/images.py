"""Image I/O: load and check user images, convert between PIL and model tensors (reference-settings §1)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InveditError

MIN_SIDE = 32  # smaller images hold too little to invert meaningfully
_CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"}


def _open(source: str | Path | Image.Image, what: str = "image") -> Image.Image:
    """The image at ``source`` (a path, or a PIL image as is), loaded; ``what`` names it in the messages."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    if not path.exists():
        raise InveditError(f"{what} not found: {path}")
    if path.is_dir():
        raise InveditError(f"{what} path is a folder, not a file: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both are refused in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise InveditError(f"{what} {path} is too large ({size}; Pillow's limit against decompression bombs is "
                           f"{Image.MAX_IMAGE_PIXELS:,}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InveditError(f"cannot read {what} {path}: {_read_failure(exc)}") from None


def _read_failure(exc: Exception) -> str:
    """Why Pillow could not read a file, in words a user can act on."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if "truncated" in text.lower() or "broken data stream" in text.lower() or isinstance(exc, (SyntaxError,
                                                                                              EOFError)):
        return f"the file is truncated or corrupt ({text})"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return text


def transparent_alpha(image: Image.Image) -> np.ndarray | None:
    """The alpha channel (uint8 H×W) of an image that has transparent pixels (a palette's transparency included);
    None for an opaque one."""
    if image.mode in ("P", "PA") and ("transparency" in image.info or image.mode == "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            return alpha
    return None


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """RGB copy of ``image``; grey, palette and opaque-alpha images convert, transparent ones are refused."""
    if image.mode not in _CONVERTIBLE_MODES:
        raise InveditError(f"{name} has unsupported mode {image.mode!r}; save it as 8-bit RGB (PNG/JPEG)")
    if transparent_alpha(image) is not None:
        raise InveditError(f"{name} has transparent pixels; flatten it onto a background first")
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int,
                       resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Centre-crop to a square, then resize to ``size``×``size`` (bicubic), as the reference `load_512`."""
    w, h = image.size
    if h < w:
        left = (w - h) // 2
        image = image.crop((left, 0, left + h, h))
    elif w < h:
        top = (h - w) // 2
        image = image.crop((0, top, w, top + w))
    if image.size != (size, size):
        image = image.resize((size, size), resample)
    return image


def load_image(source: str | Path | Image.Image, size: int = 512) -> Image.Image:
    """Load an image for editing: RGB, centre-cropped to a square and resized to ``size`` (reference-settings §1).

    Args:
        source: a path or a PIL image.
        size: output side in pixels (the model's native resolution).
    Returns:
        An RGB PIL image of ``size``×``size``.
    Raises:
        InveditError: missing/unreadable file, unsupported mode, transparency, or an image under 32 px.
    """
    image = _open(source)
    name = f"image {source}" if not isinstance(source, Image.Image) else "image"
    if min(image.size) < MIN_SIDE:
        raise InveditError(f"{name} is too small ({image.size[0]}x{image.size[1]}); need at least {MIN_SIDE} px")
    return center_crop_resize(to_rgb(image, name), size)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → float tensor (1, 3, H, W) in [-1, 1] (x/127.5 − 1, as the reference)."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1).unsqueeze(0)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoder output in [-1, 1] (N, 3, H, W) → uint8 (N, H, W, 3): clamp, ×255, truncate (reference-settings §1)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)


def psnr(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image, mask: np.ndarray | None = None) -> float:
    """PSNR in dB between two uint8 images (optionally only where ``mask`` is true)."""
    x = np.asarray(a, dtype=np.float64) / 255.0
    y = np.asarray(b, dtype=np.float64) / 255.0
    err = (x - y) ** 2
    if mask is not None:
        err = err[np.asarray(mask, dtype=bool)]
    mse = float(err.mean()) if err.size else float("nan")
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
