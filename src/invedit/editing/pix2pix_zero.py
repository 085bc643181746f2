"""Pix2Pix-Zero (Parmar et al., SIGGRAPH 2023, arXiv 2302.03027) as PnP Inversion runs it, reference-settings §11.

The target's text embedding is the source's plus an edit direction: the mean embedding of the target sentences
minus the mean of the source sentences (by default the two prompts; pass ``source_sentences`` /
``target_sentences`` — lists, or ``|``-separated strings — as the original method does with many sentences).
Before each update the target latent takes one gradient step (``cross_attention_guidance``, the SGD learning
rate, 0.1 in the reference) that pulls the target's cross-attention maps toward the source branch's at that
step: loss = Σ over cross-attention layers of the mean over rows and heads of Σ over queries and tokens of
(A_target − A_source)². Each CFG half of the target is stepped on its own, the unconditional half's latent is
the one the update moves, as in the reference. The unconditional prompt of both branches is the source prompt
(the reference's negative prompt is the caption), so the source branch's guidance is inert and its
unconditional row is skipped.

At each step the source row is called first without a graph and its maps are kept for that step only (the
reference, too, computes its maps in a pass of their own); the target's two rows are then called with autograd,
so the backward pass covers those two rows alone, not the source row a shared call would drag through it. That
source-row pass is a plain forward pass at the source latent the update evaluates next, so an inversion whose update
reads the source branch (DDIM; Direct Inversion reads none) takes its output from there instead of computing the row
twice (`guide_rows_reusable`): one network evaluation a step fewer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InveditError, check_number
from ..sampling import Branches, Row
from .attention import LayerInfo, attention_probs
from .base import AttentionEditor, register

SOURCE_COND: Row = ("source", "cond")
TARGET_ROWS: tuple[Row, ...] = (("target", "uncond"), ("target", "cond"))


def _sentences(value: Any, fallback: str, name: str) -> list[str]:
    if value is None:
        return [fallback]
    items = value.split("|") if isinstance(value, str) else list(value)
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise InveditError(f"pix2pix-zero {name} is empty")
    return items


@register
class Pix2PixZero(AttentionEditor):
    """Pix2Pix-Zero: an edit direction in text-embedding space and cross-attention guidance of the target."""

    name = "pix2pix-zero"
    refusal = "its guidance matches a UNet's cross-attention maps"
    description = "Pix2Pix-Zero: edit direction in embedding space + cross-attention guidance (weight 0.1)"
    defaults: dict[str, Any] = {"cross_attention_guidance": 0.1, "source_sentences": None, "target_sentences": None}
    guides = True
    guide_rows_reusable = True  # the source row's pass is a plain one (its maps are only read): DDIM's update reuses it

    def __init__(self, weight: float, source_sentences: list[str], target_sentences: list[str],
                 options: dict[str, Any]):
        super().__init__()
        self.weight, self.options = weight, options
        self.source_sentences, self.target_sentences = source_sentences, target_sentences
        self.phase: str | None = None  # "reference" (source maps kept) | "guide" (target loss) | None
        self.reference: dict[str, torch.Tensor] = {}  # layer name -> the source's maps at this step
        self.loss: torch.Tensor | None = None
        self.direction: torch.Tensor | None = None

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> Pix2PixZero:
        opts = cls.validate_options(options)
        weight = check_number("cross_attention_guidance", opts["cross_attention_guidance"], 0, 100)
        source = _sentences(opts["source_sentences"], source_prompt, "source_sentences")
        target = _sentences(opts["target_sentences"], target_prompt, "target_sentences")
        opts["source_sentences"], opts["target_sentences"] = source, target
        return cls(float(weight), source, target, opts)

    # ---- embeddings --------------------------------------------------------------------------------------
    @staticmethod
    def edit_direction(encode, source_sentences: list[str], target_sentences: list[str]) -> torch.Tensor:
        """mean(emb(target sentences)) − mean(emb(source sentences)), (1, 77, D) over all token positions."""
        return (encode(target_sentences).mean(0, keepdim=True) - encode(source_sentences).mean(0, keepdim=True))

    def embeddings(self, encode, cond, null):
        self.direction = self.edit_direction(encode, self.source_sentences, self.target_sentences)
        target = cond["source"] + self.direction
        return {"source": cond["source"], "target": target}, {"source": cond["source"], "target": cond["source"]}

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        return {**scales, "source": 1.0}  # both of its halves are the source prompt: CFG is the identity there

    # ---- the guidance step ----------------------------------------------------------------------------------
    def wants_layer(self, info: LayerInfo) -> bool:
        return info.is_cross

    def attend(self, info: LayerInfo, attn, query, key, value):
        if self.phase is None:
            return None
        probs = attention_probs(attn, query, key)  # (rows, heads, queries, 77)
        if self.phase == "reference":
            self.reference[info.name] = probs[self.row_index(*SOURCE_COND)]
            return None
        targets = [self.row_index(*row) for row in TARGET_ROWS]
        loss = ((probs[targets] - self.reference[info.name]) ** 2).sum((-1, -2)).mean()
        self.loss = loss if self.loss is None else self.loss + loss
        return F.scaled_dot_product_attention(query, key, value)

    def guide(self, step: int, t: int, latents: Branches, model) -> Branches:
        if self.weight == 0:
            return latents
        if latents.target.shape[0] != 1:
            raise InveditError(f"pix2pix-zero guides one target latent per step; this inversion carries "
                               f"{latents.target.shape[0]} chains per branch")
        halves = [latents.row(row).detach().clone().requires_grad_(True) for row in TARGET_ROWS]
        moved = Branches(latents.source, latents.target, rows=dict(zip(TARGET_ROWS, halves)))
        self.loss, self.reference = None, {}
        try:
            self.phase = "reference"
            model(latents, [SOURCE_COND], grad=False)
            self.phase = "guide"
            model(moved, list(TARGET_ROWS))
        finally:
            self.phase = None
        grads = model.grad(self.loss, halves)
        self.last_loss = float(self.loss.detach())
        self.loss, self.reference = None, {}
        stepped = [(x - self.weight * g).detach() for x, g in zip(halves, grads)]
        return Branches(latents.source, stepped[0], rows=dict(zip(TARGET_ROWS, stepped)))

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}
