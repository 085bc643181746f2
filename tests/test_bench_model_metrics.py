"""DINO structure distance and CLIP similarity, wired to tiny random transformers models, equal a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from invedit.bench.model_metrics import clip_similarity, dino_input, key_projection, last_block, structure_distance
from invedit.testing import tiny_clip, tiny_dino


@pytest.fixture(scope="module")
def vit():
    return tiny_dino()


def keys_by_hand(vit, pixels: torch.Tensor) -> torch.Tensor:
    """The last block's keys from its input hidden state: layernorm_before, then the key projection."""
    with torch.no_grad():
        hidden = vit(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-2]
        layer = last_block(vit)
        return key_projection(layer)(layer.layernorm_before(hidden))[0]


def images():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[16:48, 16:48] = 255 - b[16:48, 16:48]
    return a, b


def test_structure_distance_is_the_mse_of_key_self_similarities(vit):
    a, b = images()
    sims = []
    for image in (a, b):
        keys = keys_by_hand(vit, dino_input(image))
        assert keys.shape == (1 + (224 // 16) ** 2, 24)  # CLS + patches, all heads concatenated
        unit = keys / keys.norm(dim=-1, keepdim=True)
        sims.append(unit @ unit.T)
    expected = ((sims[0] - sims[1]) ** 2).mean().item() * 1e3
    assert structure_distance(vit, a, b) == pytest.approx(expected, rel=1e-5)
    assert structure_distance(vit, a, a) == 0.0
    assert structure_distance(vit, a, b, parity=True) != pytest.approx(expected, rel=1e-3)  # the 0–255 quirk


def test_dino_input_resizes_the_shorter_side_and_normalises():
    x = dino_input(np.full((100, 300, 3), 255, dtype=np.uint8))
    assert x.shape == (1, 3, 160, 480)  # 224 on the short side would make the long one 672 > 480
    torch.testing.assert_close(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]))


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def test_clip_similarity_is_100_times_the_clamped_cosine(clip):
    model, processor = clip
    a, _ = images()
    prompt = "a red square on a striped background"
    inputs = processor(text=[prompt], images=[a], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cos = (out.logits_per_image / model.logit_scale.exp()).item()
    assert clip_similarity(model, processor, a, prompt) == pytest.approx(100 * max(cos, 0.0), rel=1e-5, abs=1e-6)
    keep = np.zeros((64, 64), dtype=bool)
    keep[16:48, 16:48] = True
    black = a * keep[..., None].astype(np.uint8)
    inputs = processor(text=[prompt], images=[black], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cos_black = (out.logits_per_image / model.logit_scale.exp()).item()
    assert clip_similarity(model, processor, a, prompt, keep) == pytest.approx(100 * max(cos_black, 0.0), rel=1e-5,
                                                                                abs=1e-6)
    assert math.isnan(clip_similarity(model, processor, a, prompt, np.zeros_like(keep)))
    assert F.cosine_similarity(torch.ones(1, 2), -torch.ones(1, 2)).item() < 0  # the clamp matters for such pairs
