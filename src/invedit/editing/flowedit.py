"""FlowEdit (Kulikov et al., "FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow Models", ICCV 2025).

No inversion: the edit integrates an ODE between the source and the target distributions, starting at the image's
latent x_src. At each step i (σ_i → σ_{i+1}) a fresh noise ε gives the source a noisy point on its own straight path,
z_src = (1 − σ_i)·x_src + σ_i·ε, the target sits at the same offset, z_tar = z_edit + z_src − x_src, and the edit
moves by the difference of the two guided velocities, z_edit ← z_edit + (σ_{i+1} − σ_i)·(V_tar(z_tar) − V_src(z_src))
(averaged over ``n_avg`` noises; paper Alg. 1). The first ``T − n_max`` steps are skipped; the last ``n_min`` are
plain sampling of the target from its noised point (scale_noise, then Euler; the official FLUX code's branch).

Reference behaviour reproduced (official code fallenshock/FlowEdit, FlowEdit_utils.py): one batched call of both
branches' CFG rows per step ([src_u, src_c, tar_u, tar_c] there, invedit's row order here); on FLUX.1-dev each
branch's scale is the transformer's guidance input; the noise of each step is drawn like the official draw, from
the edit's seeded generator: SD3's in the channels-last memory order of its ``randn_like(x_src)`` (x_src is
channels-last there), FLUX's in the packed (1, h/2·w/2, 4C) token layout. The draws go through one noise sampler
(k-diffusion style, ``noise_sampler(sigma, sigma_next) -> ε``) that tests replace to inject recorded draws.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..backbones import backbone
from ..errors import InveditError, check_number
from ..flow import noisy_sample
from ..inversion.base import Sampler
from ..sampling import Branches, LoopContext, StepInfo
from .base import Editor, register

#: ``noise_sampler(sigma, sigma_next) -> noise`` (k-diffusion's convention): the noise of one FlowEdit draw.
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The official defaults per model family (SD3_exp.yaml / FLUX_exp.yaml): steps T and the options at T steps.
REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd3": {"steps": 50, "n_max": 33, "n_min": 0, "n_avg": 1, "source_guidance": 3.5, "target_guidance": 13.5},
    "flux": {"steps": 28, "n_max": 24, "n_min": 0, "n_avg": 1, "source_guidance": 1.5, "target_guidance": 5.5},
}


def scaled_n_max(family: str, steps: int) -> int:
    """The official n_max scaled to ``steps``: round(n_max·T/T_default) (Python's round), at most ``steps``."""
    reference = REFERENCE_DEFAULTS[family]
    return min(steps, round(reference["n_max"] * steps / reference["steps"]))


def channels_last_noise(generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) like ``like`` (1, C, h, w), filled in channels-last memory order as ``torch.randn_like`` fills a
    channels-last tensor on CPU (the official SD3 draw); returned contiguous."""
    noise = torch.empty(like.shape, dtype=torch.float32).to(memory_format=torch.channels_last)
    return noise.normal_(generator=generator).contiguous().to(like.device)


def packed_noise(generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) drawn in FLUX's packed token layout (1, h/2·w/2, 4C) (the official FLUX draw), unpacked to ``like``'s."""
    from ..backbones.flux import unpack_latents

    n, c, h, w = like.shape
    tokens = torch.randn((n, (h // 2) * (w // 2), c * 4), generator=generator)
    return unpack_latents(tokens, h, w).to(like.device)


def plain_noise(generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) of ``like``'s shape, contiguous order."""
    return torch.randn(like.shape, generator=generator).to(like.device)


#: How the official code lays out its noise draws, per model family (what a seed reproduces).
NOISE_LAYOUTS: dict[str, Callable[[torch.Generator, torch.Tensor], torch.Tensor]] = {
    "sd3": channels_last_noise, "flux": packed_noise}


def seeded_noise_sampler(generator: torch.Generator, like: torch.Tensor, family: str) -> NoiseSampler:
    """The default noise sampler: one draw per call from ``generator`` (the edit's seeded one), in the family's
    official layout (`NOISE_LAYOUTS`; other families: plain order)."""
    draw = NOISE_LAYOUTS.get(family, plain_noise)
    return lambda sigma, sigma_next: draw(generator, like)


class InversionFreeSampler(Sampler):
    """An inversion-free edit over the "none" inversion's z₀ (FlowEdit, FlowAlign, DRFS, DNAEdit): both branches
    start at x_src and the source branch stays there (its reconstruction is the VAE's); ``options`` are the
    editor's, resolved (`InversionFreeEditor.resolved`); ``noise_sampler`` draws the editor's seeded noise."""

    def __init__(self, inverted, ctx: LoopContext, options: dict[str, Any], noise_sampler: NoiseSampler):
        super().__init__(inverted, ctx)
        self.options, self.noise_sampler = options, noise_sampler
        self.x_src = inverted.z0.float()

    def start_latents(self) -> Branches:
        return Branches(self.x_src.clone(), self.x_src.clone())


class FlowEditSampler(InversionFreeSampler):
    """One FlowEdit edit: the target is z_edit."""

    @property
    def first_step(self) -> int:
        """Steps with T − i > n_max are skipped (the official loop's ``continue``)."""
        return self.ctx.schedule.steps - self.options["n_max"]

    def needs_source(self, info: StepInfo) -> bool:
        """The source's velocity is read at FlowEdit steps only (not in the last ``n_min`` sampling steps)."""
        return self.ctx.schedule.steps - info.index > self.options["n_min"]

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        schedule, i = self.ctx.schedule, info.index
        sigma, sigma_next = schedule.sigma(i), schedule.sigma(i + 1)
        if self.needs_source(info):
            return Branches(latents.source, self.flowedit_step(info, latents.target, sigma, sigma_next))
        target = latents.target
        if schedule.steps - i == self.options["n_min"]:  # entering plain sampling: noise the edit to σ_i
            noise = self.noise_sampler(sigma, sigma_next)
            target = target + (sigma * noise + (1.0 - sigma) * self.x_src) - self.x_src
        out = self.ctx.denoiser(i, info.t, Branches(latents.source, target), {"target"})
        return Branches(latents.source, schedule.step(out["target"], i, target))

    def flowedit_step(self, info: StepInfo, z_edit: torch.Tensor, sigma: torch.Tensor,
                      sigma_next: torch.Tensor) -> torch.Tensor:
        """z_edit + (σ_{i+1} − σ_i)·mean_k(V_tar(z_tar,k) − V_src(z_src,k)) (FlowEdit Alg. 1)."""
        n_avg = self.options["n_avg"]
        delta = torch.zeros_like(z_edit)
        for _ in range(n_avg):
            z_src = noisy_sample(self.x_src, self.noise_sampler(sigma, sigma_next), sigma)
            z_tar = z_edit + z_src - self.x_src
            out = self.ctx.denoiser(info.index, info.t, Branches(z_src, z_tar), {"source", "target"})
            delta = delta + (1 / n_avg) * (out["target"] - out["source"])
        return z_edit + (sigma_next - sigma) * delta


class InversionFreeEditor(Editor, ABC):
    """What the inversion-free flow editors share (FlowEdit and the samplers built on it: DNAEdit, DRFS,
    FlowAlign): they pair with inversion "none" and supply the edit's sampler; their options are resolved against
    the model family's official settings (``official``, keyed by the families the official code runs); each
    branch's CFG scale (or FLUX.1-dev's guidance input) is the ``source_guidance`` / ``target_guidance`` option;
    their noise comes from ``noise_sampler`` (None: the edit's seeded generator in the family's official layout)."""

    schedule_kinds = ("flow",)
    inversion_free = True
    #: The official code's settings per model family it runs on (``source_guidance`` and ``target_guidance`` at
    #: least); `check_family` refuses the other families in one line.
    official: ClassVar[dict[str, dict[str, Any]]]

    def __init__(self, options: dict[str, Any], family: str):
        super().__init__()
        self.options, self.family = options, family
        #: Where each step's noise comes from (None: the edit's seeded generator, `seeded_noise_sampler`); set it
        #: to inject draws (k-diffusion's ``noise_sampler``).
        self.noise_sampler: NoiseSampler | None = None

    @classmethod
    def check_family(cls, family: str) -> None:
        """Refuse a model family the official code does not run on."""
        if family not in cls.official:
            names = {"sd3": "SD3", "flux": "FLUX"}
            runs = " and ".join(names.get(f, f) for f in cls.official)
            raise InveditError(f"editor {cls.name!r} has no settings for {family} models; it runs on {runs}")

    @classmethod
    def resolved(cls, family: str, steps: int, options: dict[str, Any]) -> dict[str, Any]:
        """Validated options with the family's official defaults filled in: the checks every inversion-free editor
        shares (known names, the family, each branch's guidance in [0, 50], given or official), then the editor's
        own (`resolve_own`)."""
        opts = cls.validate_options(options)
        cls.check_family(family)
        reference = cls.official[family]
        for key in ("source_guidance", "target_guidance"):
            opts[key] = check_number(key, reference[key] if opts[key] is None else opts[key], 0, 50)
        return cls.resolve_own(opts, family, steps, reference)

    @classmethod
    @abstractmethod
    def resolve_own(cls, opts: dict[str, Any], family: str, steps: int, reference: dict[str, Any]
                    ) -> dict[str, Any]:
        """The editor's own options in ``opts`` (validated, guidance resolved) checked, None filled from
        ``reference`` (``official[family]``) or scaled to ``steps``; returns ``opts``."""

    @classmethod
    def create(cls, pipe, source_prompt, target_prompt, steps, **options) -> InversionFreeEditor:
        family = backbone(pipe).family
        return cls(cls.resolved(family, steps, options), family)

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        """Each branch's own scale (the official src/tar guidance), in place of the edit's guidance scale."""
        return {"source": self.options["source_guidance"], "target": self.options["target_guidance"]}

    def noise(self, inverted, ctx: LoopContext) -> NoiseSampler:
        """The edit's noise: ``noise_sampler``, or draws from the edit's seeded generator in the official layout."""
        return self.noise_sampler or seeded_noise_sampler(ctx.generator, inverted.z0, self.family)

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}


@register
class FlowEditEditor(InversionFreeEditor):
    """FlowEdit: inversion-free editing on SD3 / FLUX; pairs with inversion "none" and supplies the edit's sampler.

    Options (None: the official default of the model family; n_max scaled to the step count, `scaled_n_max`):
    ``n_max`` (FlowEdit steps, counted from the clean end), ``n_min`` (last steps of plain target sampling),
    ``n_avg`` (noises averaged per step), ``source_guidance`` / ``target_guidance`` (each branch's CFG scale, or
    FLUX.1-dev's guidance input; they replace the edit's guidance scale).
    """

    name = "flowedit"
    description = ("FlowEdit (ICCV'25): inversion-free source-to-target ODE, with inversion none (SD3/FLUX); null "
                   "options: the family's official defaults")
    defaults: ClassVar[dict[str, Any]] = {"n_max": None, "n_min": 0, "n_avg": 1, "source_guidance": None,
                                          "target_guidance": None}
    refusal = "it integrates an ODE between rectified flows (SD3/FLUX)"
    official = REFERENCE_DEFAULTS

    @classmethod
    def resolve_own(cls, opts: dict[str, Any], family: str, steps: int, reference: dict[str, Any]
                    ) -> dict[str, Any]:
        n_max = scaled_n_max(family, steps) if opts["n_max"] is None else opts["n_max"]
        opts["n_max"] = check_number("n_max", n_max, 0, steps, integer=True)
        opts["n_min"] = check_number("n_min", opts["n_min"], 0, opts["n_max"], integer=True)
        opts["n_avg"] = check_number("n_avg", opts["n_avg"], 1, 1000, integer=True)
        return opts

    def sampler(self, inverted, ctx: LoopContext) -> FlowEditSampler:
        """FlowEdit's step policy for this edit, its noise from ``noise_sampler`` or the edit's seeded generator."""
        return FlowEditSampler(inverted, ctx, self.options, self.noise(inverted, ctx))
