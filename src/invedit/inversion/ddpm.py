"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024, arXiv 2304.06140), reference-settings §4.

Inversion: every x_t is drawn independently from q(x_t | x₀) = N(√ᾱ_t·x₀, (1−ᾱ_t)·I) with the seeded
generator (the paper's edit-friendly noise space); then, per step, the noise map z_t = (x_{t−1} − μ_t(x_t)) / σ_t
is stored, where μ_t is the η-DDIM mean under the source prompt (CFG ``source_guidance``) and σ_t = σ_t(η)
(DDIM eq. 16), so that the step x_{t−1} = μ_t(x_t) + σ_t·z_t lands exactly on the sampled x_{t−1}. Editing: both
branches start at x_{T−skip} and take η-DDIM steps with the same stored noise maps; the source branch (CFG
``source_guidance``) therefore retraces x_{T−skip} … x₀ exactly while the target prompt steers the other one.
``skip`` below 1 is a fraction of the steps (default 0.24: the reference's 12 of 50), otherwise a step count.

Differences from the reference code (cure-lab/PnPInversion, ``edit_friendly_ddm``), all deliberate:
the reference zeroes the last step's noise map (so its reconstruction misses x₀ by σ_1·z_1); we keep it, and
the source branch ends exactly on x₀. Noise maps are computed only for the steps the edit runs (the reference
also inverts the ``skip`` noisiest steps it never uses). The direction term uses √(1−ᾱ_{t−1}−σ_t²) as DDIM eq.
12 says; the reference writes √(1−ᾱ_{t−1}−η·σ_t(1)²), which is the same at the default η = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InveditError, check_number
from ..sampling import (
    BRANCHES,
    Branches,
    DDIMSchedule,
    StepInfo,
    ddim_sigma,
    guided,
    halves_needed,
    x0_and_eps,
)
from .base import InversionInputs, Inverted, Sampler
from .registry import register


def eta_mean(schedule: DDIMSchedule, model_output: torch.Tensor, i: int, sample: torch.Tensor,
             sigma: torch.Tensor) -> torch.Tensor:
    """Mean of the η-DDIM step ``i``: √ᾱ_{t−1}·x̂₀ + √(1−ᾱ_{t−1}−σ_t²)·ε̂ (DDIM eq. 12 with σ_t(η) of eq. 16)."""
    x0, eps = x0_and_eps(model_output, sample, schedule.alpha(schedule.timesteps[i]), schedule.prediction_type)
    alpha_prev = schedule.alpha(schedule.next_timestep(i)).to(sample.device)
    return alpha_prev**0.5 * x0 + (1 - alpha_prev - sigma.to(sample.device) ** 2) ** 0.5 * eps


def skipped_steps(skip: float, steps: int) -> int:
    """Loop step the edit starts at: ``skip`` < 1 is a fraction of ``steps`` (0.24 → 12 of 50), else a count."""
    first = round(skip * steps) if skip < 1 else int(skip)
    if first >= steps:
        raise InveditError(f"skip={skip} skips {first} of {steps} steps; nothing would be left to edit")
    return first


class DDPMSampler(Sampler):
    """η-DDIM steps of both branches with the stored noise maps, from x_{T−skip}."""

    def noise_map(self, info: StepInfo) -> torch.Tensor:
        """z_t of this step (1, C, h, w)."""
        return self.inverted.noise_maps[info.edit_index].unsqueeze(0)

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        """η-DDIM step of both branches with the stored noise map: x_{t−1} = μ_t(x_t) + σ_t·z_t (Huberman et al.)."""
        schedule, i = self.ctx.schedule, info.index
        out = self.ctx.denoiser(i, info.t, latents, set(BRANCHES), self.null_embeddings(info))
        sigma = ddim_sigma(schedule, i, self.options["eta"]).to(latents.source.device)
        noise = sigma * self.noise_map(info)
        return Branches(*(eta_mean(schedule, out[b], i, latents[b], sigma) + noise for b in BRANCHES))


@register
@dataclass(frozen=True, eq=False)
class DDPMInverted(Inverted):
    """Edit-friendly DDPM inversion: independent x_t samples, per-step noise maps shared by both branches."""

    method = "ddpm"
    description = "Edit-friendly DDPM inversion: stored noise maps, edit from x_{T-skip} (eta 1, skip 12 of 50)"
    defaults = {"eta": 1.0, "skip": 0.24, "source_guidance": 1.0}
    sampler_class = DDPMSampler

    #: Noise maps z_t of the steps the edit runs: row k belongs to loop step ``first_step + k``.
    noise_maps: torch.Tensor | None = None

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        if opts["eta"] == 0:
            raise InveditError("eta 0 has no noise maps: use the 'ddim' inversion")
        opts["eta"] = check_number("eta", opts["eta"], 0, 1, low_open=True)
        opts["source_guidance"] = check_number("source_guidance", opts["source_guidance"], 0)
        skip = opts["skip"]
        if isinstance(skip, bool) or not isinstance(skip, int | float) or not (
                0 <= skip < 1 or (skip >= 1 and skip == int(skip))):
            raise InveditError(f"skip must be a fraction of the steps in [0, 1) or a whole number of steps, "
                               f"got {skip!r}")
        return opts

    @classmethod
    @torch.no_grad()
    def run(cls, inputs: InversionInputs, **options: Any) -> DDPMInverted:
        opts = options
        schedule, steps, denoise = inputs.schedule, inputs.schedule.steps, inputs.model.denoise
        first = skipped_steps(opts["skip"], steps)
        z0 = inputs.z0.float()
        # x_t ~ q(x_t | x₀) for every level, least noisy first (as the reference draws them); index = steps taken.
        levels = [z0[0]]
        for k in range(1, steps + 1):
            alpha = schedule.alpha(schedule.timesteps[steps - k])
            noise = torch.randn(z0.shape[1:], generator=inputs.generator, dtype=torch.float32).to(z0.device)
            levels.append(alpha**0.5 * z0[0] + (1 - alpha) ** 0.5 * noise)
        xs = torch.stack(levels)

        scale = opts["source_guidance"]
        halves = halves_needed(scale)
        emb = torch.cat([inputs.null if h == "uncond" else inputs.cond for h in halves])
        maps = []
        for i in range(first, steps):  # noisiest first, so each step starts where the edit's source will be
            x_t = xs[steps - i].unsqueeze(0)
            out = denoise(x_t.expand(len(halves), -1, -1, -1), schedule.timesteps[i], emb, inputs.stats)
            sigma = ddim_sigma(schedule, i, opts["eta"]).to(x_t.device)
            mean = eta_mean(schedule, guided(dict(zip(halves, out.chunk(len(halves)))), scale), i, x_t, sigma)
            z = (xs[steps - 1 - i] - mean[0]) / sigma
            maps.append(z)
            if i < steps - 1:  # x_{t−1} as the step reproduces it (the reference's correction); x₀ stays exact
                xs[steps - 1 - i] = (mean + sigma * z)[0]
            if inputs.callback is not None:
                inputs.callback(i - first)
        return cls.result(inputs, xs, opts, first_step=first, noise_maps=torch.stack(maps))

    def branch_guidance(self, guidance_scale: float) -> dict[str, float]:
        """The source keeps the guidance its noise maps were computed with; the target uses the edit's."""
        return {"source": self.options["source_guidance"], "target": guidance_scale}
