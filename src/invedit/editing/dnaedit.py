"""DNAEdit (Xie et al., "DNAEdit: Direct Noise Alignment for Text-Guided Rectified Flow Editing", NeurIPS 2025).

Inversion-free like FlowEdit (whose code it builds on), but it first aligns a noise with the image. From x_src at
σ = 0 and one Gaussian draw n, each inversion step (σ_lo → σ_hi, over the active steps, the noisiest ``T_start``
skipped) takes the point on the straight line between the current latent and n,
x_hi = x + (σ_hi − σ_lo)/(1 − σ_lo)·(n − x), reads the source velocity v there, and with the velocity error
δ = (x_hi − x)/(σ_hi − σ_lo) − v moves x by an Euler step, x ← x_hi − δ·(σ_hi − σ_lo) = x + (σ_hi − σ_lo)·v, keeps
the offset dx = x_hi − x (new x) and v, and corrects the noise, n ← n − (1 − σ_lo)·δ (the direct noise alignment).
The edit then runs from the aligned latent z: at step i the target velocity V_t is read at z + dx_i, a reference
x_ref integrates the velocity difference from x_src (x_ref ← x_ref + (σ_{i+1} − σ_i)·(V_t − v_i)), and z moves by
the mobile velocity guidance mix, z ← z + (σ_{i+1} − σ_i)·(mvg·V_t + (1 − mvg)·(z − x_ref)/σ_i).

Reference behaviour reproduced (official code xiechenxi99/DNAEdit_code, scripts/DNAEdit_utils.py DNAEdit_SD3 /
DNAEdit_FLUX, configs/DNAEdit_*_exp.yaml): the configs' defaults (SD3 T_steps 40, T_start 13, guidance 1 / 3.5;
FLUX 28, 4, 1 / 2.5; mvg 0.8 in both, the functions' own default being 0.85); the one draw of n like the official
``randn_like`` (SD3's channels-last latents, FLUX's packed tokens), from the edit's seeded generator; the inversion
calls the model at the upper level of each step, the edit at the upper level too. One difference, in cost only: the
official SD3 inversion runs a batch of two identical rows (its CFG flag is still the target's) and combines them
with scale 1, which is the conditional row itself; invedit computes that row once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import check_number
from ..sampling import Branches, LoopContext, StepInfo
from .base import register
from .flowedit import InversionFreeEditor, InversionFreeSampler, NoiseSampler

#: The official configs per model family (configs/DNAEdit_SD3_exp.yaml, DNAEdit_FLUX_exp.yaml): steps T_steps and
#: the options at T_steps steps.
REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd3": {"steps": 40, "T_start": 13, "source_guidance": 1.0, "target_guidance": 3.5, "mvg": 0.8},
    "flux": {"steps": 28, "T_start": 4, "source_guidance": 1.0, "target_guidance": 2.5, "mvg": 0.8},
}


def scaled_t_start(family: str, steps: int) -> int:
    """The official T_start scaled to ``steps`` by keeping the active fraction: steps − round((T − T_start)·steps/T)
    (Python's round); SD3 at 10 steps: 3, FLUX: 1."""
    reference = REFERENCE_DEFAULTS[family]
    active = round((reference["steps"] - reference["T_start"]) * steps / reference["steps"])
    return max(0, steps - active)


class DNAEditSampler(InversionFreeSampler):
    """One DNAEdit edit: `prepare` aligns the noise (the source velocities and offsets of every active step), the
    steps move the target from the aligned start."""

    def __init__(self, inverted, ctx: LoopContext, options: dict[str, Any], noise_sampler: NoiseSampler):
        super().__init__(inverted, ctx, options, noise_sampler)
        self.offsets: dict[int, torch.Tensor] = {}
        self.velocities: dict[int, torch.Tensor] = {}

    @property
    def first_step(self) -> int:
        """The noisiest ``T_start`` steps are skipped (the official ``jmp``)."""
        return self.options["T_start"]

    def prepare(self) -> None:
        """The direct noise alignment (DNAEdit_utils.py's inversion loop), from σ = 0 up to the first edit level."""
        schedule = self.ctx.schedule
        last = self.x_src
        noise = self.noise_sampler(schedule.sigma(0), schedule.sigma(0))
        for i in range(schedule.steps - 1, self.first_step - 1, -1):  # forward step i: σ_{i+1} → σ_i upwards
            low, high = schedule.sigma(i + 1), schedule.sigma(i)
            x_high = (high - low) / (1 - low) * (noise - last) + last
            v = self.ctx.denoiser(i, schedule.timesteps[i], Branches(x_high, x_high), {"source"})["source"]
            delta = (x_high - last) / (high - low) - v
            last = x_high - delta * (high - low)
            self.offsets[i], self.velocities[i] = delta * (high - low), v
            noise = noise - delta * (1 - low)
        self.z_start = last
        self.x_ref = self.x_src.clone()

    def start_latents(self) -> Branches:
        return Branches(self.x_src.clone(), self.z_start.clone())

    def needs_source(self, info: StepInfo) -> bool:
        return False

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        schedule, i, mvg = self.ctx.schedule, info.index, self.options["mvg"]
        sigma, sigma_next = schedule.sigma(i), schedule.sigma(i + 1)
        z = latents.target
        probe = Branches(latents.source, z + self.offsets[i])
        v_target = self.ctx.denoiser(i, info.t, probe, {"target"})["target"]
        self.x_ref = self.x_ref + (sigma_next - sigma) * (v_target - self.velocities[i])
        v = v_target * mvg + (z - self.x_ref) / sigma * (1 - mvg)
        return Branches(latents.source, z + v * (sigma_next - sigma))


@register
class DNAEditEditor(InversionFreeEditor):
    """DNAEdit: FlowEdit-style inversion-free editing from a directly aligned noise, on SD3 / FLUX.

    Options (the official names; None: the family's config default, ``T_start`` scaled to the step count,
    `scaled_t_start`): ``T_start`` (noisiest steps skipped), ``mvg`` (mobile velocity guidance: the weight of the
    target velocity against the pull towards x_ref), ``source_guidance`` / ``target_guidance`` (the official
    ``src_guidance_scale`` / ``tar_guidance_scale``: each branch's CFG scale, or FLUX.1-dev's guidance input).
    """

    name = "dnaedit"
    description = ("DNAEdit (NeurIPS'25): FlowEdit-style edit from a directly aligned noise, with inversion none "
                   "(SD3/FLUX); null options: the family's official config")
    defaults: ClassVar[dict[str, Any]] = {"T_start": None, "mvg": None, "source_guidance": None,
                                          "target_guidance": None}
    refusal = "it edits along rectified flows (SD3/FLUX)"
    official = REFERENCE_DEFAULTS

    @classmethod
    def resolve_own(cls, opts: dict[str, Any], family: str, steps: int, reference: dict[str, Any]
                    ) -> dict[str, Any]:
        t_start = scaled_t_start(family, steps) if opts["T_start"] is None else opts["T_start"]
        opts["T_start"] = check_number("T_start", t_start, 0, steps - 1, integer=True)
        opts["mvg"] = check_number("mvg", reference["mvg"] if opts["mvg"] is None else opts["mvg"], 0, 1)
        return opts

    def sampler(self, inverted, ctx: LoopContext) -> DNAEditSampler:
        return DNAEditSampler(inverted, ctx, self.options, self.noise(inverted, ctx))
