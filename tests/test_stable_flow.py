"""Stable Flow (`stable-flow` editor and inversion): the paper's vital layers on a FLUX.1-dev-shaped transformer (built
on the meta device: no weights), scaled by depth on the tiny model; shared-attention at share="kv" over those blocks
at every step, bit for bit; the inversion is Direct Inversion of the nudged latent 1.15·z₀, bit for bit; FLUX only,
bad options refused in one line before any network call; by name from the CLI and `bench`."""

from __future__ import annotations

import json
import types

import pytest
import torch
from typer.testing import CliRunner

import invedit
from invedit.backbones import backbone
from invedit.backbones.flux import FluxBackbone
from invedit.cli import app
from invedit.editing.stable_flow import StableFlowEditor, scaled_blocks
from invedit.errors import InveditError
from invedit.sampling import ddim_invert
from invedit.testing import tiny_pipeline

from .conftest import scene_image

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 3


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_pipeline(kind="flux")


@pytest.fixture(scope="module")
def inverted(flux_pipe):
    return invedit.invert(flux_pipe, scene_image(), SOURCE, "stable-flow", steps=STEPS)


def test_the_vital_layers_on_a_flux1_dev_shaped_transformer():
    """FLUX.1-dev's config (19 double-stream + 38 single-stream blocks; meta device, no weights): the reference's
    layers 0, 1, 17, 18, 25, 28, 53, 54, 56 of 57, i.e. double 0, 1, 17, 18 and single 6, 9, 34, 35, 37."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=[16, 56, 56])
    model = object.__new__(FluxBackbone)
    model.pipe = types.SimpleNamespace(transformer=transformer)
    infos = [info for _, _, info in model.attention_layers()]
    assert len({info.order for info in infos}) == 57
    layers = StableFlowEditor.choose_layers(infos, StableFlowEditor.validate_options({}), "flux")
    assert sorted(info.order for info in layers.values()) == [0, 1, 17, 18, 25, 28, 53, 54, 56]
    assert sorted({info.block for info in layers.values()}) == sorted(
        [f"transformer_blocks.{i}" for i in (0, 1, 17, 18)]
        + [f"single_transformer_blocks.{i}" for i in (6, 9, 34, 35, 37)])


def test_block_numbers_keep_their_share_of_the_depth():
    assert scaled_blocks([0, 1, 17, 18], 19, 19) == [0, 1, 17, 18]
    assert scaled_blocks([9, 34, 35, 37, 6], 38, 38) == [6, 9, 34, 35, 37]
    assert scaled_blocks([0, 1, 17, 18], 19, 2) == [0, 1]
    assert scaled_blocks([9, 34, 35, 37, 6], 38, 2) == [0, 1]
    assert scaled_blocks([34], 38, 2) == [1] and scaled_blocks([6], 38, 2) == [0]


def test_it_is_shared_attention_on_keys_and_values_of_the_vital_blocks(flux_pipe, inverted):
    """On the tiny model (2 + 2 blocks) the vital layers are all four blocks; at source_guidance equal to the edit's
    guidance it equals shared-attention share=kv, blocks=all, every step, bit for bit; the default source guidance
    1 (the reference's) changes the edit; only the single-stream block 1 is shared-attention's upper half."""
    ours = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="stable-flow", guidance_scale=3.0,
                        source_guidance=3.0)
    shared = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="shared-attention", guidance_scale=3.0,
                          share="kv", blocks="all", start_layer=0.0, end_layer=1.0, start_step=0.0, end_step=1.0)
    assert torch.equal(ours.latents, shared.latents)
    assert (ours.nfe_inversion, ours.nfe_edit) == (shared.nfe_inversion, shared.nfe_edit) == (STEPS, 2 * STEPS)
    default = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="stable-flow", guidance_scale=3.0)
    assert not torch.equal(default.latents[1:], ours.latents[1:])
    assert default.record()["editor"] == {
        "editor": "stable-flow", "mm_copy_blocks": [0, 1, 17, 18], "single_copy_blocks": [9, 34, 35, 37, 6],
        "source_guidance": 1.0, "controlled_blocks": ["transformer_blocks.0", "transformer_blocks.1",
                                                      "single_transformer_blocks.0", "single_transformer_blocks.1"],
        "injected_steps": list(range(STEPS))}
    upper = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="stable-flow", guidance_scale=3.0,
                         source_guidance=3.0, mm_copy_blocks=[], single_copy_blocks=[34])
    half = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="shared-attention", guidance_scale=3.0,
                        share="kv", blocks="single", start_layer=0.5, start_step=0.0, end_step=1.0)
    assert torch.equal(upper.latents, half.latents)


def test_the_inversion_is_direct_inversion_of_the_nudged_latent(flux_pipe, inverted):
    """z*_0 = 1.15·z₀ (the reference's ``latents * latent_nudging_scalar``), the trajectory the Euler inversion of
    it at guidance 1, and the edit is Direct Inversion's; latent_nudging=1 is ``direct`` itself."""
    model = backbone(flux_pipe)
    z0 = model.encode_image(inverted.image)
    assert torch.equal(inverted.latents[0], (z0 * 1.15)[0])
    cond, null = model.encode_prompts([SOURCE, ""]).split(1)
    again = ddim_invert(model.denoise, model.schedule(STEPS), z0 * 1.15, cond, null, 1.0, invedit.sampling.RunStats(),
                        embedded=True)
    assert torch.equal(inverted.latents, again)
    direct = invedit.invert(flux_pipe, scene_image(), SOURCE, "direct", steps=STEPS)
    plain = invedit.invert(flux_pipe, scene_image(), SOURCE, "stable-flow", steps=STEPS, latent_nudging=1.0)
    assert torch.equal(direct.latents, plain.latents)
    assert inverted.options["latent_nudging"] == 1.15
    a = invedit.edit(flux_pipe, plain, SOURCE, TARGET, editor="stable-flow", guidance_scale=3.0)
    b = invedit.edit(flux_pipe, direct, SOURCE, TARGET, editor="stable-flow", guidance_scale=3.0)
    assert torch.equal(a.latents, b.latents)


BAD = [
    ({"mm_copy_blocks": [19]}, r"^mm_copy_blocks entry must be an integer in \[0, 18\], got 19$"),
    ({"single_copy_blocks": "six"}, r"^stable-flow single_copy_blocks must be a list of block numbers"),
    ({"mm_copy_blocks": [], "single_copy_blocks": []}, r"^stable-flow needs at least one block"),
    ({"source_guidance": -1}, r"^source_guidance must be a number in \[0, 50\], got -1$"),
    ({"share": "v"}, r"^editor 'stable-flow' has no option 'share'"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_options_are_refused_in_one_line_before_inverting(flux_pipe, options, message, monkeypatch):
    monkeypatch.setattr(backbone(flux_pipe), "denoise", lambda *a, **k: pytest.fail("the model was called"))
    with pytest.raises(InveditError, match=message):
        invedit.edit(flux_pipe, scene_image(), SOURCE, TARGET, inversion="stable-flow", editor="stable-flow",
                     steps=STEPS, **options)
    with pytest.raises(InveditError, match=r"^latent_nudging must be a number in \(0, 10\], got 0$"):
        invedit.invert(flux_pipe, scene_image(), SOURCE, "stable-flow", steps=STEPS, latent_nudging=0)


def test_sd3_and_unets_are_refused_in_one_line(monkeypatch):
    sd3 = tiny_pipeline(kind="sd3")
    monkeypatch.setattr(backbone(sd3), "denoise", lambda *a, **k: pytest.fail("the model was called"))
    with pytest.raises(InveditError, match=r"^editor 'stable-flow' runs on FLUX models only: its vital layers are "
                                           r"FLUX's double- and single-stream blocks \(sd3 has none\)$"):
        invedit.edit(sd3, scene_image(), SOURCE, TARGET, inversion="stable-flow", editor="stable-flow", steps=STEPS)
    with pytest.raises(InveditError, match=r"^inversion 'stable-flow' does not run on sd models \(ddim schedule\): "
                                           r"Stable Flow inverts a rectified flow \(FLUX\); use one of: "):
        invedit.edit(tiny_pipeline(), scene_image(), SOURCE, TARGET, inversion="stable-flow", editor="p2p",
                     steps=STEPS)


def test_cli_and_bench_run_it_by_name(flux_pipe, tmp_path):
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.toy.bench import write_toy_bench

    flux_pipe.save_pretrained(tmp_path / "model")
    scene_image().save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [
        "edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--model", str(tmp_path / "model"),
        "--resolution", "64", "--steps", "2", "--out", str(out), "-q", "--inversion", "stable-flow",
        "--editor", "stable-flow", "-o", "single_copy_blocks=[37]"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["inversion_options"]["latent_nudging"] == 1.15
    assert record["editor"]["single_copy_blocks"] == [37]
    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    summary = run_bench(data, tmp_path / "run", parse_methods("stable-flow+stable-flow"), model=str(tmp_path / "model"),
                        steps=2, resolution=64, limit=1, progress=False, say=lambda m: None)
    assert (summary.done, summary.failed) == (1, 0)
