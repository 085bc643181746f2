"""PIE-Bench's background-preservation metrics, as the reference evaluator computes them (reference-settings §7).

Both images are multiplied by the unedited region (1 − mask) and the metric is taken over the *whole* image,
zeros included — the reference's definition, which differs from a PSNR restricted to the unedited pixels.
An empty unedited region gives NaN (excluded from means). Images are uint8 (H, W, 3) arrays or PIL images; the
mask is (H, W), true where the edit is. Reported in the paper's units: PSNR in dB, MSE ×10⁴, SSIM ×10² (Gaussian
window 11, σ 1.5, borders reflect-padded and included, as torchmetrics computes it). Everything in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BACKGROUND_METRICS = ("psnr", "mse", "ssim")
#: Multipliers of the paper's tables (Table 1 reports MSE ×10⁴, SSIM ×10²).
SCALE = {"psnr": 1.0, "mse": 1e4, "ssim": 1e2}


def _unit_tensor(image) -> torch.Tensor:
    """uint8 (H, W, 3) → float64 (1, 3, H, W) in [0, 1]."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.float64) / 255.0).permute(2, 0, 1).unsqueeze(0)


def masked_background(source, edited, edit_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Both images × (1 − mask), as (1, 3, H, W) float64 in [0, 1]; ``None`` when nothing is unedited."""
    keep = ~np.asarray(edit_mask, dtype=bool)
    x, y = _unit_tensor(source), _unit_tensor(edited)
    if x.shape != y.shape or keep.shape != tuple(x.shape[-2:]):
        raise ValueError(f"image sizes {tuple(x.shape[-2:])}, {tuple(y.shape[-2:])} and mask {keep.shape} differ")
    if not keep.any():
        return None
    m = torch.from_numpy(keep.astype(np.float64))
    return x * m, y * m


def background_metrics(source, edited, edit_mask: np.ndarray,
                       metrics: tuple[str, ...] = BACKGROUND_METRICS) -> dict[str, float]:
    """``{"psnr": dB, "mse": ×10⁴, "ssim": ×10²}`` of the unedited region (NaN when there is none)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    unknown = set(metrics) - set(BACKGROUND_METRICS)
    if unknown:
        raise ValueError(f"unknown background metric {sorted(unknown)[0]!r}; known: {', '.join(BACKGROUND_METRICS)}")
    pair = masked_background(source, edited, edit_mask)
    if pair is None:
        return {name: math.nan for name in metrics}
    x, y = pair
    mse = torch.mean((y - x) ** 2).item()
    out: dict[str, float] = {}
    for name in metrics:
        if name == "psnr":  # data range 1, float64 (torchmetrics' PSNR would round in float32)
            value = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
        elif name == "mse":
            value = mse
        else:
            value = structural_similarity_index_measure(y, x, gaussian_kernel=True, kernel_size=11, sigma=1.5,
                                                        data_range=1.0).item()
        out[name] = value * SCALE[name]
    return out
