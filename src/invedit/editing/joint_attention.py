"""An attention processor for the joint image–text attention of SD 3 / 3.5 and FLUX.1 that lets an editor see and
change the queries, keys and values of every token before the attention is computed.

It computes what diffusers' `JointAttnProcessor2_0` (SD3: image tokens first, then text) and `FluxAttnProcessor`
(FLUX: text tokens first; rotary position embedding on q and k; single-stream blocks project [text, image] together
and have no output projection) compute, with one call in between: ``editor.joint_attend(info, q, k, v, image)``
gets q, k, v as (batch, heads, tokens, head_dim) — normalised and, on FLUX, rotated — and the slice of the image
tokens, and returns the q, k, v to attend with. Installed only for the edit of an editor that asks for it
(`Editor.attention_processor`), on the layers it chooses; every other editor keeps diffusers' own processors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import LayerInfo


class JointEditProcessor:
    """Processor of one joint-attention layer (``text_first``: FLUX's token order)."""

    def __init__(self, editor, info: LayerInfo, text_first: bool):
        self.editor, self.info, self.text_first = editor, info, text_first

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None, *args, **kwargs):
        batch = hidden_states.shape[0]
        head_dim = attn.to_k.out_features // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), \
            heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        joint = encoder_hidden_states is not None and getattr(attn, "add_q_proj", None) is not None
        n_image = hidden_states.shape[1]
        if joint:
            text_q, text_k, text_v = (heads(proj(encoder_hidden_states))
                                      for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            pairs = ((text_q, query), (text_k, key), (text_v, value))
            query, key, value = (torch.cat(p if self.text_first else p[::-1], dim=2) for p in pairs)
            self.editor.image_tokens = n_image
        elif self.text_first:  # FLUX single-stream block: [text, image] projected together
            n_image = self.editor.image_tokens
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
        tokens = query.shape[2]
        if n_image is None or n_image > tokens:
            raise RuntimeError(f"{self.info.name}: cannot place the image tokens among {tokens}")
        image = slice(tokens - n_image, tokens) if self.text_first else slice(0, n_image)
        if self.editor.active:
            self.editor.layer_calls += 1
            query, key, value = self.editor.joint_attend(self.info, query, key, value, image)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if not joint:
            if getattr(attn, "to_out", None) is None:  # FLUX single-stream: the block projects the output
                return out
            return attn.to_out[1](attn.to_out[0](out))
        text_tokens = encoder_hidden_states.shape[1]
        if self.text_first:
            text_out, out = out[:, :text_tokens], out[:, text_tokens:]
        else:
            out, text_out = out[:, :n_image], out[:, n_image:]
        if not getattr(attn, "context_pre_only", False):
            text_out = attn.to_add_out(text_out.contiguous())
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, text_out
