"""No input image: both branches start from the initial noise the model's diffusers pipeline draws for the seed.

This is how the editing papers of SD 3 / FLUX edit (Shin et al., ICCV 2025: the source and target prompts are
generated together, `pipe(prompt=[source, target], generator=[Generator().manual_seed(s)] * 2)`), so a seed
reproduces their pair: the source branch is the source prompt's generated image, the target branch its edit. It is
not an inversion a user picks (it is not registered): `invedit.edit` makes it when it is given no image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InveditError
from ..sampling import RunStats
from .base import InversionInputs, Inverted


@dataclass(frozen=True, eq=False)
class Generated(Inverted):
    """The seeded initial noise z_T alone (``latents`` (1, C, h, w)); the edit samples both branches from it with the
    default sampler (the schedule's Euler steps under each branch's guidance), as the pipeline does."""

    method = "generate"
    description = "no input image: source and target generated from the seeded initial noise of the pipeline"
    schedule_kinds = ("flow",)

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> Generated:
        raise InveditError("a generated pair is made by invedit.edit without an image, not by inverting one")

    @classmethod
    def from_seed(cls, model, prompt: str, steps: int, seed: int, guidance_scale: float) -> Generated:
        """The start of a generated pair on ``model`` (an `invedit.backbones.Backbone` of a flow model)."""
        noise = model.initial_noise(seed)
        return cls(prompt=prompt, latents=noise, schedule=model.schedule(steps), options={"seed": seed},
                   stats=RunStats(), guidance_scale=guidance_scale, model=model.name)

    def z_star_before(self, i: int) -> torch.Tensor:
        if i != 0:
            raise InveditError("a generated pair keeps only its initial noise")
        return self.latents[-1:]

    def z_star_after(self, i: int) -> torch.Tensor:
        raise InveditError("a generated pair has no inversion trajectory to correct towards")
