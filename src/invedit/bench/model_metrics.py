"""PIE-Bench metrics that need a network: DINO structure distance and CLIP similarity (reference-settings §7).

The networks are ordinary transformers models (`ViTModel` for ``facebook/dino-vitb8``, `CLIPModel` for
``openai/clip-vit-large-patch14``), loaded by the caller from a hub id or a folder; these functions only compute.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_input(image, size: int = 224, max_size: int = 480, parity: bool = False) -> torch.Tensor:
    """(1, 3, h, w) input of the structure metric: shorter side resized to ``size`` (longer ≤ ``max_size``),
    ImageNet-normalised. ``parity``: the reference's quirk of normalising 0–255 values instead of [0, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                      align_corners=False)
    if not parity:
        x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def last_block(vit) -> torch.nn.Module:
    """The last transformer block of a `ViTModel` (``layers`` in transformers 5, ``encoder.layer`` before)."""
    return vit.layers[-1] if hasattr(vit, "layers") else vit.encoder.layer[-1]


def key_projection(block) -> torch.nn.Module:
    """The key projection of a ViT block's self-attention (``k_proj`` in transformers 5, ``attention.key`` before)."""
    attention = block.attention
    return attention.k_proj if hasattr(attention, "k_proj") else attention.attention.key


@torch.no_grad()
def last_block_keys(vit, pixels: torch.Tensor) -> torch.Tensor:
    """Keys of the last transformer block's self-attention, every head concatenated, CLS included: (tokens, D)."""
    captured: list[torch.Tensor] = []
    handle = key_projection(last_block(vit)).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        vit(pixel_values=pixels.to(vit.device, vit.dtype), interpolate_pos_encoding=True)
    finally:
        handle.remove()
    return captured[0][0].float()


def self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of tokens: (tokens, tokens)."""
    unit = F.normalize(keys, dim=-1)
    return unit @ unit.T


def structure_distance(vit, source, edited, parity: bool = False) -> float:
    """MSE between the DINO key self-similarities of source and edit, ×10³ as in the paper's tables."""
    a = self_similarity(last_block_keys(vit, dino_input(source, parity=parity)))
    b = self_similarity(last_block_keys(vit, dino_input(edited, parity=parity)))
    return F.mse_loss(a, b).item() * 1e3


@torch.no_grad()
def clip_similarity(model, processor, image, prompt: str, keep_mask: np.ndarray | None = None) -> float:
    """100·max(cos(image, prompt), 0) with a `CLIPModel`; ``keep_mask`` (H, W) blacks out everything else first
    (the "edited" variant: keep the edit region). NaN when the kept region is empty."""
    array = np.array(image)  # a writable copy (the processor turns it into a tensor)
    if keep_mask is not None:
        keep = np.asarray(keep_mask, dtype=bool)
        if not keep.any():
            return math.nan
        array = array * keep[..., None].astype(array.dtype)
    inputs = processor(text=[prompt], images=[array], return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
    text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    image_embeds, text_embeds = (_features(e) for e in (image_embeds, text_embeds))
    cos = F.cosine_similarity(image_embeds.float(), text_embeds.float()).item()
    return 100.0 * max(cos, 0.0)


def _features(out) -> torch.Tensor:
    """`get_*_features` returns a tensor, or (transformers 5) an output object holding the pooled projection."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output
