"""Stable Diffusion 1.x/2.x and SDXL (base): a UNet on DDIM (reference-settings §1), CLIP conditioning, a VAE."""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InveditError
from ..images import pil_to_tensor, tensor_to_uint8
from ..sampling import DDIMSchedule, RunStats
from .base import Backbone, LayerInfo, register_family

#: Forward order of a UNet's parts (registration order puts up before mid).
PARTS = ("down", "mid", "up")


def check_steps_offset(steps_offset) -> None:
    """``steps_offset`` must be 0 or 1 (see `make_ddim_scheduler`)."""
    if steps_offset not in (0, 1):
        raise InveditError(f"steps_offset must be 0 or 1, got {steps_offset!r}")


def make_ddim_scheduler(config: dict, steps_offset: int = 1):
    """The DDIM scheduler of reference-settings §1 on the checkpoint's betas and prediction type.

    clip_sample off, final alpha = ᾱ[0] (set_alpha_to_one False), "leading" spacing with steps_offset 1, so
    50 steps give t = 981, 961, …, 1 — what every reference run actually used, except Plug-and-Play's, which
    builds its scheduler without the pipeline and so runs 980, 960, …, 0 (``steps_offset=0``).
    """
    check_steps_offset(steps_offset)
    from diffusers import DDIMScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DDIMScheduler.from_config(
            dict(config), clip_sample=False, set_alpha_to_one=False, steps_offset=steps_offset,
            timestep_spacing="leading", thresholding=False, rescale_betas_zero_snr=False,
        )


