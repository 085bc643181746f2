"""Rectified-flow arithmetic (invedit.flow): schedules as the diffusers pipelines build them, Euler steps as
FlowMatchEulerDiscreteScheduler takes them, Euler inversion's round trip."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from invedit.errors import InveditError
from invedit.flow import (
    FlowSchedule,
    calculate_shift,
    euler_invert,
    euler_sample,
    noise_from_velocity,
    noisy_sample,
    velocity,
    x0_from_velocity,
)

FIXTURE = Path(__file__).parent / "fixtures" / "parity_flow"
RUNS = {"sd3": ("tiny_sd3", "euler_sd3_caseB"), "flux": ("tiny_flux", "euler_flux_caseB")}


def scheduler_config(family: str) -> dict:
    return json.loads((FIXTURE / RUNS[family][0] / "scheduler" / "scheduler_config.json").read_text())


def schedule(family: str, steps: int) -> FlowSchedule:
    return FlowSchedule.from_config(scheduler_config(family), steps, family, image_seq_len=64)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_schedule_is_the_pipelines(family):
    """Sigmas and network timesteps equal what StableDiffusion3Pipeline / FluxPipeline used in the fixture run:
    the regeneration calls (at σ_i) and the Euler inversion calls (at σ_{i+1}), bit for bit."""
    run = torch.load(FIXTURE / "runs" / RUNS[family][1] / "tensors.pt")
    sched = schedule(family, 10)
    assert sched.steps == 10
    assert torch.equal(sched.sigmas, run["scheduler_sigmas"])
    calls = run["calls_timestep"][:, 0].tolist()
    assert [sched.inversion_timestep(9 - k) for k in range(10)] == calls[:10]
    assert list(sched.timesteps) == calls[10:20] == calls[20:30]
    if family == "sd3":  # SD3's transformer takes σ·1000; FLUX's takes σ
        assert torch.equal(torch.tensor(sched.timesteps), run["scheduler_timesteps"])
    else:
        assert torch.equal(torch.tensor(sched.timesteps), run["scheduler_sigmas"][:-1])


def test_flux_shift_is_resolution_dependent():
    """FLUX's μ follows the image token count (64 tokens: μ = 0.4675, the fixture run's); more tokens, more noise."""
    assert calculate_shift(64) == pytest.approx(0.4675, abs=1e-12)
    small, large = (FlowSchedule.from_config(scheduler_config("flux"), 10, "flux", image_seq_len=n) for n in (64, 4096))
    assert bool((large.sigmas[1:-1] > small.sigmas[1:-1]).all())
    with pytest.raises(InveditError, match="image_seq_len"):
        FlowSchedule.from_config(scheduler_config("flux"), 10, "flux")


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_step_equals_diffusers_scheduler_step(family):
    """Every forward step equals FlowMatchEulerDiscreteScheduler.step on the pipeline's schedule, bit for bit."""
    steps = 7
    sched = schedule(family, steps)
    ref = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config(family))
    ref.set_timesteps(sigmas=None if family == "sd3" else list(torch.linspace(1, 1 / steps, steps).numpy()),
                      num_inference_steps=steps, mu=calculate_shift(64) if family == "flux" else None)
    assert torch.equal(ref.sigmas, sched.sigmas)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(1, 4, 8, 8, generator=gen)
        expected = ref.step(v, t, x).prev_sample
        assert torch.equal(sched.step(v, i, x), expected)
        x = expected


def test_inverse_step_undoes_a_step_at_the_same_velocity():
    """inverse_step(i) is the exact inverse of step(i) for one velocity (up to float rounding)."""
    sched = schedule("sd3", 10)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    v = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for i in range(10):
        assert torch.allclose(sched.inverse_step(v, i, sched.step(v, i, x)), x, atol=1e-12, rtol=0)


def test_path_and_velocity_identities():
    """x_σ, v = ε − x₀ and the predictions x₀ = x_σ − σv, ε = x_σ + (1 − σ)v are consistent."""
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    for sigma in (0.0, 0.3, 1.0):
        x = noisy_sample(x0, eps, sigma)
        v = velocity(x0, eps)
        assert torch.allclose(x0_from_velocity(v, x, sigma), x0, atol=1e-14)
        assert torch.allclose(noise_from_velocity(v, x, sigma), eps, atol=1e-14)


def test_schedule_rejects_bad_input():
    with pytest.raises(InveditError, match="steps must be a positive integer"):
        FlowSchedule.from_config(scheduler_config("sd3"), 0, "sd3")
    with pytest.raises(InveditError, match="no flow convention"):
        FlowSchedule.from_config(scheduler_config("sd3"), 4, "sdxl")
    with pytest.raises(ValueError, match="end at 0"):
        FlowSchedule(sigmas=torch.tensor([1.0, 0.5]), level_timesteps=(1000.0, 500.0))


def smooth_field(sched: FlowSchedule):
    """A smooth, x- and σ-dependent velocity field v(x, σ) = −0.7·x·σ + cos(3σ) (σ recovered from the timestep)."""
    by_t = {t: float(s) for t, s in zip(sched.level_timesteps, sched.sigmas)}

    def model(x, t):
        sigma = by_t[t]
        return -0.7 * x * sigma + torch.cos(torch.tensor(3 * sigma, dtype=x.dtype))
    return model


def round_trip_error(steps: int) -> float:
    sched = schedule("sd3", steps)
    model = smooth_field(sched)
    z0 = torch.linspace(-2, 2, 64, dtype=torch.float64).reshape(1, 1, 8, 8)
    trajectory = euler_invert(model, sched, z0)
    back = euler_sample(model, sched, trajectory[-1:])
    assert trajectory.shape == back.shape == (steps + 1, 1, 8, 8)
    return float((back[-1] - z0[0]).abs().max())


def test_euler_round_trip_converges_with_steps():
    """Inversion then regeneration on a smooth field returns to the start with an error that shrinks with the step
    count (first-order Euler: about halving per doubling)."""
    errors = [round_trip_error(n) for n in (8, 16, 32, 64)]
    assert errors[0] > 1e-3  # not trivially exact: the field depends on x and σ
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 1.5


def test_euler_round_trip_is_exact_on_a_straight_flow():
    """On a field constant in x (and σ: a straight path, v = ε − x₀), inversion lands on x₀ + v·σ_0 … and
    regeneration returns to the start up to float64 rounding; the callback sees every step."""
    sched = schedule("flux", 10)
    v = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    z0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    seen = []
    trajectory = euler_invert(lambda x, t: v, sched, z0, callback=seen.append)
    assert seen == list(range(10))
    for k in range(11):
        sigma = float(sched.sigmas[10 - k])
        assert torch.allclose(trajectory[k], z0[0] + sigma * v[0], atol=1e-12, rtol=0)
    back = euler_sample(lambda x, t: v, sched, trajectory[-1:])
    assert torch.allclose(back[-1], z0[0], atol=1e-12, rtol=0)
