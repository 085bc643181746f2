"""Uni-Inv, the inversion of UniEdit-Flow (Jiao et al., "UniEdit-Flow: Unleashing Inversion and Editing in the Era of
Flow Models", ICLR 2026; reference: DSL-Lab/UniEdit-Flow, its diffusers ``UniInvEulerScheduler``).

A predictor–corrector inversion (`invedit.flow.uni_inv`): each step predicts the upper level with the last
velocity, evaluates the velocity there and re-takes the step from the corrected sample with it (the velocity at
the end of the step, as implicit Euler inversion would use). The first velocity is the model's at σ = 0 (zero with
``zero_init``). With the delay rate ``alpha`` < 1 only the ⌊α·N⌋ least noisy steps are inverted and the edit
starts there (Uni-Edit's delayed injection; the reference's editing default 0.6). The edit steps both branches
with the model's own Euler sampler. Cost: ⌊α·N⌋ + 1 NFE to invert, ⌊α·N⌋ per branch row to edit — 10 + 18 = 28 at
15 steps on FLUX.1-dev, as the paper counts (its Uni-Edit evaluates a source and a target velocity per step too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InveditError, check_number
from ..flow import uni_inv, uni_inv_steps
from .base import InversionInputs, Inverted
from .registry import register
from .rf_solver import source_velocity


@register
@dataclass(frozen=True, eq=False)
class UniInvInverted(Inverted):
    """Uni-Inv under the source prompt; levels above ⌊α·N⌋ steps are not reached (NaN in ``latents``) and the
    edit starts at ``first_step`` = N − ⌊α·N⌋ with plain Euler steps on both branches."""

    method = "uniedit"
    description = "Uni-Inv (UniEdit-Flow, ICLR'26): predictor-corrector inversion; edits the last alpha·N steps"
    defaults = {"alpha": 0.6, "zero_init": False, "inversion_guidance": 1.0}
    schedule_kinds = ("flow",)
    refusal = "it solves a rectified flow's ODE (SD3/FLUX)"

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        opts["alpha"] = check_number("alpha", opts["alpha"], 0, 1, low_open=True)
        return opts

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> UniInvInverted:
        steps = inputs.schedule.steps
        count = uni_inv_steps(steps, options["alpha"])
        if count < 1:
            raise InveditError(f"alpha {options['alpha']:g} inverts no step of {steps} (floor(alpha × steps) = 0); "
                               f"raise alpha or steps")
        reached = uni_inv(source_velocity(inputs, options["inversion_guidance"]), inputs.schedule, inputs.z0.float(),
                          count, options["zero_init"], inputs.callback)
        latents = torch.full((steps + 1, *reached.shape[1:]), float("nan"), device=reached.device)
        latents[: count + 1] = reached
        return cls.result(inputs, latents, options, first_step=steps - count)
