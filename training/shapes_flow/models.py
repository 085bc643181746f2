"""Builders of the flow model's parts: the MM-DiT from a `FlowTrainConfig`, the scheduler, and the parts shared
with the embedded UNet model (VAE, word tokenizer, text encoder) loaded from its folder."""

from __future__ import annotations

from pathlib import Path

import torch

from training.shapes_flow.config import FlowTrainConfig

#: CLIP width of the shared text encoder, twice (SD3's CLIP-L and CLIP-G slots hold the same encoder)
CLIP_SLOTS = 2


def build_transformer(cfg: FlowTrainConfig, text_width: int):
    """SD3's MM-DiT at the shapes world's size: joint attention over 64 image tokens and the prompt tokens."""
    from diffusers import SD3Transformer2DModel

    latent = cfg.size // 4  # the shared VAE downsamples by 4
    return SD3Transformer2DModel(sample_size=latent, patch_size=cfg.patch_size, in_channels=4, out_channels=4,
                                 num_layers=cfg.layers, attention_head_dim=cfg.head_dim,
                                 num_attention_heads=cfg.heads, joint_attention_dim=CLIP_SLOTS * text_width,
                                 caption_projection_dim=cfg.width, pooled_projection_dim=CLIP_SLOTS * text_width,
                                 pos_embed_max_size=latent // cfg.patch_size)


def build_scheduler(cfg: FlowTrainConfig):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)


def flow_schedule(cfg: FlowTrainConfig, steps: int):
    """invedit's `FlowSchedule` of ``steps`` steps on the scheduler's shifted sigmas, as the SD3 path builds it."""
    from invedit.flow import FlowSchedule

    side = cfg.size // 4
    return FlowSchedule.from_config(build_scheduler(cfg).config, steps, "sd3", (side // cfg.patch_size) ** 2)


def shifted_sigma(s: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift σ' = shift·σ / (1 + (shift − 1)·σ) (Esser et al. 2024, §5.3.2; the scheduler's formula)."""
    return shift * s / (1 + (shift - 1) * s)


def load_shared(unet_dir: Path, cfg: FlowTrainConfig):
    """``(vae, tokenizer, text_encoder)`` of the embedded UNet model, float32, frozen. The text encoder gains an
    identity ``text_projection`` (`CLIPTextModelWithProjection`, as SD3 reads its pooled embedding); the tokenizer
    pads to ``cfg.text_tokens``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(unet_dir / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(unet_dir / "tokenizer", model_max_length=cfg.text_tokens)
    plain = CLIPTextModel.from_pretrained(unet_dir / "text_encoder", dtype=torch.float32)
    config = plain.config
    config.architectures = ["CLIPTextModelWithProjection"]
    text = CLIPTextModelWithProjection(config)
    text.text_model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        text.text_projection.weight.copy_(torch.eye(config.projection_dim, config.hidden_size))
    return vae, tokenizer, text.eval().requires_grad_(False)


@torch.no_grad()
def encode_captions(tokenizer, text, captions: list[str], cfg: FlowTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning as `StableDiffusion3Pipeline.encode_prompt` builds it with this encoder in both CLIP slots and
    no T5: ``(tokens (N, text_tokens + t5_tokens, 2·W), pooled (N, 2·W))``."""
    ids = tokenizer(captions, padding="max_length", max_length=cfg.text_tokens, truncation=True,
                    return_tensors="pt").input_ids
    out = text(ids, output_hidden_states=True)
    hidden, pooled = out.hidden_states[-2], out.text_embeds
    tokens = torch.cat([hidden] * CLIP_SLOTS, dim=-1)
    zeros = tokens.new_zeros(len(captions), cfg.t5_tokens, tokens.shape[-1])
    return torch.cat([tokens, zeros], dim=1), torch.cat([pooled] * CLIP_SLOTS, dim=-1)
