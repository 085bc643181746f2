"""Direct Inversion / PnP Inversion (Ju et al., ICLR 2024, arXiv 2310.01506), reference-settings §3.

After each guided DDIM step the source branch gets z*_{t−1} − z''_{t−1} added, so it follows the inversion
trajectory exactly; the target branch is left alone. Fused into the edit loop this costs nothing: with full
offsets the source latent is simply set to z*_{t−1}, so its model output is never read and its rows are skipped
unless the editor reads them. Ablations (paper §5, reference code): ``offset_scale`` (×0.4/0.8), correction
every ``offset_interval`` steps, ``correct_target`` (add the target prompt's own offset along z* to the target
branch), ``inversion_guidance`` (CFG during the inversion). ``layout="reference"`` reproduces the reference
code's separate offset pass at batch 4 (50 extra UNet calls), for parity checks and benchmarks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InveditError, check_number
from ..sampling import Branches, StepInfo, guided
from .base import InversionInputs, Inverted, Sampler
from .ddim import ddim_trajectory, ddim_trajectory_key
from .registry import register


class DirectSampler(Sampler):
    """One edit with Direct Inversion: the source pinned to z* (or moved towards it), offsets precomputed for the
    reference layout and ``correct_target``."""

    source_offsets: list[torch.Tensor] | None = None  # per step, (1, C, h, w): the reference layout's
    target_offsets: list[torch.Tensor] | None = None  # per step: correct_target's

    def corrects_at(self, info: StepInfo) -> bool:
        """Whether this step adds an offset (every ``offset_interval`` steps, from step 0)."""
        return info.index % self.options["offset_interval"] == 0

    @property
    def reference_layout(self) -> bool:
        return self.options["layout"] == "reference"

    def needs_source(self, info: StepInfo) -> bool:
        pinned = self.options["offset_scale"] == 1.0 and self.corrects_at(info) and not self.reference_layout
        return not pinned

    def offset_pass(self, branches: list[str]) -> list[torch.Tensor]:
        """Offsets z*_{t−1} − z''_{t−1} along z* for ``branches``' prompts, as the reference computes them.

        Each branch starts at z*_T and after each step is moved by its (scaled / intervalled) offset; the batch
        is [u…, c…] like the reference's `offset_calculate` (batch 4 for two branches).
        """
        den, schedule, inv = self.ctx.denoiser, self.ctx.schedule, self.inverted
        n = len(branches)
        emb = torch.cat([den.null[b] for b in branches] + [den.cond[b] for b in branches])
        scale = self.options["offset_scale"]
        z = inv.latents[-1:].expand(n, -1, -1, -1).clone()
        offsets = []
        scales = torch.tensor([float(den.guidance[b]) for b in branches])
        for i, t in enumerate(schedule.timesteps):
            if den.embedded:  # the scale is the model's input: conditional rows only
                out = den.plain(t, z, emb[n:], guidance=scales)
            else:
                u, c = den.plain(t, torch.cat([z, z]), emb).chunk(2)
                out = guided({"uncond": u, "cond": c}, scales.to(u.device).view(-1, 1, 1, 1))
            z_prev = schedule.step(out, i, z)
            if self.corrects_at(StepInfo.at(schedule, i)):
                offset = (inv.z_star_after(i).expand_as(z_prev) - z_prev) * scale
            else:
                offset = torch.zeros_like(z_prev)
            offsets.append(offset)
            z = z_prev + offset
        return offsets

    def prepare(self) -> None:
        if self.reference_layout:
            branches = ["source", "target"]  # the reference computes both rows (batch 4), using row 0 only
        elif self.options["correct_target"]:
            branches = ["target"]
        else:
            return
        offsets = self.offset_pass(branches)
        if "source" in branches:
            self.source_offsets = [o[branches.index("source")].unsqueeze(0) for o in offsets]
        if self.options["correct_target"]:
            self.target_offsets = [o[branches.index("target")].unsqueeze(0) for o in offsets]

    def correct(self, info: StepInfo, source: torch.Tensor | None, target: torch.Tensor) -> Branches:
        """Source branch: z'' + s·(z* − z'') at correcting steps (= z* at full scale); target untouched."""
        i = info.index
        if self.target_offsets is not None:
            target = target + self.target_offsets[i]
        if self.source_offsets is not None:  # reference layout: add the precomputed offset
            return Branches(source + self.source_offsets[i], target)
        if not self.corrects_at(info):
            return Branches(source, target)
        z_star = self.inverted.z_star_after(i)
        if source is None:  # pinned: the source output was not computed
            return Branches(z_star.clone(), target)
        return Branches(source + self.options["offset_scale"] * (z_star - source), target)


@register
@dataclass(frozen=True, eq=False)
class DirectInverted(Inverted):
    """Direct Inversion: DDIM inversion, then the source branch is pinned to z* during editing."""

    method = "direct"
    description = "Direct Inversion (PnP Inversion): source branch pinned to z*, target untouched"
    defaults = {"offset_scale": 1.0, "offset_interval": 1, "correct_target": False, "inversion_guidance": 1.0,
                "layout": "fused"}
    sampler_class = DirectSampler
    schedule_kinds = ("ddim", "flow")  # DDIM inversion on a UNet, Euler inversion on a rectified flow

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        opts["offset_scale"] = check_number("offset_scale", opts["offset_scale"], 0, 2)
        opts["offset_interval"] = check_number("offset_interval", opts["offset_interval"], 1, integer=True)
        if opts["layout"] not in ("fused", "reference"):
            raise InveditError(f"layout must be 'fused' or 'reference', got {opts['layout']!r}")
        opts["correct_target"] = bool(opts["correct_target"])
        return opts

    @classmethod
    def pins_source(cls, options: dict[str, Any]) -> bool:
        """At full offsets every step (the fused layout) the source branch is z* itself."""
        return options["offset_scale"] == 1.0 and options["offset_interval"] == 1 and options["layout"] == "fused"

    @classmethod
    def trajectory_key(cls, options: dict[str, Any]) -> tuple:
        """The DDIM (Euler) inversion ``ddim`` runs: the offsets and the layout act only while editing."""
        return ddim_trajectory_key(options)

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> DirectInverted:
        return cls.result(inputs, ddim_trajectory(inputs, options), options)


@register
@dataclass(frozen=True, eq=False)
class StableFlowInverted(DirectInverted):
    """Stable Flow's inversion (Avrahami et al., "Stable Flow: Vital Layers for Training-Free Image Editing", CVPR
    2025; snap-research/stable-flow, ``invert_and_save``): Euler inversion under the source prompt at guidance 1 from
    the nudged latent λ·z₀ ("latent nudging": ``image2latent(..., latent_nudging_scalar=1.15)`` multiplies the
    normalised VAE latent by λ = 1.15 before inverting), the source row then set to the inverted latents during the
    edit. That is Direct Inversion of λ·z₀, bit for bit: ``latent_nudging`` (λ, default 1.15; 1 gives ``direct``)
    beside Direct Inversion's options. The edit decodes its latents as they are (the reference does not divide by
    λ), so the reconstruction is the nudged latent's. Pairs with the ``stable-flow`` editor
    (`invedit.editing.stable_flow`)."""

    method = "stable-flow"
    description = "Stable Flow's inversion (CVPR'25): direct from the nudged latent 1.15*z0 (SD3/FLUX)"
    defaults = {**DirectInverted.defaults, "latent_nudging": 1.15}
    schedule_kinds = ("flow",)
    refusal = "Stable Flow inverts a rectified flow (FLUX)"

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        opts["latent_nudging"] = check_number("latent_nudging", opts["latent_nudging"], 0, 10, low_open=True)
        return opts

    @classmethod
    def trajectory_key(cls, options: dict[str, Any]) -> tuple:
        """Direct's inversion of the nudged latent λ·z₀."""
        return (*super().trajectory_key(options), "latent_nudging", float(options["latent_nudging"]))

    @classmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> StableFlowInverted:
        nudged = dataclasses.replace(inputs, z0=inputs.z0 * options["latent_nudging"])
        return super().run(nudged, **options)
