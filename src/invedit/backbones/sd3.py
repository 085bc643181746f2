"""Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`): MM-DiT on 2×2 latent patches, rectified flow with a
static shift, classifier-free guidance over two rows, timestep σ·1000 (Esser et al. 2024)."""

from __future__ import annotations

import torch

from .base import register_family
from .mmdit import FlowTransformerBackbone, clip_tokens, pack_pooled, unpack_pooled

#: T5 tokens StableDiffusion3Pipeline reads by default (``max_sequence_length``; a model folder's invedit.json may
#: set another, as the embedded shapes-flow model does: it was trained without T5 and without its zero tokens).
T5_TOKENS = 256


@register_family
class SD3Backbone(FlowTransformerBackbone):
    """SD3 / SD3.5: CLIP-L + CLIP-G penultimate states (zero-padded to T5's width) followed by T5 states, and both
    CLIPs' pooled projections concatenated (packed as the last token)."""

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    guidance_mode = "cfg"
    convention = "sd3"
    default_t5_tokens = T5_TOKENS
    t5_name = "text_encoder_3"

    @property
    def patch(self) -> int:
        return int(self.denoiser.config.patch_size)

    def _clip(self, tokenizer, encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = clip_tokens(tokenizer, prompts, self.pipe.tokenizer_max_length)
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """One conditioning tensor per prompt, (N, 77 + 256 + 1, D_T5) float32, as `encode_prompt` builds it
        (penultimate CLIP states side by side, padded to the T5 width, then the T5 states), plus the pooled token.
        (77: the CLIP tokenizer's length; 256: `t5_tokens`.)"""
        pipe = self.pipe
        hidden_1, pooled_1 = self._clip(pipe.tokenizer, pipe.text_encoder, prompts)
        hidden_2, pooled_2 = self._clip(pipe.tokenizer_2, pipe.text_encoder_2, prompts)
        clip = torch.cat([hidden_1, hidden_2], dim=-1).float()
        if pipe.text_encoder_3 is None:  # SD3 run without T5: zeros, as the pipeline does
            t5 = torch.zeros(len(prompts), self.t5_tokens, self.denoiser.config.joint_attention_dim)
        else:
            ids = pipe.tokenizer_3(prompts, padding="max_length", max_length=self.t5_tokens, truncation=True,
                                   add_special_tokens=True, return_tensors="pt").input_ids
            t5 = pipe.text_encoder_3(ids.to(pipe.text_encoder_3.device))[0].float()
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip, t5.to(clip.device)], dim=-2)
        return pack_pooled(hidden, torch.cat([pooled_1, pooled_2], dim=-1).float())

    def denoise(self, latents: torch.Tensor, t: float, embeddings: torch.Tensor, stats, *,
                guidance: float | None = None) -> torch.Tensor:
        """One transformer call on (N, C, h, w) latents at timestep ``t`` (σ·1000): the velocity, float32 (float64
        for float64 latents); counts ``stats.nfe += N``. SD3 has no guidance input (``guidance`` must be None)."""
        if guidance is not None:
            raise ValueError("SD3 takes no guidance input; classifier-free guidance combines two rows")
        transformer = self.denoiser
        dtype = transformer.dtype
        hidden, pooled = unpack_pooled(embeddings.to(transformer.device, dtype),
                                       transformer.config.pooled_projection_dim)
        n = latents.shape[0]
        timestep = torch.full((n,), t, dtype=torch.float32, device=transformer.device)
        out = transformer(hidden_states=latents.to(transformer.device, dtype), timestep=timestep,
                          encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]
        self._count(stats, n)
        return out.to(self._output_dtype(latents))
