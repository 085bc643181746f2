"""DRFS: Delta Rectified Flow Sampling (Beaudouin, Li, Kim, Yoon and Wang, "Delta Rectified Flow Sampling for
Text-to-Image Editing", CVPR 2026; arXiv 2509.05342, first titled "Delta Velocity Rectified Flow").

Delta Denoising Score (Hertz et al. 2023) in the velocity space of a rectified flow, with a shift term. The edited
latent z starts at x_src and is optimised: at step i (noise level t) a fresh ε gives the source its noisy point
z_src = (1 − t)·x_src + t·ε and the target z_tgt = (1 − t)·z + t·ε + c_t·(z − x_src); the gradient is the guided
velocity difference plus the part of the offset the shift leaves out, g = V_tgt(z_tgt) − V_src(z_src) +
(1 − c_t/t)·(z − x_src), and an optimiser step z ← z − lr·g (SGD by default) moves the edit. The shift c_t is the
method's knob (the ``shift`` option):

- ``"progressive"`` (the official default): c_t = η·(k/T)·t, growing with the step index k (``eta``);
- a number λ: c_t = λ·t. λ = 1 is FlowEdit (the target at FlowEdit's z + z_src − x_src, g = the velocity difference;
  with ``lr="FE"``, lr = t_k − t_{k+1}, z ← z + (t_{k+1} − t_k)·ΔV is FlowEdit's step exactly); λ = 0 disables the
  shift: z_tgt = (1 − t)·z + t·ε and g = ΔV + (z − x_src) = (ε̂_tgt − ε̂_src)/(1 − t), DDS's gradient on the
  ε-predictions ε̂ = z_t + (1 − t)·v̂ of the flow model (the paper's reduction to DDS).

Reference behaviour reproduced (official code gaspardbd/DeltaRectifiedFlowSampling, models/DRFS.py ``DRFS`` and
edit.py / exp.yaml, SD3 / SD3.5 only): exp.yaml's defaults (T_steps 50, num_steps 50, B 1, guidance 6 / 16.5,
eta 1, "descending", lr "custom", SGD); the "custom" learning rate 2.2·hump(k + 1, T + 28) (a Beta(10, 8) hump of
height α/1.6 − α/4 over a linear tail to α/4, α = (t_{T−2} − t_{T−1})/1.6); the "descending" strategy runs the last
``num_steps`` steps in order, "random" draws a step index in [2, T − 2] per iteration (``torch.randint`` on the same
generator as the noise, before it) and, as the official code, adds no shift part to the gradient there and keeps
SGD at 0.02 when ``lr`` names a schedule. The noise
is drawn like the official ``randn_like`` of its channels-last SD3 latents, from the edit's seeded generator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import InveditError, check_number
from ..flow import noisy_sample
from ..sampling import Branches, LoopContext, StepInfo
from .base import register
from .flowedit import InversionFreeEditor, InversionFreeSampler

#: exp.yaml's settings (edit.py's ``--eta`` default is also 1); the DRFS function's own defaults differ (eta 0,
#: "random", lr 0.1, guidance 3.5 / 13.5).
REFERENCE_DEFAULTS: dict[str, Any] = {"steps": 50, "source_guidance": 6.0, "target_guidance": 16.5, "eta": 1.0,
                                      "lr": "custom", "shift": "progressive"}
OPTIMIZERS = ("SGD", "SGD_Nesterov", "RMSprop", "AdamW", "Adam")
STRATEGIES = ("descending", "random")


def lr_hump_beta(k: int, n: int, alpha_max: float, a: float, b: float) -> float:
    """A Beta(a, b)-shaped learning rate over k = 1 … n, 0 at both ends, peaking at ``alpha_max`` (models/DRFS.py)."""
    x = (k - 1) / (n - 1)
    pdf = x ** (a - 1) * (1 - x) ** (b - 1)
    peak = ((a - 1) / (a + b - 2)) ** (a - 1) * ((b - 1) / (a + b - 2)) ** (b - 1)
    return alpha_max * pdf / peak


def custom_lr(sigmas: torch.Tensor, i: int) -> float:
    """The official "custom" learning rate of (0-based) step ``i`` of a T-step schedule: 2.2·(hump + tail) over
    k = i + 1 of T + 28, the hump (Beta(10, 8)) of height α/1.6 − α/4, the tail rising linearly to α/4,
    α = (σ_{T−2} − σ_{T−1})/1.6."""
    steps = len(sigmas) - 1
    alpha = (float(sigmas[steps - 2]) - float(sigmas[steps - 1])) / 1.6
    n, k = steps + 28, i + 1
    hump = lr_hump_beta(k, n, alpha / 1.6 - alpha / 4, a=10, b=8)
    return 2.2 * (hump + alpha / 4 * (k - 1) / (n - 1))


def make_optimizer(name: str, param: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    """The official optimisers over the edited latent (models/DRFS.py's choices and their settings)."""
    if name == "SGD":
        return torch.optim.SGD([param], lr=lr)
    if name == "SGD_Nesterov":
        return torch.optim.SGD([param], lr=lr, momentum=0.9, nesterov=True)
    if name == "RMSprop":
        return torch.optim.RMSprop([param], lr=lr, alpha=0.9)
    return getattr(torch.optim, name)([param], lr=lr)


class DRFSSampler(InversionFreeSampler):
    """One DRFS edit: the target is the optimised latent (a leaf tensor the optimiser owns)."""

    @property
    def first_step(self) -> int:
        """"descending": the last ``num_steps`` steps; "random": ``num_steps`` iterations (each picks its level)."""
        return self.ctx.schedule.steps - self.options["num_steps"]

    def prepare(self) -> None:
        """The edited latent and, for the optimisers with a state, a torch optimiser over it (plain SGD is the step
        z − lr·g itself). The official SGD starts at 0.02 when lr names a schedule (then set at every step)."""
        lr = self.options["lr"]
        self.z = self.x_src.clone()
        self.optimizer = None
        if self.options["optimizer"] != "SGD":
            self.z.requires_grad_(True)
            self.optimizer = make_optimizer(self.options["optimizer"], self.z, lr)
        self.sgd_lr: float | torch.Tensor = lr if isinstance(lr, float) else 0.02

    def shift(self, i: int) -> float:
        """c_t / t at step ``i``: η·i/T ("progressive", descending), η ("progressive", random), or the number."""
        shift, eta = self.options["shift"], self.options["eta"]
        if shift != "progressive":
            return shift
        return eta * i / self.ctx.schedule.steps if self.options["scheduler_strategy"] == "descending" else eta

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        schedule, options = self.ctx.schedule, self.options
        descending = options["scheduler_strategy"] == "descending"
        z = self.z.detach()
        delta = torch.zeros_like(self.x_src)
        for _ in range(options["B"]):
            if descending:
                i = info.index
            else:
                i = int(torch.randint(2, schedule.steps - 1, (1,), generator=self.ctx.generator).item())
            t, c = schedule.sigma(i), self.shift(i)
            z_src = noisy_sample(self.x_src, self.noise_sampler(t, schedule.sigma(i + 1)), t)
            # (1 − t)·z + t·ε + c·t·(z − x_src), written as FlowEdit's target plus what the shift changes, so that
            # c = 1 is FlowEdit's target exactly.
            z_tgt = z + z_src - self.x_src + (c - 1) * t * (z - self.x_src)
            out = self.ctx.denoiser(i, schedule.timesteps[i], Branches(z_src, z_tgt), {"source", "target"})
            delta = delta + (out["target"] - out["source"]) / options["B"]
        grad = delta + (1 - c) * (z - self.x_src) if descending else delta
        if descending and options["lr"] == "FE":
            lr: float | torch.Tensor = schedule.sigma(i) - schedule.sigma(i + 1)
        elif descending and options["lr"] == "custom":
            lr = custom_lr(schedule.sigmas, i)
        else:
            lr = self.sgd_lr
        if self.optimizer is None:
            self.z = z - lr * grad
        else:
            self.optimizer.param_groups[0]["lr"] = float(lr)
            self.optimizer.zero_grad()
            self.z.grad = grad
            self.optimizer.step()
        return Branches(latents.source, self.z.detach().clone())


@register
class DRFSEditor(InversionFreeEditor):
    """DRFS: the edited latent optimised by the shifted velocity difference, on SD3 / SD3.5 (the official models).

    Options (official names; None: exp.yaml's value): ``eta`` (1), ``shift`` ("progressive": c_t = eta·k/T·t; a
    number λ: c_t = λ·t, 1 = FlowEdit, 0 = DDS), ``num_steps`` (optimisation steps; None: all ``steps``),
    ``scheduler_strategy`` ("descending" or "random"), ``lr`` ("custom", "FE" = t_k − t_{k+1}, or a number),
    ``optimizer`` (SGD, SGD_Nesterov, RMSprop, AdamW, Adam), ``B`` (noises averaged per step), and
    ``source_guidance`` / ``target_guidance`` (the official ``src_guidance_scale`` / ``tgt_guidance_scale``, 6 /
    16.5). The official run uses 50 steps.
    """

    name = "drfs"
    description = ("DRFS (CVPR'26): delta rectified-flow sampling, shift c_t (FlowEdit and DDS as settings), with "
                   "inversion none (SD3; official: 50 steps)")
    defaults: ClassVar[dict[str, Any]] = {"eta": None, "shift": None, "num_steps": None,
                                          "scheduler_strategy": "descending", "lr": None, "optimizer": "SGD", "B": 1,
                                          "source_guidance": None, "target_guidance": None}
    refusal = "it edits along rectified flows (SD3)"
    official = {"sd3": REFERENCE_DEFAULTS}  # the official code runs SD 3 only

    @classmethod
    def resolve_own(cls, opts: dict[str, Any], family: str, steps: int, reference: dict[str, Any]
                    ) -> dict[str, Any]:
        opts["eta"] = check_number("eta", reference["eta"] if opts["eta"] is None else opts["eta"], 0, 10)
        shift = reference["shift"] if opts["shift"] is None else opts["shift"]
        if isinstance(shift, str) and shift != "progressive":
            raise InveditError(f"shift must be 'progressive' or a number, got {shift!r}")
        opts["shift"] = shift if shift == "progressive" else check_number("shift", shift, -10, 10)
        opts["num_steps"] = check_number("num_steps", steps if opts["num_steps"] is None else opts["num_steps"], 1,
                                         steps, integer=True)
        if opts["scheduler_strategy"] not in STRATEGIES:
            raise InveditError(f"scheduler_strategy must be one of {', '.join(STRATEGIES)}, got "
                               f"{opts['scheduler_strategy']!r}")
        if opts["scheduler_strategy"] == "random" and steps < 4:
            raise InveditError("scheduler_strategy 'random' draws a step in [2, steps - 2]: it needs steps >= 4")
        if opts["optimizer"] not in OPTIMIZERS:
            raise InveditError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {opts['optimizer']!r}")
        lr = reference["lr"] if opts["lr"] is None else opts["lr"]
        if isinstance(lr, str):
            if lr not in ("custom", "FE"):
                raise InveditError(f"lr must be 'custom', 'FE' or a number, got {lr!r}")
            if opts["optimizer"] != "SGD":
                raise InveditError(f"optimizer {opts['optimizer']} needs a numeric lr (the official code builds it "
                                   f"with lr); lr {lr!r} schedules SGD only")
        else:
            lr = check_number("lr", lr, 0, 100)
        opts["lr"] = lr
        opts["B"] = check_number("B", opts["B"], 1, 1000, integer=True)
        return opts

    def sampler(self, inverted, ctx: LoopContext) -> DRFSSampler:
        return DRFSSampler(inverted, ctx, self.options, self.noise(inverted, ctx))
