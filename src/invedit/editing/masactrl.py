"""MasaCtrl: mutual self-attention control (Cao et al., ICCV 2023, arXiv 2304.08465), reference-settings §9.

From step ``start_step`` on, in the self-attention of the transformer blocks from ``start_layer`` on, every
row's queries attend to the keys and values of the source row of its own CFG half: the target keeps the
source's content (keys/values) laid out by its own queries. The source row attends to itself, i.e. computes
what it computes without the editor. Runs on SDPA.

Layers are chosen by the block's position in forward order (`LayerInfo.order`, down → mid → up). The reference
counts against Stable Diffusion 1.x's 16 transformer blocks (``layers="reference"``: blocks ``start_layer`` …
15, whatever the UNet); the default ``layers="relative"`` takes the same fraction of any UNet's depth (blocks
with order/count ≥ start_layer/16): identical on SD 1.x/2.x, and meaningful on other UNets (SDXL, tiny ones).

The mask-guided variant (``mask_words="SRC_WORD TGT_WORD"``, MasaCtrl's "MaskAuto" control) restricts it to
the objects: masks come from the cross-attention of the named words (averaged over the layers at the
``mask_downsample`` grid, normalised, thresholded at ``mask_threshold``); the target's foreground queries
attend to the source's foreground keys, its background queries to the source's background.

As in the reference, the source branch is inverted and denoised under the empty prompt (``source_branch="empty"``);
``source_branch="given"`` uses the prompt you give (then one inversion can serve MasaCtrl and the other editors).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import backbone
from ..errors import InveditError, check_number
from ..prompts import blend_word_tokens
from ..sampling import HALVES, Branches, Row
from .attention import LayerInfo, attention_probs, grid_shape
from .base import AttentionEditor, register

SD_TRANSFORMER_BLOCKS = 16  # the reference's hard-coded layer count (Stable Diffusion 1.x)
SOURCE_ROWS: frozenset[Row] = frozenset(("source", h) for h in HALVES)



@register
class MutualSelfAttention(AttentionEditor):
    """MasaCtrl's mutual self-attention: the target queries the source's keys and values."""

    name = "masactrl"
    refusal = "it hooks a UNet's self-attention (shared-attention is its core on SD3/FLUX)"
    description = "MasaCtrl: target self-attention queries the source's keys/values (from step 4, layer 10)"
    defaults: dict[str, Any] = {"start_step": 4, "start_layer": 10, "layers": "relative", "source_branch": "empty",
                                "mask_words": None, "mask_threshold": 0.1, "mask_downsample": None}

    def __init__(self, start_step: int, blocks: frozenset[int], options: dict[str, Any],
                 mask: ObjectMasks | None = None):
        super().__init__()
        self.start_step, self.blocks, self.options, self.mask = start_step, blocks, options, mask

    @classmethod
    def source_branch_prompt(cls, source_prompt: str, options: dict[str, Any]) -> str:
        choice = cls.validate_options(options)["source_branch"]
        if choice not in ("empty", "given"):
            raise InveditError(f"masactrl source_branch must be 'empty' (reference) or 'given', got {choice!r}")
        return "" if choice == "empty" else source_prompt

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> MutualSelfAttention:
        opts = cls.validate_options(options)
        if opts["mask_words"] and not source_prompt:
            raise InveditError("masactrl mask_words need the source prompt: pass source_branch='given'")
        start_step = opts["start_step"] = check_number("start_step", opts["start_step"], 0, integer=True)
        start_layer = opts["start_layer"] = check_number("start_layer", opts["start_layer"], 0, integer=True)
        if start_step >= steps:
            raise InveditError(f"masactrl start_step {start_step} leaves none of the {steps} steps under control")
        infos = [info for _, _, info in backbone(pipe).attention_layers()]
        count = infos[0].count if infos else 0
        if opts["layers"] == "reference":
            if backbone(pipe).family == "sdxl":
                raise InveditError(f"masactrl layers='reference' counts Stable Diffusion 1.x's {SD_TRANSFORMER_BLOCKS} "
                                   "transformer blocks; on SDXL use 'relative' (the default)")
            blocks = frozenset(range(start_layer, min(SD_TRANSFORMER_BLOCKS, count)))
        elif opts["layers"] == "relative":
            blocks = frozenset(o for o in range(count) if o * SD_TRANSFORMER_BLOCKS >= start_layer * count)
        else:
            raise InveditError(f"masactrl layers must be 'relative' or 'reference', got {opts['layers']!r}")
        if not blocks:
            raise InveditError(f"masactrl start_layer {start_layer} leaves no transformer block of this UNet "
                               f"({count} blocks) under control")
        mask = None
        if opts["mask_words"]:
            mask = ObjectMasks.create(pipe, source_prompt, target_prompt, opts)
        opts["controlled_blocks"] = sorted(blocks)
        return cls(start_step, blocks, opts, mask)

    # ---- loop hooks ----------------------------------------------------------------------------------------
    def rows_read(self, step: int) -> frozenset[Row]:
        return SOURCE_ROWS if step >= self.start_step or self.mask is not None else frozenset()

    def wants_layer(self, info: LayerInfo) -> bool:
        controlled = not info.is_cross and info.order in self.blocks
        return controlled or (self.mask is not None and self.mask.wants(info))

    def attend(self, info: LayerInfo, attn, query, key, value):
        if info.is_cross:
            if self.mask is not None:
                self.mask.record(self, info, attn, query, key)
            return None
        if self.step < self.start_step:
            return None
        sources = [self.row_index("source", half) for _, half in self.rows]
        if any(s is None for s in sources):
            return None
        if self.mask is not None and self.mask.ready:
            return self.mask.attend(self, query, key, value, sources)
        return F.scaled_dot_product_attention(query, key[sources], value[sources])

    def step_callback(self, step: int, latents: Branches) -> Branches:
        latents = super().step_callback(step, latents)
        if self.mask is not None:
            self.mask.end_step()
        return latents

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}


class ObjectMasks:
    """MasaCtrl's masks of the named words from cross-attention, and the masked mutual attention they steer."""

    def __init__(self, source_tokens: list[int], target_tokens: list[int], threshold: float, downsample: int):
        self.source_tokens, self.target_tokens = source_tokens, target_tokens
        self.threshold, self.downsample = threshold, downsample
        self.maps: list[torch.Tensor] = []  # this step's (2, queries) maps, one per layer
        self.masks: torch.Tensor | None = None  # (2, queries) boolean: source, target; from the previous step

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, opts: dict[str, Any]) -> ObjectMasks:
        from .p2p import PromptToPrompt, parse_blend_words

        words = parse_blend_words(opts["mask_words"])
        source_tokens, target_tokens = blend_word_tokens(source_prompt, target_prompt, words, pipe.tokenizer)
        if not source_tokens or not target_tokens:
            raise InveditError("masactrl mask_words must name a word of the source and a word of the target prompt")
        threshold = check_number("mask_threshold", opts["mask_threshold"], 0, 1)
        downsample = opts["mask_downsample"] or PromptToPrompt.default_blend_downsample(pipe.unet)
        opts["mask_words"], opts["mask_downsample"] = list(words), downsample
        return cls(source_tokens, target_tokens, threshold, downsample)

    @property
    def ready(self) -> bool:
        return self.masks is not None

    def wants(self, info: LayerInfo) -> bool:
        return info.is_cross and info.downsample == self.downsample

    def record(self, editor: MutualSelfAttention, info: LayerInfo, attn, query, key) -> None:
        """Accumulate the words' maps from the conditional rows of this cross-attention layer."""
        s, t = editor.row_index("source", "cond"), editor.row_index("target", "cond")
        if s is None or t is None:
            return
        probs = attention_probs(attn, query[[s, t]], key[[s, t]]).mean(1)  # (2, queries, 77), head mean
        self.maps.append(torch.stack([probs[0][..., self.source_tokens].mean(-1),
                                      probs[1][..., self.target_tokens].mean(-1)]))

    def end_step(self) -> None:
        if not self.maps:
            return
        maps = torch.stack(self.maps).mean(0)  # (2, queries)
        low, high = maps.amin(-1, keepdim=True), maps.amax(-1, keepdim=True)
        self.masks = (maps - low) / (high - low).clamp_min(1e-30) > self.threshold
        self.maps = []

    def attend(self, editor: MutualSelfAttention, query, key, value, sources: list[int]) -> torch.Tensor:
        """Target rows: foreground queries ← source foreground, background ← source background."""
        tokens = query.shape[2]
        masks = self._masks_at(tokens)
        out = F.scaled_dot_product_attention(query, key[sources], value[sources])
        zeros = torch.zeros(1, 1, 1, tokens, dtype=query.dtype, device=query.device)
        fg_bias = zeros.masked_fill(~masks[0].view(1, 1, 1, tokens), float("-inf"))  # source foreground keys only
        bg_bias = zeros.masked_fill(masks[0].view(1, 1, 1, tokens), float("-inf"))
        for row, (branch, _half) in enumerate(editor.rows):
            if branch != "target":
                continue
            s = sources[row]
            q, k, v = query[row:row + 1], key[s:s + 1], value[s:s + 1]
            fg = F.scaled_dot_product_attention(q, k, v, attn_mask=fg_bias) if masks[0].any() else out[row:row + 1]
            bg = F.scaled_dot_product_attention(q, k, v, attn_mask=bg_bias) if (~masks[0]).any() else out[row:row + 1]
            m = masks[1].to(query.dtype).view(1, 1, tokens, 1)
            out[row:row + 1] = fg * m + bg * (1 - m)
        return out

    def _masks_at(self, tokens: int) -> torch.Tensor:
        """The (2, tokens) masks resized (nearest) to a layer with ``tokens`` queries."""
        masks = self.masks.float()
        side = int(round(masks.shape[-1] ** 0.5))
        h, w = grid_shape(tokens, (side, side)) if tokens != masks.shape[-1] else (side, side)
        grid = masks.view(2, 1, side, side)
        return F.interpolate(grid, size=(h, w), mode="nearest").view(2, -1) > 0.5
