"""RF-Inversion (Rout et al., "Semantic Image Inversion and Editing using Rectified Stochastic Differential Equations",
ICLR 2025), as the diffusers community pipeline RFInversionFluxPipeline runs it (FLUX only).

Inversion, the controlled forward ODE (paper Alg. 1, eq. 8): from the image's sampled latents y₀ towards a fixed
noise y₁, dY = [u(Y, t) + γ·(u(Y, t | y₁) − u(Y, t))]·dt with u(Y, t | y₁) = (y₁ − Y)/(1 − t) and u the model's
velocity under the empty prompt. Edit, the controlled reverse ODE (Alg. 2, eq. 15): from Y_T under the target prompt,
dX = [v(X) + η_t·((y₀ − X)/σ − v(X))]·dσ with v = −(model velocity), η_t = η inside the window
[start_timestep, stop_timestep) of the steps and 0 outside (optionally decayed). Only the target branch is stepped:
the source branch stays at y₀ (its decoded image is the reconstruction) and costs no network call.

Reference quirks reproduced: the VAE latents are a posterior SAMPLE, not its mode; the inversion calls the model at
the linear, unshifted timesteps t_i = i/(T + 1) (the pipeline's N counts the appended zero sigma) while stepping by
the shifted denoising gaps σ_i − σ_{i+1}, in that order; its guidance input is ``inversion_guidance`` (0 by default)
and its prompt the empty one; the η window's ends are truncated, int(start·T) and min(int(stop·T), T); the target
is pulled by (y₀ − X)/(1 − t_i) with t_i = 1 − t/1000 in float32. The random draws (ε of the VAE sample, then y₁ in
FLUX's packed token layout) come from the inversion's seeded generator in the reference order, so a seed reproduces
the reference's draws; `RFInverted.invert_latents` takes given y₀ and y₁ instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InveditError, check_number
from ..images import pil_to_tensor
from ..sampling import Branches, RunStats, StepInfo
from .base import InversionInputs, Inverted, Sampler
from .registry import register


def posterior_sample(model, image, eps: torch.Tensor) -> torch.Tensor:
    """Normalized latents of a VAE posterior sample, ((mean + std·ε) − shift)·scale, float32 (1, C, h, w)."""
    vae = model.pipe.vae
    with torch.no_grad():
        dist = vae.encode(pil_to_tensor(image).to(vae.device, vae.dtype)).latent_dist
    sample = dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)
    return ((sample - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()


@torch.no_grad()
def controlled_forward_ode(denoise: Callable[..., torch.Tensor], schedule, y0: torch.Tensor, y1: torch.Tensor,
                           embedding: torch.Tensor, gamma: float, stats: RunStats, extra: dict[str, Any],
                           callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """RF-Inversion's controlled forward ODE (Alg. 1): the trajectory y₀ … Y_T, (T + 1, C, h, w).

    Step i calls the model at t_i = i/(T + 1) (float32) and moves by u + γ·((y₁ − Y)/(1 − t_i) − u) times
    σ_i − σ_{i+1} (the reference's step sizes). ``extra``: more ``denoise`` arguments (FLUX.1-dev's guidance).
    """
    steps = schedule.steps
    y, trajectory = y0.float(), [y0[0].float()]
    for i in range(steps):
        t_i = torch.tensor(i / (steps + 1), dtype=torch.float32)
        u = denoise(y, float(t_i), embedding, stats, **extra)
        u_cond = (y1.to(y.device) - y) / (1 - t_i)
        u_hat = u + gamma * (u_cond - u)
        y = y + u_hat * (schedule.sigma(i) - schedule.sigma(i + 1)).to(y.device)
        trajectory.append(y[0])
        if callback is not None:
            callback(i)
    return torch.stack(trajectory)


def eta_window(options: dict[str, Any], steps: int) -> tuple[int, int]:
    """The steps [start, stop) where η acts: int(start_timestep·T), min(int(stop_timestep·T), T) (truncated)."""
    return int(options["start_timestep"] * steps), min(int(options["stop_timestep"] * steps), steps)


def eta_at(options: dict[str, Any], i: int, steps: int) -> float:
    """η_i: η inside the window, 0 outside, times (1 − i/T)^power with ``decay_eta``."""
    start, stop = eta_window(options, steps)
    eta = options["eta"] if start <= i < stop else 0.0
    if options["decay_eta"]:
        eta = eta * (1 - i / steps) ** options["eta_decay_power"]
    return eta


class RFInversionSampler(Sampler):
    """The controlled reverse ODE of the target branch (Alg. 2); the source branch stays at y₀, uncomputed."""

    def start_latents(self) -> Branches:
        return Branches(self.inverted.z0.clone(), self.inverted.latents[-1:].clone())

    def needs_source(self, info: StepInfo) -> bool:
        return False

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        """X + (v + η_i·((y₀ − X)/(1 − t_i) − v))·(σ_i − σ_{i+1}), v = −(model velocity), t_i = 1 − σ_i."""
        schedule, i, x = self.ctx.schedule, info.index, latents.target
        v = -self.ctx.denoiser(i, info.t, latents, {"target"})["target"]
        t_i = 1 - torch.tensor(info.t, dtype=torch.float32)
        v_cond = (self.inverted.z0.to(x.device) - x) / (1 - t_i).to(x.device)
        v_hat = v + eta_at(self.options, i, schedule.steps) * (v_cond - v)
        x = x + v_hat * (schedule.sigma(i) - schedule.sigma(i + 1)).to(x.device)
        return Branches(latents.source, x)


@register
@dataclass(frozen=True, eq=False)
class RFInverted(Inverted):
    """RF-Inversion: the controlled forward ODE's trajectory (``latents[0]`` is y₀, the sampled image latents)."""

    method = "rf-inversion"
    description = "RF-Inversion (ICLR'25): controlled forward ODE (gamma), controlled reverse ODE edit (eta); FLUX"
    defaults = {"gamma": 0.5, "eta": 1.0, "start_timestep": 0.0, "stop_timestep": 0.25, "decay_eta": False,
                "eta_decay_power": 1.0, "inversion_guidance": 0.0}
    sampler_class = RFInversionSampler
    schedule_kinds = ("flow",)
    refusal = "its controlled ODEs are FLUX's rectified flow"

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        for key in ("gamma", "eta", "start_timestep", "stop_timestep"):
            opts[key] = check_number(key, opts[key], 0, 1)
        if opts["start_timestep"] > opts["stop_timestep"]:
            raise InveditError(f"start_timestep ({opts['start_timestep']}) must not exceed stop_timestep "
                               f"({opts['stop_timestep']})")
        opts["eta_decay_power"] = check_number("eta_decay_power", opts["eta_decay_power"], 0)
        opts["inversion_guidance"] = check_number("inversion_guidance", opts["inversion_guidance"], 0, 50)
        opts["decay_eta"] = bool(opts["decay_eta"])
        return opts

    @classmethod
    def check_model(cls, model) -> None:
        if model.family != "flux":
            raise InveditError(f"inversion 'rf-inversion' runs on FLUX models only (the reference is FLUX's), not "
                               f"{model.family}")

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> RFInverted:
        """Draw ε (the VAE sample) and y₁ from the seeded generator, in the reference's order and layouts, then
        `invert_latents`."""
        from ..editing.flowedit import packed_noise

        cls.check_model(inputs.model)
        like = torch.empty_like(inputs.z0, device="cpu")
        eps = torch.randn(like.shape, generator=inputs.generator)
        y1 = packed_noise(inputs.generator, like)
        return cls.invert_latents(inputs, posterior_sample(inputs.model, inputs.image, eps), y1, **options)

    @classmethod
    def invert_latents(cls, inputs: InversionInputs, y0: torch.Tensor, y1: torch.Tensor,
                       **options: Any) -> RFInverted:
        """The controlled forward ODE from given latents y₀ to the given noise y₁ (both (1, C, h, w)), under the
        empty prompt (``inputs.null``); ``options`` validated."""
        model = inputs.model
        extra = {"guidance": options["inversion_guidance"]} if model.guidance_mode == "embedded" else {}
        y0 = y0.to(inputs.z0.device)
        trajectory = controlled_forward_ode(model.denoise, inputs.schedule, y0, y1.to(y0.device), inputs.null,
                                            options["gamma"], inputs.stats, extra, inputs.callback)
        return cls.result(inputs, trajectory, options)
