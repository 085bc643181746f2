"""Editors, one file each, registered by name (see `Editor` for the contract)."""

from . import flowedit, kv_edit, masactrl, p2p, pix2pix_zero, pnp, shared_attention, uniedit  # noqa: F401  (registration)
from .base import EDITORS, AttentionEditor, Editor, NoEditor, get_editor, register

__all__ = ["EDITORS", "AttentionEditor", "Editor", "NoEditor", "get_editor", "register"]
