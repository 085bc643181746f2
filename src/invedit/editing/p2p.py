"""Prompt-to-Prompt (Hertz et al., arXiv 2208.01626) with the PnP-Inversion reference settings (reference-settings §5).

The target branch's conditional row borrows the source's attention: cross-attention maps (Replace / Refine,
optionally re-weighted) during the first ``cross_replace_steps`` and self-attention maps during the first
``self_replace_steps`` (layers with at most ``self_replace_max_tokens`` queries); ``uncond_self_replace_steps``
(StyleDiffusion's τ_u, arXiv 2303.15649, default off) does the same between the unconditional rows.
Self-attention replacement softmax(Q_src K_srcᵀ)·V_tgt runs on SDPA; explicit maps are computed only in
cross-attention layers, only for the two conditional rows, and only while something reads them. LocalBlend keeps
the target equal to the source outside the region the blend words attend to.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import backbone
from ..backbones.unet import unet_attention_layers
from ..errors import InveditError
from ..prompts import blend_word_tokens, require_word
from ..sampling import Branches, Row
from .attention import LayerInfo, attention_probs, grid_shape
from .base import AttentionEditor, register
from .token_alignment import refinement_mapper, replacement_mapper

MAX_TOKENS = 77
CONDITIONAL_ROWS: frozenset[Row] = frozenset({("source", "cond"), ("target", "cond")})
UNCONDITIONAL_ROWS: frozenset[Row] = frozenset({("source", "uncond"), ("target", "uncond")})


# ---- cross-attention edits: (source map, target map) -> new target map; maps are (heads, queries, 77) ------
class AttentionReplace:
    """Target attends with the source's maps, token-mapped word for word (same word count)."""

    def __init__(self, mapper: torch.Tensor):
        self.mapper = mapper  # (77, 77)

    def __call__(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return base @ self.mapper.to(base)


class AttentionRefine:
    """Aligned target tokens take the source's map, new tokens keep their own (token alignment)."""

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor):
        self.mapper, self.alphas = mapper, alphas  # (77,), (77,)

    def __call__(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas.to(base)
        return base[..., self.mapper.to(base.device)] * alphas + target * (1 - alphas)


class AttentionReweight:
    """Scales the attention to chosen target tokens (the "equaliser"), on top of another edit."""

    def __init__(self, inner, equalizer: torch.Tensor):
        self.inner, self.equalizer = inner, equalizer  # (77,)

    def __call__(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(base, target) * self.equalizer.to(base)


class LocalBlend:
    """Blend mask from the blend words' cross-attention, summed over steps; target = src + m·(tgt − src)."""

    def __init__(self, source_tokens: list[int], target_tokens: list[int], threshold: float, start_step: int,
                 downsample: int):
        self.source_tokens, self.target_tokens = source_tokens, target_tokens
        self.threshold, self.start_step, self.downsample = threshold, start_step, downsample
        self.maps: torch.Tensor | None = None  # (2, queries): source-word map, target-word map

    def wants(self, info: LayerInfo) -> bool:
        return info.is_cross and info.place != "mid" and info.downsample == self.downsample

    def accumulate(self, probs: torch.Tensor) -> None:
        """Add one layer's maps; ``probs`` is (2, heads, queries, 77) for the [source, target] rows."""
        maps = torch.stack([probs[0][..., self.source_tokens].sum(-1), probs[1][..., self.target_tokens].sum(-1)])
        maps = maps.sum(1)  # over heads (the reference's mean over heads and layers, up to a constant)
        self.maps = maps if self.maps is None else self.maps + maps

    def __call__(self, step: int, latents: Branches) -> Branches:
        if step < self.start_step or self.maps is None:
            return latents
        H, W = latents.target.shape[-2:]
        h, w = grid_shape(self.maps.shape[-1], (H, W))
        maps = self.maps.view(2, 1, h, w)
        maps = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)
        maps = F.interpolate(maps, size=(H, W), mode="nearest")
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-30)  # a word absent from its prompt: 0
        masks = maps > self.threshold
        mask = (masks[0] | masks[1]).unsqueeze(0).to(latents.target)
        return Branches(latents.source, latents.source + mask * (latents.target - latents.source))


