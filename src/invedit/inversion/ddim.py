"""Plain DDIM inversion (reference-settings §4 "DDIM"): edit from z*_T with no correction; drifts under CFG."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sampling import ddim_invert
from .base import InversionInputs, Inverted
from .registry import register


@register
@dataclass(frozen=True, eq=False)
class DDIMInverted(Inverted):
    """DDIM inversion under the source prompt (guidance 1); both branches denoise freely from z*_T."""

    method = "ddim"
    description = "DDIM inversion, no correction (baseline; reconstruction drifts under CFG)"
    defaults = {"inversion_guidance": 1.0}

    @classmethod
    def trajectory_key(cls, options: dict[str, Any]) -> tuple:
        """DDIM inversion (Euler on a flow) under the source prompt at ``inversion_guidance``: shared with
        ``direct``."""
        return ("ddim_invert", float(options["inversion_guidance"]))

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> DDIMInverted:
        opts = options
        latents = ddim_invert(inputs.model.denoise, inputs.schedule, inputs.z0, inputs.cond, inputs.null,
                              float(opts["inversion_guidance"]), inputs.stats, inputs.callback,
                              embedded=inputs.model.guidance_mode == "embedded")
        return cls.result(inputs, latents, opts)
