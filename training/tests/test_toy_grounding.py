"""The grounding fine-tune's targets and loss (training.shapes_unet.train), which give the embedded model localised
cross-attention for P2P and LocalBlend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invedit.toy import scenes
from invedit.word_tokenizer import build_word_tokenizer
from training.shapes_unet.train import grounding_loss, grounding_targets


@pytest.mark.parametrize("seed", range(6))
def test_targets_pair_each_region_word_with_its_mask(tmp_path, seed):
    scene = scenes.make_scene(seed)
    tok = build_word_tokenizer(scenes.VOCABULARY, tmp_path)
    ids = tok(scene.caption).input_ids
    targets = grounding_targets(scene, 16)
    words = [tok.convert_ids_to_tokens(ids[t]).removesuffix("</w>") for t, _ in targets]
    expected = [w for o in scene.objects for w in (o.color, o.shape)] + [scene.background.kind, "background"]
    assert words == expected
    for k, obj_mask in enumerate(scene.masks):
        down = targets[2 * k][1]
        assert down.shape == (16, 16)
        assert down.mean() == pytest.approx(obj_mask.mean())
    assert targets[-1][1].mean() == pytest.approx(1 - np.any(scene.masks, axis=0).mean())


def test_loss_is_zero_inside_and_one_minus_area_when_uniform():
    batch, heads, n, grid = 1, 2, 16, 4
    mask = torch.zeros(batch, 1, n)
    mask[0, 0, :4] = 1.0
    token_ids, valid = torch.tensor([[5]]), torch.ones(batch, 1)
    inside = torch.full((batch * heads, n, 77), 1e-3)
    inside[:, :4, 5] = 1.0  # all of token 5's mass in the first 4 queries (up to 1e-3 each elsewhere)
    assert grounding_loss([inside], batch, token_ids, {grid: mask}, valid) < 0.01
    uniform = torch.full((batch * heads, n, 77), 1 / 77)
    assert grounding_loss([uniform], batch, token_ids, {grid: mask}, valid).item() == pytest.approx(1 - 4 / 16)
    # layers at other resolutions and dropped captions (valid 0) do not count
    assert grounding_loss([uniform, torch.rand(heads, 64, 77)], batch, token_ids, {grid: mask},
                          valid).item() == pytest.approx(0.75)
    assert grounding_loss([uniform], batch, token_ids, {grid: mask}, torch.zeros(batch, 1)).item() == 0


def test_loss_weights_each_sample_by_its_signal_fraction():
    batch, heads, n, grid = 2, 1, 16, 4
    mask = torch.zeros(batch, 1, n)
    mask[:, 0, :4] = 1.0
    token_ids, valid = torch.tensor([[5], [5]]), torch.ones(batch, 1)
    uniform = torch.full((batch * heads, n, 77), 1 / 77)
    loss = grounding_loss([uniform], batch, token_ids, {grid: mask}, valid, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.75 / 2)  # the second sample (pure noise) does not pull
    assert grounding_loss([uniform], batch, token_ids, {grid: mask}, valid, torch.ones(2)).item() == pytest.approx(
        grounding_loss([uniform], batch, token_ids, {grid: mask}, valid).item())


@pytest.mark.parametrize("which", ["all", "cross_attention"])
def test_grounding_fine_tune_moves_only_the_selected_weights(tmp_path, which):
    from training.shapes_unet.train import (
        SMOKE,
        TrainConfig,
        _grounding_selector,
        _optimisation,
        build_text_encoder,
        build_unet,
    )

    cfg = TrainConfig(**SMOKE)
    tok = build_word_tokenizer(scenes.VOCABULARY, tmp_path)
    unet, text, ema_unet, ema_text = build_unet(cfg), build_text_encoder(cfg, tok), build_unet(cfg), \
        build_text_encoder(cfg, tok)
    params, ema_params, _ = _optimisation(unet, text, ema_unet, ema_text, 1e-4, _grounding_selector(which))
    named = [("unet." + n, p) for n, p in unet.named_parameters()] + [("text." + n, p) for n, p in
                                                                      text.named_parameters()]
    chosen = {n for n, p in named if any(p is q for q in params)}
    if which == "all":
        assert len(chosen) == len(named)
    else:
        projections = {n for n, _ in named if ".attn2.to_q." in n or ".attn2.to_k." in n}
        assert projections and all(n.startswith("unet.down") or n.startswith("unet.up") or n.startswith("unet.mid")
                                   for n in projections)
        assert chosen == projections | {n for n, _ in named if n.startswith("text.")}
        assert all(not p.requires_grad for n, p in named if n not in chosen)
    assert [p.shape for p in params] == [q.shape for q in ema_params]  # each EMA copy follows its own weight


def test_unknown_grounding_selection_is_refused():
    from training.shapes_unet.train import _grounding_selector

    with pytest.raises(ValueError, match="ground_params"):
        _grounding_selector("everything")
