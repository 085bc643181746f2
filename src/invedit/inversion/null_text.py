"""Null-text inversion (Mokady et al., CVPR 2023), reference-settings §4, with the NT-S ablation and optional ProxEdit.

After DDIM inversion, the unconditional ("null") embedding is optimised per step so that the guided DDIM step
from the current latent lands on z*_{t−1}: Adam, lr 1e-2·(1 − i/100), at most ``inner_steps`` iterations,
early stop when the loss drops below ``early_stop + i·2e-5``; each step starts from the previous step's result.
The edit then uses the per-step null embeddings in both branches (``branches="source"``: the NT-S ablation,
null-text only in the source branch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InveditError, check_number
from ..sampling import RunStats, StepInfo, ddim_invert, ddim_step, guided
from .base import InversionInputs, Inverted, Sampler
from .proximal import PROXIMAL_DEFAULTS, ProximalOptions, ProximalSampler
from .registry import register

#: The reference's learning-rate schedule 1 − i/100 (made for 50 steps) reaches 0 at step 100 and turns negative
#: after; schedules that long hold it at its step-99 value.
LR_FACTOR_FLOOR = 0.01


def learning_rate_factor(i: int) -> float:
    """Null-text's per-step learning-rate factor: 1 − i/100 (NTI, reference-settings §4), never below 0.01."""
    return max(1.0 - i / 100.0, LR_FACTOR_FLOOR)


def optimise_null_step(model, schedule, i: int, latent: torch.Tensor, target: torch.Tensor, cond: torch.Tensor,
                       uncond: torch.Tensor, guidance_scale: float, inner_steps: int, early_stop: float,
                       learning_rate: float, stats: RunStats) -> tuple[torch.Tensor, int]:
    """Optimise the null embedding at step ``i`` so that the guided DDIM step from ``latent`` lands on ``target``.

    Adam with lr·`learning_rate_factor` (1 − i/100), at most ``inner_steps`` iterations, stopping once the MSE is below
    ``early_stop + i·2e-5`` (NTI, Alg. 1). Returns the embedding and the iterations taken.
    """
    with torch.no_grad():
        eps_cond = model.denoise(latent, schedule.timesteps[i], cond, stats)
    uncond = uncond.detach().clone()
    if inner_steps <= 0:
        return uncond, 0
    uncond.requires_grad_(True)
    optimiser = torch.optim.Adam([uncond], lr=learning_rate * learning_rate_factor(i))
    done = 0
    for _ in range(inner_steps):
        with torch.enable_grad():
            eps_uncond = model.denoise(latent, schedule.timesteps[i], uncond, stats)
            eps = guided({"uncond": eps_uncond, "cond": eps_cond}, guidance_scale)
            loss = F.mse_loss(ddim_step(schedule, eps, i, latent), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        stats.nfe_backward += 1
        done += 1
        if loss.item() < early_stop + i * 2e-5:
            break
    return uncond.detach(), done


def optimise_null_embeddings(model, schedule, trajectory: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                             guidance_scale: float, inner_steps: int, early_stop: float, learning_rate: float,
                             stats: RunStats, callback=None, offsets: list[torch.Tensor] | None = None,
                             ) -> tuple[list[torch.Tensor], list[int]]:
    """Per-step null embeddings (each (1, 77, D)) and the Adam iterations each step took (NTI, Alg. 1).

    Each step starts from the previous step's embedding and then advances the latent with it. With
    ``offsets`` (a list to fill), also records per step the latent difference the optimised embedding makes
    against the default one: step(z, ∅_opt) − step(z, ∅) (the null-latent ablation, reference-settings §3).
    """
    if model.dtype != torch.float32:
        raise InveditError("null-text optimisation runs in float32; load the model with dtype float32")
    steps = schedule.steps
    latent = trajectory[-1:].clone()
    uncond = null.detach()
    nulls, iterations = [], []
    for i, t in enumerate(schedule.timesteps):
        uncond, done = optimise_null_step(model, schedule, i, latent, trajectory[steps - 1 - i].unsqueeze(0), cond,
                                          uncond, guidance_scale, inner_steps, early_stop, learning_rate, stats)
        nulls.append(uncond)
        iterations.append(done)
        with torch.no_grad():  # advance along the reconstruction this embedding gives
            rows = [uncond, cond] + ([null] if offsets is not None else [])
            out = model.denoise(latent.expand(len(rows), -1, -1, -1), t, torch.cat(rows), stats).split(1)
            eps_uncond, eps_cond = out[0], out[1]
            z_next = ddim_step(schedule, guided({"uncond": eps_uncond, "cond": eps_cond}, guidance_scale), i, latent)
            if offsets is not None:
                default = ddim_step(schedule, guided({"uncond": out[2], "cond": eps_cond}, guidance_scale), i, latent)
                offsets.append(z_next - default)
            latent = z_next
        if callback is not None:
            callback(i)
    return nulls, iterations


def invert_and_optimise(inputs: InversionInputs, opts: dict[str, Any], offsets: list[torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """DDIM inversion (guidance 1), then the per-step null-embedding optimisation: (z*, nulls, iterations)."""
    model = inputs.model
    latents = ddim_invert(model.denoise, inputs.schedule, inputs.z0, inputs.cond, inputs.null, 1.0, inputs.stats)
    nulls, iterations = optimise_null_embeddings(
        model, inputs.schedule, latents, inputs.cond, inputs.null, inputs.guidance_scale, int(opts["inner_steps"]),
        float(opts["early_stop"]), float(opts["learning_rate"]), inputs.stats, inputs.callback, offsets=offsets)
    return latents, nulls, iterations


class NullTextSampler(ProximalSampler, Sampler):
    """The per-step null embeddings in both branches (``branches="source"``: the source's only, NT-S)."""

    def null_embeddings(self, info: StepInfo) -> dict[str, torch.Tensor | None]:
        null = self.inverted.nulls[info.index]
        return {"source": null, "target": null if self.options["branches"] == "both" else None}


@register
@dataclass(frozen=True, eq=False)
class NullTextInverted(ProximalOptions, Inverted):
    """Null-text inversion: per-step optimised null embeddings used while editing."""

    method = "null-text"
    description = "Null-text inversion: per-step optimised null embeddings (slow, optimisation)"
    fitted_to_guidance = "null embeddings"
    defaults = {"inner_steps": 10, "early_stop": 1e-5, "learning_rate": 1e-2, "branches": "both", **PROXIMAL_DEFAULTS}
    sampler_class = NullTextSampler

    nulls: tuple[torch.Tensor, ...] = ()  # per step, (1, 77, D)
    iterations: tuple[int, ...] = ()  # Adam iterations per step

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        opts["inner_steps"] = check_number("inner_steps", opts["inner_steps"], 0, integer=True)
        if opts["branches"] not in ("both", "source"):
            raise InveditError(f"branches must be 'both' or 'source' (NT-S), got {opts['branches']!r}")
        return opts

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> NullTextInverted:
        opts = options
        latents, nulls, iterations = invert_and_optimise(inputs, opts)
        return cls.result(inputs, latents, opts, nulls=tuple(nulls), iterations=tuple(iterations))
