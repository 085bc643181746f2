"""Stable Flow's editor (Avrahami et al., "Stable Flow: Vital Layers for Training-Free Image Editing", CVPR 2025,
arXiv 2411.14430; reference: snap-research/stable-flow, ``run_stable_flow.py``): in FLUX's few "vital" layers the
target's image keys and values are the source's, at every step.

The reference (``StableFlow.MULTIMODAL_VITAL_LAYERS = [0, 1, 17, 18]`` and ``SINGLE_MODAL_VITAL_LAYERS =
[28, 53, 54, 56, 25] − 19``) names FLUX.1-dev's layers 0, 1, 17, 18, 25, 28, 53, 54, 56 of its 57 (19 double-stream
then 38 single-stream blocks): double-stream blocks 0, 1, 17, 18 and single-stream blocks 6, 9, 34, 35, 37. Its
attention processors copy row 0's keys and values (the source's) into the other rows, in the double-stream blocks
all of them (``to_k``/``to_v`` see image tokens only), in the single-stream blocks the image tokens' (``[512:]``,
after the 512 T5 tokens), before the q/k norm and the rotary embedding, at each of the edit's steps. Options, with
the reference's names (``pipe(..., mm_copy_blocks=..., single_copy_blocks=...)``):

- ``mm_copy_blocks``: double-stream block numbers (of FLUX.1's 19), default [0, 1, 17, 18];
- ``single_copy_blocks``: single-stream block numbers (of FLUX.1's 38), default [9, 34, 35, 37, 6];
- ``source_guidance``: the source branch's guidance (the reference edits with ``guidance_scale=[1] + [3] * …``:
  1 for the source row, the edit's guidance scale, 3 there, for the target).

On a model with other depths (the tiny test models) each index keeps its share of the depth: double-stream block d
of 19 is block ⌊d·n/19⌋ of n, single-stream block s of 38 is ⌊s·m/38⌋ of m (`scaled_blocks`; the identity on FLUX.1).

The mechanism is `invedit.editing.shared_attention` with share="kv" over the chosen blocks at every step, built by
`SharedAttention.build`, and equal to it bit for bit where shared-attention's depth slices name the same blocks.
The reference's inversion (Euler inversion under the source prompt at guidance 1, from the image latent multiplied
by 1.15, "latent nudging"; the source row then set to the inverted latents after each step) is the
``stable-flow`` inversion (`invedit.inversion.direct.StableFlowInverted`: Direct Inversion of the nudged latent).
One difference: the reference sets the source row after step i to ``inverted_latent_list[-i]``, off by one level
(at step 0 the level after the first inversion step); Direct Inversion pins it to the level the step lands on.

FLUX only (the paper's layers are FLUX's); SD 3 and UNets are refused in one line.
"""

from __future__ import annotations

from typing import Any

from ..backbones import backbone
from ..backbones.base import LayerInfo
from ..errors import InveditError, check_number
from .base import register
from .shared_attention import SharedAttention

#: FLUX.1's double-stream and single-stream blocks: the numbering the block indices use.
FLUX1_DOUBLE_BLOCKS, FLUX1_SINGLE_BLOCKS = 19, 38
#: The paper's vital layers of FLUX.1-dev, as the reference names them (its ``MULTIMODAL_VITAL_LAYERS`` and
#: ``SINGLE_MODAL_VITAL_LAYERS``: layers 28, 53, 54, 56, 25 of 57 less the 19 double-stream blocks).
VITAL_DOUBLE_BLOCKS = (0, 1, 17, 18)
VITAL_SINGLE_BLOCKS = (9, 34, 35, 37, 6)


def scaled_blocks(indices, flux1_count: int, count: int) -> list[int]:
    """The blocks (0-based, of ``count``) that FLUX.1 block ``indices`` (of ``flux1_count``) name: ⌊i·count /
    flux1_count⌋ each, sorted, without repeats (the identity when ``count == flux1_count``)."""
    return sorted({i * count // flux1_count for i in indices})


def _block_list(key: str, value: Any, count: int) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InveditError(f"stable-flow {key} must be a list of block numbers (JSON, e.g. [0, 1]), got {value!r}")
    return [check_number(f"{key} entry", v, 0, count - 1, integer=True) for v in value]


@register
class StableFlowEditor(SharedAttention):
    """Stable Flow: the target's image keys/values in FLUX's vital layers are the source's, at every step."""

    name = "stable-flow"
    description = ("Stable Flow (CVPR'25): source image keys/values in FLUX's vital layers (double 0,1,17,18; single "
                   "6,9,34,35,37) at every step; pair with inversion stable-flow; FLUX")
    defaults: dict[str, Any] = {"mm_copy_blocks": list(VITAL_DOUBLE_BLOCKS),
                                "single_copy_blocks": list(VITAL_SINGLE_BLOCKS), "source_guidance": 1.0}
    schedule_kinds = ("flow",)
    refusal = "it shares keys/values in FLUX's vital layers"

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super(SharedAttention, cls).validate_options(options)  # the registry's merge, not the fractions
        opts["mm_copy_blocks"] = _block_list("mm_copy_blocks", opts["mm_copy_blocks"], FLUX1_DOUBLE_BLOCKS)
        opts["single_copy_blocks"] = _block_list("single_copy_blocks", opts["single_copy_blocks"],
                                                 FLUX1_SINGLE_BLOCKS)
        if not opts["mm_copy_blocks"] and not opts["single_copy_blocks"]:
            raise InveditError("stable-flow needs at least one block in mm_copy_blocks or single_copy_blocks")
        opts["source_guidance"] = check_number("source_guidance", opts["source_guidance"], 0, 50)
        return opts

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> StableFlowEditor:
        opts = cls.validate_options(options)
        model = backbone(pipe)
        if model.family != "flux":
            raise InveditError(f"editor 'stable-flow' runs on FLUX models only: its vital layers are FLUX's "
                               f"double- and single-stream blocks ({model.family} has none)")
        shared = {"share": "kv", "blocks": "all", "start_layer": 0.0, "end_layer": 1.0, "start_step": 0.0,
                  "end_step": 1.0}
        return cls.build(model, steps, {**opts, **shared})

    @staticmethod
    def choose_layers(infos: list[LayerInfo], opts: dict[str, Any], family: str) -> dict[str, LayerInfo]:
        """The double- and single-stream blocks the options name, scaled to the model's depths (`scaled_blocks`)."""
        chosen: set[int] = set()
        for place, key, flux1 in (("joint", "mm_copy_blocks", FLUX1_DOUBLE_BLOCKS),
                                  ("single", "single_copy_blocks", FLUX1_SINGLE_BLOCKS)):
            orders = sorted({info.order for info in infos if info.place == place})
            if opts[key] and not orders:
                raise InveditError(f"editor 'stable-flow': this {family} model has no {place} blocks for {key}")
            chosen |= {orders[k] for k in scaled_blocks(opts[key], flux1, len(orders))}
        return {info.name: info for info in infos if info.order in chosen}

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        """The source at ``source_guidance`` (the reference's 1), the target at the edit's scale."""
        return super().branch_guidance({**scales, "source": self.options["source_guidance"]})

    def settings(self) -> dict[str, Any]:
        keys = (*self.defaults, "controlled_blocks", "injected_steps")
        return {"editor": self.name, **{key: self.options[key] for key in keys}}
