"""Uni-Inv and Uni-Edit (UniEdit-Flow, ICLR 2026). The predictor–corrector inversion: the reference scheduler's
arithmetic on a hand-computed case, the exact inverse of Euler sampling on any velocity independent of x, the delay
rate α (the edit starts at N − ⌊α·N⌋), its NFE against the published 28 at 15 steps, options, storage,
reconstruction. The velocity-fusion editor: its formula, the reference's step over the backbone, NFE, options."""

import json
import math

import pytest
import torch

import invedit
from invedit.backbones import backbone
from invedit.editing.uniedit import uni_edit_velocity
from invedit.errors import InveditError
from invedit.flow import euler_invert, euler_sample, uni_inv, uni_inv_steps
from invedit.inversion.storage import load_inverted, save_inverted
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

from .bounds import measured
from .conftest import scene_image
from .test_rf_solver import X0, analytic_schedule

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"


def test_uni_inv_on_a_hand_computed_case():
    """v = x/2 on levels σ = 1, 0.5, 0 (h = 0.5 both steps). Reference scheduler, step by step: v₀ = v(z₀) at σ = 0;
    x̃₁ = z₀ + h·v₀ = 1.25, v₁ = 0.625, z₁ = z₀ + h·v₁ = 1.3125; x̃₂ = z₁ + h·v₁ = 1.625, v₂ = 0.8125,
    z₂ = 1.71875. With zero_init v₀ = 0: z₁ = 1.25, z₂ = 1.625. The calls: σ = 0, 0.5, 1 (zero_init: 0.5, 1)."""
    calls = []

    def model(x, t):
        calls.append((t, float(x[0, 0])))
        return x / 2

    schedule = analytic_schedule([1.0, 0.5, 0.0])
    one = torch.ones(1, 1, dtype=torch.float64)
    assert uni_inv(model, schedule, one, 2)[:, 0].tolist() == [1.0, 1.3125, 1.71875]
    assert calls == [(0.0, 1.0), (500.0, 1.25), (1000.0, 1.625)]
    calls.clear()
    assert uni_inv(model, schedule, one, 2, zero_init=True)[:, 0].tolist() == [1.0, 1.25, 1.625]
    assert calls == [(500.0, 1.0), (1000.0, 1.5)]
    assert uni_inv(model, schedule, one, 1)[:, 0].tolist() == [1.0, 1.3125]  # α < 1: the lower steps only


def test_uni_inv_is_the_exact_inverse_of_euler_sampling_where_v_ignores_x():
    """For any v(σ) independent of x, Euler's step from level k uses v(σ_k), which is the velocity Uni-Inv's corrector
    took to reach level k: Euler sampling returns to z₀ exactly. Euler inversion (velocity at the lower level) does
    not."""
    levels = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]
    schedule = analytic_schedule(levels)

    def field(x, t):
        s = t / 1000
        return torch.tensor([math.sin(5 * s), s**3 - 1, math.exp(s)], dtype=torch.float64).expand_as(x)

    top = uni_inv(field, schedule, X0, 5)[-1:]
    assert torch.allclose(euler_sample(field, schedule, top)[-1], X0[0], atol=1e-14, rtol=0)
    euler_top = euler_invert(field, schedule, X0)[-1:]
    assert (euler_sample(field, schedule, euler_top)[-1] - X0[0]).abs().max() > 0.1


@pytest.mark.parametrize("alpha, steps, count", [(0.6, 15, 9), (0.6, 8, 4), (0.8, 15, 12), (1.0, 4, 4), (0.3, 10, 3)])
def test_delay_rate_floors_like_the_reference(alpha, steps, count):
    assert uni_inv_steps(steps, alpha) == count


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_pipe(request):
    return tiny_pipeline(kind=request.param)


