"""StyleDiffusion inversion (Li et al., "StyleDiffusion: Prompt-Embedding Inversion for Text-Based Editing",
arXiv 2303.15649), reference-settings §4, as the PnP-Inversion reference code runs it.

The prompt embedding c keeps driving the cross-attention *keys* (so the attention maps stay textual), while the
*value* input is remapped from the image: per step i, a small network M_i turns the CLIP image tokens
(ViT-B/16: 197 × 768, after the final layer norm) into a scale S_i and a shift B_i (each 77 × D), and every
cross-attention layer of the conditional row computes its values from ``c ⊙ S_i + B_i`` (paper §3.1; reference
``Trainer.forward_embed``). M_i is Conv1d(tokens → 2·77, k=1) → [Conv1d(2·77 → 2·77, k=1), BatchNorm1d (train
mode), LeakyReLU] → Conv1d(2·77 → 2·77, k=1) over the token axis (a Linear hidden → D first when the image and
text widths differ).

Optimisation (paper §3.2, reference ``VaeInversion.optimization``): DDIM inversion with guidance 1 records the
z* trajectory and the cross-attention maps of the latent/4 layers (16×16 on SD); then for each step i, starting
at z*_T, M_i (initialised from M_{i−1}) is trained with Adam, lr ``learning_rate``·(1 − i/100), for at most
⌈``inner_steps``·exp(−``inner_decay``·i)⌉ iterations (100, 91, 82, … at the defaults), on
‖DDIM-step(z, ε_u + w·(ε_c(M_i) − ε_u)) − z*_{t−1}‖² + ``attention_loss``·Σ_layers ‖A(M_i) − A*‖² (MSEs; A* from
the inversion evaluation at the same latent, as the reference pairs them), stopping early once the loss is
below ``early_stop`` + i·2e-5; the latent then advances with the trained M_i. ``epochs`` > 1 repeats the sweep.

Editing (reference ``text2image_ldm_stable``): the source's conditional row uses S_i, B_i at every step, the
target's conditional row only while i < ``tau_v``·steps (τ_v); unconditional rows are never mapped. The P2P
settings the reference pairs with it become P2P's defaults for this inversion (explicit editor options win):
τ_c → ``cross_replace_steps``, τ_s → ``self_replace_steps``, τ_u → ``uncond_self_replace_steps`` (self-attention
injection between the unconditional rows too). Defaults are the reference function's (τ_v 0.6, τ_c 0.6, τ_s
0.8, τ_u 0.5, 100 inner steps, 1 epoch); its PIE-Bench script calls it with τ_v 0.5, τ_c 0.6, τ_s 0.6, τ_u 0.

Options: ``image_encoder`` (hub id or folder of a `transformers.CLIPVisionModel`), ``inner_steps``,
``inner_decay``, ``learning_rate``, ``early_stop``, ``epochs``, ``attention_loss`` (weight; 0 disables),
``tau_v``, ``tau_c``, ``tau_s``, ``tau_u``.

Cost (UNet rows): inversion T, then per step and epoch 1 (ε_u) + n_i (with gradient, n_i backward passes) + 1
(advance), n_i ≤ ⌈inner_steps·e^{−0.1·i}⌉ (≤ 1071 at 50 steps); the edit computes all four rows every step.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..editing.attention import LayerInfo, ValueTransforms, attention_probs
from ..editing.base import AttentionEditor
from ..errors import InveditError, check_number
from ..images import pil_to_tensor
from ..sampling import Row, RunStats, StepInfo, ddim_invert, ddim_step, guided
from .base import InversionInputs, Inverted, Sampler
from .null_text import learning_rate_factor
from .registry import register

DEFAULT_IMAGE_ENCODER = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SOURCE_COND: Row = ("source", "cond")
TARGET_COND: Row = ("target", "cond")


# ---- the image encoder -------------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def load_image_encoder(name: str, device: str) -> nn.Module:
    """A `transformers.CLIPVisionModel` (float32, eval) from a folder or the local hub cache (hub if online)."""
    from transformers import CLIPVisionModel
    from transformers.utils import logging as transformers_logging

    from ..models import load_pretrained

    transformers_logging.disable_progress_bar()
    model = load_pretrained(lambda src, local_only: CLIPVisionModel.from_pretrained(src, local_files_only=local_only),
                            name, "image encoder")
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def image_tokens(encoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """CLIP image tokens (1, N, H): last hidden state after the final layer norm (reference ``clip_util``).

    ``image`` is (1, 3, h, w) in [−1, 1]; it is resized (bicubic) to the encoder's size and CLIP-normalised.
    """
    size = int(encoder.config.image_size)
    x = (image.float() + 1) / 2
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    hidden = encoder(pixel_values=(x - mean) / std).last_hidden_state
    post_layernorm = getattr(encoder, "vision_model", encoder).post_layernorm
    return post_layernorm(hidden).float()


# ---- the mapping network -----------------------------------------------------------------------------------
class ValueMapping(nn.Module):
    """M_i: image tokens (1, N, H) → value scale S and shift B, each (1, words, D) (arXiv 2303.15649 §3.1)."""

    def __init__(self, tokens: int, hidden: int, words: int, dim: int):
        super().__init__()
        width = 2 * words
        self.words = words
        self.project = nn.Identity() if hidden == dim else nn.Linear(hidden, dim)
        self.start = nn.Conv1d(tokens, width, kernel_size=1)
        self.block = nn.Sequential(nn.Conv1d(width, width, kernel_size=1), nn.BatchNorm1d(width), nn.LeakyReLU())
        self.end = nn.Conv1d(width, width, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.end(self.block(self.start(self.project(tokens))))
        return out[:, :self.words], out[:, self.words:]


@dataclass(frozen=True)
class ScaleShift:
    """The mapped value context c ⊙ S + B of one row (arXiv 2303.15649 eq. 4)."""

    scale: torch.Tensor  # (1, 77, D) float32
    shift: torch.Tensor

    def __call__(self, context: torch.Tensor) -> torch.Tensor:
        return (context.float() * self.scale + self.shift).to(context.dtype)


class _MapRecorder(AttentionEditor):
    """Inversion-time hooks on the cross-attention layers: apply the value mapping, record the loss layers' maps."""

    name = "style-diffusion-inversion"

    def __init__(self, downsample: int):
        super().__init__()
        self.downsample = downsample
        self.rows = [SOURCE_COND]  # every inversion-time UNet call is one row
        self.values = ValueTransforms()
        self.recording = False
        self.maps: list[torch.Tensor] = []

    def wants_layer(self, info: LayerInfo) -> bool:
        return info.is_cross

    def map_values(self, transforms: dict) -> None:
        """Value transforms of the next (one-row) UNet calls."""
        self.values.set(self.rows, transforms)

    def attend(self, info: LayerInfo, attn, query, key, value):
        if self.recording and info.place != "mid" and info.downsample == self.downsample:
            self.maps.append(attention_probs(attn, query, key))  # (1, heads, queries, 77), with gradient
        return None

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


