"""Instruction-trained editing models, run as baselines: FLUX.1 Kontext (`FluxKontextPipeline`, Black Forest Labs
2025, arXiv 2506.15742) and Qwen-Image-Edit (`QwenImageEditPipeline`, Qwen team 2025, arXiv 2508.02324).

These models were trained to edit: they take the image and an instruction ("make the cat a dog") and generate the
edit, with no inversion and no source prompt. invedit scores them beside the training-free methods on the same
benchmark, so it runs them exactly as their diffusers pipeline does (`InstructionBackbone.instruct` calls the
pipeline itself, with the edit's seed, steps and guidance) and records, times and counts them like every edit. They
are their own families with their own kind of schedule, "instruction": only the ``none`` inversion and the
``instruct`` editor declare it, so every other method is refused on them in one line (`invedit.prepare`).

What invedit sets in the call: the image at the working resolution (square, as every method sees it), the output
at that resolution, the instruction, ``num_inference_steps``, the guidance (Kontext: the transformer's embedded
guidance ``guidance_scale``; Qwen-Image-Edit: ``true_cfg_scale`` against a negative prompt, its transformer having no
guidance input), a CPU generator seeded with the edit's seed, and ``output_type="latent"`` (invedit decodes, as for
every method). Kontext is called with ``_auto_resize=False`` and ``max_area`` = the working resolution squared, so
its output and conditioning stay at the working resolution (at 1024 px, the pipeline's default, this is what its
auto-resize picks for a square image). Qwen-Image-Edit always conditions on the image resized to about one megapixel
(its pipeline's ``calculate_dimensions(1024 * 1024, …)``, not an option), whatever the output resolution.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InveditError
from ..flow import FlowSchedule
from ..images import pil_to_tensor, tensor_to_uint8
from .base import Backbone, LayerInfo, register_family
from .flux import FluxBackbone, unpack_latents


class InstructionBackbone(Backbone):
    """What the instruction-trained families share: their pipeline edits; invedit counts and records it.

    Subclasses give `call_arguments` (the pipeline call for one edit) and `unpack` (its latent output as
    (1, C, h, w)), and the family's recommended guidance and negative prompt.
    """

    schedule_kind = "instruction"
    #: The families are tested with these (diffusers added both pipelines long after invedit's lowest 0.30).
    requires = {"diffusers": "0.42.1", "transformers": "5.25.0"}
    #: The guidance an edit uses when the editor is given none (the model card's example).
    instruction_guidance: ClassVar[float] = 2.5
    #: The negative prompt of true CFG (None: no true CFG).
    default_negative_prompt: ClassVar[str | None] = None
    #: The model's licence, in a few words (README, records).
    licence: ClassVar[str] = ""

    @classmethod
    def denoiser_of(cls, pipe) -> torch.nn.Module:
        return pipe.transformer

    @classmethod
    def load_pipeline(cls, source: str, dtype: torch.dtype, local_only: bool):
        """The family's diffusers pipeline from a folder or hub id (what `invedit.load` calls)."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local_only)

    # ---- the edit ------------------------------------------------------------------------------------------
    @abstractmethod
    def call_arguments(self, image: Image.Image, instruction: str, steps: int, guidance: float,
                       negative_prompt: str | None) -> dict[str, Any]:
        """The pipeline's keyword arguments for one edit (without the generator and output type)."""

    @abstractmethod
    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's latent output (packed tokens) as (1, C, h, w) float32."""

    def instruct(self, image: Image.Image, instruction: str, steps: int, guidance: float,
                 negative_prompt: str | None, seed: int, stats) -> torch.Tensor:
        """One edit by the model's own pipeline: the edited latent (1, C, h, w) float32. ``stats`` counts every
        transformer call and its rows (NFE; true CFG's second call too)."""

        def count(module, args, kwargs) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self._count(stats, int(hidden.shape[0]))

        arguments = self.call_arguments(image, instruction, steps, guidance, negative_prompt)
        generator = torch.Generator("cpu").manual_seed(seed)
        hook = self.denoiser.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with torch.no_grad():
                latents = self.pipe(**arguments, generator=generator, output_type="latent", return_dict=False)[0]
        finally:
            hook.remove()
        return self.unpack(latents).float()

    @staticmethod
    def _count(stats, rows: int) -> None:
        stats.nfe += rows
        stats.unet_calls += 1

    # ---- what the two-branch loop would need: refused -----------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        raise InveditError(f"{self.family} models encode their instruction inside their own pipeline; only the "
                           "'instruct' editor runs them")

    def denoise(self, latents, t, embeddings, stats, **kwargs) -> torch.Tensor:
        raise InveditError(f"{self.family} models are run by their own pipeline; only the 'instruct' editor runs "
                           "them")

    def attention_layers(self) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
        return []


