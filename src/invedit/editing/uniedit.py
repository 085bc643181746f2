"""Uni-Edit, the editor of UniEdit-Flow (Jiao et al., ICLR 2026; reference: DSL-Lab/UniEdit-Flow, its diffusers
``UniEditEulerScheduler``): velocity fusion on one shared latent.

Per network call the source and the target prompt are evaluated at the same latent; with g = v_trg − v_src and the
region mask m = min–max-normalised channel mean of g (per sample, in the network's own output layout: per latent
pixel on SD3, per 2×2-patch token on FLUX, as the reference computes it), both rows get

    v = m·v_trg + (1 − m)·v_src + ω·(1 + m)·g

so both branches take the same step and stay one latent (the reconstruction is the edit; Uni-Edit keeps none). At
ω = 0 the step follows m·v_trg + (1 − m)·v_src, still a region-aware blend, not the target alone; with identical
prompts (g = 0) it is the plain sampler. Both velocities are taken at guidance 1 (the reference's setting: ω is
the guidance), so the edit's ``guidance_scale`` is not used. Paired with the ``uniedit`` inversion (α = 0.6) the
edit runs the last ⌊α·N⌋ steps: 10 + 18 = 28 NFE at 15 steps on FLUX.1-dev, the published count.

``inversion_prompt``: the prompt the image is inverted under, as MasaCtrl's ``source_branch`` chooses its source
branch's. "empty" (default): the empty prompt, as the reference's demo (``demo_edit.py``) inverts, while the edit
still evaluates [source, target]; "source": the source prompt (then one inversion serves the other editors too). An
inversion made under the other prompt is refused in one line. The reference demo's own ``image2latent``
(``utils.py``) computes mean·scale + shift instead of (mean − shift)·scale, a constant offset of the input latent
(0.158 on FLUX's VAE): an upstream bug that invedit does not copy; its latents are normalised as every FLUX
pipeline's.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InveditError, check_number
from ..sampling import Branches
from .base import Editor, register

#: The rows the fusion reads: the source and the target prompt's velocity (guidance 1: conditional rows only).
SOURCE_ROW, TARGET_ROW = ("source", "cond"), ("target", "cond")
#: The reference's guard against a constant difference (``mask_max − mask_min + 1e-7``).
MASK_EPS = 1e-7
#: What ``inversion_prompt`` may be: the reference demo's empty prompt, or the source prompt.
INVERSION_PROMPTS = ("empty", "source")


def uni_edit_velocity(v_src: torch.Tensor, v_trg: torch.Tensor, omega: float, channel_dim: int) -> torch.Tensor:
    """Uni-Edit's fused velocity m·v_trg + (1 − m)·v_src + ω·(1 + m)·(v_trg − v_src),
    m the min–max-normalised mean of v_trg − v_src over ``channel_dim``, per sample (Jiao et al. 2026, Uni-Edit)."""
    guidance = v_trg - v_src
    mask = guidance.mean(dim=channel_dim, keepdim=True)
    shape = (-1,) + (1,) * (mask.ndim - 1)
    low = mask.flatten(1).min(dim=1).values.view(shape)
    high = mask.flatten(1).max(dim=1).values.view(shape)
    mask = (mask - low) / (high - low + MASK_EPS)
    return mask * v_trg + (1 - mask) * v_src + omega * (1 + mask) * guidance


@register
class UniEditEditor(Editor):
    """Uni-Edit: a forward hook on the transformer replaces the source and target rows' velocities by the fused one;
    after each step the source branch is set to the target's latent, so the next call sees one latent."""

    name = "uniedit"
    description = "Uni-Edit (UniEdit-Flow, ICLR'26): region-aware velocity fusion on one latent, strength omega"
    defaults = {"omega": 5.0, "inversion_prompt": "empty"}
    schedule_kinds = ("flow",)
    refusal = "it fuses rectified-flow velocities (SD3/FLUX)"
    modes = ("inversion_prompt",)
    requires_hooks = True

    def __init__(self, options: dict[str, Any]):
        super().__init__()
        self.options = options

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        if opts["inversion_prompt"] not in INVERSION_PROMPTS:
            raise InveditError(f"uniedit inversion_prompt must be 'empty' (reference) or 'source', got "
                               f"{opts['inversion_prompt']!r}")
        return opts

    @classmethod
    def inversion_prompt(cls, source_prompt: str, options: dict[str, Any]) -> str:
        return "" if cls.validate_options(options)["inversion_prompt"] == "empty" else source_prompt

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> UniEditEditor:
        opts = cls.validate_options(options)
        opts["omega"] = check_number("omega", opts["omega"], 0)
        return cls(opts)

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        """Both velocities at guidance 1 (one conditional row per branch), as the reference edits."""
        return {"source": 1.0, "target": 1.0}

    def rows_read(self, step: int) -> frozenset:
        return frozenset({SOURCE_ROW, TARGET_ROW})  # also when the inversion's sampler skips the source

    def forward_hooks(self, unet) -> list[tuple[torch.nn.Module, Any]]:
        return [(unet, self._fuse)]

    def _fuse(self, module, args, output):
        source, target = self.row_index(*SOURCE_ROW), self.row_index(*TARGET_ROW)
        if source is None or target is None:
            return None
        out = output[0] if isinstance(output, tuple) else output
        fused = uni_edit_velocity(out[source:source + 1], out[target:target + 1], self.options["omega"],
                                  channel_dim=1 if out.ndim == 4 else out.ndim - 1)
        out = out.clone()
        out[source] = out[target] = fused[0]
        return (out, *output[1:]) if isinstance(output, tuple) else out

    def step_callback(self, step: int, latents: Branches) -> Branches:
        latents = super().step_callback(step, latents)
        return Branches(latents.target.clone(), latents.target)

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options, "velocity_guidance": 1.0}
