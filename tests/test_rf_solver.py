"""RF-Solver (Wang et al., ICML 2025): its second-order step (exact on a velocity linear in t, local error O(h³)
where Euler's is O(h²)), its inversion and its two-branch edit over the backbone, the NFE it costs, and how every
flow solver of issue #23 (rf-solver, fireflow, uniedit) runs by name: `invedit.edit`, the CLI, `invedit methods`,
and a one-line refusal on SD 1.x (DDIM) models."""

import json
import math

import pytest
import torch

import invedit
from invedit.backbones import backbone
from invedit.errors import InveditError
from invedit.flow import FlowSchedule, euler_invert, euler_sample, half_step, interval, rf_solver_path, taylor_step
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

from .bounds import measured
from .conftest import denoise_rows, scene_image

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 4
FLOW_SOLVERS = ["rf-solver", "fireflow", "uniedit"]


# ---- analytic fields (float64; the network timestep is σ·1000, SD3's convention) ---------------------------------
def analytic_schedule(levels: list[float]) -> FlowSchedule:
    """A flow schedule over ``levels`` (descending, ending at 0), timesteps σ·1000."""
    return FlowSchedule(torch.tensor(levels, dtype=torch.float64), tuple(level * 1000 for level in levels))


def uniform_levels(n: int) -> list[float]:
    return [1 - k / n for k in range(n + 1)]


X0 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
A, B = torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64), torch.tensor([2.0, 0.5, -1.5], dtype=torch.float64)


def linear_in_t(x: torch.Tensor, t: float) -> torch.Tensor:
    """v = a + b·σ, independent of x: the path x(σ) is quadratic in σ."""
    return (A + B * (t / 1000)).expand_as(x)


def linear_exact(x_from: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
    return x_from + A * (s_to - s_from) + B / 2 * (s_to**2 - s_from**2)


def smooth(x: torch.Tensor, t: float) -> torch.Tensor:
    """v = −x·cos σ: x(σ) = x(σ₀)·exp(sin σ₀ − sin σ), smooth in x and σ."""
    return -x * math.cos(t / 1000)


def smooth_exact(x_from: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
    return x_from * math.exp(math.sin(s_from) - math.sin(s_to))


def one_step_errors(path, hs=(0.2, 0.1, 0.05, 0.025)) -> list[float]:
    """Error of one inversion step from σ = 0 up to σ = h on the smooth field, for each h."""
    return [float((path(smooth, analytic_schedule([h, 0.0]), X0)[-1] - smooth_exact(X0[0], 0.0, h)).abs().max())
            for h in hs]


def ratios(errors: list[float]) -> list[float]:
    return [a / b for a, b in zip(errors, errors[1:])]


# ---- the step ----------------------------------------------------------------------------------------------------
def test_taylor_step_is_the_midpoint_rule_and_the_interval_is_the_references():
    """x + h·v + ½h²·(v_mid − v)/(h/2) = x + h·v_mid; the midpoint timestep is t + h/2 in either direction."""
    x, v, v_mid = (torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) for n in range(3))
    h = torch.tensor(-0.125, dtype=torch.float64)
    assert torch.allclose(taylor_step(x, v, v_mid, h), x + h * v_mid, atol=1e-15, rtol=0)
    assert torch.equal(half_step(x, v, h), x + h / 2 * v)
    schedule = analytic_schedule([1.0, 0.75, 0.25, 0.0])
    t_start, t_mid, h_down = interval(schedule, 1)
    assert (t_start, t_mid, float(h_down)) == (750.0, 500.0, -0.5)
    t_start, t_mid, h_up = interval(schedule, 1, inverse=True)
    assert (t_start, t_mid, float(h_up)) == (250.0, 500.0, 0.5)


def test_rf_solver_is_exact_on_a_velocity_linear_in_t():
    """x(σ) quadratic: every level of the sampling and of the inversion trajectory is exact (Euler's is not)."""
    levels = [1.0, 0.8, 0.45, 0.1, 0.0]
    schedule = analytic_schedule(levels)
    x_top = X0.clone()
    sampled = rf_solver_path(linear_in_t, schedule, x_top, inverse=False)
    inverted = rf_solver_path(linear_in_t, schedule, X0, inverse=True)
    for k, level in enumerate(levels):
        assert torch.allclose(sampled[k], linear_exact(x_top[0], 1.0, level), atol=1e-14, rtol=0)
        assert torch.allclose(inverted[k], linear_exact(X0[0], 0.0, levels[len(levels) - 1 - k]), atol=1e-14, rtol=0)
    euler = euler_sample(linear_in_t, schedule, x_top)
    assert (euler[-1] - linear_exact(x_top[0], 1.0, 0.0)).abs().max() > 1e-2


def test_rf_solver_one_step_error_is_third_order_eulers_second():
    """Halving h divides RF-Solver's one-step error by ≈ 8 (O(h³)), Euler's by ≈ 4 (O(h²))."""
    rf = ratios(one_step_errors(lambda m, s, z: rf_solver_path(m, s, z, inverse=True)))
    euler = ratios(one_step_errors(euler_invert))
    # measured 8.26, 8.16, 8.09 and 3.97, 3.99, 4.00
    assert all(7.5 < r < 8.5 for r in rf), rf
    assert all(3.7 < r < 4.3 for r in euler), euler


# ---- over the backbone -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_pipe(request):
    return tiny_pipeline(kind=request.param)


def unit_guidance(model) -> dict:
    return {"guidance": 1.0} if model.guidance_mode == "embedded" else {}


def test_inversion_is_rf_solver_over_the_backbone(flow_pipe):
    """invert(..., "rf-solver") is `rf_solver_path` over the source prompt's velocity, bit for bit: 2 NFE/step."""
    inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "rf-solver", steps=STEPS)
    model = backbone(flow_pipe)
    cond = model.encode_prompts([SOURCE, ""])[:1]
    expected = rf_solver_path(lambda x, t: model.denoise(x, t, cond, RunStats(), **unit_guidance(model)),
                              model.schedule(STEPS), model.encode_image(scene_image()), inverse=True)
    assert torch.equal(inverted.latents, expected)
    assert inverted.stats.nfe == 2 * STEPS


