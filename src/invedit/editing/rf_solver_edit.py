"""RF-Solver-Edit's editor (Wang et al., "Taming Rectified Flow for Inversion and Editing", ICML 2025, arXiv
2411.04746; reference: wangjiangshan0725/RF-Solver-Edit, ``FLUX_Image_Edit``), also FireFlow's (Deng et al., ICML
2025, arXiv 2412.07517; HolmesShuan/FireFlow, its default ``--editing_strategy replace_v``): during the first
``inject`` denoising steps, the values of FLUX's later single-stream blocks are the source's.

The reference (``flux/modules/layers.py``, ``SingleStreamBlock.forward``) replaces ``v`` in the single-stream blocks
with ``info['id'] > 19`` (ids 20–37 of FLUX.1's 38) while ``info['inject']`` holds, which ``flux/sampling.py``
sets for denoising steps i < ``inject`` (counted from the noisiest) and for the mirrored inversion steps. FireFlow
names the block range ``--start_layer_index 20 --end_layer_index 37`` (inclusive, its defaults; its scripts use
0–37). Options, with the reference's names:

- ``inject``: the number of denoising steps that inject, from the first (an integer ≥ 1; more than the edit's
  steps injects at every step, as the reference's list does). Default 2: the reference's 15-step scripts
  (``run_boy.sh``, ``run_hiking.sh``; ``run_horse.sh`` uses 3) and FireFlow's 15-step advice; its README says
  "typically 2 to 8", its 25-step scripts use 2–5 and the demo 5 (``edit.py``'s argparse default 20, at 25 steps,
  is used by none of them).
- ``start_layer_index``, ``end_layer_index``: the injected single-stream blocks, inclusive, numbered as FLUX.1's
  38 (defaults 20 and 37). On a model with n single-stream blocks they name the same share of the depth, blocks
  ⌊start·n/38⌋ … ⌊(end + 1)·n/38⌋ − 1, at least one (`single_blocks`: the identity on FLUX.1; block 1 of 2 on
  the tiny test models).

- ``features``: where the injected values come from.

  "inversion" (default, the reference's behaviour): the values are **stored during the inversion**
  (`invedit.features`: the inversion records the chosen blocks' V, text and image tokens, at its own guidance —
  the reference's 1 — at the levels the injected steps read) and replace the target's whole V (text tokens
  included) in those blocks. As the reference keys its store (``info['t']``, ``second_order``), the first call of
  denoising step i (at σ_i) reads the value the inversion computed one level lower, at σ_{i+1} (its step's start),
  and the midpoint call reads the inversion's midpoint value of the same interval. With a FireFlow inversion the
  inversion evaluates no step start but the first, so, as in the reference, only the midpoint calls inject (8
  steps, inject 1: the midpoint call of step 0). Nothing reads the source branch, so it is not denoised: 15-step
  RF-Solver-Edit costs 30 + 30 NFE, FireFlow 16 + 16 (8 steps: 9 + 9), the reference's counts; the result's
  reconstruction is then the input's own latent decoded. Paired with Direct Inversion (whose source branch is z*
  itself) step i reads the value stored at its own level, which is the pinned source's value exactly when the
  inversion ran under the source branch's prompt and guidance (an Euler inversion evaluates the velocity at
  (z*ₖ, σₖ), where the pinned source evaluates next); at the edit's guidance ≠ the inversion's, the stored values are
  the inversion guidance's. The top level, which no inversion evaluates, is read from the source row computed
  there (one extra row at step 0): 15 + 15 + 1 NFE at 15 steps.

  "source": the values come from the source branch computed beside the target in the same batch (with Direct
  Inversion, from z* itself), and only the image tokens' values are replaced; the mechanism is
  `invedit.editing.shared_attention` with share="v", blocks="single", steps [0, inject), built by
  `SharedAttention.build`, equal to ``shared-attention`` at those options bit for bit (invedit's behaviour before
  the store: it needs no memory, costs the source branch's rows, 30 + 60 NFE at 15 steps, and reads the source at
  the edit's guidance and the same level).

Memory of the store: `invedit.features` (FLUX.1-dev at 1024², bf16: 509 MB per call, 2.04 GB at inject 2).

FLUX only: SD 3 has no single-stream blocks (`shared-attention` applies the same rule to its later joint blocks,
a setting no reference code runs), and a UNet none at all; both are refused in one line.
"""

