"""What SD3 and FLUX share: a rectified-flow transformer (MM-DiT) over the latents of a VAE with a shift factor,
CLIP + T5 text encoders whose pooled CLIP embedding rides along as the conditioning's last token."""

from __future__ import annotations

from abc import abstractmethod

import torch
from PIL import Image

from ..errors import InveditError
from ..flow import FlowSchedule
from ..images import pil_to_tensor, tensor_to_uint8
from .base import Backbone, LayerInfo


def pack_pooled(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Token states (N, L, D) and a pooled embedding (N, P ≤ D) as one tensor (N, L + 1, D): the pooled one is the
    last token, zero-padded to D (as invedit packs SDXL's)."""
    if pooled.shape[-1] > hidden.shape[-1]:
        raise InveditError(f"pooled embedding ({pooled.shape[-1]}) wider than the token embeddings "
                           f"({hidden.shape[-1]}); this model variant is not supported")
    pad = torch.nn.functional.pad(pooled.to(hidden.dtype), (0, hidden.shape[-1] - pooled.shape[-1]))
    return torch.cat([hidden, pad[:, None]], dim=1)


def unpack_pooled(embeddings: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_pooled`: ``(token states (N, L, D), pooled (N, pooled_dim))``."""
    return embeddings[:, :-1], embeddings[:, -1, :pooled_dim]


def clip_tokens(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Token ids padded/truncated to ``max_length``, as the diffusers SD3/FLUX pipelines tokenize."""
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def absent_components(source: str) -> dict[str, None]:
    """Components a local pipeline folder saved as absent (``[null, null]`` in model_index.json, e.g. SD3 without
    its T5 encoder): diffusers loads such a folder only when they are passed as None explicitly."""
    import json
    from pathlib import Path

    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}  # from_pretrained reports the broken file
    optional = ("text_encoder_3", "tokenizer_3")
    return {name: None for name in optional if entries.get(name) == [None, None]}


class FlowTransformerBackbone(Backbone):
    """Shared parts of the SD3 and FLUX backbones (subclasses define the text encoding and the transformer call).

    The pipeline keeps its own `FlowMatchEulerDiscreteScheduler`: `schedule` reads its config.
    """

    #: SD 3 / FLUX are tested with these (earlier transformers 4.x read the T5 tokenizers differently; the lowest
    #: versions that work are not established, so invedit asks for the ones it tests).
    requires = {"diffusers": "0.42.1", "transformers": "5.25.0"}
    #: `invedit.flow.CONVENTIONS` key of the family.
    convention: str = ""
    schedule_kind = "flow"
    #: Shared attention: on the embedded flow model mmdit-p2p at its official defaults trades 8 dB of background
    #: for its success rate (benchmarks/mmdit_p2p_toy.md); `--editor mmdit-p2p` is one option away.
    default_editor = "shared-attention"
    denoiser_name = "transformer"
    #: T5 tokens the family's pipeline reads by default (its ``max_sequence_length``).
    default_t5_tokens: int = 256

    @property
    def t5_tokens(self) -> int:
        """T5 tokens of the conditioning: the pipeline's default ``max_sequence_length``, or the one the model's
        folder asks for (``call_options`` in its invedit.json)."""
        return int(self.call_options.get("max_sequence_length", self.default_t5_tokens))

    @classmethod
    def denoiser_of(cls, pipe) -> torch.nn.Module:
        return pipe.transformer

    @classmethod
    def load_pipeline(cls, source: str, dtype: torch.dtype, local_only: bool, **options):
        """The family's diffusers pipeline (the class model_index.json names) from a folder or hub id (what
        `invedit.load` calls; ``options``: more `from_pretrained` arguments, e.g. ``quantization_config``)."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local_only,
                                                 **absent_components(source), **options)

    @property
    def patch(self) -> int:
        """Latent cells per transformer token side: 2×2 patches (SD3) or 2×2 packing (FLUX)."""
        return 2

    @property
    def resolution_multiple(self) -> int:
        return self.vae_factor * self.patch

    def activation_width(self) -> int:
        config = self.denoiser.config
        return int(config.num_attention_heads) * int(config.attention_head_dim)

    def denoiser_tokens(self, resolution: int) -> int:
        return (resolution // self.vae_factor // self.patch) ** 2

    def attention_tokens(self, resolution: int) -> int:
        return self.denoiser_tokens(resolution)

    def attention_heads(self) -> int:
        return int(self.denoiser.config.num_attention_heads)

    def image_seq_len(self) -> int:
        """Image tokens the transformer sees at the working resolution (what FLUX's shift μ depends on)."""
        side = self.resolution // self.vae_factor // self.patch
        return side * side

    def schedule(self, steps: int) -> FlowSchedule:
        """The pipeline's own sigmas for ``steps`` steps at the working resolution (`invedit.flow.FlowSchedule`)."""
        return FlowSchedule.from_config(self.pipe.scheduler.config, steps, self.convention, self.image_seq_len())

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """z₀ = (VAE posterior mode − shift_factor) × scaling_factor, float32 (1, C, h, w), as the SD3/FLUX
        pipelines normalize latents."""
        vae = self.pipe.vae
        x = pil_to_tensor(image).to(vae.device, vae.dtype)
        mode = vae.encode(x).latent_dist.mode()
        return ((mode - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents (N, C, h, w) → PIL: ÷ scaling_factor + shift_factor, VAE decode, clamp, ×255, truncate."""
        vae = self.pipe.vae
        raw = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        images = vae.decode(raw.to(vae.device, vae.dtype)).sample
        return [Image.fromarray(a) for a in tensor_to_uint8(images)]

    @property
    def latent_channels(self) -> int:
        """Channels of the (unpacked) latent the VAE makes and the transformer denoises."""
        return int(self.denoiser.config.in_channels)

    def initial_noise(self, seed: int) -> torch.Tensor:
        """The initial latent noise the family's diffusers pipeline draws for one image from
        ``generator=torch.Generator().manual_seed(seed)`` at the working resolution: one ``torch.randn`` of
        (1, C, h, w) on the CPU in the transformer's dtype (diffusers' ``randn_tensor``; FLUX packs it afterwards),
        returned as float32 (1, C, h, w)."""
        side = self.resolution // self.vae_factor
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((1, self.latent_channels, side, side), generator=generator, dtype=self.denoiser.dtype)
        return noise.float().to(self.device)

    @abstractmethod
    def text_layout(self) -> list[tuple[object, int, int, int]]:
        """How the conditioning's text tokens (what joint attention sees as text) are laid out, one entry per
        tokenizer: ``(tokenizer, first word's position, tokens kept, offset in the text tokens)``; a word's
        columns are ``offset + p`` for its token positions ``p`` (`invedit.prompts.word_token_indices`)."""

    def _layer_groups(self) -> list[tuple[str, str]]:
        """``(ModuleList attribute, place)`` of the transformer's block lists, in forward order."""
        return [("transformer_blocks", "joint")]

    def attention_layers(self) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
        """Every block's attention (joint image–text attention; SD3.5's second one, FLUX's single blocks), in forward
        order; ``downsample`` is the token grid's (the patch size)."""
        blocks = [(f"{attr}.{i}", place, block) for attr, place in self._layer_groups()
                  for i, block in enumerate(getattr(self.denoiser, attr))]
        found = []
        for order, (block_name, place, block) in enumerate(blocks):
            for name, module in block.named_children():
                if name.startswith("attn") and hasattr(module, "to_q"):
                    info = LayerInfo(name=f"{block_name}.{name}", place=place, is_cross=False, downsample=self.patch,
                                     block=block_name, order=order, count=len(blocks))
                    found.append((info.name, module, info))
        return found

    @staticmethod
    def _output_dtype(latents: torch.Tensor) -> torch.dtype:
        return torch.float64 if latents.dtype == torch.float64 else torch.float32

    @staticmethod
    def _count(stats, rows: int) -> None:
        stats.nfe += rows
        stats.unet_calls += 1
