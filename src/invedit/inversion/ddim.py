"""Plain DDIM inversion (reference-settings §4 "DDIM"): edit from z*_T with no correction; drifts under CFG."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..sampling import ddim_invert
from .base import InversionInputs, Inverted
from .registry import register


def ddim_trajectory(inputs: InversionInputs, options: dict[str, Any]) -> torch.Tensor:
    """z*_0 … z*_T: DDIM inversion (Euler on a flow) under the source prompt at ``inversion_guidance``, the
    trajectory ``ddim`` and ``direct`` share (`ddim_trajectory_key`)."""
    return ddim_invert(inputs.model.denoise, inputs.schedule, inputs.z0, inputs.cond, inputs.null,
                       float(options["inversion_guidance"]), inputs.stats, inputs.callback,
                       embedded=inputs.model.guidance_mode == "embedded")


def ddim_trajectory_key(options: dict[str, Any]) -> tuple:
    """`Inverted.trajectory_key` of `ddim_trajectory`: its other options act only while editing."""
    return ("ddim_invert", float(options["inversion_guidance"]))


@register
@dataclass(frozen=True, eq=False)
class DDIMInverted(Inverted):
    """DDIM inversion under the source prompt (guidance 1); both branches denoise freely from z*_T."""

    method = "ddim"
    description = "DDIM inversion, no correction (baseline; reconstruction drifts under CFG)"
    defaults = {"inversion_guidance": 1.0}

    @classmethod
    def trajectory_key(cls, options: dict[str, Any]) -> tuple:
        return ddim_trajectory_key(options)

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> DDIMInverted:
        return cls.result(inputs, ddim_trajectory(inputs, options), options)
