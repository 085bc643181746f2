"""Plain Euler inversion of a rectified flow (SD3, FLUX): DDIM inversion's analogue, no correction.

The ODE is integrated backwards with explicit Euler steps, the velocity taken at the level each step starts from
(the lower one), under the source prompt; both branches then denoise freely from z*_T with the model's own Euler
sampler. Like DDIM inversion it drifts: with few steps the source branch does not return to the image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ddim import DDIMInverted
from .registry import register


@register
@dataclass(frozen=True, eq=False)
class EulerInverted(DDIMInverted):
    """Euler inversion under the source prompt; the schedule (`invedit.flow.FlowSchedule`) does the stepping."""

    method = "euler"
    description = "Euler inversion of a rectified flow (SD3/FLUX), no correction (DDIM inversion's analogue)"
    schedule_kinds = ("flow",)
