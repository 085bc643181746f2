"""Attention processors that let an editor read and change attention, installed per layer for one run.

Everything goes through diffusers' `Attention.set_processor` API (no class-name matching): every attention
module of the UNet gets an `EditorAttnProcessor` that computes q, k, v as diffusers' `AttnProcessor2_0` does and
hands them to the editor, which returns the attention output for the whole batch (or ``None`` for plain SDPA).
In cross-attention the value input goes through the inversion's `ValueTransforms` (StyleDiffusion maps it).
`installed` is the one place processors and module forward hooks are put on a UNet and taken off again.
Installing hooks onto zero layers, or a UNet that never calls them, is an error — never a silent no-op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..backbones.base import LayerInfo
from ..errors import InveditError

Row = tuple[str, str]  # (branch, half), as in `invedit.sampling`


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


class ValueTransforms:
    """Per-row transforms of the cross-attention value input during one UNet call, set by an inversion.

    StyleDiffusion maps the value input of chosen rows (``{(branch, half): callable}``); the processors of every
    cross-attention layer apply them beside whatever the editor does. ``calls`` counts the layers that did, so
    transforms no layer applied fail loudly.
    """

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.transforms: dict[Row, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.calls = 0

    def set(self, rows: list[Row], transforms: dict[Row, Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.rows, self.transforms, self.calls = list(rows), dict(transforms), 0

    def __call__(self, context: torch.Tensor) -> torch.Tensor | None:
        """Each row's context through its row's transform (None: no transform this call)."""
        if not self.transforms:
            return None
        if context.shape[0] != len(self.rows):
            raise RuntimeError(f"value transforms for rows {self.rows} but a batch of {context.shape[0]}")
        self.calls += 1
        return torch.cat([self.transforms[row](x) if row in self.transforms else x
                          for row, x in zip(self.rows, context.split(1))])


class EditorAttnProcessor:
    """Attention processor of one layer: computes q, k, v, applies value transforms, lets the editor attend.

    ``editor`` None: plain SDPA, only the value transforms applied.
    """

    def __init__(self, editor, info: LayerInfo, values: ValueTransforms | None = None):
        self.editor = editor
        self.info = info
        self.values = values
        self.delegate = editor is not None

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
        value_states = None
        if encoder_hidden_states is not None and self.values is not None:
            value_states = self.values(encoder_hidden_states)
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
def installed(model, editor=None, values: ValueTransforms | None = None) -> Iterator[int]:
    """Install an editor's hooks (and an inversion's value transforms) on a model's denoiser for a run.

    The one place hooks are put on a UNet: attention processors on the layers ``editor.wants_layer`` picks
    (one processor per layer, also applying ``values`` in cross-attention), pass-through processors on the
    other cross-attention layers when ``values`` is given, and ``editor.forward_hooks(unet)`` as module forward
    hooks. Everything is restored in a ``finally``, also when the run raises. An editor that
    ``requires_hooks`` but hooks nothing raises, as does ``values`` on a UNet without cross-attention.
    Yields the number of hooked places (attention layers the editor attends in, plus modules).
    """
    unet = model.denoiser
    originals = dict(unet.attn_processors)
    processors = dict(originals)
    attending, value_layers = 0, 0
    for name, _module, info in model.attention_layers():
        key = f"{name}.processor"
        if key not in processors:
            continue
        wants = editor is not None and editor.wants_layer(info)
        applies_values = values is not None and info.is_cross
        if wants or applies_values:
            cross_values = values if info.is_cross else None
            processors[key] = (editor.attention_processor(info, cross_values) if wants
                               else EditorAttnProcessor(None, info, cross_values))
        attending += wants
        value_layers += applies_values
    hooks = list(editor.forward_hooks(unet)) if editor is not None else []
    if editor is not None and editor.requires_hooks and attending + len(hooks) == 0:
        raise InveditError(f"editor {editor.name!r} hooked 0 attention layers of this UNet; it cannot edit")
    if values is not None and value_layers == 0:
        raise InveditError("this UNet has no cross-attention layers whose value input could be transformed")
    handles = []
    unet.set_attn_processor(dict(processors))  # the setter pops from the dict it is given: pass a copy
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(_while_active(editor, hook)))
        yield attending + len(hooks)
    finally:
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(dict(originals))


def _while_active(editor, hook):
    """A forward hook that runs only while the editor is active, counted in ``editor.layer_calls``."""

    def run(module, args, output):
        if not editor.active:
            return None
        editor.layer_calls += 1
        return hook(module, args, output)

    return run


def grid_shape(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer's token grid from its token count and the latent's (H, W)."""
    H, W = latent_hw
    scale = math.sqrt(H * W / tokens)
    h, w = round(H / scale), round(W / scale)
    if h * w != tokens:
        raise RuntimeError(f"cannot place {tokens} tokens on a grid of aspect {H}x{W}")
    return h, w