def test_edit_steps_both_branches_with_rf_solver(flow_pipe):
    """With no editor each branch is RF-Solver sampling from z*_T under its prompt (both rows in each of the two
    calls per step, as the loop batches them)."""
    inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "rf-solver", steps=STEPS)
    result = invedit.edit(flow_pipe, inverted, SOURCE, TARGET, editor="none", guidance_scale=1.0)
    model = backbone(flow_pipe)
    both = model.encode_prompts([SOURCE, TARGET])
    schedule = inverted.schedule
    z = inverted.latents[-1:].expand(2, -1, -1, -1)
    for i in range(STEPS):
        t, t_mid, h = interval(schedule, i)
        v = model.denoise(z, t, both, RunStats(), **unit_guidance(model))
        v_mid = model.denoise(half_step(z, v, h), t_mid, both, RunStats(), **unit_guidance(model))
        z = taylor_step(z, v, v_mid, h)
    assert torch.equal(result.latents, z)
    assert result.nfe_edit == 2 * 2 * STEPS


def test_rf_solver_reconstructs_closer_than_euler(flow_pipe):
    """Inversion + regeneration (the source branch, guidance 1) returns closer to z₀ with RF-Solver than with Euler
    at the same steps, on the tiny random models themselves."""
    z0 = backbone(flow_pipe).encode_image(scene_image())
    errors = {}
    for method in ("euler", "rf-solver"):
        result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion=method, editor="none",
                              steps=STEPS, guidance_scale=1.0)
        errors[method] = (result.latents[:1] - z0).pow(2).mean().sqrt()
    family = backbone(flow_pipe).family
    # measured rms at 4 steps: SD3 0.0054 vs 0.203 (ratio 0.027), FLUX 0.027 vs 0.192 (ratio 0.14)
    assert measured(f"rf-solver vs euler reconstruction ratio {family}", errors["rf-solver"] / errors["euler"]) < 0.5


