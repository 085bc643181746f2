"""FlowEdit (`--inversion none --editor flowedit`): parity with the official FlowEditSD3 / FlowEditFLUX on the tiny
random models of tests/fixtures/parity_flow (their recorded noise injected), its seeded noise reproducing the
official draws, its n_min / n_avg branches against a direct computation, NFE, byte-for-byte reproducibility, the
pairing checks, the command line and `invedit bench`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

import invedit
from invedit.api import loop_context
from invedit.backbones import backbone
from invedit.backbones.flux import pack_latents, unpack_latents
from invedit.editing.flowedit import FlowEditEditor, scaled_n_max, seeded_noise_sampler
from invedit.errors import InveditError
from invedit.inversion.base import InversionInputs
from invedit.inversion.none import NoInversion
from invedit.models import prepare_pipeline
from invedit.prepare import check_settings
from invedit.sampling import RunStats, denoise_two_branches
from invedit.testing import tiny_pipeline

from .conftest import scene_image

FIXTURE = Path(__file__).parent / "fixtures" / "parity_flow"
SOURCE, TARGET = "a yellow square on a striped background", "a yellow star on a striped background"
STEPS = 10
# Final latents, max|diff| to the official run (|latents| up to about 6). Measured (torch 2.14.1 CPU, 1 thread):
# SD3 4.2e-6 (tar_guidance 13.5 amplifies; our batch row order and contiguous layout differ from the official
# channels-last [neg, src, neg, tar] batch), FLUX 4.8e-7 (one batch of both rows per step against the official two
# calls). The reference's own float64 replay differs from it by 3.4e-6 (SD3) and 6.3e-7 (FLUX).
CASES = {
    "sd3": {"run": "flowedit_sd3_caseB", "seed": 42, "atol": 2e-5, "nfe": 28, "calls": 7},
    "flux": {"run": "flowedit_flux_caseB", "seed": 10, "atol": 1e-5, "nfe": 18, "calls": 9},
}
# Decoded images against the official PNG: PSNR measured 51.2 dB (SD3 and FLUX; our decode truncates to uint8 as
# invedit always does, the official postprocess rounds); with the official rounding, 1 level off on 0.010 % (SD3)
# and 0.002 % (FLUX) of the values, never more.
MIN_PSNR = 35.0
MAX_OFF_BY_ONE = 1e-3


def fixture_pipe(family: str):
    pipe = DiffusionPipeline.from_pretrained(str(FIXTURE / f"tiny_{family}"), local_files_only=True)
    return prepare_pipeline(pipe, resolution=128)


def no_inversion(pipe, z0: torch.Tensor, steps: int = STEPS) -> NoInversion:
    """The "none" inversion of given latents (the official run's x_src) under the source prompt."""
    model = backbone(pipe)
    cond, null = model.encode_prompts([SOURCE, ""]).split(1)
    inputs = InversionInputs(model=model, z0=z0, prompt=SOURCE, cond=cond, null=null, schedule=model.schedule(steps),
                             guidance_scale=7.5, stats=RunStats(), generator=torch.Generator().manual_seed(0))
    return NoInversion.run(inputs, **NoInversion.validate_options({}))


def run_flowedit(pipe, inverted, seed: int, noise_sampler=None, **options):
    """One FlowEdit edit through the loop `invedit.edit` runs, optionally with injected noise."""
    editor = FlowEditEditor.create(pipe, SOURCE, TARGET, inverted.steps, **options)
    editor.noise_sampler = noise_sampler
    ctx = loop_context(pipe, inverted, editor, SOURCE, TARGET, 7.5, seed)
    with editor.attach(ctx.denoiser.model, ctx.denoiser.values):
        latents = denoise_two_branches(inverted.sampler(ctx), ctx, editor)
    return latents, ctx.denoiser.stats


def official_noises(family: str, stored: torch.Tensor) -> list[torch.Tensor]:
    """The recorded draws in the (1, C, h, w) latent layout (FLUX's were drawn and stored packed)."""
    return [unpack_latents(n, 16, 16) if family == "flux" else n for n in stored]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255**2 / mse))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flowedit_matches_the_official_code(family, one_thread):
    """With the official draws injected, the edit ends within float error of FlowEditSD3 / FlowEditFLUX's final
    latents at the official defaults scaled to T = 10 (SD3 n_max 7, guidance 3.5/13.5; FLUX n_max 9, 1.5/5.5), at the
    official cost; the seeded default draws are the official ones, so the seed alone reproduces the run."""
    case = CASES[family]
    run = FIXTURE / "runs" / case["run"]
    ref = torch.load(run / "tensors.pt")
    pipe = fixture_pipe(family)
    x_src = torch.load(run / "input_latents.pt")
    inverted = no_inversion(pipe, x_src)
    assert torch.equal(inverted.schedule.sigmas, ref["scheduler_sigmas"])
    assert inverted.stats.nfe == 0

    draws = iter(official_noises(family, ref["noises"]))
    latents, stats = run_flowedit(pipe, inverted, case["seed"], lambda sigma, sigma_next: next(draws))
    assert next(draws, None) is None  # every recorded draw used, one per FlowEdit step
    assert (latents.target - ref["final_latents"]).abs().max() < case["atol"]
    assert torch.equal(latents.source, x_src)  # the source branch is the image itself
    assert (stats.nfe, stats.unet_calls) == (case["nfe"], case["calls"])  # official: 7 calls × 4 rows; 18 × 1

    seeded, _ = run_flowedit(pipe, inverted, case["seed"])
    assert torch.equal(seeded.target, latents.target)

    official = np.load(run / "output_uint8.npz")["output_uint8"]
    ours = np.asarray(backbone(pipe).decode(latents.target)[0])
    assert psnr(ours, official) >= MIN_PSNR
    vae = pipe.vae
    with torch.no_grad():
        decoded = vae.decode(latents.target / vae.config.scaling_factor + vae.config.shift_factor).sample
    rounded = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    off = np.abs(rounded.astype(int) - official.astype(int))
    assert off.max() <= 1 and (off > 0).mean() < MAX_OFF_BY_ONE


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_seeded_noise_is_the_official_draw_order_and_layout(family):
    """The default noise sampler draws from the edit's generator exactly what the official code drew from the
    global seed: SD3's channels-last randn_like (not torch.randn of the shape), FLUX's packed tokens."""
    case = CASES[family]
    stored = torch.load(FIXTURE / "runs" / case["run"] / "tensors.pt")["noises"]
    like = torch.zeros(1, 4, 16, 16)
    draw = seeded_noise_sampler(torch.Generator().manual_seed(case["seed"]), like, family)
    draws = torch.stack([draw(None, None) for _ in stored])
    if family == "flux":
        draws = torch.stack([pack_latents(d) for d in draws])
    assert torch.equal(draws, stored)
    plain = torch.randn(stored[0].shape, generator=torch.Generator().manual_seed(case["seed"]))
    assert torch.equal(plain, stored[0]) == (family == "flux")


