"""The inversion contract: an `Inverted` holds what editing needs and hooks into the one denoising loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InveditError, merge_options
from ..sampling import Branches, DDIMSchedule, LoopContext, Row, RunStats, ddim_step


@dataclass
class InversionInputs:
    """Everything a method needs to invert one image: encoded image, prompt embeddings, schedule, UNet."""

    pipe: Any
    z0: torch.Tensor  # (1, C, h, w) float32, VAE mean × scaling factor
    prompt: str
    cond: torch.Tensor  # (1, 77, D) source-prompt embedding
    null: torch.Tensor  # (1, 77, D) empty-prompt embedding
    schedule: DDIMSchedule
    guidance_scale: float  # the guidance the edit will use (methods that optimise against it read it)
    stats: RunStats
    generator: torch.Generator
    callback: Any = None  # progress callback(k)
    image: Image.Image | None = None  # the input image as the model sees it (methods that encode it read it)


@dataclass
class Inverted(ABC):
    """An inverted image: the z* trajectory plus method state; one inversion serves many target prompts.

    Subclasses (one per method, registered by name) override the hooks the loop calls:
    ``running`` (a context held around the loop), ``prepare`` (once, before the loop), ``start_latents``,
    ``null_embeddings(i)``, ``needs_source(i)``, ``step`` (default: guided DDIM step of both branches then
    ``correct``) and ``correct(i, latents)``; methods that skip the noisiest steps override ``first_step``.
    ``value_transforms(i)`` changes the cross-attention value input per row (with ``transforms_values`` set,
    every cross-attention layer applies them); ``editor_defaults`` suggests editor settings.
    """

    method: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: Options the method accepts, with their defaults (validated by `validate_options`).
    defaults: ClassVar[dict[str, Any]] = {}

    prompt: str
    latents: torch.Tensor  # z*_0 … z*_T, (T+1, C, h, w) float32 on the model's device
    schedule: DDIMSchedule
    image: Image.Image | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats)
    seconds: float = 0.0
    model: str = ""
    guidance_scale: float = 7.5

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options merged over the defaults; unknown names raise."""
        return merge_options("inversion", cls.method, cls.defaults, options)

    @classmethod
    @abstractmethod
    def run(cls, inputs: InversionInputs, **options: Any) -> Inverted:
        """Invert ``inputs.z0`` under ``inputs.prompt`` (each method implements it)."""

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

    # ---- loop hooks ---------------------------------------------------------------------------------------
    #: First loop step the edit runs (edit-friendly DDPM skips the noisiest steps).
    first_step: ClassVar[int] = 0
    #: Whether `value_transforms` returns transforms (then every cross-attention layer applies them).
    transforms_values: ClassVar[bool] = False

    def running(self, ctx: LoopContext) -> AbstractContextManager[object]:
        """Context held around the whole edit loop (e.g. EDICT runs the UNet in float64); default: none."""
        return nullcontext()

    def editor_defaults(self, editor: str) -> dict[str, Any]:
        """Options for ``editor`` that this method's reference pairs it with (the user's options override)."""
        return {}

    def value_transforms(self, i: int) -> dict[Row, Callable[[torch.Tensor], torch.Tensor]]:
        """Per-row ((branch, half) → callable) transform of the cross-attention value context at step ``i``."""
        return {}

    def prepare(self, ctx: LoopContext) -> None:  # noqa: B027 (optional hook)
        """Called once before the loop (e.g. precomputed offsets)."""

    def start_latents(self) -> Branches:
        """Both branches start from z*_T."""
        z_t = self.latents[-1:].clone()
        return Branches(z_t, z_t.clone())

    def branch_guidance(self, guidance_scale: float) -> dict[str, float]:
        """CFG scale per branch during the edit (both the edit's scale by default)."""
        return {"source": guidance_scale, "target": guidance_scale}

    #: What the inversion fitted to its guidance (methods that optimise or couple against the edit's CFG scale
    #: name it here, e.g. "null embeddings"); such an inversion refuses to edit at another guidance.
    fitted_to_guidance: ClassVar[str | None] = None

    def check_edit(self, guidance_scale: float) -> None:
        """Refuse edit settings this inversion cannot serve (a guidance it was not fitted to)."""
        if self.fitted_to_guidance and guidance_scale != self.guidance_scale:
            raise InveditError(f"the {self.fitted_to_guidance} were made for guidance {self.guidance_scale}; "
                               f"invert again with guidance_scale={guidance_scale}")

    def null_embeddings(self, i: int) -> dict[str, torch.Tensor | None]:
        """Per-branch unconditional embedding at step ``i`` (None: the empty prompt's)."""
        return {}

    def needs_source(self, i: int) -> bool:
        """Whether the source branch's latent update at step ``i`` reads its model output."""
        return True

    def step(self, ctx: LoopContext, i: int, latents: Branches) -> Branches:
        """Guided DDIM step of both branches, then `correct`."""
        branches = {"target", "source"} if self.needs_source(i) else {"target"}
        t = ctx.schedule.timesteps[i]
        out = ctx.denoiser(i, t, latents, branches, self.null_embeddings(i), self.value_transforms(i))
        source = ddim_step(ctx.schedule, out["source"], i, latents.source) if "source" in out else None
        target = ddim_step(ctx.schedule, out["target"], i, latents.target)
        return self.correct(i, source, target)

    def correct(self, i: int, source: torch.Tensor | None, target: torch.Tensor) -> Branches:
        """Per-step correction after the DDIM update (identity: plain DDIM)."""
        if source is None:
            raise RuntimeError(f"{self.method}: source output skipped but no correction sets it")
        return Branches(source, target)

    # ---- reporting ----------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (method, options, cost)."""
        return {"method": self.method, "prompt": self.prompt, "steps": self.steps, "options": self.options,
                "nfe": self.stats.nfe, "nfe_backward": self.stats.nfe_backward, "seconds": round(self.seconds, 4),
                "model": self.model}
