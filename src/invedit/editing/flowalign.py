"""FlowAlign (Kim, Hong, Park and Ye, "FlowAlign: Trajectory-Regularized, Inversion-Free Flow-based Image
Editing", ICLR 2026).

FlowEdit's inversion-free ODE with a regularizer on its terminal point. At each step (σ → σ') a fresh noise ε puts
the source on its straight path, q = (1 − σ)·x_src + σ·ε, and the target at the same offset, p = x + q − x_src. The
target velocity is guided away from the *source* prompt, v_p = v(p, src) + w·(v(p, tgt) − v(p, src)), the source
velocity is unguided, v_q = v(q, src), and the edit moves by their difference plus a pull of the two predicted clean
points together: x ← x + (σ' − σ)·(v_p − v_q) + ζ·((q − σ·v_q) − (p − σ·v_p)). Three network rows per step (FlowEdit
reads four: two CFG pairs), every step from pure noise to σ = 0 is run.

Reference behaviour reproduced (official code FlowAlign/FlowAlign, diffusion/editing/sd3_edit.py SD3FlowAlign and
run_edit.py; SD3 only): CFG 13.5 (run_edit.py's default, the README's reproducibility setting), ζ = 0.01 (a constant
in the code), steps 33 (run_edit.py's ``NFE``; no step is skipped, its ``n_start`` is unused by FlowAlign). The
official code encodes the image with a posterior *sample* of the VAE and its T5 prompt with 77 tokens; invedit
keeps its z₀ (the posterior mean) and the model's T5 length. Each step's noise is drawn from the edit's seeded
generator in the official order: ``randn_like`` of the contiguous posterior sample, i.e. plain order (not FlowEdit's
channels-last SD3 draw); with the VAE's one draw before them, the official run's draws are the seed's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import check_number
from ..flow import noisy_sample
from ..sampling import Branches, LoopContext, StepInfo
from .base import register
from .flowedit import InversionFreeEditor, InversionFreeSampler, NoiseSampler, plain_noise

#: The official defaults (run_edit.py's arguments; the regularizer weight is a constant in sd3_edit.py).
REFERENCE_DEFAULTS: dict[str, Any] = {"steps": 33, "source_guidance": 1.0, "target_guidance": 13.5, "zeta": 0.01}


class FlowAlignSampler(InversionFreeSampler):
    """One FlowAlign edit: the target is x."""

    @property
    def first_step(self) -> int:
        return 0

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        schedule, i = self.ctx.schedule, info.index
        sigma, sigma_next = schedule.sigma(i), schedule.sigma(i + 1)
        x = latents.target
        q = noisy_sample(self.x_src, self.noise_sampler(sigma, sigma_next), sigma)
        p = x + q - self.x_src
        # The target's CFG pair has the source prompt in place of the empty one.
        null = {"target": self.ctx.denoiser.cond["source"]}
        out = self.ctx.denoiser(i, info.t, Branches(q, p), {"source", "target"}, null)
        v_p, v_q = out["target"], out["source"]
        x = x + (sigma_next - sigma) * (v_p - v_q) + self.options["zeta"] * (q - sigma * v_q - p + sigma * v_p)
        return Branches(latents.source, x)


@register
class FlowAlignEditor(InversionFreeEditor):
    """FlowAlign: FlowEdit with a terminal-point regularizer, on SD3 (the official code's only model).

    Options (None: the official default): ``target_guidance`` (the official ``cfg_scale``, 13.5: the target's CFG
    against the source prompt), ``source_guidance`` (1: the official source velocity is unguided; other values
    guide it against the empty prompt), ``zeta`` (the regularizer's weight, 0.01). The official run uses 33 steps.
    """

    name = "flowalign"
    description = ("FlowAlign (ICLR'26): FlowEdit with a terminal-point regularizer, 3 rows per step, with inversion "
                   "none (SD3; official: 33 steps, CFG 13.5)")
    defaults: ClassVar[dict[str, Any]] = {"source_guidance": None, "target_guidance": None, "zeta": None}
    refusal = "it edits along rectified flows (SD3)"
    official = {"sd3": REFERENCE_DEFAULTS}  # the official code runs SD 3 only

    @classmethod
    def resolve_own(cls, opts: dict[str, Any], family: str, steps: int, reference: dict[str, Any]
                    ) -> dict[str, Any]:
        zeta = reference["zeta"] if opts["zeta"] is None else opts["zeta"]
        opts["zeta"] = check_number("zeta", zeta, 0, 1)
        return opts

    def noise(self, inverted, ctx: LoopContext) -> NoiseSampler:
        """``noise_sampler``, or plain-order draws from the edit's seeded generator (the official ``randn_like`` of
        a contiguous latent)."""
        return self.noise_sampler or (lambda sigma, sigma_next: plain_noise(ctx.generator, inverted.z0))

    def sampler(self, inverted, ctx: LoopContext) -> FlowAlignSampler:
        return FlowAlignSampler(inverted, ctx, self.options, self.noise(inverted, ctx))
