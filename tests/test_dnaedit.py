"""DNAEdit (`--inversion none --editor dnaedit`): parity with the official DNAEdit_SD3 / DNAEdit_FLUX on the tiny
random models of tests/fixtures/parity_flow (tests/fixtures/parity_flow3: 10 steps and the configs' own step
counts), its seeded draw being the official one, the options and their scaling, the family refusal and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from invedit.backbones import backbone
from invedit.backbones.flux import unpack_latents
from invedit.editing.dnaedit import DNAEditEditor, scaled_t_start
from invedit.editing.flowedit import seeded_noise_sampler
from invedit.errors import InveditError

from .conftest import scene_image
from .test_flowedit import SOURCE, TARGET, fixture_pipe, no_inversion, psnr

FIXTURE = Path(__file__).parent / "fixtures" / "parity_flow3" / "runs"
# Final latents, max|diff| to the official run (|latents| up to about 5). Measured (torch 2.14.1 CPU, 1 thread):
# SD3 8.3e-7 (10 steps) and 4.8e-7 (40 steps): float rounding only (the official SD3 inversion batches two identical
# rows and its CFG batch is [neg, tar]; ours computes the one conditional row, our row order); FLUX 0 (bitwise, 10
# and 28 steps). Images: PSNR 51.2 dB for all four (invedit truncates to uint8, the official postprocess rounds).
ATOL, MIN_PSNR = 1e-4, 45.0
CASES = {  # run: (family, steps, T_start, NFE (inversion rows + edit rows), network calls)
    "dnaedit-t10_sd3_caseB": ("sd3", 10, 3, 7 + 7 * 2, 14),
    "dnaedit-t10_flux_caseB": ("flux", 10, 1, 9 + 9, 18),
    "dnaedit-default_sd3_caseB": ("sd3", 40, 13, 27 + 27 * 2, 54),
    "dnaedit-default_flux_caseB": ("flux", 28, 4, 24 + 24, 48),
}


@pytest.fixture(scope="module")
def pipes():
    return {family: fixture_pipe(family) for family in ("sd3", "flux")}


def run_editor(editor_cls, pipe, inverted, seed: int, noise_sampler=None, **options):
    """One edit of an inversion-free editor through the loop `invedit.edit` runs, optionally with injected noise."""
    from invedit.api import loop_context
    from invedit.sampling import denoise_two_branches

    editor = editor_cls.create(pipe, SOURCE, TARGET, inverted.steps, **options)
    editor.noise_sampler = noise_sampler
    ctx = loop_context(pipe, inverted, editor, SOURCE, TARGET, 7.5, seed)
    with editor.attach(ctx.denoiser.model, ctx.denoiser.values):
        latents = denoise_two_branches(inverted.sampler(ctx), ctx, editor)
    return latents, ctx.denoiser.stats


@pytest.mark.parametrize("run", list(CASES))
def test_dnaedit_matches_the_official_code(run, pipes, one_thread):
    """From the official x_src and seed 0 (the configs'), the edit ends within float error of the official final
    latents, at 10 steps and at the configs' own (SD3 40 / T_start 13, FLUX 28 / 4), options scaled by default; the
    seeded draw is the official one; decoded images ≥ 45 dB against the official PNG."""
    family, steps, t_start, nfe, calls = CASES[run]
    ref = torch.load(FIXTURE / run / "tensors.pt")
    settings = json.loads((FIXTURE / run / "settings.json").read_text())["hyperparameters_used"]
    assert (settings["T_steps"], settings["T_start"], settings["mvg"]) == (steps, t_start, 0.8)
    pipe = pipes[family]
    inverted = no_inversion(pipe, ref["x_src"], steps)
    assert torch.equal(inverted.schedule.sigmas, ref["scheduler_sigmas"])

    latents, stats = run_editor(DNAEditEditor, pipe, inverted, settings["seed"])
    assert (latents.target - ref["final_latents"]).abs().max() < ATOL
    assert torch.equal(latents.source, ref["x_src"])
    assert (stats.nfe, stats.unet_calls) == (nfe, calls)

    draw = seeded_noise_sampler(torch.Generator().manual_seed(settings["seed"]), ref["x_src"], family)(None, None)
    assert torch.equal(draw, unpack_latents(ref["noise"], 16, 16) if family == "flux" else ref["noise"])

    official = np.load(FIXTURE / run / "output_uint8.npz")["output_uint8"]
    ours = np.asarray(backbone(pipe).decode(latents.target)[0])
    assert psnr(ours, official) >= MIN_PSNR


def test_t_start_scales_the_official_configs_with_the_step_count():
    """The configs' defaults at their own T (SD3 40 → 13, FLUX 28 → 4), the active fraction kept elsewhere."""
    assert [scaled_t_start("sd3", t) for t in (40, 10, 50, 4)] == [13, 3, 16, 1]
    assert [scaled_t_start("flux", t) for t in (28, 10, 50, 4)] == [4, 1, 7, 1]
    assert DNAEditEditor.resolved("sd3", 40, {}) == {"T_start": 13, "mvg": 0.8, "source_guidance": 1.0,
                                                     "target_guidance": 3.5}
    assert DNAEditEditor.resolved("flux", 28, {"mvg": 0.85})["mvg"] == 0.85
    with pytest.raises(InveditError, match=r"^T_start must be an integer in \[0, 9\], got 10$"):
        DNAEditEditor.resolved("sd3", 10, {"T_start": 10})
    with pytest.raises(InveditError, match=r"^mvg must be a number in \[0, 1\], got 1.5$"):
        DNAEditEditor.resolved("sd3", 10, {"mvg": 1.5})
    with pytest.raises(InveditError, match=r"^editor 'dnaedit' has no option 'n_max' \(options: T_start, mvg, "):
        DNAEditEditor.resolved("sd3", 10, {"n_max": 3})


def test_dnaedit_refuses_an_inversion_and_unet_models():
    """`--inversion euler` with dnaedit exits 2 with one line before any model loads; a UNet model is refused."""
    from typer.testing import CliRunner

    import invedit
    from invedit.cli import app
    from invedit.testing import tiny_pipeline

    refused = CliRunner().invoke(app, ["edit", "missing.png", "-s", SOURCE, "-t", TARGET, "--model", "nowhere",
                                       "--editor", "dnaedit", "--inversion", "euler"])
    assert refused.exit_code == 2
    assert "editor 'dnaedit' needs no inversion; use it with inversion 'none', not 'euler'" in refused.output
    with pytest.raises(InveditError, match=r"^inversion 'none' does not run on sd models"):
        invedit.edit(tiny_pipeline(), scene_image(), SOURCE, TARGET, inversion="none", editor="dnaedit", steps=4)


def test_bench_runs_the_flowedit_family_by_name(tmp_path):
    """`invedit bench --methods none+dnaedit,none+drfs,none+flowalign` on an SD3 folder: every pair done, its
    record naming the editor and its resolved options, NFE as counted (DNAEdit at 4 steps: T_start 1, 3 source rows
    + 3 × 2 target rows; DRFS 4 × 4; FlowAlign 4 × 3)."""
    from typer.testing import CliRunner

    from invedit.cli import app
    from invedit.testing import tiny_pipeline
    from invedit.toy.bench import write_toy_bench

    folder = tmp_path / "sd3"
    tiny_pipeline(kind="sd3").save_pretrained(folder)
    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    result = CliRunner().invoke(app, ["bench", str(data), "--methods", "none+dnaedit,none+drfs,none+flowalign",
                                      "--out", str(tmp_path / "run"), "--model", str(folder), "--steps", "4",
                                      "--resolution", "64", "--limit", "1", "--no-cache", "-q"])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "edits").glob("*/*.json")]
    nfe = {r["editor"]["editor"]: (r["inversion"], r["nfe_inversion"], r["nfe_edit"]) for r in records}
    assert nfe == {"dnaedit": ("none", 0, 9), "drfs": ("none", 0, 16), "flowalign": ("none", 0, 12)}
    drfs = next(r for r in records if r["editor"]["editor"] == "drfs")
    assert (drfs["editor"]["shift"], drfs["editor"]["lr"], drfs["editor"]["num_steps"]) == ("progressive", "custom", 4)
