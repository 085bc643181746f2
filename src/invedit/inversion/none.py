"""No inversion: the "trajectory" is the image's latent z₀ alone, at no network cost.

Inversion-free editors (FlowEdit, Kulikov et al., ICCV 2025) edit by an ODE between the source and the target
distributions that starts at z₀ itself, so they need nothing an inversion computes. This method is what they pair
with (`invedit.prepare.check_pairing` refuses any other pairing in one line), and it hands the edit's step policy to
the editor: its `sampler` asks the edit's editor (`Editor.sampler`) instead of naming a `Sampler` of its own.

Why the editor supplies the sampler: the inversion contract already lets a method step an edit its own way through
a per-edit `Sampler` (`start_latents`, `first_step`, `step`), and the loop already calls only that. FlowEdit's policy
(fresh noise per step, the source re-noised from z₀, the target moved by the velocity difference, the skipped
``n_max`` steps) is set by the editor's options, so the editor builds it; the loop, `Sampler` and `Inverted` stay as
they are, and no inversion-free logic leaks into the shared files beyond two flags and the pairing check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InveditError
from ..sampling import LoopContext
from .base import InversionInputs, Inverted, Sampler
from .registry import register


@register
@dataclass(frozen=True, eq=False)
class NoInversion(Inverted):
    """z₀ only (``latents`` is (1, C, h, w)); the edit's sampler comes from its inversion-free editor."""

    method = "none"
    description = "no inversion (z0 only, no network call); for inversion-free editors such as flowedit"
    schedule_kinds = ("flow", "instruction")
    refusal = ("it serves inversion-free editors (FlowEdit on SD3/FLUX, the instruction-trained models' own "
               "pipelines)")
    inversion_free = True

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> NoInversion:
        return cls.result(inputs, inputs.z0.float(), options)

    def sampler(self, ctx: LoopContext | None = None) -> Sampler:
        """The edit's editor's step policy (`Editor.sampler`; ``ctx.denoiser.editor`` is the edit's editor)."""
        if ctx is None:
            raise InveditError("inversion 'none' steps no edit itself; its editor's sampler needs the loop context")
        return ctx.denoiser.editor.sampler(self, ctx)
