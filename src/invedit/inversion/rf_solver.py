"""RF-Solver (Wang et al., "Taming Rectified Flow for Inversion and Editing", ICML 2025; RF-Solver-Edit).

The rectified-flow ODE is solved with a second-order Taylor step both ways: at each step one velocity at the start
and one at the midpoint t + h/2, from which the time derivative v′ = (v_mid − v)/(h/2) is estimated, and
x_next = x + h·v + ½h²·v′ (`invedit.flow.taylor_step`; 2 network evaluations per step and branch row). The
inversion runs it from z₀ up to the noisiest level under the source prompt (the reference's guidance 1), and the
edit runs the same solver on both branches from z*_T, so the source branch reconstructs the image as closely as
the solver allows. The reference's 15-step FLUX.1-dev edit costs 30 + 30 NFE: it denoises the target only and
injects values stored during the inversion, as ``rf-solver-edit`` does by default (``features="inversion"``, the
store of `invedit.features`); an editor that reads the source branch also denoises it: 30 + 60.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..flow import VelocityModel, half_step, interval, rf_solver_path, taylor_step
from ..sampling import BRANCHES, Branches, StepInfo, guided, halves_needed
from .base import InversionInputs, Inverted, Sampler
from .registry import register


def source_velocity(inputs: InversionInputs, guidance: float) -> VelocityModel:
    """The velocity a flow inversion integrates, ``v(x, t)``: the source prompt's at inversion guidance
    ``guidance``, as `invedit.sampling.ddim_invert` calls the model (conditional row alone at 1, else both CFG rows;
    FLUX.1-dev takes the scale as its input, one row). Counts NFE in ``inputs.stats``."""
    model = inputs.model
    embedded = model.guidance_mode == "embedded"
    halves = ("cond",) if embedded else halves_needed(guidance)
    embeddings = torch.cat([inputs.null if h == "uncond" else inputs.cond for h in halves])
    extra = {"guidance": guidance} if embedded else {}

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        out = model.denoise(x.expand(len(halves), -1, -1, -1), t, embeddings, inputs.stats, **extra)
        return out if embedded else guided(dict(zip(halves, out.chunk(len(halves)))), guidance)

    return velocity


class RFSolverSampler(Sampler):
    """One edit with RF-Solver: both branches take the second-order step, two guided denoiser calls per step (at
    the step's start and at its midpoint), each batching every row the branches and the editor read."""

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        den, schedule = self.ctx.denoiser, self.ctx.schedule
        branches = self.branches(info)
        null, values = self.null_embeddings(info), self.value_transforms(info)
        _, t_mid, h = interval(schedule, info.index)
        v = den(info.index, info.t, latents, branches, null, values)
        mid = Branches(*(half_step(latents[b], v[b], h) if b in v else latents[b] for b in BRANCHES))
        v_mid = den(info.index, t_mid, mid, branches, null, values)
        new = {b: taylor_step(latents[b], v[b], v_mid[b], h) for b in branches}
        return self.correct(info, new.get("source"), new["target"])


@register
@dataclass(frozen=True, eq=False)
class RFSolverInverted(Inverted):
    """RF-Solver inversion under the source prompt; its edits step both branches with the same solver."""

    method = "rf-solver"
    description = "RF-Solver (ICML'25): 2nd-order Taylor steps to invert and sample a rectified flow, 2 NFE/step"
    defaults = {"inversion_guidance": 1.0}
    sampler_class = RFSolverSampler
    schedule_kinds = ("flow",)
    refusal = "it solves a rectified flow's ODE (SD3/FLUX)"

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> RFSolverInverted:
        latents = rf_solver_path(source_velocity(inputs, options["inversion_guidance"]), inputs.schedule,
                                 inputs.z0.float(), inverse=True, callback=inputs.callback)
        return cls.result(inputs, latents, options)