@register_family
class FluxKontextBackbone(InstructionBackbone, FluxBackbone):
    """FLUX.1 Kontext [dev]: FLUX.1's transformer with the image's latent tokens appended to the sequence; the
    guidance scale embedded (one row per step). VAE, schedule and latent packing are FLUX.1's."""

    family = "flux-kontext"
    pipeline_classes = ("FluxKontextPipeline",)
    instruction_guidance = 2.5  # the model card's and diffusers' example (the pipeline's default is 3.5)
    licence = "FLUX.1 [dev] Non-Commercial License"

    def call_arguments(self, image, instruction, steps, guidance, negative_prompt):
        side = self.resolution
        arguments = dict(image=image, prompt=instruction, height=side, width=side, max_area=side * side,
                         _auto_resize=False, num_inference_steps=steps, guidance_scale=guidance,
                         max_sequence_length=self.t5_tokens)
        if negative_prompt is not None:  # true CFG at the same scale (the pipeline's true_cfg_scale)
            arguments.update(negative_prompt=negative_prompt, true_cfg_scale=guidance)
        return arguments

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        cells = self.resolution // self.vae_factor
        return unpack_latents(latents, cells, cells)


@register_family
class QwenImageEditBackbone(InstructionBackbone):
    """Qwen-Image-Edit: a 20 B MM-DiT conditioned on Qwen2.5-VL's states of the instruction and the image, the
    image's latent tokens appended; true CFG against a negative prompt (two calls per step); a causal 3-D VAE
    (one frame) with per-channel latent mean and standard deviation."""

    family = "qwen-image-edit"
    pipeline_classes = ("QwenImageEditPipeline",)
    instruction_guidance = 4.0  # the model card's true_cfg_scale
    default_negative_prompt = " "  # the model card's
    licence = "Apache-2.0"
    #: QwenImageEditPipeline's ``default_sample_size`` (latent cells).
    default_sample_size = 128
    components = {"transformer": "the MM-DiT transformer", "vae": "the VAE", "scheduler": "the flow scheduler",
                  "text_encoder": "Qwen2.5-VL", "tokenizer": "Qwen2.5-VL's tokenizer"}
    denoiser_name = "transformer"
    #: Config keys checked before the load (its VAE is a causal 3-D one, configured unlike SD's).
    required_config_keys = {"vae": ("temperal_downsample", "base_dim"),
                            "transformer": ("num_attention_heads", "attention_head_dim")}

    def vae_decoder_channels(self) -> int:
        return int(self.pipe.vae.config.base_dim)

    # memory (`Backbone.memory_estimate`): an MM-DiT over 2×2 patches, the condition image's tokens appended
    def activation_width(self) -> int:
        config = self.denoiser.config
        return int(config.num_attention_heads) * int(config.attention_head_dim)

    def denoiser_tokens(self, resolution: int) -> int:
        return 2 * (resolution // self.vae_factor // 2) ** 2

    def attention_tokens(self, resolution: int) -> int:
        return self.denoiser_tokens(resolution)

    def attention_heads(self) -> int:
        return int(self.denoiser.config.num_attention_heads)

    @property
    def vae_factor(self) -> int:
        return 2 ** len(self.pipe.vae.config.temperal_downsample)

    @property
    def resolution_multiple(self) -> int:
        return self.vae_factor * 2

    @property
    def native_resolution(self) -> int:
        return self.default_sample_size * self.vae_factor

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    def schedule(self, steps: int) -> FlowSchedule:
        """The pipeline's sigmas (linear from 1, shifted by the image's token count), as FLUX's convention."""
        side = self.resolution // self.vae_factor // 2
        return FlowSchedule.from_config(self.pipe.scheduler.config, steps, "flux", side * side)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """z₀ = (VAE posterior mode − latents_mean) / latents_std, float32 (1, C, h, w) (one frame), as the
        pipeline normalises its image latents."""
        vae = self.pipe.vae
        x = pil_to_tensor(image).to(vae.device, vae.dtype).unsqueeze(2)
        mode = vae.encode(x).latent_dist.mode()
        mean, std = self._latent_stats(mode)
        return ((mode - mean) * (1.0 / std))[:, :, 0].float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents (N, C, h, w) → PIL, as the pipeline decodes: ÷ (1 / latents_std) + latents_mean, one frame."""
        vae = self.pipe.vae
        z = latents.to(vae.device, vae.dtype).unsqueeze(2)
        mean, std = self._latent_stats(z)
        images = vae.decode(z / (1.0 / std) + mean).sample[:, :, 0]
        return [Image.fromarray(a) for a in tensor_to_uint8(images)]

    def call_arguments(self, image, instruction, steps, guidance, negative_prompt):
        side = self.resolution
        arguments = dict(image=image, prompt=instruction, height=side, width=side, num_inference_steps=steps,
                         true_cfg_scale=guidance)
        if negative_prompt is not None:
            arguments["negative_prompt"] = negative_prompt
        return arguments

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        side = self.resolution
        return self.pipe._unpack_latents(latents, side, side, self.vae_factor)[:, :, 0]
