"""FLUX.1 (`FluxPipeline`): MM-DiT + single-stream blocks on 2×2-packed latents with rotary position ids,
rectified flow with a resolution-dependent shift, timestep σ; FLUX.1-dev embeds the guidance scale (one row),
FLUX.1-schnell takes none (Black Forest Labs 2024)."""

from __future__ import annotations

import warnings

import torch

from ..errors import InveditWarning
from .base import register_family
from .mmdit import FlowTransformerBackbone, clip_tokens, pack_pooled, unpack_pooled

#: T5 tokens FluxPipeline reads by default (``max_sequence_length``).
T5_TOKENS = 512
#: FluxPipeline's default image side (``default_sample_size`` 128 latent cells).
DEFAULT_SAMPLE_SIZE = 128


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) → (N, h/2·w/2, 4C): each 2×2 patch of latent cells one token (FluxPipeline._pack_latents)."""
    n, c, h, w = latents.shape
    patches = latents.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent of ``height`` × ``width`` cells."""
    n, _, channels = tokens.shape
    grid = tokens.reshape(n, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, channels // 4, height, width)


def image_ids(height: int, width: int) -> torch.Tensor:
    """Rotary position ids of the packed tokens, (h/2·w/2, 3): [0, row, column]."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


@register_family
class FluxBackbone(FlowTransformerBackbone):
    """FLUX.1-dev / -schnell: T5 states as the token sequence and CLIP's pooled output (packed as the last token)."""

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    convention = "flux"
    default_t5_tokens = T5_TOKENS
    t5_name = "text_encoder_2"
    components = {"transformer": "the MM-DiT transformer", "vae": "the VAE", "scheduler": "the flow scheduler",
                  "text_encoder": "CLIP-L (the pooled embedding)", "text_encoder_2": "T5",
                  "tokenizer": "CLIP-L's tokenizer", "tokenizer_2": "T5's tokenizer"}
    #: The guidance scale FLUX.1-dev's transformer is given when a call names none (FluxPipeline's default).
    embedded_guidance: float = 3.5

    @property
    def guidance_mode(self) -> str:
        return "embedded" if self.denoiser.config.get("guidance_embeds", False) else "none"

    @property
    def family_guidance_scale(self) -> float:
        """FLUX.1-schnell (no guidance input): 1, one conditional row per branch, as the model was distilled to
        run; FLUX.1-dev: the family's default (given to the transformer as its guidance input)."""
        return 1.0 if self.guidance_mode == "none" else self.family_guidance

    def check_guidance_for_model(self, guidance: float) -> None:
        """FLUX.1-schnell at guidance ≠ 1 warns in one line: it has no guidance input, so any other scale runs
        classifier-free guidance over two rows, at twice the cost, which the guidance-distilled model was not
        trained for (the default, 1, runs it as distilled). A warning, not a refusal: CFG rows on schnell are a
        setting some comparisons use on purpose."""
        if self.guidance_mode == "none" and guidance != 1:
            warnings.warn(f"FLUX.1-schnell has no guidance input: guidance {guidance:g} runs classifier-free "
                          "guidance over two rows, at twice the cost, which it was not trained for; leave the "
                          "guidance out (1) to run it as distilled", InveditWarning, stacklevel=2)

    @property
    def native_resolution(self) -> int:
        return DEFAULT_SAMPLE_SIZE * self.vae_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """One conditioning tensor per prompt, (N, 512 + 1, D_T5) float32: FluxPipeline.encode_prompt's T5 states,
        then CLIP's pooled output as the last token."""
        pipe = self.pipe
        ids = clip_tokens(pipe.tokenizer, prompts, pipe.tokenizer_max_length)
        pooled = pipe.text_encoder(ids.to(pipe.text_encoder.device), output_hidden_states=False).pooler_output
        t5_ids = pipe.tokenizer_2(prompts, padding="max_length", max_length=self.t5_tokens, truncation=True,
                                  return_tensors="pt").input_ids
        hidden = pipe.text_encoder_2(t5_ids.to(pipe.text_encoder_2.device), output_hidden_states=False)[0]
        return pack_pooled(hidden.float(), pooled.float().to(hidden.device))

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4  # the transformer sees 2×2-packed latents

    def text_layout(self) -> list[tuple[object, int, int, int]]:
        """T5 positions (no BOS) alone: FLUX's text tokens are T5's."""
        return [(self.pipe.tokenizer_2, 0, self.t5_tokens, 0)]

    def denoise(self, latents: torch.Tensor, t: float, embeddings: torch.Tensor, stats, *,
                guidance: float | torch.Tensor | None = None) -> torch.Tensor:
        """One transformer call on (N, C, h, w) latents at timestep ``t`` (σ): packs, calls with the position ids
        and, on FLUX.1-dev, the guidance scale (``guidance``: one value or one per row; default
        `embedded_guidance`), unpacks; the velocity, float32 (float64 for float64 latents); counts NFE.

        Raises:
            ValueError: a guidance scale given to a model without a guidance input (FLUX.1-schnell).
        """
        transformer = self.denoiser
        if guidance is not None and self.guidance_mode == "none":
            raise ValueError("this FLUX model has no guidance input (guidance mode 'none')")
        device, dtype = transformer.device, transformer.dtype
        n, _, h, w = latents.shape
        hidden, pooled = unpack_pooled(embeddings.to(device, dtype), transformer.config.pooled_projection_dim)
        kwargs = {}
        if self.guidance_mode == "embedded":
            scale = self.embedded_guidance if guidance is None else guidance
            kwargs["guidance"] = torch.as_tensor(scale, dtype=torch.float32, device=device).expand(n)
        out = transformer(hidden_states=pack_latents(latents.to(device, dtype)),
                          timestep=torch.full((n,), t, dtype=torch.float32, device=device),
                          pooled_projections=pooled, encoder_hidden_states=hidden,
                          txt_ids=torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype),
                          img_ids=image_ids(h, w).to(device, dtype), return_dict=False, **kwargs)[0]
        self._count(stats, n)
        return unpack_latents(out, h, w).to(self._output_dtype(latents))

    def _layer_groups(self) -> list[tuple[str, str]]:
        return [("transformer_blocks", "joint"), ("single_transformer_blocks", "single")]
