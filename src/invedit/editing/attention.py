"""Attention processors that let an editor read and change attention, installed per layer for one run.

Everything goes through diffusers' `Attention.set_processor` API (no class-name matching): every attention
module of the UNet gets an `EditorAttnProcessor` that computes q, k, v as diffusers' `AttnProcessor2_0` does and
hands them to the editor, which returns the attention output for the whole batch (or ``None`` for plain SDPA).
In cross-attention the value input is ``editor.value_context(context)``: the per-row transforms an inversion
sets (StyleDiffusion maps the value input; `value_processors` hooks the cross-attention layers an editor
leaves alone). Installing hooks onto zero layers, or a UNet that never calls them, is an error — never a silent
no-op.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InveditError


@dataclass(frozen=True)
class LayerInfo:
    """Where an attention layer sits: its module path, U-Net part, cross/self, and grid downsampling."""

    name: str
    place: str  # "down" | "mid" | "up"
    is_cross: bool
    downsample: int  # the layer's token grid is the latent grid divided by this


def attention_layers(unet) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
    """Every attention module of a `UNet2DConditionModel` with its `LayerInfo`, in forward order."""
    n_down = len(unet.down_blocks)
    n_up = len(unet.up_blocks)
    layers = []
    for name, module in unet.named_modules():
        if not hasattr(module, "set_processor") or not hasattr(module, "to_q"):
            continue
        match = re.match(r"(down_blocks|up_blocks|mid_block)(?:\.(\d+))?\.", name)
        if match is None:
            continue
        part, index = match.group(1), int(match.group(2) or 0)
        if part == "down_blocks":
            place, downsample = "down", 2**index
        elif part == "up_blocks":
            place, downsample = "up", 2 ** (n_up - 1 - index)
        else:
            place, downsample = "mid", 2 ** (n_down - 1)
        layers.append((name, module, LayerInfo(name, place, bool(module.is_cross_attention), downsample)))
    return layers


def attention_inputs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                     value_states: torch.Tensor | None = None):
    """q, k, v as (B, heads, tokens, head_dim), the way diffusers' `AttnProcessor2_0` computes them.

    ``value_states`` (cross-attention only) replaces the context the values are computed from.
    """
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if value_states is not None:
            value_states = attn.norm_encoder_hidden_states(value_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states if value_states is None else value_states)
    batch = hidden_states.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def attention_probs(attn, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Explicit softmax(q kᵀ · scale), in float32 — only for the layers and rows an editor edits."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
    return scores.softmax(dim=-1)


class EditorAttnProcessor:
    """Attention processor that delegates the attention itself to an editor (for one layer).

    With ``delegate=False`` it only applies the editor's value-context transforms (plain attention otherwise).
    """

    def __init__(self, editor, info: LayerInfo, delegate: bool = True):
        self.editor = editor
        self.info = info
        self.delegate = delegate

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        value_states = None if encoder_hidden_states is None else self.editor.value_context(encoder_hidden_states)
        query, key, value = attention_inputs(attn, hidden_states, encoder_hidden_states, value_states)
        if attention_mask is not None:
            seq = key.shape[2]
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        out = None
        if self.delegate and self.editor.active and attention_mask is None:
            self.editor.layer_calls += 1
            out = self.editor.attend(self.info, attn, query, key, value)
        if out is None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def editor_processors(unet, editor) -> Iterator[int]:
    """Install ``editor``'s processors on the layers it wants for the duration of a run; yields the count.

    The original processors are restored in a ``finally``. Hooking zero layers raises.
    """
    originals = dict(unet.attn_processors)
    processors = dict(originals)
    hooked = 0
    for name, _module, info in attention_layers(unet):
        key = f"{name}.processor"
        if key in processors and editor.wants_layer(info):
            processors[key] = EditorAttnProcessor(editor, info)
            hooked += 1
    if hooked == 0:
        raise InveditError(f"editor {editor.name!r} hooked 0 attention layers of this UNet; it cannot edit")
    unet.set_attn_processor(dict(processors))  # the setter pops from the dict it is given: pass a copy
    try:
        yield hooked
    finally:
        unet.set_attn_processor(dict(originals))


@contextmanager
def value_processors(unet, editor) -> Iterator[int]:
    """Make every cross-attention layer apply ``editor.value_context`` for the duration; yields the layer count.

    Layers the editor already hooks keep their processor (one processor per layer); the others get a
    pass-through `EditorAttnProcessor`. A UNet without cross-attention raises. Processors restored after.
    """
    originals = dict(unet.attn_processors)
    processors = dict(originals)
    cross = 0
    for name, _module, info in attention_layers(unet):
        key = f"{name}.processor"
        if key not in processors or not info.is_cross:
            continue
        cross += 1
        current = processors[key]
        if not (isinstance(current, EditorAttnProcessor) and current.editor is editor):
            processors[key] = EditorAttnProcessor(editor, info, delegate=False)
    if cross == 0:
        raise InveditError("this UNet has no cross-attention layers whose value input could be transformed")
    unet.set_attn_processor(dict(processors))
    try:
        yield cross
    finally:
        unet.set_attn_processor(dict(originals))


def grid_shape(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer's token grid from its token count and the latent's (H, W)."""
    H, W = latent_hw
    scale = math.sqrt(H * W / tokens)
    h, w = round(H / scale), round(W / scale)
    if h * w != tokens:
        raise RuntimeError(f"cannot place {tokens} tokens on a grid of aspect {H}x{W}")
    return h, w
