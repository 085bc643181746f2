"""MasaCtrl (invedit.editing.masactrl): attention over the source keys and values, layer choice, object masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import invedit
from invedit.backbones.unet import unet_attention_layers as attention_layers
from invedit.editing.masactrl import MutualSelfAttention

from .conftest import SOURCE, TARGET, qkv

ROWS = [("source", "uncond"), ("target", "uncond"), ("source", "cond"), ("target", "cond")]


def test_masactrl_target_queries_attend_to_the_source_keys_and_values(pipe):
    editor = MutualSelfAttention.create(pipe, SOURCE, TARGET, steps=10, source_branch="given")
    info = next(i for _, _, i in attention_layers(pipe.unet) if not i.is_cross and i.order in editor.blocks)
    q, k, v = qkv()
    editor.begin_step(4, ROWS)
    out = editor.attend(info, None, q, k, v)
    for t, s in ((1, 0), (3, 2)):  # each CFG half: the target row reads its own half's source row
        torch.testing.assert_close(out[t], F.scaled_dot_product_attention(q[t], k[s], v[s]))
        torch.testing.assert_close(out[s], F.scaled_dot_product_attention(q[s], k[s], v[s]))
    editor.begin_step(3, ROWS)  # before start_step: plain attention
    assert editor.attend(info, None, q, k, v) is None
    assert not editor.wants_layer(next(i for _, _, i in attention_layers(pipe.unet) if i.order not in editor.blocks))


def test_masactrl_layer_choice(pipe):
    count = attention_layers(pipe.unet)[0][2].count  # 7 transformer blocks in the tiny UNet
    relative = MutualSelfAttention.create(pipe, SOURCE, TARGET, steps=10)
    assert relative.blocks == {o for o in range(count) if o / count >= 10 / 16}
    with pytest.raises(invedit.InveditError, match="leaves no transformer block"):  # SD's blocks 10…15: none here
        MutualSelfAttention.create(pipe, SOURCE, TARGET, steps=10, layers="reference")
    assert MutualSelfAttention.create(pipe, SOURCE, TARGET, 10, layers="reference", start_layer=5).blocks == {5, 6}
    with pytest.raises(invedit.InveditError, match="none of the 4 steps"):
        MutualSelfAttention.create(pipe, SOURCE, TARGET, steps=4)
    assert MutualSelfAttention.source_branch_prompt(SOURCE, {}) == ""  # the reference's empty source prompt
    assert MutualSelfAttention.source_branch_prompt(SOURCE, {"source_branch": "given"}) == SOURCE


def test_masactrl_mask_variant_restricts_attention_to_the_objects(pipe, image):
    editor = MutualSelfAttention.create(pipe, SOURCE, TARGET, steps=10, source_branch="given",
                                        mask_words="red blue")
    editor.mask.masks = torch.tensor([[True] * 8 + [False] * 8, [False] * 8 + [True] * 8])  # source, target
    info = next(i for _, _, i in attention_layers(pipe.unet) if not i.is_cross and i.order in editor.blocks)
    q, k, v = qkv()
    editor.begin_step(5, ROWS)
    out = editor.attend(info, None, q, k, v)
    fg, bg = slice(0, 8), slice(8, 16)  # source foreground / background keys
    for t, s in ((1, 0), (3, 2)):
        # target foreground queries (its second half) ← source foreground; background ones ← source background
        torch.testing.assert_close(out[t][:, 8:], F.scaled_dot_product_attention(q[t], k[s][:, fg], v[s][:, fg])[:, 8:])
        torch.testing.assert_close(out[t][:, :8], F.scaled_dot_product_attention(q[t], k[s][:, bg], v[s][:, bg])[:, :8])
        torch.testing.assert_close(out[s], F.scaled_dot_product_attention(q[s], k[s], v[s]))
    result = invedit.edit(pipe, image, SOURCE, TARGET, editor="masactrl", steps=6,
                          source_branch="given", mask_words="red blue")
    assert result.settings["editor"]["mask_words"] == ["red", "blue"]
    with pytest.raises(invedit.InveditError, match="need the source prompt"):
        invedit.edit(pipe, image, SOURCE, TARGET, editor="masactrl", steps=6, mask_words="red blue")