def test_inversion_and_edit_over_the_backbone(flow_pipe):
    """α = 0.6 at 5 steps: 3 steps inverted (4 NFE), levels above NaN, the edit starts at step 2 and steps both
    branches with the model's Euler sampler (2 × 3 rows), bit for bit."""
    model = backbone(flow_pipe)
    guidance = {"guidance": 1.0} if model.guidance_mode == "embedded" else {}
    inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "uniedit", steps=5)
    cond = model.encode_prompts([SOURCE, ""])[:1]
    expected = uni_inv(lambda x, t: model.denoise(x, t, cond, RunStats(), **guidance), model.schedule(5),
                       model.encode_image(scene_image()), 3)
    assert torch.equal(inverted.latents[:4], expected) and torch.isnan(inverted.latents[4:]).all()
    assert inverted.first_step == 2 and inverted.stats.nfe == 4

    result = invedit.edit(flow_pipe, inverted, SOURCE, TARGET, editor="none", guidance_scale=1.0)
    both = model.encode_prompts([SOURCE, TARGET])
    z = inverted.latents[3:4].expand(2, -1, -1, -1)
    for i in range(2, 5):
        z = inverted.schedule.step(model.denoise(z, inverted.schedule.timesteps[i], both, RunStats(), **guidance), i, z)
    assert torch.equal(result.latents, z)
    assert result.nfe_edit == 2 * 3


@pytest.mark.parametrize("zero_init, inversion_nfe", [(False, 10), (True, 9)])
def test_nfe_against_the_published_28_at_15_steps(zero_init, inversion_nfe):
    """Published (FLUX, 15 steps, α = 0.6): Uni-Inv ⌊0.6·15⌋ + 1 = 10 and Uni-Edit 9 steps × (source + target
    velocity) = 18, 28 in all. invedit's two-branch loop with no editor costs the same 9 × 2 rows."""
    result = invedit.edit(tiny_pipeline(kind="flux"), scene_image(), SOURCE, TARGET, inversion="uniedit",
                          editor="none", steps=15, guidance_scale=1.0, inversion_options={"zero_init": zero_init})
    assert (result.nfe_inversion, result.nfe_edit) == (inversion_nfe, 18)
    assert result.nfe == 28 - (10 - inversion_nfe)


def test_options_are_checked_in_one_line():
    pipe = tiny_pipeline(kind="flux-schnell")
    for options, message in (({"alpha": 0}, r"^alpha must be a number in \(0, 1\], got 0$"),
                             ({"alpha": 1.5}, r"^alpha must be a number in \(0, 1\], got 1.5$"),
                             ({"zero_init": "yes"}, r"^inversion 'uniedit' option 'zero_init' must be true or "
                                                    r"false, got 'yes'$"),
                             ({"gamma": 1}, r"gamma")):
        with pytest.raises(InveditError, match=message):
            invedit.invert(pipe, scene_image(), SOURCE, "uniedit", steps=4, **options)
    with pytest.raises(InveditError, match=r"^alpha 0.2 inverts no step of 4 \(floor\(alpha × steps\) = 0\); "
                                           r"raise alpha or steps$"):
        invedit.invert(pipe, scene_image(), SOURCE, "uniedit", steps=4, alpha=0.2)


def test_a_partial_inversion_round_trips_through_storage(tmp_path):
    """The bench cache stores it exactly (NaN levels included) and an edit of the loaded one is the same edit."""
    pipe = tiny_pipeline(kind="sd3")
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "uniedit", steps=5)
    loaded = load_inverted(save_inverted(inverted, tmp_path / "inv"))
    assert torch.equal(loaded.latents[:4], inverted.latents[:4]) and torch.isnan(loaded.latents[4:]).all()
    assert (loaded.first_step, loaded.options) == (inverted.first_step, inverted.options)
    edits = [invedit.edit(pipe, inv, None, TARGET, editor="none", guidance_scale=3.0) for inv in (inverted, loaded)]
    assert torch.equal(edits[0].latents, edits[1].latents)


def test_uni_inv_reconstructs_closer_than_euler(flow_pipe):
    """Full inversion (α = 1) + Euler regeneration at guidance 1 (the source branch), on the tiny random models."""
    z0 = backbone(flow_pipe).encode_image(scene_image())
    errors = {}
    for method, options in (("euler", {}), ("uniedit", {"alpha": 1.0})):
        result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion=method, editor="none", steps=4,
                              guidance_scale=1.0, inversion_options=options)
        errors[method] = (result.latents[:1] - z0).pow(2).mean().sqrt()
    family = backbone(flow_pipe).family
    # measured rms at 4 steps: SD3 0.041 vs 0.203 (ratio 0.20), FLUX 0.072 vs 0.192 (ratio 0.37)
    assert measured(f"uni-inv vs euler reconstruction ratio {family}", errors["uniedit"] / errors["euler"]) < 0.6


