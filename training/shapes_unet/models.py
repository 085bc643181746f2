"""Builders of the shapes model's parts (VAE, UNet, text encoder, tokenizer, scheduler) from a `TrainConfig`."""

from __future__ import annotations

from pathlib import Path

import torch

from invedit.toy import scenes
from training.shapes_unet.config import TrainConfig


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.vae_channels,
                         layers_per_block=cfg.vae_layers_per_block, latent_channels=4, norm_num_groups=32,
                         sample_size=cfg.size, mid_block_add_attention=False)


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    vae_factor = 2 ** (len(cfg.vae_channels) - 1)
    return UNet2DConditionModel(sample_size=cfg.size // vae_factor, in_channels=4, out_channels=4,
                                layers_per_block=cfg.unet_layers_per_block, block_out_channels=cfg.unet_channels,
                                down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_hidden,
                                attention_head_dim=cfg.unet_heads, norm_num_groups=32)


def build_text_encoder(cfg: TrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
                            intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                            num_attention_heads=cfg.text_heads, max_position_embeddings=77,
                            projection_dim=cfg.text_hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def build_scheduler():
    """SD-1.x DDIM scheduler (also used for the training noise schedule)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type="epsilon")


def build_tokenizer(folder: Path):
    from invedit.word_tokenizer import build_word_tokenizer

    return build_word_tokenizer(scenes.VOCABULARY, folder)


def encode_prompts(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to 77 (as `StableDiffusionPipeline` does)."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _classic_attention(model: torch.nn.Module) -> None:
    """Plain bmm/softmax attention: on this CPU ~1.5x faster than SDPA's flash kernel in bf16 training."""
    from diffusers.models.attention_processor import AttnProcessor

    model.set_attn_processor(AttnProcessor())
