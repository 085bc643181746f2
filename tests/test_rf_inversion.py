"""RF-Inversion (`--inversion rf-inversion --editor none`, FLUX only): parity with the diffusers community pipeline
RFInversionFluxPipeline (invert, then __call__) on the tiny FLUX model of tests/fixtures/parity_flow with its recorded
draws injected, the seeded draws being the reference's, the η window, cost, reproducibility and the SD3 refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

import invedit
from invedit.backbones import backbone
from invedit.backbones.flux import pack_latents, unpack_latents
from invedit.errors import InveditError
from invedit.flow import euler_sample
from invedit.inversion.base import InversionInputs
from invedit.inversion.rf_inversion import RFInverted, eta_at, eta_window, posterior_sample
from invedit.models import prepare_pipeline
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

from .conftest import scene_image

FIXTURE = Path(__file__).parent / "fixtures" / "parity_flow"
RUN = FIXTURE / "runs" / "rfinversion_flux_caseB"
SOURCE, TARGET = "a yellow square on a striped background", "a yellow star on a striped background"
STEPS = 10
# Measured against the reference (torch 2.14.1 CPU, 1 thread; |latents| up to about 6): inverted latents Y_T
# 1.5e-7, final latents 3.6e-7. Its own float64 replay differs from it by 4.7e-7.
ATOL = 1e-5
# Decoded image: PSNR 51.2 dB against the official PNG (our decode truncates, the official postprocess rounds);
# with the official rounding 1 level off on 0.004 % of the values, never more.
MIN_PSNR = 35.0
MAX_OFF_BY_ONE = 1e-3
# Encoding the input PNG ourselves instead of taking the recorded latents: the VAE encoder's channels-last GroupNorm
# differs on CPU (tests/test_flow_parity.py); measured 3.9e-5 on y₀ and 1.1e-5 on Y_T.
REENCODED_ATOL = 3e-4


@pytest.fixture(scope="module")
def flux():
    pipe = DiffusionPipeline.from_pretrained(str(FIXTURE / "tiny_flux"), local_files_only=True)
    return prepare_pipeline(pipe, resolution=128)


def inputs_for(pipe, z0: torch.Tensor, steps: int = STEPS, seed: int = 0) -> InversionInputs:
    model = backbone(pipe)
    cond, null = model.encode_prompts([SOURCE, ""]).split(1)
    return InversionInputs(model=model, z0=z0, prompt=SOURCE, cond=cond, null=null, schedule=model.schedule(steps),
                           guidance_scale=3.5, stats=RunStats(), generator=torch.Generator().manual_seed(seed))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255**2 / mse))


def test_rf_inversion_matches_the_community_pipeline(flux, one_thread):
    """Given the reference's sampled latents y₀ and noise y₁, the controlled forward ODE (γ 0.5, empty prompt,
    guidance input 0, linear timesteps i/11) reaches its Y_T, and the controlled reverse ODE under the target prompt
    (η 1 on steps 0–1 only, guidance 3.5) its final latents, at its cost: 10 + 10 rows, no source rows."""
    ref = torch.load(RUN / "tensors.pt")
    y0 = torch.load(RUN / "input_latents.pt")
    assert torch.equal(y0, ref["image_latents"])
    inputs = inputs_for(flux, y0)
    assert torch.equal(inputs.schedule.sigmas, ref["edit_sigmas"])
    inverted = RFInverted.invert_latents(inputs, y0, unpack_latents(ref["y_1"], 16, 16),
                                         **RFInverted.validate_options({}))
    assert inverted.stats.nfe == STEPS
    assert torch.equal(inverted.latents[0], y0[0])
    assert (pack_latents(inverted.latents[-1:]) - ref["inverted_latents_packed"]).abs().max() < ATOL

    result = invedit.edit(flux, inverted, SOURCE, TARGET, editor="none", guidance_scale=3.5, seed=0)
    assert (result.latents[1:] - ref["final_latents"]).abs().max() < ATOL
    assert torch.equal(result.latents[:1], y0)  # the source branch stays at y₀: its image is the reconstruction
    assert (result.nfe_inversion, result.nfe_edit) == (STEPS, STEPS)

    official = np.load(RUN / "output_uint8.npz")["output_uint8"]
    assert psnr(np.asarray(result.image), official) >= MIN_PSNR
    vae = flux.vae
    with torch.no_grad():
        decoded = vae.decode(result.latents[1:] / vae.config.scaling_factor + vae.config.shift_factor).sample
    rounded = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    off = np.abs(rounded.astype(int) - official.astype(int))
    assert off.max() <= 1 and (off > 0).mean() < MAX_OFF_BY_ONE


def test_the_seeded_draws_are_the_reference_draws(flux, one_thread):
    """invedit.invert(..., "rf-inversion", seed=0) draws the VAE sample's ε and then y₁ (packed) from its generator
    exactly as the reference drew them after torch.manual_seed(0): its y₀ is the posterior sample with the recorded
    ε, and its trajectory is the one the recorded y₁ gives."""
    ref = torch.load(RUN / "tensors.pt")
    image = Image.open(FIXTURE / "inputs" / "caseB.png")
    inverted = invedit.invert(flux, image, SOURCE, "rf-inversion", steps=STEPS, guidance_scale=3.5, seed=0)
    y0 = inverted.latents[:1]
    assert torch.equal(y0, posterior_sample(backbone(flux), image, ref["eps_vae_sample"]))
    replay = RFInverted.invert_latents(inputs_for(flux, y0), y0, unpack_latents(ref["y_1"], 16, 16),
                                       **RFInverted.validate_options({}))
    assert torch.equal(replay.latents, inverted.latents)
    assert (y0 - ref["image_latents"]).abs().max() < REENCODED_ATOL
    assert (pack_latents(inverted.latents[-1:]) - ref["inverted_latents_packed"]).abs().max() < REENCODED_ATOL


def test_an_edit_is_reproducible_byte_for_byte_from_its_seed(tmp_path):
    pipe = tiny_pipeline(kind="flux")
    kwargs = dict(inversion="rf-inversion", editor="none", steps=4, guidance_scale=3.5)
    first = invedit.edit(pipe, scene_image(), SOURCE, TARGET, seed=1, **kwargs)
    second = invedit.edit(pipe, scene_image(), SOURCE, TARGET, seed=1, **kwargs)
    other = invedit.edit(pipe, scene_image(), SOURCE, TARGET, seed=2, **kwargs)
    assert torch.equal(first.latents, second.latents)
    assert not torch.equal(first.latents, other.latents)
    assert first.save(tmp_path / "a.png").read_bytes() == second.save(tmp_path / "b.png").read_bytes()


def test_the_eta_window_truncates_like_the_reference():
    """η acts on steps int(start·T) ≤ i < min(int(stop·T), T): 0.25·10 → steps 0 and 1; decay multiplies by
    (1 − i/T)^power."""
    options = RFInverted.validate_options({})
    assert eta_window(options, 10) == (0, 2)
    assert [eta_at(options, i, 10) for i in range(4)] == [1.0, 1.0, 0.0, 0.0]
    assert eta_window(RFInverted.validate_options({"start_timestep": 0.15, "stop_timestep": 0.99}), 10) == (1, 9)
    decayed = RFInverted.validate_options({"eta": 0.9, "decay_eta": True, "eta_decay_power": 2.0})
    assert eta_at(decayed, 1, 10) == 0.9 * (1 - 1 / 10) ** 2.0


def test_without_eta_the_edit_is_the_models_euler_sampling():
    """η = 0: the controlled reverse ODE is the plain Euler sampler from Y_T under the target prompt, bit for bit."""
    pipe, steps = tiny_pipeline(kind="flux"), 4
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "rf-inversion", steps=steps, eta=0.0)
    result = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="none", guidance_scale=3.5)
    model = backbone(pipe)
    target = model.encode_prompts([SOURCE, TARGET])[1:]
    expected = euler_sample(lambda x, t: model.denoise(x, t, target, RunStats(), guidance=torch.tensor([3.5])),
                            inverted.schedule, inverted.latents[-1:])
    assert torch.equal(result.latents[1:], expected[-1:])


def test_sd3_and_bad_options_are_refused_in_one_line():
    with pytest.raises(InveditError) as refused:
        invedit.invert(tiny_pipeline(kind="sd3"), scene_image(), SOURCE, "rf-inversion", steps=4)
    assert str(refused.value) == "inversion 'rf-inversion' runs on FLUX models only (the reference is FLUX's), not sd3"
    with pytest.raises(InveditError, match=r"^start_timestep \(0.5\) must not exceed stop_timestep \(0.25\)$"):
        RFInverted.validate_options({"start_timestep": 0.5})
    with pytest.raises(InveditError, match=r"^gamma must be a number in \[0, 1\], got 2$"):
        RFInverted.validate_options({"gamma": 2})
    with pytest.raises(InveditError, match=r"^editor 'flowedit' needs no inversion; use it with inversion 'none', "
                                           r"not 'rf-inversion'$"):
        invedit.edit(tiny_pipeline(kind="flux"), scene_image(), SOURCE, TARGET, inversion="rf-inversion",
                     editor="flowedit", steps=4)


def test_cli_refuses_rf_inversion_on_sd3(tmp_path):
    from typer.testing import CliRunner

    from invedit.cli import app

    image = tmp_path / "in.png"
    scene_image(128).save(image)
    result = CliRunner().invoke(app, ["edit", str(image), "-s", SOURCE, "-t", TARGET, "--model",
                                      str(FIXTURE / "tiny_sd3"), "--steps", "4", "--out", str(tmp_path / "o.png"),
                                      "-q", "--inversion", "rf-inversion", "--editor", "none"])
    assert result.exit_code == 2
    assert "inversion 'rf-inversion' runs on FLUX models only (the reference is FLUX's), not sd3" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.png").exists()