# ---- the Uni-Edit editor -----------------------------------------------------------------------------------------
def test_fusion_on_a_hand_computed_case():
    """v_src = 0, v_trg over 2 channels at 2 pixels: channel means 2 and 4, so m = 0 at the first pixel and ≈ 1 at
    the second (÷ (2 + 1e-7)). ω = 0 blends (source there, target here), ω = 2 adds 2·(1 + m)·g; each sample is
    normalised on its own; FLUX's packed layout (N, L, D) takes the mean over its last dim."""
    v_trg = torch.tensor([[[[1.0, 3.0]], [[3.0, 5.0]]]])  # (1, C=2, H=1, W=2)
    v_src = torch.zeros_like(v_trg)
    assert torch.allclose(uni_edit_velocity(v_src, v_trg, 0.0, 1), torch.tensor([[[[0.0, 3.0]], [[0.0, 5.0]]]]),
                          atol=1e-6, rtol=0)
    assert torch.allclose(uni_edit_velocity(v_src, v_trg, 2.0, 1), torch.tensor([[[[2.0, 15.0]], [[6.0, 25.0]]]]),
                          atol=1e-5, rtol=0)
    batch = uni_edit_velocity(torch.cat([v_src, v_src]), torch.cat([v_trg, 10 * v_trg]), 0.0, 1)
    assert torch.allclose(batch[1], 10 * batch[0], atol=1e-5, rtol=0)
    packed = uni_edit_velocity(v_src.flatten(2).transpose(1, 2), v_trg.flatten(2).transpose(1, 2), 2.0, 2)
    assert torch.allclose(packed.transpose(1, 2).reshape(v_trg.shape), uni_edit_velocity(v_src, v_trg, 2.0, 1))


def test_identical_prompts_are_plain_euler_sampling():
    """g = 0: the fused velocity is v_src itself at any ω, so the edit is the model's Euler sampling, bit for bit."""
    pipe = tiny_pipeline(kind="flux")
    model = backbone(pipe)
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "euler", steps=4)
    result = invedit.edit(pipe, inverted, None, SOURCE, editor="uniedit", omega=5.0, inversion_prompt="source")
    both = model.encode_prompts([SOURCE, SOURCE])
    z = inverted.latents[-1:].expand(2, -1, -1, -1)
    for i in range(4):
        z = inverted.schedule.step(model.denoise(z, inverted.schedule.timesteps[i], both, RunStats(), guidance=1.0),
                                   i, z)
    assert torch.equal(result.latents, z)


def test_uni_edit_over_the_backbone_as_the_reference_steps(flow_pipe):
    """Uni-Inv (α = 0.6, 5 steps) + Uni-Edit (ω = 3): from z*_3 one shared latent, each step one call of the source
    and target rows at guidance 1, the fusion in the network's layout (FLUX: 2×2-patch tokens), an Euler step; both
    branches end equal; 3 + 1 + 2 × 3 NFE. The edit's guidance_scale (7.5) is not used."""
    from invedit.backbones.flux import pack_latents, unpack_latents

    model = backbone(flow_pipe)
    guidance = {"guidance": 1.0} if model.guidance_mode == "embedded" else {}
    inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "uniedit", steps=5)
    result = invedit.edit(flow_pipe, inverted, None, TARGET, editor="uniedit", omega=3.0, guidance_scale=7.5,
                          inversion_prompt="source")
    both = model.encode_prompts([SOURCE, TARGET])
    z = inverted.latents[3:4].expand(2, -1, -1, -1)
    for i in range(2, 5):
        v = model.denoise(z, inverted.schedule.timesteps[i], both, RunStats(), **guidance)
        if model.family == "flux":
            h, w = v.shape[-2:]
            tokens = pack_latents(v)
            fused = unpack_latents(uni_edit_velocity(tokens[:1], tokens[1:], 3.0, 2), h, w)
        else:
            fused = uni_edit_velocity(v[:1], v[1:], 3.0, 1)
        z = inverted.schedule.step(fused.expand(2, -1, -1, -1), i, z)
    assert torch.equal(result.latents, z) and torch.equal(result.latents[0], result.latents[1])
    assert (result.nfe_inversion, result.nfe_edit) == (4, 6)
    assert result.settings["editor"] == {"editor": "uniedit", "omega": 3.0, "inversion_prompt": "source",
                                         "velocity_guidance": 1.0}


