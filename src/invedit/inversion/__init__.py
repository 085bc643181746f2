"""Inversion methods, one file each, registered by name (see `Inverted` for the contract)."""

from ..sampling import StepInfo
from . import ddim, ddpm, direct, edict, euler, negative_prompt, null_latent, null_text, style_diffusion  # noqa: F401
from .base import InversionInputs, Inverted, Sampler
from .registry import INVERSIONS, get_inversion, register

__all__ = ["INVERSIONS", "Inverted", "InversionInputs", "Sampler", "StepInfo", "get_inversion", "register"]
