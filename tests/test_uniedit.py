"""Uni-Inv (UniEdit-Flow, ICLR 2026): the predictor–corrector inversion — the reference scheduler's arithmetic on
a hand-computed case, the exact inverse of Euler sampling on any velocity independent of x, the delay rate α (the
edit starts at N − ⌊α·N⌋), its NFE against the published 28 at 15 steps, its options, storage and reconstruction."""

import math

import pytest
import torch

import invedit
from invedit.backbones import backbone
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