def test_uniedit_pair_costs_the_published_28_nfe_at_15_steps():
    result = invedit.edit(tiny_pipeline(kind="flux"), scene_image(), SOURCE, TARGET, inversion="uniedit",
                          editor="uniedit", steps=15)
    assert (result.nfe_inversion, result.nfe_edit) == (10, 18)


def test_the_image_is_inverted_under_the_empty_prompt_by_default():
    """inversion_prompt="empty" (the reference demo's): the edit inverts under "" and still evaluates [source, target];
    the same edit from an inversion made under "" is the same edit; "source" inverts under the source prompt. An
    inversion made under the other prompt is refused in one line, and so is an unknown choice."""
    pipe = tiny_pipeline(kind="flux")
    fresh = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="uniedit", editor="uniedit", steps=5)
    empty = invedit.invert(pipe, scene_image(), "", "uniedit", steps=5)
    reused = invedit.edit(pipe, empty, SOURCE, TARGET, editor="uniedit")
    assert torch.equal(fresh.latents, reused.latents)
    assert (reused.settings["source_prompt"], reused.settings["source_branch_prompt"]) == (SOURCE, SOURCE)
    given = invedit.invert(pipe, scene_image(), SOURCE, "uniedit", steps=5)
    source = invedit.edit(pipe, given, None, TARGET, editor="uniedit", inversion_prompt="source")
    assert not torch.equal(source.latents, reused.latents)
    with pytest.raises(InveditError, match=r"^editor 'uniedit' inverts the image under '', but it was inverted under "
                                           r"'a red square on a striped background'; invert under ''$"):
        invedit.edit(pipe, given, None, TARGET, editor="uniedit")
    with pytest.raises(InveditError, match=r"^source prompt differs from the prompt the image was inverted with$"):
        invedit.edit(pipe, empty, SOURCE, TARGET, editor="uniedit", inversion_prompt="source")
    with pytest.raises(InveditError, match=r"^uniedit inversion_prompt must be 'empty' \(reference\) or 'source', "
                                           r"got 'target'$"):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="uniedit", editor="uniedit", steps=5,
                     inversion_prompt="target")


def test_editor_options_and_model_kind_are_checked(tmp_path):
    """ω < 0 and SD 1.x models are refused in one line; the CLI runs the pair with -o omega=…"""
    from typer.testing import CliRunner

    from invedit.cli import app

    with pytest.raises(InveditError, match=r"^omega must be a number in \[0, inf\], got -1$"):
        invedit.edit(tiny_pipeline(kind="sd3"), scene_image(), SOURCE, TARGET, inversion="uniedit", editor="uniedit",
                     steps=4, omega=-1)
    with pytest.raises(InveditError, match=r"^editor 'uniedit' does not run on sd models \(ddim schedule\): it fuses "
                                           r"rectified-flow velocities \(SD3/FLUX\); use one of: [a-z0-9, -]+$"):
        invedit.edit(tiny_pipeline(), scene_image(), SOURCE, TARGET, inversion="ddim", editor="uniedit", steps=4)
    tiny_pipeline(kind="sd3").save_pretrained(tmp_path / "sd3")
    scene_image().save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [
        "edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--model", str(tmp_path / "sd3"),
        "--resolution", "64", "--steps", "5", "--out", str(out), "-q", "--inversion", "uniedit",
        "--editor", "uniedit", "-o", "omega=2.5"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["editor"] == {"editor": "uniedit", "omega": 2.5, "inversion_prompt": "empty",
                                "velocity_guidance": 1.0}
    assert record["nfe"] == 4 + 2 * 3
