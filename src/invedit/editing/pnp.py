"""Plug-and-Play (Tumanyan et al., CVPR 2023, arXiv 2211.12572) as PnP Inversion's code runs it, reference-settings §10.

The source branch's features are injected into the target rows during the first steps: the residual branch of
``feature_layer`` (the output of its ``conv2``, before the shortcut is added: each row keeps its own shortcut) for
the first ``feature_steps`` of the steps, and the self-attention queries and keys (values stay the target's own)
of the up path's self-attention layers (``attention_layers``) for the first ``attention_steps``. The source row
is the source branch's unconditional row, under the empty prompt; the target's unconditional prompt is
``negative_prompt``. With Direct Inversion the source branch is z*_t itself; with DDIM it is re-sampled from z*_T
without guidance (``source_guidance`` 1), as the reference does. ``source_lag=True`` reproduces the reference's
DDIM layout, whose source row runs one step late (see `PlugAndPlay.guide`; a defect, off by default).

Which layers (``layers``): ``"reference"`` names the reference's SD 1.x blocks (``up_blocks.1.resnets.1``; the
self-attention of up blocks 1–3 but its first transformer module); ``"relative"`` says the same by position —
the second ResNet of the first up block that has attention, and every up-path self-attention layer after the
up path's first attention module — which picks exactly the reference's layers on SD 1.x/2.x and meaningful
ones elsewhere (on SDXL: ``up_blocks.0.resnets.1`` at 32×32 for 1024 px, and the self-attention of
``up_blocks.0.attentions.1–2`` and ``up_blocks.1.attentions.0–2``). ``"auto"`` (default): reference on SD 1.x/2.x,
relative on SDXL, whose blocks the reference indices do not describe.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import backbone
from ..errors import InveditError, check_number
from ..sampling import Branches, Row, ddim_step
from .attention import LayerInfo
from .base import AttentionEditor, register

FEATURE_ROW: Row = ("source", "uncond")
#: The reference's self-attention layers: up block → its transformer blocks (``res_dict`` of pnp-diffusers).
REFERENCE_ATTENTION: dict[int, tuple[int, ...]] = {1: (1, 2), 2: (0, 1, 2), 3: (0, 1, 2)}
REFERENCE_FEATURE_LAYER = "up_blocks.1.resnets.1"
NEGATIVE_PROMPT = "ugly, blurry, black, low res, unrealistic"


def _first_up_attention(unet) -> str:
    """Path of the up path's first attention module (``up_blocks.1.attentions.0`` on SD 1.x)."""
    for i, block in enumerate(unet.up_blocks):
        if getattr(block, "attentions", None):
            return f"up_blocks.{i}.attentions.0"
    raise InveditError("pnp: this UNet has no attention in its up path")


def _relative_feature_layer(unet) -> str:
    """The second ResNet of the first up block that has attention (``up_blocks.1.resnets.1`` on SD 1.x)."""
    index = int(_first_up_attention(unet).split(".")[1])
    resnets = unet.up_blocks[index].resnets
    return f"up_blocks.{index}.resnets.{min(1, len(resnets) - 1)}"



