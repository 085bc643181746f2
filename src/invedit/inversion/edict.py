"""EDICT: exact inversion via coupled transformations (Wallace, Gokul & Naik, CVPR 2023), reference-settings §4.

Two latent chains (x, y) start equal. A denoising step updates each chain with the model evaluated on the other
(affine coupling layers), then mixes them with weight p (mixing layers):

    x' = a·x + b·ε(y),   y' = a·y + b·ε(x'),   x'' = p·x' + (1−p)·y',   y'' = p·y' + (1−p)·x''

with a = √(ᾱ_{t−1}/ᾱ_t), b = √(1−ᾱ_{t−1}) − √(ᾱ_{t−1}(1−ᾱ_t)/ᾱ_t) (the DDIM step as EDICT writes it). Each
line can be solved for its input, so the inversion runs them backwards, exact up to rounding. As in the
reference code the chain updated first alternates every step ("leapfrog"), the edit starts at step
steps − int(strength·steps) (the reference's ``init_image_strength`` 0.8: 10 of 50), and inversion and edit use
the same CFG (the reference: 3 for both; here the edit's ``guidance_scale``, so pass 3 for the reference
setting). ``precision="float64"`` runs the UNet and the chains in float64, as the reference does.

Float64: the pipeline's UNet is converted to float64 for the inversion and for each edit, and every parameter
gets its own dtype back afterwards (exact: float64 holds float32/16 values exactly). That needs the memory of a
float64 UNet while it runs and a device with float64 (not MPS); ``precision="float32"`` keeps the UNet as loaded.

In the two-branch loop each branch carries its own (x, y) pair: a step makes two batched UNet calls (ε on the
y chains, then on the x chains), both at the same editor step. Editors therefore see two calls per step: P2P
injects the source's attention into the target in each (the rows pair up: source y with target y, then x with
x), and LocalBlend's maps, summed over all calls and normalised by their maximum, average the two chains.
Editors' latent callbacks act on both chains of each branch; the last step returns the x chains.
The reference's EDICT+P2P instead denoises one pair with the target prompt and evaluates the source prompt on
it only to record attention (no source branch); here the source branch is a real, exactly reconstructed pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

from ..errors import InveditError, check_number
from ..sampling import BRANCHES, Branches, DDIMSchedule, StepInfo, guided, halves_needed, x0_and_eps
from .base import InversionInputs, Inverted, Sampler
from .registry import register

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
EpsFn = Callable[[torch.Tensor], torch.Tensor]


def coupling_coefficients(schedule: DDIMSchedule, i: int) -> tuple[float, float]:
    """(a, b) of forward step ``i`` with x_{t−1} = a·x_t + b·ε: the DDIM step as EDICT (Wallace et al.) writes it."""
    alpha = float(schedule.alpha(schedule.timesteps[i]))
    alpha_prev = float(schedule.alpha(schedule.next_timestep(i)))
    return (alpha_prev / alpha) ** 0.5, (1 - alpha_prev) ** 0.5 - (alpha_prev * (1 - alpha) / alpha) ** 0.5


def edict_step(x: torch.Tensor, y: torch.Tensor, eps: EpsFn, a: float, b: float, p: float,
               first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One EDICT denoising step (Wallace et al. 2023): coupled updates, chain ``first`` first, then mixing."""
    chains = [x, y]
    for c in (first, 1 - first):
        chains[c] = a * chains[c] + b * eps(chains[1 - c])
    x, y = chains
    x = p * x + (1 - p) * y
    y = p * y + (1 - p) * x
    return x, y


