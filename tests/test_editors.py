"""MasaCtrl and Plug-and-Play: attention and feature edits, layer choice, identity edits, the hook contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import invedit
from invedit.editing import EDITORS
from invedit.editing.attention import attention_layers
from invedit.editing.masactrl import MutualSelfAttention
from invedit.editing.pnp import NEGATIVE_PROMPT, PlugAndPlay

from .conftest import SOURCE, TARGET

ROWS = [("source", "uncond"), ("target", "uncond"), ("source", "cond"), ("target", "cond")]


def qkv(rows: int = 4, tokens: int = 16):
    return (torch.randn(rows, 2, tokens, 8, generator=torch.Generator().manual_seed(n)) for n in range(3))


def test_layers_are_numbered_in_forward_order(pipe):
    infos = [info for _, _, info in attention_layers(pipe.unet)]
    places = [i.place for i in infos]
    assert places == sorted(places, key=("down", "mid", "up").index)  # registration order puts up before mid
    orders = [i.order for i in infos]
    assert orders == sorted(orders) and set(orders) == set(range(infos[0].count))
    calls: list[str] = []  # the order the UNet actually calls them in
    handles = [m.register_forward_hook(lambda m, a, o, name=name: calls.append(name))
               for name, m, _ in attention_layers(pipe.unet)]
    try:
        with torch.no_grad():
            pipe.unet(torch.zeros(1, 4, 16, 16), 10, encoder_hidden_states=torch.zeros(1, 77, 32))
    finally:
        for h in handles:
            h.remove()
    assert calls == [name for name, _, _ in attention_layers(pipe.unet)]


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


@pytest.mark.parametrize("editor, options", [("masactrl", {"source_branch": "given", "start_step": 0}),
                                             ("pnp", {"negative_prompt": "", "feature_steps": 0,
                                                      "attention_steps": 0})])
def test_identity_edit_returns_the_reconstruction(pipe, image, editor, options):
    """Target = source prompt with Direct Inversion and the target's own offsets: the target follows z* too.

    MasaCtrl: the target's queries meet the source's own keys and values, so nothing changes. Plug-and-Play
    injects the empty prompt's features into the target's conditional row, which changes it by design (the
    reference does the same), so it returns the reconstruction only with its injection off and no negative prompt.
    """
    result = invedit.edit(pipe, image, SOURCE, SOURCE, inversion="direct", editor=editor, steps=6,
                          inversion_options={"correct_target": True}, **options)
    # worst 0 over CPU kernels: both rows go through identical arithmetic (5e-3 is the P2P identity bound)
    assert (result.latents[1] - result.latents[0]).abs().max() <= 5e-3


def _hooks_state(unet):
    return ({k: type(v) for k, v in unet.attn_processors.items()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()))


@pytest.mark.parametrize("editor, options", [("masactrl", {"start_step": 1}), ("pnp", {}), ("pix2pix-zero", {}),
                                             ("p2p", {}), ("none", {})])
def test_hooks_are_removed_after_a_run_and_after_a_run_that_raised(pipe, image, editor, options, monkeypatch):
    before = _hooks_state(pipe.unet)
    invedit.edit(pipe, image, SOURCE, TARGET, editor=editor, steps=4, **options)
    assert _hooks_state(pipe.unet) == before
    cls = EDITORS[editor]
    original = cls.step_callback

    def fail_at_step_2(self, step, latents):
        if step == 2:
            assert _hooks_state(pipe.unet) != before or editor == "none"  # they were installed
            raise RuntimeError("boom")
        return original(self, step, latents)

    monkeypatch.setattr(cls, "step_callback", fail_at_step_2)
    with pytest.raises(RuntimeError, match="boom"):
        invedit.edit(pipe, image, SOURCE, TARGET, editor=editor, steps=4, **options)
    assert _hooks_state(pipe.unet) == before


def test_an_editor_that_hooks_nothing_fails_loudly(pipe, image, monkeypatch):
    monkeypatch.setattr(PlugAndPlay, "wants_layer", lambda self, info: False)
    monkeypatch.setattr(PlugAndPlay, "forward_hooks", lambda self, unet: [])
    with pytest.raises(invedit.InveditError, match="hooked 0 attention layers"):
        invedit.edit(pipe, image, SOURCE, TARGET, editor="pnp", steps=4)
