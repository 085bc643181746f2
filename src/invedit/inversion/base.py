"""The inversion contract: a frozen `Inverted` result per method, and a fresh `Sampler` per edit that steps it.

A method is one subclass of `Inverted`, registered by name: ``defaults`` (its options), ``run`` (invert, given
validated options; `invedit.api.invert` validates them and times the run, once for every method) and, where it
steps differently from guided DDIM, its own `Sampler`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InveditError, check_number, merge_options
from ..features import FeatureStore
from ..sampling import Branches, DDIMSchedule, LoopContext, Row, RunStats, StepInfo


@dataclass
class InversionInputs:
    """Everything a method needs to invert one image: encoded image, prompt embeddings, schedule, the model."""

    model: Any  # invedit.backbones.Backbone: ``model.denoise`` is the network call, ``model.pipe`` the pipeline
    z0: torch.Tensor  # (1, C, h, w) float32, VAE mean × scaling factor
    prompt: str
    cond: torch.Tensor  # (1, 77, D) source-prompt embedding
    null: torch.Tensor  # (1, 77, D) empty-prompt embedding
    schedule: Any  # the model's schedule (a DDIMSchedule on a UNet)
    guidance_scale: float  # the guidance the edit will use (methods that optimise against it read it)
    stats: RunStats
    generator: torch.Generator
    callback: Any = None  # progress callback(k)
    image: Image.Image | None = None  # the input image as the model sees it (methods that encode it read it)


@dataclass(frozen=True, eq=False)
class Inverted(ABC):
    """An inverted image, frozen: the z* trajectory plus what the method keeps; one serves many edits.

    A subclass is one method, registered by name: its class methods ``validate_options`` and ``run`` are the
    method (``run`` inverts and returns a frozen instance), its instances the results. Each edit gets a fresh
    ``sampler_class(result, ctx)`` (a `Sampler`) that holds whatever the edit needs per step, so editing never
    changes the result. Method-level settings: ``branch_guidance``, ``editor_defaults``, ``fitted_to_guidance``.
    """

    method: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: Options the method accepts, with their defaults (validated by `validate_options`).
    defaults: ClassVar[dict[str, Any]] = {}
    #: What the inversion fitted to its guidance (methods that optimise or couple against the edit's CFG scale
    #: name it here, e.g. "null embeddings"); such an inversion refuses to edit at another guidance.
    fitted_to_guidance: ClassVar[str | None] = None
    #: The kinds of schedule the method runs on (`Backbone.schedule_kind`): its arithmetic is DDIM's unless it
    #: steps only through the schedule's ``step`` / ``inverse_step``.
    schedule_kinds: ClassVar[tuple[str, ...]] = ("ddim",)
    #: The method keeps no trajectory ("none"): only inversion-free editors, which step the edit themselves, pair
    #: with it (`invedit.prepare.check_pairing`).
    inversion_free: ClassVar[bool] = False
    #: The per-edit step policy (set below to `Sampler`; methods that step differently name their own).
    sampler_class: ClassVar[type[Sampler]]

    prompt: str
    latents: torch.Tensor  # z*_0 … z*_T, (T+1, C, h, w) float32 on the model's device
    schedule: DDIMSchedule
    image: Image.Image | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats)
    seconds: float = 0.0
    model: str = ""
    guidance_scale: float = 7.5
    first_step: int = 0  # first loop step the edit runs (edit-friendly DDPM and EDICT skip the noisiest)
    #: Features recorded while inverting for the editors that read them (`invedit.features`; None: none asked).
    features: FeatureStore | None = None

    # ---- the method ---------------------------------------------------------------------------------------
    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options merged over the defaults; unknown names raise. The rule every method shares is checked here:
        ``inversion_guidance`` (CFG while inverting), where a method has it, is a number ≥ 0."""
        opts = merge_options("inversion", cls.method, cls.defaults, options)
        if "inversion_guidance" in opts:
            opts["inversion_guidance"] = check_number("inversion_guidance", opts["inversion_guidance"], 0)
        return opts

    @classmethod  # noqa: B027 (optional hook)
    def check_model(cls, model) -> None:
        """Refuse a model (`invedit.backbones.Backbone`) the method cannot run on beyond its schedule kind (e.g. a
        method written for one family); called with the other checks, before any network call. Default: none."""

    @classmethod
    @abstractmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> Inverted:
        """Invert ``inputs.z0`` under ``inputs.prompt``; ``options`` are validated (each method implements it)."""

    @classmethod
    def trajectory_key(cls, options: dict[str, Any]) -> tuple | None:
        """What the z* trajectory computed with these (validated) ``options`` is a function of, beyond the image,
        prompt, model and steps: methods whose keys are equal (and not None) run the same computation, so one
        result serves them all (`as_method`; e.g. ``ddim`` and ``direct``, whose other options act only while
        editing). None (the default): the method's result is its own."""
        return None

    def as_method(self, method: str | type[Inverted], options: dict[str, Any] | None = None) -> Inverted:
        """This result as a result of ``method`` (a name or an `Inverted` subclass) with ``options``: the same
        trajectory, prompt, schedule, image, recorded features and cost (the tensors shared: results are never
        changed), bit for bit what ``method``'s own run returns, at no network call: itself when it is already that
        result. Refused in one line unless both have the same `trajectory_key` and ``method`` keeps nothing beyond
        the trajectory."""
        if isinstance(method, str):
            from .registry import get_inversion

            method = get_inversion(method)
        opts = method.validate_options(options or {})
        if type(self) is method and opts == self.options:
            return self
        key = self.trajectory_key(self.options)
        shared = {f.name for f in fields(Inverted)}
        if key is None or method.trajectory_key(opts) != key or {f.name for f in fields(method)} != shared:
            raise InveditError(f"a {self.method} inversion with {self.options} cannot serve {method.method} with "
                               f"{opts}: their trajectories differ")
        common = {name: getattr(self, name) for name in shared}
        return method(**{**common, "options": opts, "stats": copy.copy(self.stats)})

    @classmethod
    def result(cls, inputs: InversionInputs, latents: torch.Tensor, options: dict[str, Any], **fields: Any) -> Inverted:
        """The frozen result of a run: the trajectory, the inputs' prompt, schedule, cost counters and guidance,
        and the method's own ``fields``."""
        return cls(prompt=inputs.prompt, latents=latents, schedule=inputs.schedule, options=options,
                   stats=inputs.stats, guidance_scale=inputs.guidance_scale, **fields)

    # ---- trajectory helpers -------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def z0(self) -> torch.Tensor:
        return self.latents[:1]

    def z_star_after(self, i: int) -> torch.Tensor:
        """z* at the level forward step ``i`` lands on (z*_{t−1}), shape (1, C, h, w)."""
        return self.latents[self.steps - 1 - i].unsqueeze(0)

    def z_star_before(self, i: int) -> torch.Tensor:
        """z* at the level forward step ``i`` starts from (z*_t)."""
        return self.latents[self.steps - i].unsqueeze(0)

    # ---- what an edit asks of it --------------------------------------------------------------------------
    @property
    def transforms_values(self) -> bool:
        """Whether its sampler transforms the cross-attention value input (then every such layer applies it)."""
        return self.sampler_class.transforms_values

    def sampler(self, ctx: LoopContext | None = None) -> Sampler:
        """A fresh per-edit sampler (``ctx``: the edit's loop context; needed by `Sampler.prepare`)."""
        return self.sampler_class(self, ctx)

    def editor_defaults(self, editor: str) -> dict[str, Any]:
        """Options for ``editor`` that this method's reference pairs it with (the user's options override)."""
        return {}

    @classmethod
    def pins_source(cls, options: dict[str, Any]) -> bool:
        """Whether an inversion with these (validated) options sets the source branch to z* at every step of its
        edits (Direct Inversion at full offsets): the source then evaluates the model at (z*ₖ, level k), where the
        inversion evaluated it, so editors may read it from the inversion's stored features."""
        return False

    @property
    def source_on_trajectory(self) -> bool:
        """`pins_source` for this result's options."""
        return self.pins_source(self.options)

    def branch_guidance(self, guidance_scale: float) -> dict[str, float]:
        """CFG scale per branch during the edit (both the edit's scale by default)."""
        return {"source": guidance_scale, "target": guidance_scale}

    def check_edit(self, guidance_scale: float) -> None:
        """Refuse edit settings this inversion cannot serve (a guidance it was not fitted to)."""
        if self.fitted_to_guidance and guidance_scale != self.guidance_scale:
            raise InveditError(f"the {self.fitted_to_guidance} were made for guidance {self.guidance_scale}; "
                               f"invert again with guidance_scale={guidance_scale}")


