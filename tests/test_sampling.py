"""Our DDIM arithmetic equals diffusers' DDIMScheduler / DDIMInverseScheduler; inversion round trips."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from invedit.backbones import backbone
from invedit.models import make_ddim_scheduler
from invedit.sampling import (
    DDIMSchedule,
    RunStats,
    ddim_inverse_step,
    ddim_invert,
    ddim_step,
    guided,
    halves_needed,
)

from .bounds import max_abs, measured

SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000}


class _Pipe:
    def __init__(self, prediction_type: str):
        self.scheduler = make_ddim_scheduler({**SD_CONFIG, "prediction_type": prediction_type, "steps_offset": 0})


def test_schedule_matches_reference_timesteps():
    schedule = DDIMSchedule.from_pipe(_Pipe("epsilon"), 50)
    assert schedule.timesteps[:3] == (981, 961, 941) and schedule.timesteps[-1] == 1
    assert schedule.next_timestep(49) == -1
    assert torch.equal(schedule.alpha(-1), schedule.alphas_cumprod[0])  # set_alpha_to_one False


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [50, 30, 7])
def test_ddim_step_equals_diffusers(prediction_type, steps):
    pipe = _Pipe(prediction_type)
    schedule = DDIMSchedule.from_pipe(pipe, steps)
    ref = DDIMScheduler.from_config(pipe.scheduler.config)
    ref.set_timesteps(steps)
    assert tuple(int(t) for t in ref.timesteps) == schedule.timesteps
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(schedule.timesteps):
        sample, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        expected = ref.step(out, t, sample, eta=0.0).prev_sample
        # worst 0 over CPU kernels and thread counts (docs/test-bounds.md)
        assert measured("ddim step vs diffusers, max", max_abs(ddim_step(schedule, out, i, sample), expected)) <= 2e-6


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inverse_step_equals_diffusers_inverse_scheduler(prediction_type):
    pipe = _Pipe(prediction_type)
    schedule = DDIMSchedule.from_pipe(pipe, 50)
    inv = DDIMInverseScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False)
    inv.set_timesteps(50)
    ascending = [int(t) for t in inv.timesteps]
    assert ascending == list(schedule.timesteps[::-1])
    g = torch.Generator().manual_seed(1)
    for k, t in enumerate(ascending):
        i = schedule.steps - 1 - k
        sample, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        expected = inv.step(out, t, sample).prev_sample
        # worst 0 over CPU kernels and thread counts (docs/test-bounds.md)
        assert measured("inverse step vs diffusers, max",
                        max_abs(ddim_inverse_step(schedule, out, i, sample), expected)) <= 2e-6


def test_inverse_step_undoes_forward_step_for_a_fixed_noise():
    schedule = DDIMSchedule.from_pipe(_Pipe("epsilon"), 50)
    g = torch.Generator().manual_seed(2)
    for i in (0, 10, 49):
        z, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        back = ddim_inverse_step(schedule, eps, i, ddim_step(schedule, eps, i, z))
        # worst 3.6e-07 over CPU kernels and thread counts (docs/test-bounds.md)
        assert measured("inverse step undoes forward step, max", max_abs(back, z)) <= 1e-4


def test_guidance_combination_and_rows():
    u, c = torch.tensor([1.0]), torch.tensor([3.0])
    assert guided({"uncond": u, "cond": c}, 7.5).item() == 1.0 + 7.5 * 2.0
    assert guided({"cond": c}, 1.0) is c
    assert guided({"uncond": u, "cond": c}, 1.0).item() == 3.0  # both halves: the formula (gradients reach ε_u)
    rows = guided({"uncond": torch.ones(2, 1), "cond": torch.full((2, 1), 3.0)}, torch.tensor([[1.0], [2.0]]))
    assert rows.flatten().tolist() == [3.0, 5.0]  # one scale per row
    with pytest.raises(ValueError, match="needs both halves"):
        guided({"cond": c}, 7.5)
    assert halves_needed(1.0) == ("cond",) and halves_needed(0.0) == ("uncond",)
    assert halves_needed(7.5) == ("uncond", "cond")


def test_ddim_invert_counts_nfe_and_follows_the_reference_recipe(pipe):
    schedule = DDIMSchedule.from_pipe(pipe, 10)
    z0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    emb = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(4))
    stats = RunStats()
    traj = ddim_invert(backbone(pipe).denoise, schedule, z0, emb[:1], emb[1:], 1.0, stats)
    assert traj.shape == (11, 4, 16, 16) and stats.nfe == 10 and stats.unet_calls == 10
    # Reference recipe, step by step: UNet at t_next on the current sample, alphas of (t - 20) and t.
    z = z0.clone()
    ac = schedule.alphas_cumprod
    for k, t in enumerate(reversed(schedule.timesteps)):
        eps = pipe.unet(z, t, encoder_hidden_states=emb[:1]).sample
        t_cur = t - 1000 // 10
        a_cur = ac[t_cur] if t_cur >= 0 else ac[0]
        z = ac[t] ** 0.5 * (z - (1 - a_cur) ** 0.5 * eps) / a_cur**0.5 + (1 - ac[t]) ** 0.5 * eps
        # worst 1.3e-06 over CPU kernels and thread counts (docs/test-bounds.md)
        assert measured("ddim_invert vs reference recipe, max", max_abs(traj[k + 1], z[0])) <= 1e-5
    stats2 = RunStats()
    ddim_invert(backbone(pipe).denoise, schedule, z0, emb[:1], emb[1:], 2.5, stats2)
    assert stats2.nfe == 20  # inversion guidance ≠ 1 needs both halves
