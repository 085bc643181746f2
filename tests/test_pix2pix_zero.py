"""Pix2Pix-Zero: the edit direction, the cross-attention guidance step, and the reference's editing half."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import invedit
from invedit.editing.pix2pix_zero import SOURCE_COND, TARGET_ROWS, Pix2PixZero
from invedit.prompts import encode_prompts
from invedit.sampling import Branches

from .bounds import max_abs, measured
from .conftest import SOURCE, TARGET

PARITY = Path(__file__).parent / "fixtures" / "parity"


def test_edit_direction_is_the_mean_embedding_difference(pipe):
    sources = ["a red square on a striped background", "a red square"]
    targets = ["a blue square on a striped background", "a blue square", "a blue circle"]
    editor = Pix2PixZero.create(pipe, SOURCE, TARGET, 4, source_sentences="|".join(sources), target_sentences=targets)

    def encode(prompts):
        with torch.no_grad():
            return encode_prompts(pipe, prompts)

    cond = {"source": encode([SOURCE]), "target": encode([TARGET])}
    new_cond, null = editor.embeddings(encode, cond, {"source": encode([""]), "target": encode([""])})
    def mean(sentences):
        return torch.stack([encode([s])[0] for s in sentences]).mean(0)

    want = mean(targets) - mean(sources)
    torch.testing.assert_close(editor.direction[0], want)
    torch.testing.assert_close(new_cond["target"], cond["source"] + want)
    assert torch.equal(null["source"], cond["source"]) and torch.equal(null["target"], cond["source"])
    default = Pix2PixZero.create(pipe, SOURCE, TARGET, 4)
    assert default.source_sentences == [SOURCE] and default.target_sentences == [TARGET]
    with pytest.raises(invedit.InveditError, match="cross_attention_guidance"):
        Pix2PixZero.create(pipe, SOURCE, TARGET, 4, cross_attention_guidance=-1)


def test_the_guidance_step_lowers_the_cross_attention_loss(pipe, image, monkeypatch):
    losses = []
    original = Pix2PixZero.guide

    def guide_and_check(self, step, t, latents, model):
        moved = original(self, step, t, latents, model)
        assert self.phase is None and self.reference == {} and self.loss is None  # nothing kept past the step
        with torch.no_grad():  # the same loss at the moved latents: the source's maps, then the target's rows
            self.phase = "reference"
            model(moved, [SOURCE_COND], grad=False)
            self.phase = "guide"
            model(moved, list(TARGET_ROWS))
        self.phase = None
        losses.append((self.last_loss, float(self.loss)))
        self.loss, self.reference = None, {}
        assert set(moved.rows) == set(TARGET_ROWS) and torch.equal(moved.target, moved.rows[TARGET_ROWS[0]])
        return moved

    monkeypatch.setattr(Pix2PixZero, "guide", guide_and_check)
    result = invedit.edit(pipe, image, SOURCE, TARGET, inversion="direct", editor="pix2pix-zero", steps=5,
                          cross_attention_guidance=1.0)
    assert len(losses) == 5 and all(after < before for before, after in losses)
    # per step, forward: the source row alone (no graph) and the two target rows with autograd; this test's second
    # look at the loss (1 + 2 rows); the update's two target rows (Direct reads no source row). Backward: the two
    # target rows only
    assert result.settings["nfe_backward_edit"] == 5 * 2 and result.nfe_edit == 5 * ((1 + 2) + (1 + 2) + 2)


def test_ddim_updates_reuse_the_guides_source_row(pipe, image, monkeypatch):
    """Under DDIM the update needs the source row the guide just computed at the same latent: it is read, not
    recomputed, and the edit is what computing it again gives (up to the batch's float rounding)."""
    inv = invedit.invert(pipe, image, SOURCE, "ddim", steps=4)
    reused = invedit.edit(pipe, inv, None, TARGET, editor="pix2pix-zero", cross_attention_guidance=1.0)
    monkeypatch.setattr(Pix2PixZero, "guide_rows_reusable", False)
    again = invedit.edit(pipe, inv, None, TARGET, editor="pix2pix-zero", cross_attention_guidance=1.0)
    # per step: the guide's source row and two target rows; the update's two target rows (+ the source row again)
    assert (reused.nfe_edit, again.nfe_edit) == (4 * (1 + 2 + 2), 4 * (1 + 2 + 3))
    assert reused.settings["nfe_backward_edit"] == again.settings["nfe_backward_edit"] == 4 * 2
    for a, b in zip(reused.latents, again.latents):
        assert measured("pix2pix-zero ddim reused source row vs recomputed, max", max_abs(a, b)) < 1e-4


def test_zero_guidance_is_the_direction_alone(pipe, image):
    result = invedit.edit(pipe, image, SOURCE, TARGET, inversion="direct", editor="pix2pix-zero", steps=4,
                          cross_attention_guidance=0)
    plain = invedit.edit(pipe, image, SOURCE, TARGET, inversion="direct", editor="none", steps=4)
    assert result.settings["nfe_backward"] == 0
    assert not torch.equal(result.latents[1], plain.latents[1])  # the negative prompt is the source prompt


def test_editing_half_reproduces_the_reference_given_its_start(pipe):
    """DDIM+Pix2Pix-Zero from the reference's x_T: its reconstruction pass and its guided edit.

    The reference's inversion (noise-regularised, from a VAE *sample*) is not invedit's, so the test starts from
    its x_T, as the null-text parity test starts from its nulls. Latents have std ≈ 55 here (README of the
    fixture); the guidance moves the edit 0.39 from the reconstruction at most, and without it the edit is
    0.23 from the reference's, so the bound below catches a guidance step that is missing or wrong.
    """
    ref = torch.load(PARITY / "outputs" / "ddim+pix2pix-zero" / "latents.pt")
    parity = invedit.load(PARITY / "model", device="cpu", dtype="float32")
    source, target = "a yellow square on a striped background", "a yellow star on a striped background"
    inv = invedit.invert(parity, PARITY / "inputs" / "caseB.png", source, "ddim", steps=50)
    inv.latents[-1] = ref["xT_latent"][0].to(inv.latents.device)
    result = invedit.edit(parity, inv, None, target, editor="pix2pix-zero")
    # worst 0.00049 natively (docs/test-bounds.md)
    assert measured("parity ddim+pix2pix-zero reconstruction vs reference, max",
                    max_abs(result.latents[0], ref["reconstruction_latents"][0])) < 0.005
    # worst 0.002 natively; without the guidance step 0.23 (docs/test-bounds.md)
    assert measured("parity ddim+pix2pix-zero edit vs reference, max",
                    max_abs(result.latents[1], ref["final_latents"][0])) < 0.02


def test_inversions_with_several_chains_are_refused_in_one_line(pipe, image):
    with pytest.raises(invedit.InveditError, match="carries 2 chains per branch"):
        invedit.edit(pipe, image, SOURCE, TARGET, inversion="edict", editor="pix2pix-zero", steps=4)


def test_branches_row_latents():
    a, b = torch.zeros(1, 1), torch.ones(1, 1)
    latents = Branches(a, a, rows={("target", "cond"): b})
    assert latents.row(("target", "cond")) is b and latents.row(("target", "uncond")) is a