def loss_downsample(model) -> int:
    """Grid of the attention-loss layers: latent/4 (16×16 on SD at 512 px) when present, else the coarsest."""
    found = {info.downsample for _, _, info in model.attention_layers() if info.is_cross and info.place != "mid"}
    return 4 if 4 in found or not found else max(found)


def inner_schedule(inner_steps: int, decay: float, steps: int) -> list[int]:
    """Iteration budget per step: ⌈inner_steps·exp(−decay·i)⌉ (reference ``NUM_INNER_STEPS``)."""
    return [math.ceil(inner_steps * math.exp(-decay * i)) for i in range(steps)]


def optimise_value_mappings(model, schedule, trajectory: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                            tokens: torch.Tensor, gt_maps: list[list[torch.Tensor]], recorder: _MapRecorder,
                            guidance_scale: float, opts: dict[str, Any], generator: torch.Generator,
                            stats: RunStats, callback=None) -> tuple[list[ScaleShift], list[int]]:
    """Per-step mapped value contexts and the Adam iterations each step took (arXiv 2303.15649 §3.2).

    Runs inside ``recorder``'s processors; ``gt_maps[k]`` are the maps recorded at inversion step k.
    """
    steps = schedule.steps
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        context = model.conditioning(cond)[0]  # what cross-attention sees (SDXL: without the pooled token)
        first = ValueMapping(tokens.shape[1], tokens.shape[2], context.shape[1], context.shape[2])
    mappings: list[ValueMapping] = [first.to(tokens.device).train()]
    budget = inner_schedule(int(opts["inner_steps"]), float(opts["inner_decay"]), steps)
    weight = float(opts["attention_loss"])
    iterations = [0] * steps
    for epoch in range(int(opts["epochs"])):
        latent, mapped = trajectory[-1:].clone(), []
        for i, t in enumerate(schedule.timesteps):
            if epoch == 0 and i > 0:
                mappings.append(copy.deepcopy(mappings[i - 1]))  # start from the previous step's mapping
            mapping, target = mappings[i], trajectory[steps - 1 - i].unsqueeze(0)
            recorder.map_values({})
            recorder.recording = False
            with torch.no_grad():
                eps_uncond = model.denoise(latent, t, null, stats)
            lr = float(opts["learning_rate"]) * learning_rate_factor(i)
            optimiser = torch.optim.Adam(mapping.parameters(), lr=lr)
            done = 0
            for _ in range(budget[i]):
                with torch.enable_grad():
                    recorder.map_values({SOURCE_COND: ScaleShift(*mapping(tokens))})
                    recorder.recording = weight > 0
                    eps_cond = model.denoise(latent, t, cond, stats)
                    eps = guided({"uncond": eps_uncond, "cond": eps_cond}, guidance_scale)
                    loss = F.mse_loss(ddim_step(schedule, eps, i, latent), target)
                    reference = gt_maps[min(steps - i, steps - 1)] if weight > 0 else []
                    for got, want in zip(recorder.take(), reference, strict=True):
                        loss = loss + weight * F.mse_loss(got, want)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                stats.nfe_backward += 1
                done += 1
                if loss.item() < float(opts["early_stop"]) + i * 2e-5:
                    break
            with torch.no_grad():  # advance along the reconstruction this mapping gives
                mapped.append(ScaleShift(*(x.detach() for x in mapping(tokens))))
                recorder.map_values({SOURCE_COND: mapped[i]})
                recorder.recording = False
                eps_cond = model.denoise(latent, t, cond, stats)
                eps = guided({"uncond": eps_uncond, "cond": eps_cond}, guidance_scale)
                latent = ddim_step(schedule, eps, i, latent)
            iterations[i] += done
            if callback is not None and epoch == int(opts["epochs"]) - 1:
                callback(i)
    return mapped, iterations


