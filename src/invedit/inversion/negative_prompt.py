"""Negative-prompt inversion (Miyake et al., arXiv 2305.16807), reference-settings §4, with optional ProxEdit.

DDIM inversion under the source prompt, then editing uses the source prompt's embedding as the "null"
embedding of both branches: no optimisation, so the source branch's guided output equals its conditional one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..sampling import StepInfo, ddim_invert
from .base import InversionInputs, Inverted, Sampler
from .proximal import PROXIMAL_DEFAULTS, ProximalOptions, ProximalSampler
from .registry import register


class NegativePromptSampler(ProximalSampler, Sampler):
    """The source prompt's embedding as the null embedding of both branches."""

    def null_embeddings(self, info: StepInfo) -> dict[str, torch.Tensor | None]:
        return {"source": self.inverted.source_embedding, "target": self.inverted.source_embedding}


@register
@dataclass(frozen=True, eq=False)
class NegativePromptInverted(ProximalOptions, Inverted):
    """Negative-prompt inversion: the source embedding replaces the null embedding while editing."""

    method = "negative-prompt"
    description = "Negative-prompt inversion: source prompt as the null embedding (no optimisation)"
    defaults = dict(PROXIMAL_DEFAULTS)
    sampler_class = NegativePromptSampler

    source_embedding: torch.Tensor | None = None  # (1, 77, D)

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> NegativePromptInverted:
        opts = options
        latents = ddim_invert(inputs.model.denoise, inputs.schedule, inputs.z0, inputs.cond, inputs.null, 1.0,
                              inputs.stats, inputs.callback)
        return cls.result(inputs, latents, opts, source_embedding=inputs.cond)

    def branch_guidance(self, guidance_scale: float) -> dict[str, float]:
        """The source branch's null and conditional embeddings coincide, so its guided output is its conditional
        output at any scale: compute that row alone (one UNet row less per step, same result)."""
        if self.options["proximal"]:
            return super().branch_guidance(guidance_scale)  # ProxEdit thresholds over both branches' directions
        return {"source": 1.0, "target": guidance_scale}
