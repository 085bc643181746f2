"""StyleDiffusion inversion (arXiv 2303.15649): per-step value mappings, where they apply, options, P2P (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import invedit
import invedit.editing.attention as attention_module
from invedit.api import encode_image
from invedit.backbones.unet import unet_attention_layers as attention_layers
from invedit.cli import app
from invedit.editing.attention import EditorAttnProcessor
from invedit.editing.p2p import PromptToPrompt
from invedit.inversion import StepInfo
from invedit.inversion.style_diffusion import StyleDiffusionInverted, StyleDiffusionSampler, inner_schedule
from invedit.testing import tiny_image_encoder, tiny_pipeline

from .bounds import measured
from .conftest import SOURCE, TARGET, scene_image

STEPS = 8


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return tiny_image_encoder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def inverted(pipe, encoder) -> StyleDiffusionInverted:
    return invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=STEPS, image_encoder=encoder,
                          inner_steps=3, tau_v=0.5)


def source_error(pipe, inverted) -> float:
    result = invedit.edit(pipe, inverted, None, TARGET, editor="none")
    return (result.latents[0] - encode_image(pipe, result.source)[0].cpu()).abs().mean().item()


def test_reconstructs_better_than_ddim_and_counts_its_work(pipe, encoder):
    ddim = invedit.invert(pipe, scene_image(), SOURCE, "ddim", steps=STEPS)
    inv = invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=STEPS, image_encoder=encoder,
                         inner_steps=20)
    ratio = source_error(pipe, inv) / source_error(pipe, ddim)
    # worst 0.56 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("style-diffusion / ddim source error (must be < 0.75)", ratio) < 0.75  # random weights: not exact

    budget = inner_schedule(20, 0.1, STEPS)
    assert budget == [20, 19, 17, 15, 14, 13, 11, 10]
    assert all(1 <= n <= b for n, b in zip(inv.iterations, budget))
    assert inv.stats.nfe_backward == sum(inv.iterations) == sum(inv.iterations)
    # forward rows: inversion + per step (uncond + one per iteration + the advancing cond row)
    assert inv.stats.nfe == STEPS + sum(1 + n + 1 for n in inv.iterations)


class ValueSpy:
    """Records, per UNet call, every attention layer's context, value context and processor."""

    def __init__(self, pipe, monkeypatch):
        self.calls: list[list[tuple]] = []
        self.handle = pipe.unet.register_forward_pre_hook(lambda *_: self.calls.append([]))
        original = attention_module.attention_inputs

        def spy(attn, hidden_states, encoder_hidden_states, value_states=None):
            self.calls[-1].append((encoder_hidden_states, value_states, attn.processor))
            return original(attn, hidden_states, encoder_hidden_states, value_states)

        monkeypatch.setattr(attention_module, "attention_inputs", spy)

    def close(self):
        self.handle.remove()


def test_value_mapping_applies_to_the_rows_and_steps_of_tau_v_only(pipe, inverted, monkeypatch):
    spy = ValueSpy(pipe, monkeypatch)
    try:
        result = invedit.edit(pipe, inverted, None, TARGET, editor="none")
    finally:
        spy.close()
    n_cross = sum(info.is_cross for _, _, info in attention_layers(pipe.unet))
    assert len(spy.calls) == STEPS and result.nfe_edit == 4 * STEPS
    for i, layers in enumerate(spy.calls):
        cross = [(c, v) for c, v, _ in layers if c is not None]
        assert len(cross) == n_cross  # every cross-attention layer, through the plain value processors
        assert all(v is None for c, v, _ in layers if c is None)  # self-attention untouched
        mapped = inverted.mapped[i]
        for context, value in cross:  # rows: [src_u, tgt_u, src_c, tgt_c]
            torch.testing.assert_close(value[:2], context[:2], rtol=0, atol=0)  # unconditional rows: never
            torch.testing.assert_close(value[2:3], mapped(context[2:3]))  # source: every step
            if i < 0.5 * STEPS:  # target: while i < τ_v·steps
                torch.testing.assert_close(value[3:4], mapped(context[3:4]))
            else:
                torch.testing.assert_close(value[3:4], context[3:4], rtol=0, atol=0)


def test_the_mapping_is_per_step(inverted):
    assert len(inverted.mapped) == STEPS and all(n > 0 for n in inverted.iterations)
    shapes = {(m.scale.shape, m.shift.shape) for m in inverted.mapped}
    assert shapes == {(torch.Size([1, 77, 32]), torch.Size([1, 77, 32]))}
    for a, b in zip(inverted.mapped, inverted.mapped[1:]):
        assert not torch.allclose(a.scale, b.scale) and not torch.allclose(a.shift, b.shift)
    sampler = inverted.sampler()

    def transforms(i):
        return sampler.value_transforms(StepInfo.at(inverted.schedule, i))

    assert transforms(0)[("source", "cond")] is inverted.mapped[0]
    assert transforms(5)[("source", "cond")] is inverted.mapped[5]
    assert set(transforms(3)) == {("source", "cond"), ("target", "cond")}
    assert set(transforms(4)) == {("source", "cond")}