@register_family
class StableDiffusion(Backbone):
    """Stable Diffusion 1.x/2.x: ``StableDiffusionPipeline``, one CLIP text encoder, epsilon or v prediction."""

    family = "sd"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    components: ClassVar[dict[str, str]] = {"unet": "the UNet", "vae": "the VAE", "scheduler": "the scheduler",
                                            "text_encoder": "CLIP", "tokenizer": "CLIP's tokenizer"}

    @classmethod
    def prepare(cls, pipe, device: torch.device | None = None, steps_offset: int = 1, **options: Any):
        """The DDIM scheduler of reference-settings §1 (``steps_offset`` 0: Plug-and-Play's timesteps), eval
        mode, quiet."""
        pipe.scheduler = make_ddim_scheduler(pipe.scheduler.config, steps_offset)
        if pipe.scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise InveditError(f"unsupported prediction type {pipe.scheduler.config.prediction_type!r}")
        return super().prepare(pipe, device)

    @classmethod
    def denoiser_of(cls, pipe) -> torch.nn.Module:
        return pipe.unet

    # ---- conditioning -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's last hidden states, (len(prompts), 77, D) (reference-settings §1)."""
        return _hidden_states(self.pipe.tokenizer, self.pipe.text_encoder, prompts, penultimate=False)

    def conditioning(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(encoder_hidden_states, extra UNet kwargs)`` of a conditioning tensor of `encode_prompts`."""
        return embeddings, {}

    # ---- schedule and network call ------------------------------------------------------------------------
    def schedule(self, steps: int) -> DDIMSchedule:
        return DDIMSchedule.from_pipe(self.pipe, steps)

    def denoise(self, latents: torch.Tensor, t, embeddings: torch.Tensor, stats: RunStats) -> torch.Tensor:
        """One UNet call; runs in the UNet's dtype, returns float32 (float64 for float64 latents), counts NFE."""
        unet = self.pipe.unet
        dtype = unet.dtype
        hidden, extra = self.conditioning(embeddings.to(dtype))
        out = unet(latents.to(dtype), t, encoder_hidden_states=hidden, **extra).sample
        stats.nfe += latents.shape[0]
        stats.unet_calls += 1
        return out.to(torch.float64 if latents.dtype == torch.float64 else torch.float32)

    # ---- VAE ----------------------------------------------------------------------------------------------
    def vae_dtype(self) -> torch.dtype:
        """The dtype the VAE runs in: its own (SDXL overrides for its fp16 overflow)."""
        return self.pipe.vae.dtype

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """Latent z₀ = VAE posterior mean × scaling factor (reference-settings §1), float32 (1, C, h, w)."""
        vae, dtype = self.pipe.vae, self.vae_dtype()
        x = pil_to_tensor(image).to(vae.device, dtype)
        with _vae_in(vae, dtype):
            return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Decode latents (N, C, h, w) to PIL images: clamp, ×255, truncate to uint8 (reference-settings §1)."""
        vae, dtype = self.pipe.vae, self.vae_dtype()
        with _vae_in(vae, dtype):
            images = vae.decode((latents / vae.config.scaling_factor).to(dtype)).sample
        return [Image.fromarray(a) for a in tensor_to_uint8(images)]

    # ---- attention ----------------------------------------------------------------------------------------
    def attention_layers(self) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
        return unet_attention_layers(self.pipe.unet)


@register_family
class StableDiffusionXL(StableDiffusion):
    """SDXL base: two CLIP text encoders, a pooled embedding and size conditioning (``time_ids``)."""

    family = "sdxl"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    components: ClassVar[dict[str, str]] = {
        "unet": "the UNet", "vae": "the VAE", "scheduler": "the scheduler", "text_encoder": "CLIP-L",
        "text_encoder_2": "OpenCLIP-G", "tokenizer": "CLIP-L's tokenizer", "tokenizer_2": "OpenCLIP-G's tokenizer"}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Both encoders' penultimate hidden states side by side (77, 768 + 1280) plus one more token holding the
        pooled embedding of the second encoder (zero-padded), (len(prompts), 78, 2048); the empty prompt is all
        zeros when the checkpoint says so (``force_zeros_for_empty_prompt``), as diffusers' SDXL pipeline makes
        it. `conditioning` splits the pooled token off again at the UNet call."""
        pipe = self.pipe
        hidden = torch.cat([_hidden_states(pipe.tokenizer, pipe.text_encoder, prompts, penultimate=True),
                            _hidden_states(pipe.tokenizer_2, pipe.text_encoder_2, prompts, penultimate=True)], dim=-1)
        tok = pipe.tokenizer_2(prompts, padding="max_length", max_length=pipe.tokenizer_2.model_max_length,
                               truncation=True, return_tensors="pt")
        pooled = pipe.text_encoder_2(tok.input_ids.to(pipe.text_encoder_2.device)).text_embeds.to(hidden.dtype)
        if pooled.shape[-1] > hidden.shape[-1]:
            raise InveditError(f"pooled embedding ({pooled.shape[-1]}) wider than the token embeddings "
                               f"({hidden.shape[-1]}); this SDXL variant is not supported")
        packed = torch.cat([hidden, torch.nn.functional.pad(pooled, (0, hidden.shape[-1] - pooled.shape[-1]))[:, None]],
                           dim=1)
        if pipe.config.get("force_zeros_for_empty_prompt", False):
            empty = torch.tensor([not p.strip() for p in prompts], device=packed.device)
            packed = torch.where(empty[:, None, None], torch.zeros_like(packed), packed)
        return packed

    def conditioning(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The pooled token split off, and the size conditioning (original size, crop top-left, target size:
        no crop, the size we work at)."""
        config = self.pipe.unet.config
        pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        r = float(self.resolution)
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=embeddings.dtype, device=embeddings.device)
        n = embeddings.shape[0]
        return embeddings[:, :-1], {"added_cond_kwargs": {"text_embeds": embeddings[:, -1, :pooled_dim],
                                                          "time_ids": time_ids.expand(n, -1)}}

    def vae_dtype(self) -> torch.dtype:
        """float32 for SDXL's VAE in float16, which overflows there (diffusers' ``force_upcast``); a VAE saved
        without that flag (an fp16-fixed one) stays in float16."""
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            return torch.float32
        return vae.dtype


def _hidden_states(tokenizer, text_encoder, prompts: list[str], penultimate: bool) -> torch.Tensor:
    tok = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    out = text_encoder(tok.input_ids.to(text_encoder.device), output_hidden_states=penultimate)
    return out.hidden_states[-2] if penultimate else out[0]


@contextlib.contextmanager
def _vae_in(vae, dtype: torch.dtype):
    """The VAE in ``dtype`` for the block, back in its own dtype after."""
    own = vae.dtype
    if own == dtype:
        yield
        return
    vae.to(dtype)
    try:
        yield
    finally:
        vae.to(own)


def unet_attention_layers(unet) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
    """Every attention module of a `UNet2DConditionModel` with its `LayerInfo`, in forward order."""
    n_down = len(unet.down_blocks)
    n_up = len(unet.up_blocks)
    found = []
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
        found.append((name, module, place, downsample, name.rpartition(".")[0]))
    found.sort(key=lambda f: PARTS.index(f[2]))  # stable: module order within a part is forward order
    order = {block: k for k, block in enumerate(dict.fromkeys(f[4] for f in found))}
    return [(name, module, LayerInfo(name, place, bool(module.is_cross_attention), downsample, block, order[block],
                                     len(order)))
            for name, module, place, downsample, block in found]
