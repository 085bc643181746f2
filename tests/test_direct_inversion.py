"""Direct Inversion's defining properties on a tiny model: exact source branch, fused = reference, fewer NFE."""

from __future__ import annotations

import pytest
import torch

import invedit
from invedit.api import decode_latents, encode_image
from invedit.images import psnr
from invedit.inversion import StepInfo
from invedit.inversion.direct import DirectSampler

from .bounds import max_abs, measured
from .conftest import SOURCE, TARGET

STEPS = 20


@pytest.fixture(scope="module")
def direct(pipe):
    from .conftest import scene_image

    return invedit.invert(pipe, scene_image(), SOURCE, "direct", steps=STEPS)


@pytest.fixture(scope="module")
def vae_round_trip(pipe, direct):
    return decode_latents(pipe, encode_image(pipe, direct.image))[0]


def test_source_branch_equals_z0_and_reconstructs_at_high_guidance(pipe, direct, vae_round_trip):
    result = invedit.edit(pipe, direct, None, TARGET, guidance_scale=7.5)
    # worst 0 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("direct source vs z0, max", max_abs(result.latents[0], direct.z0[0])) <= 1e-4
    # lowest 89 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("direct reconstruction vs VAE round trip, dB", psnr(result.reconstruction, vae_round_trip)) >= 40
    ddim = invedit.edit(pipe, direct.image, SOURCE, TARGET, inversion="ddim", steps=STEPS, guidance_scale=7.5)
    # lowest 12 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("ddim source vs z0, max (must be large)", max_abs(ddim.latents[0], direct.z0[0])) > 0.1
    assert psnr(ddim.reconstruction, vae_round_trip) < psnr(result.reconstruction, vae_round_trip) - 10


def test_direct_needs_fewer_unet_evaluations_than_ddim(pipe, image):
    d = invedit.edit(pipe, image, SOURCE, TARGET, inversion="direct", steps=STEPS)
    m = invedit.edit(pipe, image, SOURCE, TARGET, inversion="ddim", steps=STEPS)
    assert d.nfe < m.nfe
    # DDIM: 4 rows every step. Direct: the source's unconditional row is never read, and after the last
    # P2P injection step (self: int(0.6·20) = 12) the source's conditional row is not read either.
    assert m.nfe_edit == 4 * STEPS
    assert d.nfe_edit == 3 * 12 + 2 * (STEPS - 12)
    assert d.nfe_inversion == m.nfe_inversion == STEPS


def test_fused_layout_equals_reference_layout(pipe, direct):
    fused = invedit.edit(pipe, direct, None, TARGET)
    ref_inv = invedit.invert(pipe, direct.image, SOURCE, "direct", steps=STEPS, layout="reference")
    reference = invedit.edit(pipe, ref_inv, None, TARGET)
    # Same math; only float rounding differs (P2P computes the source row with explicit attention maps).
    # worst 0.00021 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("fused vs reference layout, max", max_abs(fused.latents, reference.latents)) <= 2e-3
    # lowest 79 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("fused vs reference layout, dB", psnr(fused.image, reference.image)) >= 40
    assert reference.nfe_edit == 4 * STEPS + 4 * STEPS  # offset pass at batch 4, then 4 rows per step


def test_identity_edit_with_target_correction_returns_the_reconstruction(pipe, direct):
    ct = invedit.invert(pipe, direct.image, SOURCE, "direct", steps=STEPS, correct_target=True)
    result = invedit.edit(pipe, ct, None, SOURCE)
    # Rounding of the separate offset pass: worst 8.4e-4 (AVX2, 1 thread); the target offset scaled by 0.95 gives 1.8.
    assert measured("identity+correct_target target vs source, max",
                    max_abs(result.latents[1], result.latents[0])) <= 5e-3
    # lowest 67 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("identity+correct_target image vs reconstruction, dB",
                    psnr(result.image, result.reconstruction)) >= 40