class Sampler:
    """One edit's step policy over a frozen `Inverted` (a fresh one per edit; its state is the edit's).

    The loop calls, with one `StepInfo` per step: ``running()`` (a context around the loop), ``prepare()``
    (once), ``start_latents()``, then per step ``step(info, latents)`` — by default the guided DDIM step of both
    branches (reading ``null_embeddings``, ``needs_source`` and ``value_transforms``) followed by
    ``correct(info, source, target)``.
    """

    #: Whether `value_transforms` returns transforms (then every cross-attention layer applies them).
    transforms_values: ClassVar[bool] = False

    def __init__(self, inverted: Inverted, ctx: LoopContext | None = None):
        self.inverted, self.ctx, self.options = inverted, ctx, inverted.options

    @property
    def first_step(self) -> int:
        return self.inverted.first_step

    def running(self) -> AbstractContextManager[object]:
        """Context held around the whole edit loop (e.g. EDICT runs the UNet in float64); default: none."""
        return nullcontext()

    def prepare(self) -> None:  # noqa: B027 (optional hook)
        """Called once before the loop (e.g. precomputed offsets)."""

    def start_latents(self) -> Branches:
        """Both branches start from z* at the first step's level (z*_T by default)."""
        z_t = self.inverted.z_star_before(self.first_step).clone()
        return Branches(z_t, z_t.clone())

    def null_embeddings(self, info: StepInfo) -> dict[str, torch.Tensor | None]:
        """Per-branch unconditional embedding (None: the empty prompt's)."""
        return {}

    def value_transforms(self, info: StepInfo) -> dict[Row, Callable[[torch.Tensor], torch.Tensor]]:
        """Per-row ((branch, half) → callable) transform of the cross-attention value context."""
        return {}

    def needs_source(self, info: StepInfo) -> bool:
        """Whether the source branch's latent update reads its model output."""
        return True

    def branches(self, info: StepInfo) -> set[str]:
        """The branches whose update reads the model this step: the target, and the source when its update reads
        its output (`needs_source`) and the edit reads the source branch (`LoopContext.source_needed`)."""
        source = self.needs_source(info) and (self.ctx is None or self.ctx.source_needed)
        return {"target", "source"} if source else {"target"}

    def step(self, info: StepInfo, latents: Branches) -> Branches:
        """Guided step of both branches (the schedule's `step`), then `correct`."""
        branches = self.branches(info)
        out = self.ctx.denoiser(info.index, info.t, latents, branches, self.null_embeddings(info),
                                self.value_transforms(info))
        schedule = self.ctx.schedule
        source = schedule.step(out["source"], info.index, latents.source) if "source" in out else None
        target = schedule.step(out["target"], info.index, latents.target)
        return self.correct(info, source, target)

    def correct(self, info: StepInfo, source: torch.Tensor | None, target: torch.Tensor) -> Branches:
        """Per-step correction after the update (identity: plain DDIM). A source branch nothing reads is not
        denoised: it stays the image's own latent z₀ (the result's reconstruction is then the VAE round trip)."""
        if source is None and self.ctx is not None and not self.ctx.source_needed:
            return Branches(self.inverted.z0.clone(), target)
        if source is None:
            raise RuntimeError(f"{self.inverted.method}: source output skipped but no correction sets it")
        return Branches(source, target)


Inverted.sampler_class = Sampler  # the default per-edit sampler (plain guided DDIM); methods set their own