def test_rf_solver_costs_60_nfe_at_15_steps_on_flux_as_published_plus_the_source_branch(monkeypatch):
    """Published (FLUX.1-dev, 15 steps): 30 inversion + 30 editing = 60 NFE, the target branch only. invedit also
    regenerates the source branch with the same solver: 30 + 60 = 90, two denoiser calls per step of two rows."""
    pipe = tiny_pipeline(kind="flux")
    calls = denoise_rows(backbone(pipe), monkeypatch)
    result = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="rf-solver", editor="none", steps=15,
                          guidance_scale=2.0)
    assert (result.nfe_inversion, result.nfe_edit) == (30, 60)
    assert result.nfe_inversion + result.nfe_edit // 2 == 60  # the published count: inversion + one branch
    assert calls == [1] * 30 + [2] * 30


# ---- by name: API, CLI, listing, refusal ----------------------------------------------------------------------
@pytest.mark.parametrize("method", FLOW_SOLVERS)
def test_solvers_run_by_name_and_are_refused_on_ddim_models(method):
    """Each runs through `invedit.edit` by name on a flow model, and SD 1.x refuses it in one line naming what runs."""
    result = invedit.edit(tiny_pipeline(kind="flux-schnell"), scene_image(), SOURCE, TARGET, inversion=method,
                          editor="none", steps=STEPS, guidance_scale=1.0)
    assert result.settings["inversion"] == method and result.image.size == (64, 64)
    with pytest.raises(InveditError, match=rf"^inversion '{method}' does not run on sd models \(ddim schedule\): "
                                           r"it solves a rectified flow's ODE \(SD3/FLUX\); "
                                           r"use one of: [a-z, -]+$") as refused:
        invedit.invert(tiny_pipeline(), scene_image(), SOURCE, method, steps=STEPS)
    assert method not in str(refused.value).split("use one of: ")[1].split(", ")


def test_cli_lists_and_runs_the_flow_solvers(tmp_path):
    """`invedit methods` lists the three with their options; `invedit edit --inversion NAME --editor none` on an SD3
    folder writes the edit and its record, inversion options passed with -i."""
    from typer.testing import CliRunner

    from invedit.cli import app

    listed = CliRunner().invoke(app, ["methods", "--json"])
    inversions = {m["name"]: m["options"] for m in json.loads(listed.output)["inversions"]}
    assert inversions["rf-solver"] == {"inversion_guidance": 1.0}
    assert inversions["fireflow"] == {"inversion_guidance": 1.0}
    assert inversions["uniedit"] == {"alpha": 0.6, "zero_init": False, "inversion_guidance": 1.0}

    tiny_pipeline(kind="sd3").save_pretrained(tmp_path / "sd3")
    scene_image().save(tmp_path / "in.png")
    uniedit_options = ["-i", "alpha=0.5", "-i", "zero_init=true"]
    for method, options in (("rf-solver", []), ("fireflow", []), ("uniedit", uniedit_options)):
        out = tmp_path / f"{method}.png"
        result = CliRunner().invoke(app, [
            "edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--model", str(tmp_path / "sd3"),
            "--resolution", "64", "--steps", str(STEPS), "--guidance", "1", "--out", str(out), "-q",
            "--inversion", method, "--editor", "none", *options])
        assert result.exit_code == 0, result.output
        record = json.loads(out.with_suffix(".json").read_text())
        assert (record["inversion"], record["steps"]) == (method, STEPS)
        expected_nfe = {"rf-solver": 2 * STEPS + 2 * 2 * STEPS, "fireflow": 3 * (STEPS + 1), "uniedit": 2 + 2 * 2}
        assert record["nfe"] == expected_nfe[method]
    assert record["inversion_options"] == {"alpha": 0.5, "zero_init": True, "inversion_guidance": 1.0}  # uniedit's
