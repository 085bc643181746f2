"""Inversion methods, one file each, registered by name (see `Inverted` for the contract)."""

from . import ddim, direct, negative_prompt, null_latent, null_text  # noqa: F401  (registration)
from .base import InversionInputs, Inverted
from .registry import INVERSIONS, get_inversion, register

__all__ = ["INVERSIONS", "Inverted", "InversionInputs", "get_inversion", "register"]