@register
class PlugAndPlay(AttentionEditor):
    """Plug-and-Play feature and self-attention injection from the source row into the target rows."""

    name = "pnp"
    refusal = "it injects the ResNet features of a UNet's decoder"
    description = "Plug-and-Play: inject the source's ResNet features (80% of steps) and self-attention q/k (50%)"
    defaults: dict[str, Any] = {"feature_steps": 0.8, "attention_steps": 0.5, "layers": "auto",
                                "feature_layer": "auto", "negative_prompt": NEGATIVE_PROMPT, "source_guidance": 1.0,
                                "source_lag": False}

    def __init__(self, n_feature: int, n_attention: int, options: dict[str, Any]):
        super().__init__()
        self.n_feature, self.n_attention, self.options = n_feature, n_attention, options

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> PlugAndPlay:
        opts = cls.validate_options(options)
        # the reference: int(50·0.8) = 40 and int(50·0.5) = 25 steps
        n_feature = int(steps * check_number("feature_steps", opts["feature_steps"], 0, 1))
        n_attention = int(steps * check_number("attention_steps", opts["attention_steps"], 0, 1))
        opts["layers"] = cls._layer_rule(pipe, opts["layers"])
        if opts["feature_layer"] == "auto":
            opts["feature_layer"] = (REFERENCE_FEATURE_LAYER if opts["layers"] == "reference"
                                     else _relative_feature_layer(pipe.unet))
        modules = dict(pipe.unet.named_modules())
        layer = modules.get(opts["feature_layer"])
        if layer is None or not hasattr(layer, "conv2"):
            raise InveditError(f"pnp feature_layer {opts['feature_layer']!r} is not a ResNet block of this UNet")
        first = _first_up_attention(pipe.unet) + "."
        opts["attention_layers"] = [info.name for _, _, info in backbone(pipe).attention_layers()
                                    if cls._chosen(info, opts["layers"], first)]
        if not opts["attention_layers"]:
            raise InveditError(f"pnp: this UNet has none of the {opts['layers']} up-path self-attention layers")
        if not isinstance(opts["negative_prompt"], str):
            raise InveditError("pnp negative_prompt must be a string")
        opts["source_guidance"] = check_number("source_guidance", opts["source_guidance"], 0, 50)
        opts["source_lag"] = bool(opts["source_lag"])
        opts["feature_until_step"], opts["attention_until_step"] = n_feature, n_attention
        return cls(n_feature, n_attention, opts)

    @staticmethod
    def _layer_rule(pipe, rule: str) -> str:
        family = backbone(pipe).family
        if rule not in ("auto", "reference", "relative"):
            raise InveditError(f"pnp layers must be 'auto', 'reference' or 'relative', got {rule!r}")
        if rule == "reference" and family == "sdxl":
            raise InveditError("pnp layers='reference' names Stable Diffusion 1.x blocks; on SDXL use 'relative' "
                               "(the default picks it)")
        if rule == "auto":
            return "relative" if family == "sdxl" else "reference"
        return rule

    @staticmethod
    def _chosen(info: LayerInfo, rule: str, first_up_attention: str) -> bool:
        if info.is_cross or info.place != "up":
            return False
        match = re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.", info.name)
        if match is None:
            return False
        if rule == "reference":
            return int(match.group(2)) in REFERENCE_ATTENTION.get(int(match.group(1)), ())
        return not info.name.startswith(first_up_attention)

    # ---- loop hooks ----------------------------------------------------------------------------------------
    def embeddings(self, encode, cond, null):
        return cond, {**null, "target": encode([self.options["negative_prompt"]])}

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        return {**scales, "source": float(self.options["source_guidance"])}

    def rows_read(self, step: int) -> frozenset[Row]:
        return frozenset({FEATURE_ROW}) if step < max(self.n_feature, self.n_attention) else frozenset()

    def _targets(self) -> tuple[int | None, list[int]]:
        source = self.row_index(*FEATURE_ROW)
        return source, [i for i, (branch, _) in enumerate(self.rows) if branch == "target"]

    def wants_layer(self, info: LayerInfo) -> bool:
        return info.name in self._attention_layers

    @property
    def _attention_layers(self) -> frozenset[str]:
        return frozenset(self.options["attention_layers"])

    def attend(self, info: LayerInfo, attn, query, key, value):
        if self.step >= self.n_attention:
            return None
        source, targets = self._targets()
        if source is None or not targets:
            return None
        query, key = query.clone(), key.clone()
        query[targets], key[targets] = query[source].clone(), key[source].clone()
        return F.scaled_dot_product_attention(query, key, value)

    @property
    def guides(self) -> bool:  # type: ignore[override]
        """Only ``source_lag`` moves latents before the update."""
        return self.options["source_lag"]

    def guide(self, step: int, t: int, latents: Branches, model) -> Branches:
        """``source_lag``: the reference's DDIM layout, where the source row at step i is the source branch's
        re-sampled latent *after* step i and the edit starts from the one after step 0 (an off-by-one)."""
        if step >= max(self.n_feature, self.n_attention) and step > 0:
            return latents
        out = model(latents, [("source", "cond")], grad=False)[("source", "cond")]
        ahead = ddim_step(model.schedule, out, model.step, latents.source)
        target = ahead.clone() if step == 0 else latents.target
        return Branches(latents.source, target, rows={**latents.rows, FEATURE_ROW: ahead})

    def forward_hooks(self, unet) -> list[tuple[torch.nn.Module, Any]]:
        block = dict(unet.named_modules())[self.options["feature_layer"]]
        return [(block.conv2, self._inject_features)]

    def _inject_features(self, module, args, output: torch.Tensor) -> torch.Tensor | None:
        if self.step >= self.n_feature:
            return None
        source, targets = self._targets()
        if source is None or not targets:
            return None
        output = output.clone()
        output[targets] = output[source].clone()
        return output

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}