# ---- the method ----------------------------------------------------------------------------------------------
def _number(opts: dict[str, Any], name: str, low: float, high: float = math.inf, integer: bool = False) -> None:
    opts[name] = check_number(name, opts[name], low, high, integer)


class StyleDiffusionSampler(Sampler):
    """The per-step value mapping in the source's conditional row, and in the target's for i < τ_v·steps."""

    transforms_values = True

    def value_transforms(self, info: StepInfo) -> dict[Row, ScaleShift]:
        mapped = self.inverted.mapped[info.index]
        return {SOURCE_COND: mapped, TARGET_COND: mapped} if self.inverted.maps_target(info.index) \
            else {SOURCE_COND: mapped}


@register
@dataclass(frozen=True, eq=False)
class StyleDiffusionInverted(Inverted):
    """StyleDiffusion: per-step mappings of the cross-attention value input, trained to reconstruct z*."""

    method = "style-diffusion"
    description = "StyleDiffusion: optimised per-step mapping of the cross-attention value input (slowest)"
    fitted_to_guidance = "value mappings"
    sampler_class = StyleDiffusionSampler
    defaults = {
        "image_encoder": DEFAULT_IMAGE_ENCODER, "inner_steps": 100, "inner_decay": 0.1, "learning_rate": 1e-2,
        "early_stop": 1e-5, "epochs": 1, "attention_loss": 1.0,
        "tau_v": 0.6, "tau_c": 0.6, "tau_s": 0.8, "tau_u": 0.5,
    }
    mapped: tuple[ScaleShift, ...] = ()  # per-step value mapping c ↦ c ⊙ S_i + B_i
    iterations: tuple[int, ...] = ()

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        if not isinstance(opts["image_encoder"], (str, os.PathLike)) or not str(opts["image_encoder"]).strip():
            raise InveditError(f"image_encoder must be a hub id or a folder, got {opts['image_encoder']!r}")
        opts["image_encoder"] = str(opts["image_encoder"])
        _number(opts, "inner_steps", 0, integer=True)
        _number(opts, "epochs", 1, integer=True)
        for name in ("inner_decay", "early_stop", "attention_loss"):
            _number(opts, name, 0)
        _number(opts, "learning_rate", 1e-12)
        for name in ("tau_v", "tau_c", "tau_s", "tau_u"):
            _number(opts, name, 0, 1)
        return opts

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> StyleDiffusionInverted:
        opts = options
        model = inputs.model
        if model.dtype != torch.float32:
            raise InveditError("style-diffusion optimisation runs in float32; load the model with dtype float32")
        encoder = load_image_encoder(opts["image_encoder"], str(model.device))
        tokens = image_tokens(encoder, cls._input_image(inputs).to(model.device))
        recorder = _MapRecorder(loss_downsample(model))
        gt_maps: list[list[torch.Tensor]] = []

        def record(_k: int) -> None:
            gt_maps.append([m.detach() for m in recorder.take()])

        with recorder.attach(model, recorder.values):
            recorder.recording = float(opts["attention_loss"]) > 0
            latents = ddim_invert(model.denoise, inputs.schedule, inputs.z0, inputs.cond, inputs.null, 1.0,
                                  inputs.stats, record)
            mapped, iterations = optimise_value_mappings(
                model, inputs.schedule, latents, inputs.cond, inputs.null, tokens, gt_maps, recorder,
                inputs.guidance_scale, opts, inputs.generator, inputs.stats, inputs.callback)
        return cls.result(inputs, latents, opts, mapped=tuple(mapped), iterations=tuple(iterations))

    @staticmethod
    def _input_image(inputs: InversionInputs) -> torch.Tensor:
        """The input image in [−1, 1], (1, 3, h, w); decoded from z₀ when the caller gave none."""
        if inputs.image is not None:
            return pil_to_tensor(inputs.image)
        vae = inputs.pipe.vae
        with torch.no_grad():
            return vae.decode((inputs.z0 / vae.config.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1)

    # ---- editing -----------------------------------------------------------------------------------------------
    def editor_defaults(self, editor: str) -> dict[str, Any]:
        if editor != "p2p":
            return {}
        return {"cross_replace_steps": self.options["tau_c"], "self_replace_steps": self.options["tau_s"],
                "uncond_self_replace_steps": self.options["tau_u"]}

    def maps_target(self, i: int) -> bool:
        """Whether the target's conditional row uses the mapping at step ``i`` (i < τ_v·steps)."""
        return i < self.options["tau_v"] * self.steps
