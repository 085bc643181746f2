"""DRFS (`--inversion none --editor drfs`): parity with the official DRFS on the tiny random SD3 of
tests/fixtures/parity_flow (tests/fixtures/parity_drfs: exp.yaml's settings at 10 and 50 steps, and the "random"
strategy), its two reductions (shift 1 with lr "FE" is invedit's FlowEdit; shift 0 is DDS on the flow model's
ε-predictions, computed directly), and its option checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from invedit.backbones import backbone
from invedit.editing.drfs import DRFSEditor, custom_lr
from invedit.editing.flowedit import FlowEditEditor, scaled_n_max
from invedit.errors import InveditError
from invedit.flow import noise_from_velocity
from invedit.sampling import RunStats

from .test_dnaedit import run_editor
from .test_flowedit import SOURCE, TARGET, fixture_pipe, no_inversion, psnr

FIXTURE = Path(__file__).parent / "fixtures" / "parity_drfs" / "runs"
# Final latents, max|diff| to the official run (|latents| up to about 5.5). Measured (torch 2.14.1 CPU, 1 thread):
# 5.4e-7 (10 steps), 1.8e-6 (50 steps), 4.8e-6 ("random", constant lr 0.1): float rounding (row order of the batch,
# the learning rate computed in float64 here, float32 there; CFG 16.5 amplifies). Images: PSNR 51.2 dB.
ATOL, MIN_PSNR = 1e-4, 45.0
RUNS = {"drfs-t10_sd3_caseB": (10, {}), "drfs-default_sd3_caseB": (50, {}),
        "drfs-random-t10_sd3_caseB": (10, {"scheduler_strategy": "random", "lr": 0.1})}


@pytest.fixture(scope="module")
def pipe():
    return fixture_pipe("sd3")


@pytest.mark.parametrize("run", list(RUNS))
def test_drfs_matches_the_official_code(run, pipe, one_thread):
    """From the official x_src and exp.yaml's seed (41), the edit ends within float error of the official final
    latents: the seed's draws (and the random strategy's step indices) are the official ones; 4 rows per step."""
    steps, options = RUNS[run]
    ref = torch.load(FIXTURE / run / "tensors.pt")
    settings = json.loads((FIXTURE / run / "settings.json").read_text())
    inverted = no_inversion(pipe, ref["x_src"], steps)
    assert torch.equal(inverted.schedule.sigmas, ref["scheduler_sigmas"])
    latents, stats = run_editor(DRFSEditor, pipe, inverted, settings["seed"], **options)
    assert (latents.target - ref["final_latents"]).abs().max() < ATOL
    assert (stats.nfe, stats.unet_calls) == (4 * steps, steps)
    if settings["lr"] == "custom":  # the recorded learning rates (float32 there)
        lrs = [custom_lr(inverted.schedule.sigmas, i) for i in range(steps)]
        assert np.allclose(lrs, settings["learning_rates"], rtol=1e-5, atol=1e-9)
    official = np.load(FIXTURE / run / "output_uint8.npz")["output_uint8"]
    ours = np.asarray(backbone(pipe).decode(latents.target)[0])
    assert psnr(ours, official) >= MIN_PSNR


def test_shift_one_with_the_flowedit_rate_is_flowedit(pipe, one_thread):
    """shift = 1 (c_t = t) with lr "FE" over FlowEdit's n_max steps and its guidance is invedit's FlowEdit on the
    same seed (the same draws), bit for bit."""
    x_src = torch.load(FIXTURE / "drfs-t10_sd3_caseB" / "tensors.pt")["x_src"]
    inverted = no_inversion(pipe, x_src, 10)
    n_max = scaled_n_max("sd3", 10)
    flowedit, fe_stats = run_editor(FlowEditEditor, pipe, inverted, 5)
    drfs, drfs_stats = run_editor(DRFSEditor, pipe, inverted, 5, shift=1, lr="FE", num_steps=n_max,
                                  source_guidance=3.5, target_guidance=13.5)
    assert torch.equal(drfs.target, flowedit.target)
    assert drfs_stats.nfe == fe_stats.nfe == 4 * n_max


def test_shift_zero_is_dds_on_the_flow_models_noise_predictions(pipe, one_thread):
    """shift = 0: z ← z − lr·(ΔV + (z − x_src)), which is DDS's step z ← z − lr/(1 − t)·(ε̂_tgt(z_t) − ε̂_src(x_t))
    with ε̂ = x_t + (1 − t)·v̂, the same noise and level for both; computed directly from the model."""
    model = backbone(pipe)
    x_src = torch.load(FIXTURE / "drfs-t10_sd3_caseB" / "tensors.pt")["x_src"]
    steps, num_steps, lr = 6, 4, 0.05
    inverted = no_inversion(pipe, x_src, steps)
    generator = torch.Generator().manual_seed(3)
    noises = [torch.randn(x_src.shape, generator=generator) for _ in range(num_steps)]
    draws = iter(noises)
    latents, _ = run_editor(DRFSEditor, pipe, inverted, 0, lambda s, sn: next(draws), shift=0, lr=lr,
                            num_steps=num_steps)

    null, source, target = model.encode_prompts(["", SOURCE, TARGET]).split(1)
    schedule, z = inverted.schedule, x_src.clone()
    for k, i in enumerate(range(steps - num_steps, steps)):
        t = schedule.sigma(i)
        x_t, z_t = (1 - t) * x_src + t * noises[k], (1 - t) * z + t * noises[k]
        v = model.denoise(torch.cat([x_t, x_t, z_t, z_t]), schedule.timesteps[i],
                          torch.cat([null, source, null, target]), RunStats())
        s_u, s_c, t_u, t_c = v.split(1)
        eps_src = noise_from_velocity(s_u + 6.0 * (s_c - s_u), x_t, t)
        eps_tgt = noise_from_velocity(t_u + 16.5 * (t_c - t_u), z_t, t)
        z = z - lr / (1 - t) * (eps_tgt - eps_src)
    assert (latents.target - z).abs().max() < 1e-5


def test_options_follow_the_official_settings_and_refuse_bad_values():
    assert DRFSEditor.resolved("sd3", 50, {}) == {
        "eta": 1.0, "shift": "progressive", "num_steps": 50, "scheduler_strategy": "descending", "lr": "custom",
        "optimizer": "SGD", "B": 1, "source_guidance": 6.0, "target_guidance": 16.5}
    assert DRFSEditor.resolved("sd3", 10, {"lr": 0.2, "optimizer": "Adam", "shift": 0})["lr"] == 0.2
    refusals = [
        ({"shift": "linear"}, "shift must be 'progressive' or a number, got 'linear'"),
        ({"lr": "cosine"}, "lr must be 'custom', 'FE' or a number, got 'cosine'"),
        ({"optimizer": "Adam"}, "optimizer Adam needs a numeric lr (the official code builds it with lr); lr 'custom' "
                                "schedules SGD only"),
        ({"optimizer": "LBFGS"}, "optimizer must be one of SGD, SGD_Nesterov, RMSprop, AdamW, Adam, got 'LBFGS'"),
        ({"scheduler_strategy": "cyclic"}, "scheduler_strategy must be one of descending, random, got 'cyclic'"),
        ({"num_steps": 11}, r"num_steps must be an integer in [1, 10], got 11"),
    ]
    for options, message in refusals:
        with pytest.raises(InveditError) as refused:
            DRFSEditor.resolved("sd3", 10, options)
        assert str(refused.value) == message
    with pytest.raises(InveditError, match=r"^editor 'drfs' has no settings for flux models; it runs on SD3$"):
        DRFSEditor.resolved("flux", 10, {})
