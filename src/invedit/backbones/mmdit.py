"""What SD3 and FLUX share: a rectified-flow transformer (MM-DiT) over the VAE latents of an 8× (tiny: 4×) VAE with
a shift factor, CLIP + T5 text encoders whose pooled CLIP embedding rides along as the conditioning's last token."""

from __future__ import annotations

import hashlib
import json

import torch
from PIL import Image

from ..editing.attention import LayerInfo
from ..errors import InveditError
from ..flow import FlowSchedule
from ..images import pil_to_tensor, tensor_to_uint8
from .base import Backbone

#: Config keys that say how a model was saved, not what it computes (left out of the fingerprint).
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version", "_use_default_values",
                         "_commit_hash", "architectures", "dtype", "torch_dtype"}


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


class FlowTransformerBackbone(Backbone):
    """Shared parts of the SD3 and FLUX backbones (subclasses define the text encoding and the transformer call)."""

    #: `invedit.flow.CONVENTIONS` key of the family.
    convention: str = ""
    #: The transformer's token grid per latent cell: 2×2 patches (SD3) or 2×2 packing (FLUX).
    patch: int = 2

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def tokenizer(self):
        """The CLIP tokenizer (77 tokens), the shortest reader of the prompt."""
        return self.pipe.tokenizer

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution_multiple(self) -> int:
        return self.vae_factor * self.patch

    def fingerprint(self) -> str:
        """Short hash of the configs and a sample of the weights of every model of the pipeline."""
        cached = getattr(self.pipe, "_invedit_fingerprint", None)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        for _, module in sorted(self.pipe.components.items()):
            if not isinstance(module, torch.nn.Module):
                continue
            config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
            h.update(json.dumps({k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS},
                                sort_keys=True, default=str).encode())
            params = list(module.parameters())
            for p in params[:: max(1, len(params) // 16)]:
                h.update(p.detach().float().flatten()[:64].cpu().numpy().tobytes())
        self.pipe._invedit_fingerprint = h.hexdigest()[:16]
        return self.pipe._invedit_fingerprint

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
        config = self.vae.config
        x = pil_to_tensor(image).to(self.vae.device, self.vae.dtype)
        mode = self.vae.encode(x).latent_dist.mode()
        return ((mode - (config.shift_factor or 0.0)) * config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents (N, C, h, w) → PIL: ÷ scaling_factor + shift_factor, VAE decode, clamp, ×255, truncate."""
        config = self.vae.config
        raw = latents / config.scaling_factor + (config.shift_factor or 0.0)
        images = self.vae.decode(raw.to(self.vae.device, self.vae.dtype)).sample
        return [Image.fromarray(a) for a in tensor_to_uint8(images)]

    def _layer_groups(self) -> list[tuple[str, str]]:
        """``(ModuleList attribute, place)`` of the transformer's block lists, in forward order."""
        return [("transformer_blocks", "joint")]

    def attention_layers(self) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
        """Every block's attention (joint image–text attention; FLUX's single blocks too), in forward order."""
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

    def _call_dtype(self, latents: torch.Tensor) -> torch.dtype:
        return torch.float64 if latents.dtype == torch.float64 else torch.float32

    @staticmethod
    def _count(stats, rows: int) -> None:
        stats.nfe += rows
        stats.unet_calls += 1
