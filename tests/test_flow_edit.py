"""SD3 and FLUX through invedit's own path: `load` detects them, `invert(..., "euler")` is the plain Euler inversion,
and `edit(..., inversion="direct")` pins the source branch to z* while the target follows the model's Euler steps."""

import json

import pytest
import torch

import invedit
from invedit.backbones import backbone
from invedit.errors import InveditError
from invedit.flow import FlowSchedule, euler_invert
from invedit.inversion.storage import load_inverted, save_inverted
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

from .conftest import scene_image

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 4


@pytest.fixture(scope="module", params=["sd3", "flux", "flux-schnell"])
def flow_pipe(request):
    return tiny_pipeline(kind=request.param)


def test_load_detects_sd3_and_flux(tmp_path):
    """A saved SD3 / FLUX folder loads through `invedit.load` as its family, with its flow scheduler kept."""
    for kind, family in (("sd3", "sd3"), ("flux", "flux")):
        pipe = tiny_pipeline(kind=kind)
        pipe.save_pretrained(tmp_path / kind)
        loaded = invedit.load(str(tmp_path / kind), device="cpu", resolution=64)
        record = backbone(loaded)
        assert (record.family, record.resolution, record.schedule_kind) == (family, 64, "flow")
        assert record.fingerprint() == backbone(pipe).fingerprint()
        assert isinstance(record.schedule(STEPS), FlowSchedule)


def unit_guidance(model) -> dict:
    """What the loop passes at guidance 1: nothing, or the embedded scale 1.0 (FLUX.1-dev)."""
    return {"guidance": 1.0} if model.guidance_mode == "embedded" else {}


def test_euler_inversion_is_the_plain_euler_inversion(flow_pipe):
    """invert(..., "euler") is `invedit.flow.euler_invert` over the backbone's denoise, bit for bit (one network
    row per step: no CFG at inversion guidance 1; FLUX.1-dev is given the scale 1 as its guidance input)."""
    image = scene_image()
    inverted = invedit.invert(flow_pipe, image, SOURCE, "euler", steps=STEPS)
    model = backbone(flow_pipe)
    cond = model.encode_prompts([SOURCE, ""])[:1]  # batched as invert() encodes (batch size changes the bits)
    expected = euler_invert(lambda x, t: model.denoise(x, t, cond, RunStats(), **unit_guidance(model)),
                            model.schedule(STEPS), model.encode_image(image))
    assert torch.equal(inverted.latents, expected)
    assert inverted.stats.nfe == STEPS


def test_euler_edit_regenerates_with_the_models_euler_sampler(flow_pipe):
    """With Euler inversion and no editor, each branch is plain Euler sampling from z*_T under its prompt."""
    image = scene_image()
    inverted = invedit.invert(flow_pipe, image, SOURCE, "euler", steps=STEPS)
    result = invedit.edit(flow_pipe, inverted, SOURCE, TARGET, inversion="euler", editor="none", steps=STEPS,
                          guidance_scale=1.0)
    model = backbone(flow_pipe)
    both = model.encode_prompts([SOURCE, TARGET])  # both rows in one call per step, as the loop batches them
    schedule = inverted.schedule
    z = inverted.latents[-1:].expand(2, -1, -1, -1)
    for i in range(STEPS):
        z = schedule.step(model.denoise(z, schedule.timesteps[i], both, RunStats(), **unit_guidance(model)), i, z)
    assert torch.equal(result.latents, z)
    assert result.nfe_edit == 2 * STEPS
    assert not torch.equal(result.latents[0:1], inverted.latents[:1])  # 4 Euler steps do not reconstruct


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_direct_inversion_pins_the_source_to_z_star(flow_pipe, guidance):
    """Direct Inversion on a rectified flow: the source branch ends exactly at z*_0 (the image's latent), the target
    moves away from it, and the source costs no network rows."""
    result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="none", steps=STEPS,
                          guidance_scale=guidance)
    z0 = backbone(flow_pipe).encode_image(scene_image())
    assert torch.equal(result.latents[0:1], z0)
    assert (result.latents[1:] - z0).abs().max() > 1e-2
    assert result.nfe_inversion == STEPS
    rows = 1 if guidance == 1.0 or backbone(flow_pipe).guidance_mode == "embedded" else 2
    assert result.nfe_edit == STEPS * rows  # the target's rows only


def test_flux_dev_takes_the_guidance_scale_as_its_input():
    """On FLUX.1-dev (guidance embedded) the edit's guidance scale is the transformer's guidance input, one row per
    branch and no CFG; the inversion's ``inversion_guidance`` likewise."""
    pipe = tiny_pipeline(kind="flux")
    model = backbone(pipe)
    assert model.guidance_mode == "embedded"
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "direct", steps=STEPS, inversion_guidance=2.5)
    cond = model.encode_prompts([SOURCE, ""])[:1]
    expected = euler_invert(lambda x, t: model.denoise(x, t, cond, RunStats(), guidance=2.5), model.schedule(STEPS),
                            model.encode_image(scene_image()))
    assert torch.equal(inverted.latents, expected)
    result = invedit.edit(pipe, inverted, SOURCE, TARGET, inversion="direct", editor="none", steps=STEPS,
                          guidance_scale=4.0)
    target = model.encode_prompts([SOURCE, TARGET])[1:]
    z = inverted.latents[-1:]
    for i in range(STEPS):
        z = inverted.schedule.step(model.denoise(z, inverted.schedule.timesteps[i], target, RunStats(), guidance=4.0),
                                   i, z)
    assert torch.equal(result.latents[1:], z)
    assert torch.equal(result.latents[:1], inverted.latents[:1])
    assert result.nfe_edit == STEPS


