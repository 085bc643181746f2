"""DDIM arithmetic, DDIM inversion and the one two-branch denoising loop over a model's `denoise` call.

Notation: ᾱ_t = ``alphas_cumprod[t]``; a sample at noise level t is z_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (DDIM, Song et
al. 2021, eq. 12). A forward step maps level ``t_cur`` to the next lower level ``t_next``; an inversion step runs
the same map backwards (from ``t_next`` up to ``t_cur``), evaluating the UNet at ``t_cur`` as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InveditError

BRANCHES = ("source", "target")
HALVES = ("uncond", "cond")
#: Canonical batch order of the reference code: [src_u, tgt_u, src_c, tgt_c]; rows nobody reads are dropped.
ROW_ORDER: tuple[tuple[str, str], ...] = tuple((b, h) for h in HALVES for b in BRANCHES)
Row = tuple[str, str]


@dataclass(frozen=True)
class DDIMSchedule:
    """The discrete DDIM schedule of one run: timesteps (descending) and the ᾱ lookup (reference-settings §1)."""

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor  # float32, as the reference scheduler's
    final_alpha_cumprod: torch.Tensor  # ᾱ used below t = 0: ᾱ[0] when set_alpha_to_one is False
    prediction_type: str = "epsilon"

    @classmethod
    def from_pipe(cls, pipe, steps: int) -> DDIMSchedule:
        """Schedule of ``pipe.scheduler`` (configured by `invedit.load`) for ``steps`` steps."""
        sched = pipe.scheduler
        sched.set_timesteps(steps)
        return cls(
            timesteps=tuple(int(t) for t in sched.timesteps),
            alphas_cumprod=sched.alphas_cumprod.float().cpu(),
            final_alpha_cumprod=torch.as_tensor(sched.final_alpha_cumprod).float().cpu(),
            prediction_type=sched.config.prediction_type,
        )

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def alpha(self, t: int) -> torch.Tensor:
        """ᾱ_t, or the final ᾱ for t < 0."""
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def next_timestep(self, i: int) -> int:
        """Level reached by forward step ``i`` (−1 after the last step: the final ᾱ)."""
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """Forward step ``i`` (`ddim_step`)."""
        return ddim_step(self, model_output, i, sample)

    def inverse_step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """The inverse of forward step ``i`` (`ddim_inverse_step`)."""
        return ddim_inverse_step(self, model_output, i, sample)

    def inversion_timestep(self, i: int) -> int:
        """Where the model is evaluated for `inverse_step` ``i``: the upper level t_i, as in the reference."""
        return self.timesteps[i]

    def level_position(self, t: float) -> float:
        """Index of timestep ``t`` among the schedule's (forward step i is evaluated at position i)."""
        return float(self.timesteps.index(int(t)))


def x0_and_eps(model_output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted x₀ and ε from a model output at level ᾱ (DDIM eq. 12; v-prediction: Salimans & Ho 2022)."""
    alpha = alpha.to(sample.device)
    beta = 1 - alpha
    if prediction_type == "epsilon":
        return (sample - beta**0.5 * model_output) / alpha**0.5, model_output
    if prediction_type == "v_prediction":
        return alpha**0.5 * sample - beta**0.5 * model_output, alpha**0.5 * model_output + beta**0.5 * sample
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def ddim_move(x0: torch.Tensor, eps: torch.Tensor, alpha_to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (η = 0) sample at level ᾱ_to: √ᾱ_to·x₀ + √(1−ᾱ_to)·ε (DDIM eq. 12)."""
    alpha_to = alpha_to.to(x0.device)
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def ddim_step(schedule: DDIMSchedule, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
    """Forward DDIM step ``i``: from level t_i down to the next timestep (z_t → z_{t−1})."""
    x0, eps = x0_and_eps(model_output, sample, schedule.alpha(schedule.timesteps[i]), schedule.prediction_type)
    return ddim_move(x0, eps, schedule.alpha(schedule.next_timestep(i)))


def ddim_sigma(schedule: DDIMSchedule, i: int, eta: float) -> torch.Tensor:
    """σ_t(η) of forward step ``i``: η·√((1−ᾱ_{t−1})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t−1}) (DDIM eq. 16; η = 1 is DDPM)."""
    alpha, alpha_prev = schedule.alpha(schedule.timesteps[i]), schedule.alpha(schedule.next_timestep(i))
    return eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)) ** 0.5