def test_n_max_scales_the_official_defaults_with_the_step_count():
    """Official defaults at their own T (SD3 50 → 33, FLUX 28 → 24) and round(n_max·T/T_default) elsewhere."""
    assert [scaled_n_max("sd3", t) for t in (50, 10, 28, 4)] == [33, 7, 18, 3]
    assert [scaled_n_max("flux", t) for t in (28, 10, 50, 4)] == [24, 9, 43, 3]
    options = FlowEditEditor.resolved("flux", 28, {})
    assert options == {"n_max": 24, "n_min": 0, "n_avg": 1, "source_guidance": 1.5, "target_guidance": 5.5}
    assert FlowEditEditor.resolved("sd3", 50, {"target_guidance": 10})["target_guidance"] == 10.0
    with pytest.raises(InveditError, match=r"^n_max must be an integer in \[0, 10\], got 11$"):
        FlowEditEditor.resolved("sd3", 10, {"n_max": 11})
    with pytest.raises(InveditError, match=r"^n_min must be an integer in \[0, 3\], got 4$"):
        FlowEditEditor.resolved("sd3", 10, {"n_max": 3, "n_min": 4})


def test_n_min_and_n_avg_follow_the_official_loop():
    """n_avg averages the velocity difference over fresh noises; the last n_min steps noise the edit to σ_i with one
    more draw and sample the target alone (FlowEditFLUX's n_min branch), computed here directly."""
    pipe = tiny_pipeline(kind="flux")
    model = backbone(pipe)
    z0 = model.encode_image(scene_image())
    steps, n_max, n_min, n_avg = 5, 4, 2, 2
    inverted = no_inversion(pipe, z0, steps)
    generator = torch.Generator().manual_seed(7)
    noises = [torch.randn(z0.shape, generator=generator) for _ in range((n_max - n_min) * n_avg + 1)]
    draws = iter(noises)
    latents, stats = run_flowedit(pipe, inverted, 0, lambda s, sn: next(draws), n_max=n_max, n_min=n_min,
                                  n_avg=n_avg)

    emb = model.encode_prompts([SOURCE, TARGET])
    schedule, scales = inverted.schedule, torch.tensor([1.5, 5.5])
    z_edit, it = z0.clone(), iter(noises)
    for i in range(steps - n_max, steps - n_min):
        sigma, sigma_next = schedule.sigma(i), schedule.sigma(i + 1)
        delta = torch.zeros_like(z0)
        for _ in range(n_avg):
            z_src = (1 - sigma) * z0 + sigma * next(it)
            z_tar = z_edit + z_src - z0
            v_src, v_tar = model.denoise(torch.cat([z_src, z_tar]), schedule.timesteps[i], emb, RunStats(),
                                         guidance=scales).split(1)
            delta = delta + (1 / n_avg) * (v_tar - v_src)
        z_edit = z_edit + (sigma_next - sigma) * delta
    sigma = schedule.sigma(steps - n_min)
    x_tar = z_edit + (sigma * next(it) + (1 - sigma) * z0) - z0
    for i in range(steps - n_min, steps):
        v = model.denoise(x_tar, schedule.timesteps[i], emb[1:], RunStats(), guidance=torch.tensor([5.5]))
        x_tar = x_tar + (schedule.sigma(i + 1) - schedule.sigma(i)) * v
    assert torch.equal(latents.target, x_tar)
    assert stats.nfe == (n_max - n_min) * n_avg * 2 + n_min