def edict_inverse_step(x: torch.Tensor, y: torch.Tensor, eps: EpsFn, a: float, b: float, p: float,
                       first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of `edict_step` (EDICT inversion): undo the mixing, then the coupled updates in reverse."""
    y = (y - (1 - p) * x) / p
    x = (x - (1 - p) * y) / p
    chains = [x, y]
    for c in (1 - first, first):
        chains[c] = (chains[c] - b * eps(chains[1 - c])) / a
    return chains[0], chains[1]


@contextmanager
def unet_in_dtype(unet: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run ``unet`` with floating parameters and buffers in ``dtype``; each gets its own dtype back after."""
    tensors = [t for t in chain(unet.parameters(), unet.buffers()) if t.is_floating_point() and t.dtype != dtype]
    saved = [t.dtype for t in tensors]
    try:
        for t in tensors:  # in place, so hooks, processors and references to the parameters stay valid
            t.data = t.data.to(dtype)
        yield
    finally:
        for t, original in zip(tensors, saved):
            t.data = t.data.to(original)


class EdictSampler(Sampler):
    """Both branches' (x, y) pairs stepped by EDICT, the UNet in the working precision."""

    def running(self) -> AbstractContextManager[object]:
        return EdictInverted.precision_context(self.ctx.denoiser.model.denoiser, self.options["precision"])

    def start_latents(self) -> Branches:
        """Each branch carries the inverted (x, y) pair as two rows, in the working precision."""
        return Branches(self.inverted.start_pair.clone(), self.inverted.start_pair.clone())

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        """EDICT step of both branches' pairs: two batched UNet calls (ε of the y chains, then of the x chains)."""
        schedule, i, t = self.ctx.schedule, info.index, info.t
        alpha = schedule.alpha(t)

        def eps(v: torch.Tensor) -> torch.Tensor:  # v: (2, C, h, w), rows = source, target
            rows = dict(zip(BRANCHES, v.split(1)))
            out = self.ctx.denoiser(i, t, Branches(**rows), set(BRANCHES), self.null_embeddings(info))
            return torch.cat([x0_and_eps(out[b], rows[b], alpha, schedule.prediction_type)[1] for b in BRANCHES])

        x = torch.cat([latents.source[:1], latents.target[:1]])
        y = torch.cat([latents.source[1:], latents.target[1:]])
        a, b = coupling_coefficients(schedule, i)
        x, y = edict_step(x, y, eps, a, b, self.options["mix_weight"], info.edit_index % 2)
        if i == schedule.steps - 1:  # done: the x chains, as the reference returns
            return Branches(x[:1].float(), x[1:].float())
        return Branches(torch.cat([x[:1], y[:1]]), torch.cat([x[1:], y[1:]]))


@register
@dataclass(frozen=True, eq=False)
class EdictInverted(Inverted):
    """EDICT: two coupled chains per branch, inverted exactly; ``latents`` holds the x chain."""

    method = "edict"
    description = "EDICT: coupled x/y chains, exactly invertible (mix 0.93, float64; edits the last 80% of steps)"
    fitted_to_guidance = "EDICT inversion chains"
    defaults = {"mix_weight": 0.93, "precision": "float64", "strength": 0.8}
    sampler_class = EdictSampler

    #: y chain of the inversion, (T+1, C, h, w) float32 like ``latents`` (levels above the start are NaN).
    y_latents: torch.Tensor | None = None
    #: (x, y) at the edit's start level in the working precision, (2, C, h, w).
    start_pair: torch.Tensor | None = None

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        opts["mix_weight"] = check_number("mix_weight", opts["mix_weight"], 0, 1, low_open=True)
        opts["strength"] = check_number("strength", opts["strength"], 0, 1, low_open=True)
        if opts["precision"] not in PRECISIONS:
            raise InveditError(f"precision must be 'float64' or 'float32', got {opts['precision']!r}")
        return opts

    @staticmethod
    def start_step(strength: float, steps: int) -> int:
        """First loop step: steps − int(steps·strength), as the reference (at least one step is edited)."""
        return steps - max(1, int(steps * strength))

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.options["precision"]]

    @classmethod
    def precision_context(cls, unet: torch.nn.Module, precision: str) -> AbstractContextManager[object]:
        """The UNet in float64 for ``precision="float64"`` (refused on MPS), else as loaded."""
        if precision != "float64":
            return nullcontext()
        if unet.device.type == "mps":
            raise InveditError("EDICT precision float64 is not available on MPS; use precision=float32")
        return unet_in_dtype(unet, torch.float64)

    @classmethod
    @torch.no_grad()
    def run(cls, inputs: InversionInputs, **options: Any) -> EdictInverted:
        opts = options
        schedule, steps, denoise = inputs.schedule, inputs.schedule.steps, inputs.model.denoise
        first = cls.start_step(opts["strength"], steps)
        p, scale = opts["mix_weight"], inputs.guidance_scale
        halves = halves_needed(scale)
        emb = torch.cat([inputs.null if h == "uncond" else inputs.cond for h in halves])
        x = inputs.z0.to(PRECISIONS[opts["precision"]])
        y = x.clone()
        xs = torch.full((steps + 1, *x.shape[1:]), float("nan"), device=x.device)
        ys = xs.clone()
        xs[0], ys[0] = x[0], y[0]
        with cls.precision_context(inputs.model.denoiser, opts["precision"]):
            for k in range(steps - first):
                i = steps - 1 - k  # the forward step this inversion step undoes
                t, alpha = schedule.timesteps[i], schedule.alpha(schedule.timesteps[i])

                def eps(v: torch.Tensor, t: int = t, alpha: torch.Tensor = alpha) -> torch.Tensor:
                    out = denoise(v.expand(len(halves), -1, -1, -1), t, emb, inputs.stats)
                    guided_out = guided(dict(zip(halves, out.chunk(len(halves)))), scale)
                    return x0_and_eps(guided_out, v, alpha, schedule.prediction_type)[1]

                a, b = coupling_coefficients(schedule, i)
                x, y = edict_inverse_step(x, y, eps, a, b, p, (i - first) % 2)
                xs[k + 1], ys[k + 1] = x[0], y[0]
                if inputs.callback is not None:
                    inputs.callback(k)
        return cls.result(inputs, xs, opts, first_step=first, y_latents=ys, start_pair=torch.cat([x, y]))