def ddim_inverse_step(schedule: DDIMSchedule, model_output: torch.Tensor, i: int,
                      sample: torch.Tensor) -> torch.Tensor:
    """Inverse of forward step ``i``: from level ``next_timestep(i)`` up to t_i, UNet at t_i (reference-settings §2)."""
    x0, eps = x0_and_eps(model_output, sample, schedule.alpha(schedule.next_timestep(i)),
                         schedule.prediction_type)
    return ddim_move(x0, eps, schedule.alpha(schedule.timesteps[i]))


@dataclass
class RunStats:
    """Work counters of a run: NFE = network sample evaluations (batch rows), calls, backward passes."""

    nfe: int = 0
    unet_calls: int = 0
    nfe_backward: int = 0


#: A model's one network call (a backbone's ``denoise``): (latents, timestep, embeddings, stats) -> output.
Denoise = Callable[[torch.Tensor, Any, torch.Tensor, RunStats], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """Where the loop is: what every sampler hook gets instead of re-deriving indices.

    ``index``: forward step of the schedule (0 = the noisiest); ``edit_index``: steps since the edit's first
    step (what editors count); ``t``: the timestep the model is evaluated at.
    """

    index: int
    edit_index: int
    t: Any

    @classmethod
    def at(cls, schedule, i: int, first_step: int = 0) -> StepInfo:
        return cls(i, i - first_step, schedule.timesteps[i])


def guided(outputs: dict[str, torch.Tensor], scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ε_u + w·(ε_c − ε_u) (Ho & Salimans 2022).

    ``outputs`` holds the halves `halves_needed` names: at w = 1 (or 0) the conditional (unconditional) half alone
    is the result. With both halves the formula is evaluated at any w (also 1, e.g. inside an optimisation whose
    gradient flows through ε_u); ``scale`` may be a tensor of per-row scales.
    """
    if "uncond" in outputs and "cond" in outputs:
        return outputs["uncond"] + scale * (outputs["cond"] - outputs["uncond"])
    half = "cond" if "cond" in outputs else "uncond"
    if isinstance(scale, torch.Tensor) or scale != (1 if half == "cond" else 0):
        raise ValueError(f"guidance {scale} needs both halves, got only {half!r}")
    return outputs[half]


def halves_needed(scale: float) -> tuple[str, ...]:
    """Which CFG halves a guidance scale reads."""
    if scale == 1:
        return ("cond",)
    if scale == 0:
        return ("uncond",)
    return HALVES


@torch.no_grad()
def ddim_invert(model: Denoise, schedule, z0: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                guidance_scale: float, stats: RunStats,
                callback: Callable[[int], None] | None = None, embedded: bool = False) -> torch.Tensor:
    """Deterministic inversion (reference-settings §2): the trajectory z*_0 … z*_T, (T+1, C, h, w), index = steps
    taken, by the schedule's `inverse_step` (DDIM; an Euler step on a flow schedule).

    ``guidance_scale`` 1 is the paper's conditional-only inversion; other values are the inversion-guidance
    ablation. The model is evaluated where the schedule says (`inversion_timestep`: DDIM's upper timestep of each
    interval, as in the reference code). ``model``: a backbone's ``denoise``. ``embedded``: the model takes the
    guidance scale as an input (FLUX.1-dev): one conditional row per step, called with ``guidance=guidance_scale``.
    """
    trajectory = [z0[0].float()]
    z = z0.float()
    halves = ("cond",) if embedded else halves_needed(guidance_scale)
    emb = torch.cat([null if h == "uncond" else cond for h in halves])
    extra = {"guidance": guidance_scale} if embedded else {}
    for k in range(schedule.steps):
        i = schedule.steps - 1 - k  # forward step index this inversion step undoes
        out = model(z.expand(len(halves), -1, -1, -1), schedule.inversion_timestep(i), emb, stats, **extra)
        if not embedded:
            out = guided(dict(zip(halves, out.chunk(len(halves)))), guidance_scale)
        z = schedule.inverse_step(out, i, z)
        trajectory.append(z[0])
        if callback is not None:
            callback(k)
    return torch.stack(trajectory)


@dataclass
class Branches:
    """Latents of the two branches (each (1, C, h, w), float32): the source and the edited target.

    Between its own steps a method may carry more rows per branch (EDICT: its x and y chains, in float64);
    editors' latent callbacks then act on every row, and the method's last step returns one float32 row.
    """

    source: torch.Tensor
    target: torch.Tensor
    #: Latents of single UNet rows where they differ from their branch's (Pix2Pix-Zero guides each CFG half of
    #: the target on its own); used for the next UNet call only.
    rows: dict[Row, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, branch: str) -> torch.Tensor:
        return getattr(self, branch)

    def row(self, row: Row) -> torch.Tensor:
        """The latent a UNet row is evaluated at."""
        return self.rows.get(row, self[row[0]])


@dataclass
class GuidedDenoiser:
    """Batches every UNet row a step needs into one call and returns CFG-combined outputs per branch.

    A row is (branch, half). Rows are computed when a branch's latent update needs them (per its guidance
    scale) or when the editor reads them (e.g. P2P reads the source's conditional attention); rows nobody
    reads are skipped, which is where Direct Inversion saves UNet work.
    """

    model: Any  # invedit.backbones.Backbone: its ``denoise`` is the network call
    cond: dict[str, torch.Tensor]  # branch -> (1, 77, D)
    null: dict[str, torch.Tensor]  # branch -> (1, 77, D), the default unconditional embedding
    guidance: dict[str, float]  # branch -> CFG scale
    editor: object  # invedit.editing.Editor
    stats: RunStats = field(default_factory=RunStats)
    #: Where the inversion's per-row value transforms go for each call (None: the inversion sets none).
    values: object | None = None  # invedit.editing.attention.ValueTransforms

    first_step: int = 0  # loop step the edit starts at (editors count their steps from here)
    #: The model takes the guidance scale as an input (FLUX.1-dev, `Backbone.guidance_mode` "embedded"): one
    #: conditional row per branch, each called with its branch's scale, and no CFG combination.
    embedded: bool = False
    #: Conditional rows an editor's ``guide`` computed without a graph at this step, for the update to read when it
    #: evaluates the same row at the same, unmodified latent: row -> (step, latent, its ``_version``, output).
    carried: dict[Row, tuple[int, torch.Tensor, int, torch.Tensor]] = field(default_factory=dict)

    def halves(self, branch: str) -> tuple[str, ...]:
        """The rows (CFG halves) a branch's update reads."""
        return ("cond",) if self.embedded else halves_needed(self.guidance[branch])

    def rows_for(self, step: int, branches: set[str]) -> list[Row]:
        wanted = {(b, h) for b in branches for h in self.halves(b)}
        wanted |= set(self.editor.rows_read(step - self.first_step))
        return [row for row in ROW_ORDER if row in wanted]

    def raw(self, step: int, t: int, latents: Branches, branches: set[str],
            null: dict[str, torch.Tensor | None] | None = None,
            values: dict[Row, Callable[[torch.Tensor], torch.Tensor]] | None = None,
            rows: list[Row] | None = None) -> dict[Row, torch.Tensor]:
        """Model output of every computed row (before CFG), keyed by (branch, half).

        ``values``: the inversion's per-row transforms of the cross-attention value context (rows not computed
        are ignored). ``rows``: compute exactly these rows (default: what the updates and the editor read, less
        the rows the step's guide carried, `carry`).
        """
        carried = {}
        if rows is None:
            rows = self.rows_for(step, branches)
            carried = {row: self.carried[row][3] for row in rows if self._carried(row, step, latents, values)}
            rows = [row for row in rows if row not in carried]
            self.carried = {}  # the update consumes what its step's guide carried
        if not rows:
            return carried
        null = null or {}
        nulls = {b: null[b] if null.get(b) is not None else self.null[b] for b in BRANCHES}
        x = torch.cat([latents.row(row) for row in rows])
        emb = torch.cat([self.cond[b] if h == "cond" else nulls[b] for b, h in rows])
        self.editor.timestep = t  # where this call is evaluated (editors reading stored features place it)
        self.editor.begin_step(step - self.first_step, rows)
        if self.values is not None:
            self.values.set(rows, values or {})
        extra = {}
        if self.embedded:
            extra["guidance"] = torch.tensor([float(self.guidance[b]) for b, _ in rows])
        out = self.model.denoise(x, t, emb, self.stats, **extra)
        if values and (self.values is None or self.values.calls == 0):
            raise InveditError("value transforms were set but no attention layer applied them (no value hooks)")
        return {**carried, **dict(zip(rows, out.split(1)))}

    def carry(self, step: int, latents: Branches, outputs: dict[Row, torch.Tensor]) -> None:
        """Keep ``outputs`` (rows computed without a graph, no value transforms) for this step's update."""
        self.carried = {row: (step, latents.row(row), latents.row(row)._version, out.detach())
                        for row, out in outputs.items() if row[1] == "cond"}

    def _carried(self, row: Row, step: int, latents: Branches, values) -> bool:
        """Whether the update's ``row`` is a carried one: same step, the very latent (not modified since), and no
        value transforms (the carried call had none either)."""
        if row not in self.carried or values:
            return False
        at, latent, version, _ = self.carried[row]
        return at == step and latents.row(row) is latent and latent._version == version

    def __call__(self, step: int, t: int, latents: Branches, branches: set[str],
                 null: dict[str, torch.Tensor | None] | None = None,
                 values: dict[Row, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """CFG-combined model outputs for ``branches`` at step ``step`` (timestep ``t``)."""
        by_row = self.raw(step, t, latents, branches, null, values)
        if self.embedded:
            return {b: by_row[(b, "cond")] for b in branches}
        return {b: guided({h: by_row[(b, h)] for h in halves_needed(self.guidance[b])}, self.guidance[b])
                for b in branches}

    def plain(self, t: int, latents: torch.Tensor, embeddings: torch.Tensor, **extra: Any) -> torch.Tensor:
        """A UNet call outside the edit (editor inactive), e.g. for precomputed offsets; counted in NFE. ``extra``:
        more arguments of the model's ``denoise`` (an embedded-guidance model's per-row ``guidance``)."""
        if self.values is not None:
            self.values.set([], {})
        with self.editor.paused():
            return self.model.denoise(latents, t, embeddings, self.stats, **extra)


@dataclass
class GradientModel:
    """The model an editor's ``guide`` calls at one step: ``model(latents, rows) -> {row: output}`` with autograd
    on (k-diffusion's model-as-function); ``grad(loss, inputs)`` differentiates and counts the backward pass."""

    denoiser: GuidedDenoiser
    schedule: DDIMSchedule
    step: int
    t: int
    null: dict[str, torch.Tensor | None] | None = None
    values: dict[Row, Callable[[torch.Tensor], torch.Tensor]] | None = None
    rows_called: int = 0
    #: The editor's ``guide_rows_reusable``: outputs of calls without a graph are carried to the step's update.
    reusable: bool = False

    def __call__(self, latents: Branches, rows: list[Row], grad: bool = True) -> dict[Row, torch.Tensor]:
        """Outputs of ``rows`` (``grad=False``: a plain forward pass, no graph kept)."""
        with torch.set_grad_enabled(grad):
            ordered = [r for r in ROW_ORDER if r in rows]
            self.rows_called = len(ordered)
            out = self.denoiser.raw(self.step, self.t, latents, set(), self.null, self.values, rows=ordered)
        if not grad and self.reusable and not self.values:
            self.denoiser.carry(self.step, latents, out)
        return out

    def grad(self, loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """d loss / d inputs through the last call (its rows counted in ``nfe_backward``)."""
        self.denoiser.stats.nfe_backward += self.rows_called
        return torch.autograd.grad(loss, inputs)


@dataclass
class LoopContext:
    """What an inversion's per-step hook can use: the schedule, the denoiser and a seeded generator.

    ``source_needed``: whether anything reads the source branch (False when the editor reads what it needs from the
    inversion's stored features): samplers then denoise the target alone (`invedit.inversion.Sampler.branches`).
    """

    schedule: DDIMSchedule
    denoiser: GuidedDenoiser
    generator: torch.Generator
    source_needed: bool = True


def denoise_two_branches(sampler, ctx: LoopContext, editor,
                         callback: Callable[[int], None] | None = None) -> Branches:
    """The one editing loop: both branches from the sampler's start, one batched UNet call per step.

    ``sampler`` is the inversion's per-edit `invedit.inversion.Sampler`. Per step (one `StepInfo`): the editor's
    ``guide`` (only for editors that guide, with a gradient-capable model), the sampler's ``step`` (model
    outputs, DDIM update, its correction — e.g. Direct Inversion pins the source branch to z*), then the
    editor's latent callback (e.g. P2P LocalBlend), as in the reference. Everything but the guidance runs without
    autograd. Editors count steps from the sampler's ``first_step``. The sampler's ``running`` context is held
    around it all (EDICT: the UNet in float64).
    """
    with sampler.running():
        with torch.no_grad():
            sampler.prepare()
            latents = sampler.start_latents()
        first = sampler.first_step
        ctx.denoiser.first_step = first
        for i in range(first, ctx.schedule.steps):
            info = StepInfo.at(ctx.schedule, i, first)
            if editor.guides:
                model = GradientModel(ctx.denoiser, ctx.schedule, i, info.t, sampler.null_embeddings(info),
                                      sampler.value_transforms(info), reusable=editor.guide_rows_reusable)
                latents = editor.guide(info.edit_index, info.t, latents, model)
            with torch.no_grad():
                latents = sampler.step(info, latents)
                latents = editor.step_callback(info.edit_index, latents)
            if callback is not None:
                callback(i)
    return latents