def test_identity_edit_without_direct_correction_keeps_branches_identical(pipe, direct):
    """With DDIM and target = source, both branches compute the same thing: the edit is the reconstruction."""
    plain = invedit.edit(pipe, direct.image, SOURCE, SOURCE, inversion="ddim", editor="none", steps=STEPS)
    # Identical rows in different batch positions round differently on some kernels (0 natively, 1.7e-4 with AVX2
    # kernels; docs/test-bounds.md); the target's guidance 1% off gives 0.17.
    assert measured("ddim identity, no editor: target vs source, max",
                    max_abs(plain.latents[1], plain.latents[0])) <= 2e-3
    p2p = invedit.edit(pipe, direct.image, SOURCE, SOURCE, inversion="ddim", steps=STEPS)
    # P2P computes the target row's cross-attention with explicit maps (the source row with SDPA): rounding only.
    # worst 0.00015 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("ddim identity, p2p: target vs source, max", max_abs(p2p.latents[1], p2p.latents[0])) <= 2e-3


def test_offset_scale_zero_is_plain_ddim(pipe, direct):
    zero = invedit.invert(pipe, direct.image, SOURCE, "direct", steps=STEPS, offset_scale=0.0)
    ddim = invedit.invert(pipe, direct.image, SOURCE, "ddim", steps=STEPS)
    a = invedit.edit(pipe, zero, None, TARGET)
    b = invedit.edit(pipe, ddim, None, TARGET)
    # worst 0 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("offset_scale 0 vs ddim, max", max_abs(a.latents, b.latents)) <= 1e-5


def test_offset_interval_corrects_only_every_k_steps(pipe, direct, monkeypatch):
    k = 5
    inv = invedit.invert(pipe, direct.image, SOURCE, "direct", steps=STEPS, offset_interval=k)
    sampler, infos = inv.sampler(), [StepInfo.at(inv.schedule, i) for i in range(STEPS)]
    assert [sampler.corrects_at(info) for info in infos] == [i % k == 0 for i in range(STEPS)]
    assert [sampler.needs_source(info) for info in infos] == [i % k != 0 for i in range(STEPS)]
    seen = []
    original = DirectSampler.correct

    def spy(self, info, source, target):
        out = original(self, info, source, target)
        if info.index % k == 0:
            assert torch.equal(out.source, inv.z_star_after(info.index))
        else:
            assert torch.equal(out.source, source)
        seen.append(info.index)
        return out

    monkeypatch.setattr(DirectSampler, "correct", spy)
    invedit.edit(pipe, inv, None, TARGET)
    assert seen == list(range(STEPS))


def test_offset_scale_moves_source_part_way(pipe, direct):
    inv = invedit.invert(pipe, direct.image, SOURCE, "direct", steps=STEPS, offset_scale=0.4)
    source = torch.randn(1, 4, 16, 16)
    out = inv.sampler().correct(StepInfo.at(inv.schedule, 3), source, source.clone())
    torch.testing.assert_close(out.source, source + 0.4 * (inv.z_star_after(3) - source))
    torch.testing.assert_close(out.target, source)


@pytest.mark.parametrize("bad", [{"offset_scale": -1}, {"offset_interval": 0}, {"layout": "x"}, {"foo": 1}])
def test_bad_direct_options_raise(pipe, image, bad):
    with pytest.raises(invedit.InveditError):
        invedit.invert(pipe, image, SOURCE, "direct", steps=2, **bad)


def test_v_prediction_models_invert_exactly_too():
    """SD 2.x-style v-prediction: the DDIM arithmetic converts v to (x0, eps); Direct stays exact."""
    from invedit.models import make_ddim_scheduler
    from invedit.testing import tiny_pipeline

    from .conftest import scene_image

    pipe = tiny_pipeline(seed=5)
    pipe.scheduler = make_ddim_scheduler({**pipe.scheduler.config, "prediction_type": "v_prediction"})
    result = invedit.edit(pipe, scene_image(), SOURCE, TARGET, steps=10)
    z0 = encode_image(pipe, result.source)
    # worst 0 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("v-prediction direct source vs z0, max", max_abs(result.latents[0], z0[0])) <= 1e-4
    ddim = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="ddim", steps=10)
    # lowest 9.4 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("v-prediction ddim source vs z0, max (must be large)", max_abs(ddim.latents[0], z0[0])) > 1e-2