def test_an_edit_is_reproducible_byte_for_byte_from_its_seed(tmp_path):
    """invedit.edit with the same seed writes identical files; another seed draws other noise."""
    pipe = tiny_pipeline(kind="sd3")
    kwargs = dict(inversion="none", editor="flowedit", steps=6)
    first = invedit.edit(pipe, scene_image(), SOURCE, TARGET, seed=5, **kwargs)
    second = invedit.edit(pipe, scene_image(), SOURCE, TARGET, seed=5, **kwargs)
    other = invedit.edit(pipe, scene_image(), SOURCE, TARGET, seed=6, **kwargs)
    assert torch.equal(first.latents, second.latents)
    assert not torch.equal(first.latents[1], other.latents[1])
    a, b = first.save(tmp_path / "a.png"), second.save(tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    assert (first.nfe_inversion, first.nfe_edit) == (0, scaled_n_max("sd3", 6) * 4)
    assert first.record()["editor"] == {"editor": "flowedit", "n_max": 4, "n_min": 0, "n_avg": 1,
                                        "source_guidance": 3.5, "target_guidance": 13.5}
    assert torch.equal(first.latents[:1], backbone(pipe).encode_image(scene_image()))


@pytest.mark.parametrize(("inversion", "editor", "message"), [
    ("direct", "flowedit", "editor 'flowedit' needs no inversion; use it with inversion 'none', not 'direct'"),
    ("none", "p2p", "inversion 'none' keeps no trajectory for editor 'p2p'; pair it with an inversion-free editor "
                    "(dnaedit, drfs, flowalign, flowedit, instruct) or choose an inversion"),
    ("none", "none", "inversion 'none' keeps no trajectory for editor 'none'; pair it with an inversion-free editor "
                     "(dnaedit, drfs, flowalign, flowedit, instruct) or choose an inversion"),
])
def test_pairings_that_mean_nothing_are_refused_in_one_line(inversion, editor, message):
    from invedit.bench.methods import parse_methods

    with pytest.raises(InveditError) as refused:
        check_settings(inversion, editor)
    assert str(refused.value) == message
    with pytest.raises(InveditError) as refused:
        parse_methods(f"{inversion}+{editor}")
    assert str(refused.value) == f"method {inversion}+{editor}: {message}"


def test_flowedit_refuses_unet_models():
    with pytest.raises(InveditError, match=r"^inversion 'none' does not run on sd models \(ddim schedule\): it serves "
                                           r"inversion-free editors \(FlowEdit on SD3/FLUX, the instruction-trained "
                                           r"models' own pipelines\); use one of: ddim, .*direct"):
        invedit.edit(tiny_pipeline(), scene_image(), SOURCE, TARGET, inversion="none", editor="flowedit", steps=4)


def test_cli_runs_flowedit_on_a_model_folder(tmp_path):
    """`invedit edit … --model <tiny SD3 folder> --inversion none --editor flowedit -o n_max=5` writes the edit and
    its record; `--inversion direct` with flowedit exits 2 with the one-line message."""
    from typer.testing import CliRunner

    from invedit.cli import app

    image = tmp_path / "in.png"
    scene_image(128).save(image)
    out = tmp_path / "out.png"
    base = ["edit", str(image), "-s", SOURCE, "-t", TARGET, "--model", str(FIXTURE / "tiny_sd3"), "--steps", "8",
            "--out", str(out), "-q", "--editor", "flowedit"]
    result = CliRunner().invoke(app, [*base, "--inversion", "none", "-o", "n_max=5", "--seed", "42"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["inversion"], record["editor"]["editor"], record["editor"]["n_max"]) == ("none", "flowedit", 5)
    assert (record["nfe_inversion"], record["nfe_edit"], record["seed"]) == (0, 20, 42)
    refused = CliRunner().invoke(app, [*base, "--inversion", "direct"])
    assert refused.exit_code == 2
    assert "editor 'flowedit' needs no inversion; use it with inversion 'none', not 'direct'" in refused.output
    assert "Traceback" not in refused.output


def test_bench_runs_none_flowedit_and_rf_inversion_none(tmp_path):
    """`invedit bench --methods none+flowedit,rf-inversion+none` on a FLUX folder: every pair done, NFE as counted
    (FlowEdit: no inversion, 2 rows per step; RF-Inversion: T + T)."""
    from typer.testing import CliRunner

    from invedit.cli import app
    from invedit.toy.bench import write_toy_bench

    folder = tmp_path / "flux"
    tiny_pipeline(kind="flux").save_pretrained(folder)
    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    result = CliRunner().invoke(app, ["bench", str(data), "--methods", "none+flowedit,rf-inversion+none", "--out",
                                      str(tmp_path / "run"), "--model", str(folder), "--steps", "4", "--resolution",
                                      "64", "--limit", "1", "--no-cache", "-q"])
    assert result.exit_code == 0, result.output
    records = {json.loads(p.read_text())["inversion"]: json.loads(p.read_text())
               for p in (tmp_path / "run" / "edits").glob("*/*.json")}
    assert set(records) == {"none", "rf-inversion"}
    assert (records["none"]["nfe_inversion"], records["none"]["nfe_edit"]) == (0, 2 * scaled_n_max("flux", 4))
    assert (records["rf-inversion"]["nfe_inversion"], records["rf-inversion"]["nfe_edit"]) == (4, 4)


@pytest.mark.parametrize(("inversion", "editor"), [("none", "flowedit"), ("rf-inversion", "none")])
def test_stored_inversions_edit_bit_identically(inversion, editor, tmp_path):
    """The bench cache's store keeps "none" (z₀ only) and RF-Inversion results exactly: an edit of the loaded
    result equals the edit of the original, seed for seed."""
    from invedit.inversion.storage import load_inverted, save_inverted

    pipe = tiny_pipeline(kind="flux")
    inverted = invedit.invert(pipe, scene_image(), SOURCE, inversion, steps=3)
    loaded = load_inverted(save_inverted(inverted, tmp_path / "inv"))
    assert type(loaded) is type(inverted) and torch.equal(loaded.latents, inverted.latents)
    first = invedit.edit(pipe, loaded, None, TARGET, editor=editor, seed=3)
    second = invedit.edit(pipe, inverted, None, TARGET, editor=editor, seed=3)
    assert torch.equal(first.latents, second.latents)