def parse_blend_words(blend_words: str | tuple[str, str] | list[str] | None) -> tuple[str, str] | None:
    """``"SRC TGT"`` or ``(src, tgt)`` → a pair of single words; ``None``/``""`` → no blending."""
    if blend_words is None or blend_words == "" or blend_words == ():
        return None
    words = blend_words.split() if isinstance(blend_words, str) else [str(w).strip() for w in blend_words]
    if len(words) != 2 or not all(words):
        raise InveditError(f"blend words must be two words 'SOURCE_WORD TARGET_WORD', got {blend_words!r}")
    return words[0], words[1]


def parse_reweight(value: Any) -> dict[str, float] | None:
    """``{"word": 2.0}``, or the CLI form ``"word:2,other:0.5"`` ("" → no reweighting)."""
    if value is None or isinstance(value, dict):
        return value
    out: dict[str, float] = {}
    for item in str(value).split(","):
        if not item.strip():
            continue
        word, _, scale = item.partition(":")
        try:
            out[word.strip()] = float(scale)
        except ValueError:
            raise InveditError(f"reweight expects word:scale pairs, got {item!r}") from None
    return out


def _fraction(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InveditError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise InveditError(f"{name} must be in [0, 1], got {v}")
    return v


@register
class PromptToPrompt(AttentionEditor):
    """Prompt-to-Prompt attention control between the source and target branches."""

    name = "p2p"
    refusal = "it rewrites a UNet's cross-attention maps (SD3/FLUX attend to text and image jointly)"
    description = "Prompt-to-Prompt: Refine/Replace cross-attention, self-attention injection, LocalBlend"
    defaults: dict[str, Any] = {
        "mode": "refine", "cross_replace_steps": 0.4, "self_replace_steps": 0.6, "self_replace_max_tokens": 32**2,
        "blend_threshold": 0.3, "blend_start": 0.2, "blend_downsample": None, "reweight": None,
        "uncond_self_replace_steps": 0.0, "blend_words": None,
    }

    def __init__(self, cross_edit, n_cross: int, n_self: int, self_max_tokens: int,
                 blend: LocalBlend | None, options: dict[str, Any], n_uncond_self: int = 0):
        super().__init__()
        self.cross_edit, self.n_cross, self.n_self = cross_edit, n_cross, n_self
        self.self_max_tokens, self.blend, self.options = self_max_tokens, blend, options
        self.n_uncond_self = n_uncond_self

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> PromptToPrompt:
        opts = cls.validate_options(options)
        blend_words = opts["blend_words"] = parse_blend_words(opts["blend_words"])
        tok = pipe.tokenizer
        if opts["mode"] == "replace":
            cross_edit: Any = AttentionReplace(replacement_mapper(source_prompt, target_prompt, tok))
        elif opts["mode"] == "refine":
            cross_edit = AttentionRefine(*refinement_mapper(source_prompt, target_prompt, tok))
        else:
            raise InveditError(f"p2p mode must be 'refine' or 'replace', got {opts['mode']!r}")
        cross = _fraction("cross_replace_steps", opts["cross_replace_steps"])
        self_ = _fraction("self_replace_steps", opts["self_replace_steps"])
        # The reference counts cross-replace steps over steps + 1 (int(0.4·51) = 20) and self over steps (30).
        n_cross, n_self = int(cross * (steps + 1)), int(self_ * steps)
        n_uncond_self = int(_fraction("uncond_self_replace_steps", opts["uncond_self_replace_steps"]) * steps)

        blend = None
        if blend_words:
            src_tokens, tgt_tokens = blend_word_tokens(source_prompt, target_prompt, blend_words, tok)
            downsample = opts["blend_downsample"] or cls.default_blend_downsample(pipe.unet)
            opts["blend_downsample"] = downsample  # recorded: the grid actually used
            if not any(info.is_cross and info.place != "mid" and info.downsample == downsample
                       for _, _, info in backbone(pipe).attention_layers()):
                raise InveditError(f"no cross-attention layers at downsample {downsample} for LocalBlend")
            threshold = _fraction("blend_threshold", opts["blend_threshold"])
            start = int(_fraction("blend_start", opts["blend_start"]) * steps)
            blend = LocalBlend(src_tokens, tgt_tokens, threshold, start, downsample)
        reweight = parse_reweight(opts["reweight"])
        if reweight is None:  # reference: equaliser ×2 on the target blend word when blending (if it is there)
            reweight = {blend_words[1]: 2.0} if blend is not None and blend.target_tokens else {}
        if reweight:
            equalizer = torch.ones(MAX_TOKENS)
            for word, scale in reweight.items():
                equalizer[require_word(target_prompt, word, tok, "target prompt")] = scale
            cross_edit = AttentionReweight(cross_edit, equalizer)
        opts["reweight"] = reweight

        max_tokens = int(opts["self_replace_max_tokens"])
        return cls(cross_edit, n_cross, n_self, max_tokens, blend, opts, n_uncond_self)

    @staticmethod
    def default_blend_downsample(unet) -> int:
        """Grid the LocalBlend maps come from: the reference's 16×16 grid (latent/4 on SD at 512 px).

        Downsample 4 where the UNet has cross-attention there; otherwise the grid nearest 16×16 (a 16×16 latent
        blends at downsample 1: an 8×8 grid would make every mask cell an eighth of the image).
        """
        found = {info.downsample for _, _, info in unet_attention_layers(unet) if info.is_cross and info.place != "mid"}
        if not found:
            return 4
        if 4 in found:
            return 4
        latent = int(unet.config.sample_size)
        return min(sorted(found), key=lambda d: abs(math.log2(max(latent // d, 1) / 16)))

    # ---- loop hooks ----------------------------------------------------------------------------------------
    def rows_read(self, step: int) -> frozenset[Row]:
        rows = UNCONDITIONAL_ROWS if step < self.n_uncond_self else frozenset()
        if self.blend is not None or step < max(self.n_cross, self.n_self):
            return CONDITIONAL_ROWS | rows
        return rows

    def wants_layer(self, info: LayerInfo) -> bool:
        return True

    def attend(self, info: LayerInfo, attn, query, key, value):
        if not info.is_cross:
            return self.replace_self_attention(query, key, value)
        s, t = self.row_index("source", "cond"), self.row_index("target", "cond")
        if s is None or t is None:
            return None
        editing = self.step < self.n_cross
        blending = self.blend is not None and self.blend.wants(info)
        if not (editing or blending):
            return None
        pair = [s, t]
        probs = attention_probs(attn, query[pair], key[pair])  # (2, heads, queries, 77)
        if editing:
            probs = torch.stack([probs[0], self.cross_edit(probs[0], probs[1])])
        if blending:
            self.blend.accumulate(probs)
        # Only the target row uses the edited maps; every other row (the source included) keeps SDPA, so the
        # source branch computes bit for bit what it computes without the editor.
        out = torch.empty_like(query)
        others = [r for r in range(query.shape[0]) if r != t]
        out[others] = F.scaled_dot_product_attention(query[others], key[others], value[others])
        out[t] = torch.matmul(probs[1].to(value.dtype), value[t])
        return out

    def replace_self_attention(self, query, key, value):
        """softmax(Q_src K_srcᵀ)·V_tgt in the target's cond (``n_self`` steps) / uncond (``n_uncond_self``) rows."""
        if query.shape[2] > self.self_max_tokens:
            return None
        halves = [h for h, n in (("cond", self.n_self), ("uncond", self.n_uncond_self)) if self.step < n]
        pairs = [(self.row_index("source", h), self.row_index("target", h)) for h in halves]
        pairs = [(s, t) for s, t in pairs if s is not None and t is not None]
        if not pairs:
            return None
        query, key = query.clone(), key.clone()
        for s, t in pairs:
            query[t], key[t] = query[s], key[s]
        return F.scaled_dot_product_attention(query, key, value)

    def step_callback(self, step: int, latents: Branches) -> Branches:
        latents = super().step_callback(step, latents)
        return self.blend(step, latents) if self.blend is not None else latents

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options, "cross_replace_until_step": self.n_cross,
                "self_replace_until_step": self.n_self, "uncond_self_replace_until_step": self.n_uncond_self}
