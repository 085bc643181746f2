"""Negative-prompt inversion (Miyake et al., arXiv 2305.16807), reference-settings §4, with optional ProxEdit.

DDIM inversion under the source prompt, then editing uses the source prompt's embedding as the "null"
embedding of both branches: no optimisation, so the source branch's guided output equals its conditional one.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..sampling import ddim_invert
from .base import InversionInputs, Inverted
from .proximal import PROXIMAL_DEFAULTS, ProximalGuidance
from .registry import register


@register
class NegativePromptInverted(ProximalGuidance, Inverted):
    """Negative-prompt inversion: the source embedding replaces the null embedding while editing."""

    method = "negative-prompt"
    description = "Negative-prompt inversion: source prompt as the null embedding (no optimisation)"
    defaults: dict[str, Any] = dict(PROXIMAL_DEFAULTS)

    source_embedding: torch.Tensor | None = None

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> NegativePromptInverted:
        opts = cls.validate_options(options)
        start = time.perf_counter()
        latents = ddim_invert(inputs.pipe.unet, inputs.schedule, inputs.z0, inputs.cond, inputs.null, 1.0,
                              inputs.stats, inputs.callback)
        inverted = cls(prompt=inputs.prompt, latents=latents, schedule=inputs.schedule, options=opts,
                       stats=inputs.stats, seconds=time.perf_counter() - start, guidance_scale=inputs.guidance_scale)
        inverted.source_embedding = inputs.cond
        return inverted

    def branch_guidance(self, guidance_scale: float) -> dict[str, float]:
        """The source branch's null and conditional embeddings coincide, so its guided output is its conditional
        output at any scale: compute that row alone (one UNet row less per step, same result)."""
        if self.options["proximal"]:
            return super().branch_guidance(guidance_scale)  # ProxEdit thresholds over both branches' directions
        return {"source": 1.0, "target": guidance_scale}

    def null_embeddings(self, i: int) -> dict[str, torch.Tensor | None]:
        return {"source": self.source_embedding, "target": self.source_embedding}
