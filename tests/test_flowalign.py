"""FlowAlign (`--inversion none --editor flowalign`): parity with the official SD3FlowAlign.sample on the tiny random
SD3 of tests/fixtures/parity_flow (tests/fixtures/parity_flowalign: 10 steps and the official 33), its seeded draws
being the official ones, the update against a direct computation of the paper's step, and its refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from invedit.backbones import backbone
from invedit.editing.flowalign import FlowAlignEditor
from invedit.errors import InveditError
from invedit.models import prepare_pipeline
from invedit.sampling import RunStats

from .test_dnaedit import run_editor
from .test_flowedit import SOURCE, TARGET, no_inversion, psnr

FIXTURE = Path(__file__).parent / "fixtures" / "parity_flowalign" / "runs"
TINY_SD3 = Path(__file__).parent / "fixtures" / "parity_flow" / "tiny_sd3"
# Final latents, max|diff| to the official run (|latents| up to about 5). Measured (torch 2.14.1 CPU, 1 thread):
# 3.6e-6 (10 steps), 1.9e-6 (33 steps): float rounding (the official code makes three calls of one row per step,
# invedit one call of three rows; CFG 13.5 amplifies). Images: PSNR 51.2 / 51.1 dB.
ATOL, MIN_PSNR = 1e-4, 45.0


@pytest.fixture(scope="module")
def pipe():
    """The tiny SD3 with the official code's 77 T5 tokens (its own prompt encoder's length)."""
    loaded = DiffusionPipeline.from_pretrained(str(TINY_SD3), local_files_only=True)
    return prepare_pipeline(loaded, resolution=128, call_options={"max_sequence_length": 77})


@pytest.mark.parametrize(("run", "steps"), [("flowalign-t10_sd3_caseB", 10), ("flowalign-default_sd3_caseB", 33)])
def test_flowalign_matches_the_official_code(run, steps, pipe, one_thread):
    """From the official z_src (a VAE posterior sample), the edit ends within float error of the official final
    latents, 3 rows in one call per step. Its draws are the seed's (run_edit.py's 123) in plain order after the VAE's
    one draw, what the official run drew (they were recorded by an observer and found equal; not stored)."""
    ref = torch.load(FIXTURE / run / "tensors.pt")
    inverted = no_inversion(pipe, ref["zsrc"], steps)
    assert torch.equal(inverted.schedule.sigmas, ref["scheduler_sigmas"])
    generator = torch.Generator().manual_seed(123)
    torch.randn(ref["zsrc"].shape, generator=generator)  # the posterior sample's draw
    draws = iter([torch.randn(ref["zsrc"].shape, generator=generator) for _ in range(steps)])
    latents, stats = run_editor(FlowAlignEditor, pipe, inverted, 0, lambda s, sn: next(draws))
    assert next(draws, None) is None
    assert (latents.target - ref["final_latents"]).abs().max() < ATOL
    assert (stats.nfe, stats.unet_calls) == (3 * steps, steps)

    official = np.load(FIXTURE / run / "output_uint8.npz")["output_uint8"]
    ours = np.asarray(backbone(pipe).decode(latents.target)[0])
    assert psnr(ours, official) >= MIN_PSNR


def test_one_step_is_the_papers_update(pipe, one_thread):
    """One FlowAlign step (zeta 0.3, target CFG 5 against the source prompt, source guided at 2 against the empty
    prompt) equals x + (σ' − σ)(v_p − v_q) + ζ((q − σ v_q) − (p − σ v_p)) computed directly from the model."""
    model = backbone(pipe)
    generator = torch.Generator().manual_seed(1)
    z0 = torch.randn(1, 4, 16, 16, generator=generator)
    noise = torch.randn(1, 4, 16, 16, generator=generator)
    inverted = no_inversion(pipe, z0, 1)
    latents, stats = run_editor(FlowAlignEditor, pipe, inverted, 0, lambda s, sn: noise, zeta=0.3,
                                target_guidance=5.0, source_guidance=2.0)
    source, target, null = model.encode_prompts([SOURCE, TARGET, ""]).split(1)
    t = inverted.schedule.timesteps[0]
    q, p = noise, z0 + noise - z0  # σ_0 = 1
    v = model.denoise(torch.cat([q, p, q, p]), t, torch.cat([null, source, source, target]), RunStats())
    q_u, p_u, q_c, p_c = v.split(1)
    v_q, v_p = q_u + 2.0 * (q_c - q_u), p_u + 5.0 * (p_c - p_u)
    expected = z0 + (0 - 1) * (v_p - v_q) + 0.3 * (q - v_q - p + v_p)
    assert (latents.target - expected).abs().max() < 1e-5
    assert stats.nfe == 4


def test_flowalign_refuses_flux_in_one_line():
    """The official code runs SD3 only: FLUX is refused before any network call, with one line."""
    import invedit
    from invedit.testing import tiny_pipeline

    from .conftest import scene_image

    with pytest.raises(InveditError, match=r"^editor 'flowalign' has no settings for flux models; it runs on SD3$"):
        invedit.edit(tiny_pipeline(kind="flux"), scene_image(), SOURCE, TARGET, inversion="none",
                     editor="flowalign", steps=3)
    with pytest.raises(InveditError, match=r"^zeta must be a number in \[0, 1\], got 2$"):
        FlowAlignEditor.resolved("sd3", 10, {"zeta": 2})
