"""Inversion methods, one file each, registered by name (see `Inverted` for the contract)."""

from ..sampling import StepInfo
from . import (  # noqa: F401  (registration)
    ddim,
    ddpm,
    direct,
    edict,
    euler,
    fireflow,
    negative_prompt,
    none,
    null_latent,
    null_text,
    rf_inversion,
    rf_solver,
    style_diffusion,
    uniedit,
)
from .base import InversionInputs, Inverted, Sampler
from .registry import INVERSIONS, get_inversion, register

__all__ = ["INVERSIONS", "Inverted", "InversionInputs", "Sampler", "StepInfo", "get_inversion", "register"]