def test_flow_inversion_round_trips_through_storage(tmp_path):
    """A flow inversion (its FlowSchedule included) saves and loads exactly, as the bench cache needs."""
    pipe = tiny_pipeline(kind="sd3")
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "direct", steps=STEPS)
    loaded = load_inverted(save_inverted(inverted, tmp_path / "inv"))
    assert torch.equal(loaded.latents, inverted.latents)
    assert torch.equal(loaded.schedule.sigmas, inverted.schedule.sigmas)
    assert loaded.schedule.level_timesteps == inverted.schedule.level_timesteps


def test_methods_refuse_the_model_kind_they_do_not_run_on():
    """DDIM-arithmetic inversions and UNet-attention editors refuse flow models, and Euler inversion refuses UNet
    models, in one line that names what does run."""
    flow, sd = tiny_pipeline(kind="sd3"), tiny_pipeline()
    with pytest.raises(InveditError, match=r"inversion 'null-text' does not run on sd3 models \(flow schedule\); "
                                           r"use one of: direct, euler, fireflow, none, rf-inversion, rf-solver, "
                                           r"stable-flow, uniedit$"):
        invedit.invert(flow, scene_image(), SOURCE, "null-text", steps=STEPS)
    with pytest.raises(InveditError, match=r"editor 'p2p' does not run on sd3 models \(flow schedule\): it rewrites "
                                           r"a UNet's cross-attention maps .*; use one of: dnaedit, drfs, flowalign, "
                                           r"flowedit, kv-edit, none, rf-solver-edit, shared-attention, stable-flow, "
                                           r"uniedit$"):
        invedit.edit(flow, scene_image(), SOURCE, TARGET, inversion="direct", editor="p2p", steps=STEPS)
    with pytest.raises(InveditError, match=r"inversion 'euler' does not run on sd models \(ddim schedule\); use one "
                                           r"of: ddim, .*direct"):
        invedit.invert(sd, scene_image(), SOURCE, "euler", steps=STEPS)


def test_cli_edits_a_flow_model_folder(tmp_path):
    """`invedit edit --model <SD3 folder> --inversion direct --editor none` writes the edit and its record; the
    default editor (P2P) is refused in one line (exit 2)."""
    from typer.testing import CliRunner

    from invedit.cli import app

    tiny_pipeline(kind="sd3").save_pretrained(tmp_path / "sd3")
    scene_image().save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    base = ["edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--model", str(tmp_path / "sd3"),
            "--resolution", "64", "--steps", str(STEPS), "--out", str(out), "-q"]
    result = CliRunner().invoke(app, [*base, "--inversion", "direct", "--editor", "none"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["inversion"], record["editor"]["editor"], record["steps"]) == ("direct", "none", STEPS)
    refused = CliRunner().invoke(app, [*base, "--inversion", "direct"])
    assert refused.exit_code == 2
    assert "editor 'p2p' does not run on sd3 models (flow schedule): it rewrites" in refused.output


def test_unsupported_pipelines_name_what_runs(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxImg2ImgPipeline"}))
    with pytest.raises(InveditError, match="FluxImg2ImgPipeline is not supported; invedit runs .*"
                                           r"StableDiffusion3Pipeline \(SD3/3.5\) and FluxPipeline \(FLUX.1\)"):
        invedit.load(str(tmp_path), device="cpu")


def test_flow_resolution_is_a_multiple_of_the_token_grid():
    """SD3/FLUX tokens are 2×2 latent cells: the working side is a multiple of the VAE factor × 2 (8 px here)."""
    from invedit.models import prepare_pipeline

    pipe = tiny_pipeline(kind="sd3")
    assert backbone(prepare_pipeline(pipe, resolution=72)).resolution == 72
    with pytest.raises(InveditError, match=r"^resolution must be a multiple of 8 pixels \(the VAE factor × 2\), "
                                           r"got 36$"):
        prepare_pipeline(pipe, resolution=36)


@pytest.mark.parametrize("options", [{"layout": "reference"}, {"correct_target": True}])
def test_direct_inversion_ablations_run_on_flow_models(flow_pipe, options):
    """Direct Inversion's offset pass (the reference layout's precomputed source offsets, correct_target's target
    offsets) steps with the flow schedule: the source still ends at z*_0."""
    result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="none", steps=STEPS,
                          guidance_scale=4.0, inversion_options=options)
    z0 = backbone(flow_pipe).encode_image(scene_image())
    if options.get("layout") == "reference":
        # z'' + (z* − z'') computed in separate calls: measured max|diff| 3.0e-7 (SD3), 1.5e-8 (FLUX)
        assert (result.latents[:1] - z0).abs().max() < 1e-5
        assert (result.latents[1:] - z0).abs().max() > 1e-2
    else:
        assert torch.equal(result.latents[:1], z0)
        # with no editor the target replays its own offset pass, so it is pulled onto z* too (measured 5.8e-11)
        assert (result.latents[1:] - z0).abs().max() < 1e-5
