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

The mechanism is `invedit.editing.shared_attention` with share="v", blocks="single", steps [0, inject): it is built
by `SharedAttention.build`, and equals ``shared-attention`` at those options bit for bit. As there, the values come
from the source branch computed beside the target in the same batch (with Direct Inversion, from z* itself) rather
than from values stored during the inversion, and only the image tokens' values are replaced (the reference also
copies the text tokens' in these blocks: there the source text's values were stored during the inversion).

FLUX only: SD 3 has no single-stream blocks (`shared-attention` applies the same rule to its later joint blocks,
a setting no reference code runs), and a UNet none at all; both are refused in one line.
"""

from __future__ import annotations

from typing import Any

from ..backbones import backbone
from ..backbones.base import LayerInfo
from ..errors import InveditError, check_number
from .base import register
from .shared_attention import SharedAttention

#: FLUX.1's single-stream blocks: the numbering the block indices use.
FLUX1_SINGLE_BLOCKS = 38


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
    defaults: dict[str, Any] = {"inject": 2, "start_layer_index": 20, "end_layer_index": 37}
    schedule_kinds = ("flow",)
    refusal = "it replaces values in FLUX's single-stream blocks"

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super(SharedAttention, cls).validate_options(options)  # the registry's merge, not the fractions
        opts["inject"] = check_number("inject", opts["inject"], 1, integer=True)
        last = FLUX1_SINGLE_BLOCKS - 1
        for key in ("start_layer_index", "end_layer_index"):
            opts[key] = check_number(key, opts[key], 0, last, integer=True)
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

    def settings(self) -> dict[str, Any]:
        keys = (*self.defaults, "controlled_blocks", "injected_steps")
        return {"editor": self.name, **{key: self.options[key] for key in keys}}