def test_mapping_sizes_follow_the_encoders(pipe, tmp_path):
    narrow = tiny_image_encoder(tmp_path / "clip16", hidden=16)  # image width 16 ≠ text width 32: projected
    inv = invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=2, image_encoder=narrow,
                         inner_steps=1)
    assert inv.mapped[0].scale.shape == (1, 77, 32)


def test_runs_end_to_end_with_p2p_and_its_reference_settings(pipe, inverted, monkeypatch):
    spy = ValueSpy(pipe, monkeypatch)
    try:
        result = invedit.edit(pipe, inverted, None, TARGET, blend_words="red blue")
    finally:
        spy.close()
    assert result.image.size == (64, 64) and result.nfe_edit == 4 * STEPS
    editor = result.settings["editor"]
    assert (editor["cross_replace_steps"], editor["self_replace_steps"], editor["uncond_self_replace_steps"]) == (
        0.6, 0.8, 0.5)
    assert editor["uncond_self_replace_until_step"] == 4
    # one processor per layer: P2P's, which also applies the value mapping
    processors = {proc for layers in spy.calls for _, _, proc in layers}
    assert all(isinstance(p, EditorAttnProcessor) and p.delegate for p in processors)
    assert len({p.editor for p in processors}) == 1
    assert all(v is not None for layers in spy.calls for c, v, _ in layers if c is not None)
    explicit = invedit.edit(pipe, inverted, None, TARGET, cross_replace_steps=0.2, uncond_self_replace_steps=0.0)
    assert explicit.settings["editor"]["cross_replace_steps"] == 0.2  # the user's options win
    assert explicit.settings["editor"]["uncond_self_replace_until_step"] == 0
    with pytest.raises(invedit.InveditError, match="made for guidance 7.5"):
        invedit.edit(pipe, inverted, None, TARGET, guidance_scale=5.0)


def test_p2p_unconditional_self_attention_replacement(pipe):
    editor = PromptToPrompt.create(pipe, SOURCE, TARGET, 10, uncond_self_replace_steps=0.3, self_replace_steps=0.1)
    assert editor.rows_read(2) >= {("source", "uncond"), ("target", "uncond")}
    assert not editor.rows_read(3) & {("source", "uncond"), ("target", "uncond")}
    rows = [("source", "uncond"), ("target", "uncond"), ("source", "cond"), ("target", "cond")]
    q, k, v = (torch.randn(4, 2, 16, 8, generator=torch.Generator().manual_seed(n)) for n in range(3))
    editor.begin_step(2, rows)  # uncond replacement on, cond replacement off (step ≥ 1)
    out = editor.replace_self_attention(q, k, v)
    torch.testing.assert_close(out[1], F.scaled_dot_product_attention(q[0], k[0], v[1]))
    torch.testing.assert_close(out[3], F.scaled_dot_product_attention(q[3], k[3], v[3]))
    editor.begin_step(3, rows)
    assert editor.replace_self_attention(q, k, v) is None


def test_value_transforms_without_hooks_fail_loudly(pipe, inverted, monkeypatch):
    monkeypatch.setattr(StyleDiffusionSampler, "transforms_values", False)
    with pytest.raises(invedit.InveditError, match="no attention layer applied them"):
        invedit.edit(pipe, inverted, None, TARGET, editor="none")


@pytest.mark.parametrize("bad", [{"inner_steps": -1}, {"inner_steps": 1.5}, {"epochs": 0}, {"learning_rate": 0},
                                 {"tau_v": 1.5}, {"tau_u": -0.1}, {"early_stop": "x"}, {"image_encoder": ""},
                                 {"inner_decay": True}, {"tau": 0.5}])
def test_bad_options(pipe, bad):
    with pytest.raises(invedit.InveditError):
        invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=2, **bad)


def test_missing_image_encoder_is_one_clear_line(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(invedit.InveditError) as info:
        invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=2, image_encoder="nobody/no-such-clip")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("image encoder 'nobody/no-such-clip' not found locally; the hub is unreachable or has no "
                       "such model; pass a local folder")
    with pytest.raises(invedit.InveditError, match="image encoder folder not found"):
        invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=2, image_encoder=str(tmp_path / "no"))
    with pytest.raises(invedit.InveditError, match="cannot load image encoder folder"):
        invedit.invert(pipe, scene_image(), SOURCE, "style-diffusion", steps=2, image_encoder=str(tmp_path))


def test_cli_runs_style_diffusion(encoder, tmp_path):
    model = tmp_path / "model"
    tiny_pipeline(seed=1).save_pretrained(model)
    scene_image().save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [
        "edit", str(tmp_path / "in.png"), "--source", SOURCE, "--target", TARGET, "--model", str(model),
        "--steps", "2", "--inversion", "style-diffusion", "-i", f"image_encoder={encoder}", "-i", "inner_steps=1",
        "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["inversion"] == "style-diffusion" and record["inversion_options"]["inner_steps"] == 1
    assert record["nfe_backward"] == 2 and record["editor"]["self_replace_steps"] == 0.8
