"""Null-latent ablation of Direct Inversion (Ju et al. 2024, §5; reference `invert_null_latent`), reference-settings §3.

Null-text inversion's optimisation is run, but instead of feeding the learned null embeddings to the edit, the
latent difference each of them makes, step(z, ∅_opt) − step(z, ∅), is added to the source branch after each
step (with the default null embedding in both branches). The source branch thus follows null-text inversion's
reconstruction; the target branch is untouched, as in Direct Inversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..sampling import Branches, StepInfo
from .base import InversionInputs, Inverted, Sampler
from .null_text import invert_and_optimise
from .registry import register


class NullLatentSampler(Sampler):
    """Null-text's per-step latent effect added to the source branch after each step."""

    def correct(self, info: StepInfo, source: torch.Tensor | None, target: torch.Tensor) -> Branches:
        return Branches(source + self.inverted.offsets[info.index], target)


@register
@dataclass(frozen=True, eq=False)
class NullLatentInverted(Inverted):
    """Null-text optimisation turned into per-step source-branch latent offsets."""

    method = "null-latent"
    description = "ablation: null-text's effect added to the source latent (NL), default null while editing"
    fitted_to_guidance = "null-latent offsets"
    defaults = {"inner_steps": 10, "early_stop": 1e-5, "learning_rate": 1e-2}
    sampler_class = NullLatentSampler

    offsets: tuple[torch.Tensor, ...] = ()  # per step, (1, C, h, w)
    iterations: tuple[int, ...] = ()

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> NullLatentInverted:
        opts = options
        offsets: list[torch.Tensor] = []
        latents, _, iterations = invert_and_optimise(inputs, opts, offsets)
        return cls.result(inputs, latents, opts, offsets=tuple(offsets), iterations=tuple(iterations))
