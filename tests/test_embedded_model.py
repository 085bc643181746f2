"""The embedded shapes model ships with the package, loads offline through `invedit.load()` and really edits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import invedit
from invedit.models import embedded_model_path, native_resolution
from invedit.toy.metrics import background_psnr
from invedit.toy.scenes import COLORS, VOCABULARY, make_edit_example

from .bounds import measured


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return invedit.load(device="cpu", dtype="float32")


def test_loads_offline_from_the_package(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = invedit.load(device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and native_resolution(pipe) == 64
    folder = embedded_model_path()
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    for word in VOCABULARY:  # a word-level vocabulary: every caption word is one token
        assert len(pipe.tokenizer(word).input_ids) == 3


def test_vae_round_trip_is_sharp(embedded):
    """The decoder fine-tune (encoder frozen) took the round trip from 28.6 to 35.1 dB on the training's eval scenes."""
    from invedit.api import decode_latents, encode_image
    from invedit.images import psnr
    from invedit.toy.scenes import make_scene

    values = []
    for seed in range(900_000, 900_008):  # scenes outside the training draw
        image = make_scene(seed).image
        values.append(psnr(np.asarray(decode_latents(embedded, encode_image(embedded, Image.fromarray(image)))[0]),
                           image))
    # lowest 35 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("embedded VAE round trip, mean dB", np.mean(values)) >= 31
    # measured 35.2 / 30.9; before the fine-tune 29.5 / 26.6
    # lowest 31 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("embedded VAE round trip, min dB", min(values)) >= 27, values


def mean_object_color(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float64)[mask]
    saturated = pixels[(pixels.max(1) - pixels.min(1)) > 60]
    return np.median(saturated if len(saturated) else pixels, axis=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_colour_edit_moves_the_object_towards_the_target_colour_and_keeps_the_background(embedded, seed):
    edit = make_edit_example(seed, "color")
    source_color, target_color = (np.array(COLORS[w]) for w in edit.blend_words.split())
    result = invedit.edit(embedded, Image.fromarray(edit.source_image), edit.source_prompt, edit.target_prompt,
                          blend_words=edit.blend_words, steps=25)
    got = mean_object_color(np.asarray(result.image), edit.mask)
    assert np.linalg.norm(got - target_color) < np.linalg.norm(got - source_color)
    # lowest 27 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("embedded colour edit background, dB",
                    background_psnr(np.asarray(result.image), edit.source_image, edit.mask)) >= 24


def test_direct_inversion_keeps_the_background_better_than_ddim(embedded):
    """The paper's claim on the shipped model: same P2P edit, Direct vs DDIM inversion, background PSNR."""
    gains = []
    for seed in range(4):
        edit = make_edit_example(seed, "color")
        direct = invedit.invert(embedded, Image.fromarray(edit.source_image), edit.source_prompt, "direct")
        bg = {}
        for inverted in (direct, direct.as_method("ddim")):  # one DDIM inversion serves both
            result = invedit.edit(embedded, inverted, None, edit.target_prompt, blend_words=edit.blend_words)
            bg[inverted.method] = background_psnr(np.asarray(result.image), edit.source_image, edit.mask)
        gains.append(bg["direct"] - bg["ddim"])
    # measured with the model's recommended P2P settings: +7.7, +6.4, +9.9, +8.1 dB (+1.6, +1.2, +5.0, +7.4 with
    # P2P's SD-tuned defaults); the target is ≥ 3 dB
    # lowest 9.4 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("embedded direct - ddim background, mean dB", np.mean(gains)) >= 5
    # lowest 7.8 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("embedded direct - ddim background, min dB", min(gains)) >= 3, gains


def test_the_shipped_model_recommends_its_p2p_settings_and_edits_use_them(embedded):
    from training.shapes_unet.train import EDITOR_DEFAULTS

    edit = make_edit_example(0, "color")
    result = invedit.edit(embedded, Image.fromarray(edit.source_image), edit.source_prompt, edit.target_prompt,
                          blend_words=edit.blend_words, steps=10)
    assert result.settings["editor_model_defaults"] == EDITOR_DEFAULTS["p2p"]  # what training exports
    assert result.settings["editor"]["cross_replace_steps"] == EDITOR_DEFAULTS["p2p"]["cross_replace_steps"]
    assert result.settings["editor"]["blend_threshold"] == EDITOR_DEFAULTS["p2p"]["blend_threshold"]
    assert result.settings["editor"]["blend_downsample"] == 1  # the grid nearest 16×16 on this 16×16 latent


def test_colour_and_shape_words_attend_to_their_object(embedded):
    """What P2P's LocalBlend reads: a word's 16×16 cross-attention is far higher on its object than elsewhere.

    Median over 16 one-object scenes noised to t = 300, heads and layers averaged: measured 369× (colour) and 326×
    (shape) for the shipped model, 135× / 116× for the previous weights, 1.1× before the grounding fine-tune.
    """
    import torch

    from invedit.api import encode_image
    from invedit.prompts import encode_prompts
    from invedit.toy.scenes import make_scene
    from training.shapes_unet.train import record_cross_attention

    scenes = [make_scene(7_100_000 + k, size=64, n_objects=1) for k in range(16)]
    unet = embedded.unet
    store: list[torch.Tensor] = []
    saved = dict(unet.attn_processors)
    record_cross_attention(unet, store)
    try:
        z0 = torch.cat([encode_image(embedded, Image.fromarray(s.image)) for s in scenes])
        alpha = embedded.scheduler.alphas_cumprod[300]
        zt = alpha.sqrt() * z0 + (1 - alpha).sqrt() * torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            unet(zt, 300, encoder_hidden_states=encode_prompts(embedded, [s.caption for s in scenes]))
    finally:
        unet.set_attn_processor(saved)
    maps = torch.stack([p.view(len(scenes), -1, 256, p.shape[-1]).mean(1) for p in store if p.shape[1] == 256])
    maps = maps.mean(0)  # (scenes, 16·16 positions, 77 tokens)
    mask = torch.from_numpy(np.stack([s.masks[0].reshape(16, 4, 16, 4).mean(axis=(1, 3)) for s in scenes]))
    mask = mask.reshape(len(scenes), -1).float()
    for token in (2, 3):  # "a <colour> <shape> on ...": token 0 is BOS
        word = maps[..., token]
        inside = (word * mask).sum(1) / mask.sum(1)
        outside = (word * (1 - mask)).sum(1) / (1 - mask).sum(1)
        contrast = (inside / outside).median()
        # lowest 3.3e+02 over CPU kernels and thread counts (docs/test-bounds.md)
        assert measured("embedded word map contrast, median", contrast) >= 20, (token, inside / outside)
