"""Prompt-to-Prompt units: token alignment, Replace/Refine/Reweight, LocalBlend, attention injection, hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import invedit
from invedit.backbones.unet import unet_attention_layers as attention_layers
from invedit.editing.attention import LayerInfo
from invedit.editing.p2p import (
    AttentionRefine,
    AttentionReplace,
    AttentionReweight,
    LocalBlend,
    PromptToPrompt,
)
from invedit.editing.token_alignment import refinement_mapper
from invedit.sampling import Branches

from .conftest import SOURCE, TARGET


def test_cross_attention_edits():
    g = torch.Generator().manual_seed(0)
    base, target = torch.rand(2, 5, 77, generator=g), torch.rand(2, 5, 77, generator=g)
    perm = torch.randperm(77, generator=g)
    replace = AttentionReplace(torch.eye(77)[perm].T)  # target token j reads source token perm[j]
    torch.testing.assert_close(replace(base, target), base[..., perm])
    mapper, alphas = torch.arange(77), torch.ones(77)
    alphas[3] = 0
    refine = AttentionRefine(mapper, alphas)
    out = refine(base, target)
    torch.testing.assert_close(out[..., 3], target[..., 3])
    torch.testing.assert_close(out[..., 4], base[..., 4])
    eq = torch.ones(77)
    eq[4] = 2.0
    reweighted = AttentionReweight(refine, eq)(base, target)
    torch.testing.assert_close(reweighted[..., 4], 2 * base[..., 4])
    torch.testing.assert_close(reweighted[..., 5], base[..., 5])


def test_local_blend_mask_and_blend():
    blend = LocalBlend(source_tokens=[2], target_tokens=[3], threshold=0.3, start_step=2, downsample=1)
    probs = torch.zeros(2, 1, 64, 77)  # 8×8 grid
    probs[0, 0, 9, 2] = 1.0  # source word at (1, 1)
    probs[1, 0, 54, 3] = 1.0  # target word at (6, 6)
    probs[1, 0, 0, 3] = 0.2  # below threshold after normalising by the max
    blend.accumulate(probs)
    src, tgt = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    early = blend(1, Branches(src, tgt))
    assert torch.equal(early.target, tgt)  # before start_step nothing happens
    out = blend(2, Branches(src, tgt))
    expected = torch.zeros(8, 8)
    expected[0:3, 0:3] = 1  # 3×3 max-pool around (1, 1)
    expected[5:8, 5:8] = 1  # and around (6, 6); mask = source ∪ target
    assert torch.equal(out.target[0, 0], expected)
    assert torch.equal(out.source, src)


def test_local_blend_of_an_object_named_in_one_prompt_only_reads_that_prompts_map():
    blend = LocalBlend(source_tokens=[2], target_tokens=[], threshold=0.3, start_step=0, downsample=1)
    probs = torch.zeros(2, 1, 64, 77)
    probs[0, 0, 9, 2] = 1.0  # the removed object's word, in the source prompt only
    probs[1, 0, :, 2] = 1.0  # the target row's maps of other tokens are not read
    blend.accumulate(probs)
    out = blend(0, Branches(torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)))
    expected = torch.zeros(8, 8)
    expected[0:3, 0:3] = 1
    assert torch.equal(out.target[0, 0], expected)  # no NaN from the empty side's 0/0 normalisation


@pytest.mark.parametrize("source, target, reweight", [
    ("a red circle on a striped background", "a red circle and a blue star on a striped background", {"star": 2.0}),
    ("a red circle and a blue star on a striped background", "a red circle on a striped background", {}),
])
def test_blend_words_may_name_an_added_or_removed_object(pipe, image, source, target, reweight):
    result = invedit.edit(pipe, image, source, target, steps=4, blend_words="star star", blend_threshold=0.9)
    assert result.settings["editor"]["reweight"] == reweight  # the ×2 equaliser only where the word is
    assert result.settings["blend_words"] == ["star", "star"]


class _Attn:
    scale = 0.5


def test_attend_injects_source_attention_into_the_target_row(pipe):
    editor = PromptToPrompt.create(pipe, SOURCE, TARGET, steps=10)
    editor.begin_step(0, [("target", "uncond"), ("source", "cond"), ("target", "cond")])
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 16, 4, generator=g) for _ in range(3))
    self_info = LayerInfo("x.attn1", "down", False, 1)
    out = editor.attend(self_info, _Attn(), q, k, v)
    torch.testing.assert_close(out[2], F.scaled_dot_product_attention(q[1], k[1], v[2]))
    torch.testing.assert_close(out[1], F.scaled_dot_product_attention(q[1], k[1], v[1]))
    torch.testing.assert_close(out[0], F.scaled_dot_product_attention(q[0], k[0], v[0]))
    kc, vc = torch.randn(3, 2, 77, 4, generator=g), torch.randn(3, 2, 77, 4, generator=g)
    cross = editor.attend(LayerInfo("x.attn2", "down", True, 1), _Attn(), q, kc, vc)
    probs = (q[1:] @ kc[1:].transpose(-1, -2) * 0.5).softmax(-1)
    mapper, alphas = refinement_mapper(SOURCE, TARGET, pipe.tokenizer)
    edited = probs[0][..., mapper] * alphas + probs[1] * (1 - alphas)
    torch.testing.assert_close(cross[2], edited @ vc[2])
    torch.testing.assert_close(cross[1], F.scaled_dot_product_attention(q[1], kc[1], vc[1]))
    editor.begin_step(editor.n_self, [("source", "cond"), ("target", "cond")])
    assert editor.attend(self_info, _Attn(), q[1:], k[1:], v[1:]) is None  # after the injection window
    assert editor.n_cross == 4 and editor.n_self == 6  # int(0.4·11), int(0.6·10)


def test_hooks_fail_loudly_and_are_removed(pipe, image, monkeypatch):
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    invedit.edit(pipe, image, SOURCE, TARGET, steps=3)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before
    monkeypatch.setattr(PromptToPrompt, "wants_layer", lambda self, info: False)
    with pytest.raises(invedit.InveditError, match="hooked 0 attention layers"):
        invedit.edit(pipe, image, SOURCE, TARGET, steps=3)
    monkeypatch.undo()
    monkeypatch.setattr(PromptToPrompt, "attend", lambda self, *a: None)
    monkeypatch.setattr(PromptToPrompt, "begin_step", lambda self, step, rows: setattr(self, "active", False))
    with pytest.raises(invedit.InveditError, match="never called"):
        invedit.edit(pipe, image, SOURCE, TARGET, steps=3)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before


def test_layer_map_of_the_unet(pipe):
    layers = attention_layers(pipe.unet)
    assert len(layers) == len(pipe.unet.attn_processors)
    cross = {(i.place, i.downsample) for _, _, i in layers if i.is_cross}
    assert cross == {("down", 1), ("down", 2), ("mid", 2), ("up", 2), ("up", 1)}
    # A 16×16 latent blends on its own 16×16 grid (the reference's grid size), not on the 8×8 one.
    assert PromptToPrompt.default_blend_downsample(pipe.unet) == 1


def test_blend_grid_is_latent_over_4_where_the_unet_has_it():
    from diffusers import UNet2DConditionModel

    kinds = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    unet = UNet2DConditionModel(sample_size=64, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                norm_num_groups=4, attention_head_dim=2, cross_attention_dim=8,
                                down_block_types=kinds,
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    assert PromptToPrompt.default_blend_downsample(unet) == 4  # SD 1.x at 512 px: 16×16 maps


def test_local_blend_keeps_the_target_equal_to_the_source_outside_the_mask(pipe, image):
    # Random weights give nearly flat maps, so a high threshold is needed for a partial mask here.
    result = invedit.edit(pipe, image, SOURCE, TARGET, steps=10, blend_words="red blue", blend_threshold=0.9)
    same = (result.latents[1] == result.latents[0]).all(0)
    assert 0 < same.float().mean() < 1
    assert result.settings["editor"]["reweight"] == {"blue": 2.0}


@pytest.mark.parametrize("blend, message", [("dog blue", "not a word of the source"),
                                            ("red dog", "not a word of the target"),
                                            ("star blue", "'star' is not a word of the source prompt .*nor of the"),
                                            ("red", "two words")])
def test_bad_blend_words(pipe, image, blend, message):
    with pytest.raises(invedit.InveditError, match=message):
        invedit.edit(pipe, image, SOURCE, TARGET, steps=2, blend_words=blend)


def test_bad_p2p_options(pipe, image):
    with pytest.raises(invedit.InveditError, match="cross_replace_steps"):
        invedit.edit(pipe, image, SOURCE, TARGET, steps=2, cross_replace_steps=1.5)
    with pytest.raises(invedit.InveditError, match="no option"):
        invedit.edit(pipe, image, SOURCE, TARGET, steps=2, nonsense=1)
    with pytest.raises(invedit.InveditError, match="mode"):
        invedit.edit(pipe, image, SOURCE, TARGET, steps=2, mode="swap")
