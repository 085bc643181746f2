"""Editors, one file each, registered by name (see `Editor` for the contract)."""

from . import (  # noqa: F401  (registration)
    dnaedit,
    drfs,
    flowalign,
    flowedit,
    instruct,
    kv_edit,
    masactrl,
    p2p,
    pix2pix_zero,
    pnp,
    rf_solver_edit,
    shared_attention,
    stable_flow,
    uniedit,
)
from .base import EDITORS, AttentionEditor, Editor, NoEditor, get_editor, register

__all__ = ["EDITORS", "AttentionEditor", "Editor", "NoEditor", "get_editor", "register"]
