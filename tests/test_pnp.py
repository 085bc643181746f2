"""Plug-and-Play (invedit.editing.pnp): injection of source features and attention for the stated steps, its
embeddings and source guidance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import invedit
from invedit.backbones.unet import unet_attention_layers as attention_layers
from invedit.editing.pnp import NEGATIVE_PROMPT, PlugAndPlay

from .conftest import SOURCE, TARGET, qkv

ROWS = [("source", "uncond"), ("target", "uncond"), ("source", "cond"), ("target", "cond")]


def test_pnp_injects_source_queries_keys_and_features_for_the_stated_steps(pipe, image, monkeypatch):
    seen = []
    original = PlugAndPlay._inject_features

    def spy(self, module, args, output):
        new = original(self, module, args, output)
        seen.append((self.step, list(self.rows), output.clone(), new))
        return new

    monkeypatch.setattr(PlugAndPlay, "_inject_features", spy)
    result = invedit.edit(pipe, image, SOURCE, TARGET, inversion="direct", editor="pnp", steps=10)
    settings = result.settings["editor"]
    assert (settings["feature_until_step"], settings["attention_until_step"]) == (8, 5)
    assert [s for s, *_ in seen] == list(range(10))
    for step, rows, before, after in seen:
        if step < 8:
            s = rows.index(("source", "uncond"))
            targets = [i for i, (b, _) in enumerate(rows) if b == "target"]
            assert len(targets) == 2
            for t in targets:
                assert torch.equal(after[t], before[s])
            assert torch.equal(after[s], before[s])
        else:  # after the stated fraction: untouched, and the source row is no longer computed (Direct pins it)
            assert after is None and ("source", "uncond") not in rows
    assert result.nfe_edit == 8 * 3 + 2 * 2

    editor = PlugAndPlay.create(pipe, SOURCE, TARGET, steps=10)
    info = next(i for _, _, i in attention_layers(pipe.unet) if editor.wants_layer(i))
    assert info.name.startswith("up_blocks.1.attentions.1") and not info.is_cross
    rows = [("source", "uncond"), ("target", "uncond"), ("target", "cond")]
    q, k, v = qkv(3)
    editor.begin_step(4, rows)
    out = editor.attend(info, None, q, k, v)
    for t in (1, 2):  # the source's attention map over the target's own values
        torch.testing.assert_close(out[t], F.scaled_dot_product_attention(q[0], k[0], v[t]))
    editor.begin_step(5, rows)
    assert editor.attend(info, None, q, k, v) is None


def test_pnp_embeddings_and_source_guidance(pipe):
    editor = PlugAndPlay.create(pipe, SOURCE, TARGET, steps=10)
    seen = []
    cond, null = editor.embeddings(lambda prompts: seen.append(prompts) or torch.ones(1, 77, 32),
                                   {"source": 1, "target": 2}, {"source": 3, "target": 4})
    assert seen == [[NEGATIVE_PROMPT]] and cond == {"source": 1, "target": 2} and null["source"] == 3
    assert torch.equal(null["target"], torch.ones(1, 77, 32))
    assert editor.branch_guidance({"source": 7.5, "target": 7.5}) == {"source": 1.0, "target": 7.5}
    with pytest.raises(invedit.InveditError, match="not a ResNet block"):
        PlugAndPlay.create(pipe, SOURCE, TARGET, steps=10, feature_layer="up_blocks.9.resnets.0")
