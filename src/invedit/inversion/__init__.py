"""Inversion methods, one file each, registered by name (see `Inverted` for the contract)."""

from ..sampling import StepInfo
from . import (  # noqa: F401
    ddim,
    ddpm,
    direct,
    edict,
    euler,
    fireflow,
    negative_prompt,
    null_latent,
    null_text,
    rf_solver,
    style_diffusion,
    uniedit,
)
from .base import InversionInputs, Inverted, Sampler
from .registry import INVERSIONS, get_inversion, register

__all__ = ["INVERSIONS", "Inverted", "InversionInputs", "Sampler", "StepInfo", "get_inversion", "register"]