from __future__ import annotations

from typing import Any

from ..backbones import backbone
from ..backbones.base import LayerInfo
from ..errors import InveditError, check_number
from ..features import FeatureRequest, FeatureStore
from ..sampling import HALVES, Row
from .base import ForwardHook, register
from .shared_attention import SharedAttention

#: FLUX.1's single-stream blocks: the numbering the block indices use.
FLUX1_SINGLE_BLOCKS = 38
#: Where the injected values come from (see the module docstring).
FEATURE_SOURCES = ("inversion", "source")


def single_blocks(start_index: int, end_index: int, count: int) -> range:
    """The single-stream block numbers (0-based, of ``count``) that FLUX.1 indices start…end (inclusive) name: the
    same share of the depth, blocks ⌊start·count/38⌋ … ⌊(end + 1)·count/38⌋ − 1, at least one."""
    first = start_index * count // FLUX1_SINGLE_BLOCKS
    return range(first, max(first + 1, (end_index + 1) * count // FLUX1_SINGLE_BLOCKS))


@register
class RFSolverEdit(SharedAttention):
    """RF-Solver-Edit / FireFlow: the target's values in FLUX's later single-stream blocks are the source's for the
    first ``inject`` steps."""

    name = "rf-solver-edit"
    description = ("RF-Solver-Edit / FireFlow (ICML'25): source values in FLUX's single-stream blocks 20-37 for the "
                   "first `inject` steps; FLUX")
    defaults: dict[str, Any] = {"inject": 2, "start_layer_index": 20, "end_layer_index": 37, "features": "inversion"}
    store: FeatureStore | None = None  # the inversion's (features="inversion", after `bind`)
    pinned = False  # the inversion's source branch is z* (Direct): read the level each step starts from
    first_step = 0
    schedule: Any = None
    schedule_kinds = ("flow",)
    refusal = "it replaces values in FLUX's single-stream blocks"
    modes = ("features",)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super(SharedAttention, cls).validate_options(options)  # the registry's merge, not the fractions
        opts["inject"] = check_number("inject", opts["inject"], 1, integer=True)
        last = FLUX1_SINGLE_BLOCKS - 1
        for key in ("start_layer_index", "end_layer_index"):
            opts[key] = check_number(key, opts[key], 0, last, integer=True)
        if opts["features"] not in FEATURE_SOURCES:
            raise InveditError(f"rf-solver-edit features must be 'inversion' (reference) or 'source', got "
                               f"{opts['features']!r}")
        if opts["start_layer_index"] > opts["end_layer_index"]:
            raise InveditError(f"rf-solver-edit start_layer_index {opts['start_layer_index']} must not exceed "
                               f"end_layer_index {opts['end_layer_index']}")
        return opts

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> RFSolverEdit:
        opts = cls.validate_options(options)
        model = backbone(pipe)
        if model.family != "flux":
            raise InveditError(f"editor 'rf-solver-edit' runs on FLUX models only: {model.family} has no "
                               f"single-stream blocks (shared-attention applies its rule to the later joint blocks)")
        shared = {"share": "v", "blocks": "single", "start_step": 0.0, "end_step": min(opts["inject"], steps) / steps}
        return cls.build(model, steps, {**opts, **shared})

    @staticmethod
    def choose_layers(infos: list[LayerInfo], opts: dict[str, Any], family: str) -> dict[str, LayerInfo]:
        """The single-stream blocks ``start_layer_index`` … ``end_layer_index`` (see `single_blocks`)."""
        singles = [info for info in infos if info.place == "single"]
        orders = sorted({info.order for info in singles})
        if not orders:
            raise InveditError(f"editor 'rf-solver-edit': this {family} model has no single-stream blocks")
        chosen = {orders[k] for k in single_blocks(opts["start_layer_index"], opts["end_layer_index"], len(orders))}
        return {info.name: info for info in singles if info.order in chosen}

    # ---- features from the inversion -----------------------------------------------------------------------
    @property
    def from_inversion(self) -> bool:
        return self.options["features"] == "inversion"

    def value_modules(self) -> dict[str, str]:
        """The store's module name (the ``to_v`` projection) of each controlled attention layer."""
        return {name: f"{name}.to_v" for name in sorted(self.layers)}

    def feature_request(self, pinned: bool = False) -> FeatureRequest | None:
        """The controlled blocks' values at the levels the injected steps read: each step's start (pinned source),
        its midpoint and the level below (the reference's keying)."""
        if not self.from_inversion:
            return None
        levels = sorted({float(x) for i in self.injected for x in (i, i + 0.5, i + 1)})
        return FeatureRequest(tuple(self.value_modules().values()), tuple(levels))

    @property
    def source_needed(self) -> bool:
        return not self.from_inversion

    def bind(self, inverted) -> None:
        if not self.from_inversion:
            return
        store = inverted.features
        wanted = set(self.value_modules().values())
        if store is None or not wanted <= set(store.request.modules):
            raise InveditError("rf-solver-edit features='inversion' reads the values stored while inverting, and this "
                               "inversion stored none: let invedit.edit invert the image, invert with "
                               "record=invedit.feature_request(...), or pass features='source'")
        if inverted.first_step:
            raise InveditError(f"rf-solver-edit features='inversion' reads the levels an inversion of every step "
                               f"stores; {inverted.method!r} starts the edit at step {inverted.first_step}: pass "
                               "features='source'")
        self.store, self.pinned = store, inverted.source_on_trajectory
        self.first_step, self.schedule = inverted.first_step, inverted.schedule

    def read_position(self) -> float:
        """The stored level this call reads: the reference's keying (a step's first call at σ_i reads σ_{i+1}; a
        midpoint reads the same midpoint), or, with a pinned source, the call's own level."""
        position = self.schedule.level_position(float(self.timestep))
        return position if self.pinned or position != int(position) else position + 1

    def rows_read(self, step: int) -> frozenset[Row]:
        if not self.from_inversion:
            return super().rows_read(step)
        if step not in self.injected or not self.pinned or self.store.has(step + self.first_step):
            return frozenset()
        return frozenset(("source", half) for half in self.target_halves)  # the top level: no inversion evaluates it

    def forward_hooks(self, unet) -> list[tuple[Any, ForwardHook]]:
        if not self.from_inversion:
            return super().forward_hooks(unet)
        return [(unet.get_submodule(name).to_v, self._stored(module)) for name, module in self.value_modules().items()]

    def _stored(self, module_name: str) -> ForwardHook:
        def replace(module, args, output):
            if self.step not in self.injected:
                return None
            stored = self.store.get(self.read_position(), module_name)
            targets = [(row, half) for row, (branch, half) in enumerate(self.rows) if branch == "target"]
            if stored is None:
                if not self.pinned:
                    return None  # the reference injects only where its store has the key (FireFlow: step starts)
                rows = {half: output[self.row_index("source", half)] for _, half in targets}
            else:
                rows = {half: stored[0 if len(stored) == 1 else HALVES.index(half)] for _, half in targets}
            out = output.clone()
            for row, half in targets:
                if rows[half].shape != output.shape[1:]:
                    raise InveditError(f"rf-solver-edit: the stored values of {module_name} have shape "
                                       f"{tuple(rows[half].shape)}, this call's {tuple(output.shape[1:])}")
                out[row] = rows[half].to(output.device, output.dtype)
            return out

        return replace

    def settings(self) -> dict[str, Any]:
        keys = (*self.defaults, "controlled_blocks", "injected_steps")
        return {"editor": self.name, **{key: self.options[key] for key in keys}}
