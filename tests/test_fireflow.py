"""FireFlow (Deng et al., ICML 2025): the midpoint solver that reuses the last midpoint velocity — its NFE exactly as
the reference counts them (32 at 15 steps, 18 at 8, inversion + edit), its second-order accuracy at ~1 NFE per step,
its inversion and two-branch edit over the backbone bit for bit."""

import pytest
import torch

import invedit
from invedit.backbones import backbone
from invedit.flow import euler_invert, fireflow_path, half_step, interval, midpoint_update
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

from .bounds import measured
from .conftest import denoise_rows, scene_image
from .test_rf_solver import (
    X0,
    analytic_schedule,
    linear_exact,
    linear_in_t,
    one_step_errors,
    ratios,
    smooth,
    smooth_exact,
    uniform_levels,
)

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 4


def counting(field):
    calls = []

    def model(x, t):
        calls.append(t)
        return field(x, t)

    return model, calls


def test_fireflow_calls_the_model_once_per_step_after_the_first():
    """N steps: the first step at its start and midpoint, every later one at its midpoint only (N + 1 calls), in
    both directions; the midpoints are t + h/2."""
    levels = [1.0, 0.75, 0.5, 0.25, 0.0]
    schedule = analytic_schedule(levels)
    model, calls = counting(smooth)
    fireflow_path(model, schedule, X0, inverse=False)
    assert calls == [1000.0, 875.0, 625.0, 375.0, 125.0]
    model, calls = counting(smooth)
    fireflow_path(model, schedule, X0, inverse=True)
    assert calls == [0.0, 125.0, 375.0, 625.0, 875.0]


def test_fireflow_is_exact_on_a_velocity_linear_in_t_and_second_order_on_a_smooth_field():
    """Exact where x(σ) is quadratic; one-step error O(h³) (ratio ≈ 8 per halving, the first step is RF-Solver's)
    and, reusing velocities, global error O(h²) (≈ 4 per halving) where Euler's is O(h) (≈ 2)."""
    levels = [1.0, 0.7, 0.4, 0.15, 0.0]
    sampled = fireflow_path(linear_in_t, analytic_schedule(levels), X0, inverse=False)
    for k, level in enumerate(levels):
        assert torch.allclose(sampled[k], linear_exact(X0[0], 1.0, level), atol=1e-14, rtol=0)
    local = ratios(one_step_errors(lambda m, s, z: fireflow_path(m, s, z, inverse=True)))
    assert all(7.5 < r < 8.5 for r in local), local

    def global_errors(path):
        return [float((path(smooth, analytic_schedule(uniform_levels(n)), X0)[-1] - smooth_exact(X0[0], 0.0, 1.0))
                      .abs().max()) for n in (5, 10, 20, 40)]

    fire = ratios(global_errors(lambda m, s, z: fireflow_path(m, s, z, inverse=True)))
    euler = ratios(global_errors(euler_invert))
    # measured 3.89, 3.95, 3.98 and 2.06, 2.03, 2.01
    assert all(3.6 < r < 4.4 for r in fire), fire
    assert all(1.8 < r < 2.2 for r in euler), euler


@pytest.mark.parametrize("steps, published", [(15, 32), (8, 18)])
def test_fireflow_nfe_as_the_reference_counts(steps, published, monkeypatch):
    """Tiny FLUX.1-dev (guidance embedded: one row per branch), no editor. The reference inverts and denoises the
    target with N + 1 NFE each: 32 at 15 steps, 18 at 8. invedit's loop also regenerates the source branch: the
    edit is N + 1 calls of two rows."""
    pipe = tiny_pipeline(kind="flux")
    calls = denoise_rows(backbone(pipe), monkeypatch)
    result = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="fireflow", editor="none", steps=steps,
                          guidance_scale=2.5)
    assert (result.nfe_inversion, result.nfe_edit) == (steps + 1, 2 * (steps + 1))
    assert result.nfe_inversion + result.nfe_edit // 2 == published
    assert calls == [1] * (steps + 1) + [2] * (steps + 1)


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_pipe(request):
    return tiny_pipeline(kind=request.param)


def test_fireflow_inversion_and_edit_over_the_backbone(flow_pipe):
    """invert(..., "fireflow") is `fireflow_path` over the source prompt's velocity; with no editor the edit is
    FireFlow sampling of both branches (batched, each call both rows), bit for bit. At guidance 4 on SD3 each call
    reads both CFG rows of both branches."""
    model = backbone(flow_pipe)
    guidance = {"guidance": 1.0} if model.guidance_mode == "embedded" else {}
    inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "fireflow", steps=STEPS)
    cond = model.encode_prompts([SOURCE, ""])[:1]
    expected = fireflow_path(lambda x, t: model.denoise(x, t, cond, RunStats(), **guidance), model.schedule(STEPS),
                             model.encode_image(scene_image()), inverse=True)
    assert torch.equal(inverted.latents, expected)
    assert inverted.stats.nfe == STEPS + 1

    result = invedit.edit(flow_pipe, inverted, SOURCE, TARGET, editor="none", guidance_scale=1.0)
    both = model.encode_prompts([SOURCE, TARGET])
    z = inverted.latents[-1:].expand(2, -1, -1, -1)
    v = None
    for i in range(STEPS):
        t, t_mid, h = interval(inverted.schedule, i)
        if v is None:
            v = model.denoise(z, t, both, RunStats(), **guidance)
        v = model.denoise(half_step(z, v, h), t_mid, both, RunStats(), **guidance)
        z = midpoint_update(z, v, h)
    assert torch.equal(result.latents, z)
    assert result.nfe_edit == 2 * (STEPS + 1)
    if model.guidance_mode == "cfg":
        guided = invedit.edit(flow_pipe, inverted, SOURCE, TARGET, editor="none", guidance_scale=4.0)
        assert guided.nfe_edit == 4 * (STEPS + 1)


def test_fireflow_reconstructs_closer_than_euler(flow_pipe):
    """Inversion + regeneration at guidance 1 (the source branch) on the tiny random models."""
    z0 = backbone(flow_pipe).encode_image(scene_image())
    errors = {}
    for method in ("euler", "fireflow"):
        result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion=method, editor="none",
                              steps=STEPS, guidance_scale=1.0)
        errors[method] = (result.latents[:1] - z0).pow(2).mean().sqrt()
    family = backbone(flow_pipe).family
    # measured rms at 4 steps: SD3 0.0052 vs 0.203 (ratio 0.026), FLUX 0.030 vs 0.192 (ratio 0.16)
    assert measured(f"fireflow vs euler reconstruction ratio {family}", errors["fireflow"] / errors["euler"]) < 0.5


def test_each_edit_starts_with_a_fresh_velocity():
    """The carried velocity is the edit's state: two edits of one inversion are identical (nothing leaks)."""
    pipe = tiny_pipeline(kind="flux-schnell")
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "fireflow", steps=STEPS)
    first = invedit.edit(pipe, inverted, None, TARGET, editor="none", guidance_scale=1.0)
    second = invedit.edit(pipe, inverted, None, TARGET, editor="none", guidance_scale=1.0)
    assert torch.equal(first.latents, second.latents) and first.nfe_edit == second.nfe_edit == 2 * (STEPS + 1)
