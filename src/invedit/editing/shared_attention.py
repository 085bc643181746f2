"""Shared attention: the target branch attends over the source branch's image keys/values in chosen layers and steps.

The common core of the training-free editors of rectified-flow transformers and of MasaCtrl on a UNet: while the
target keeps its own queries (and, in joint attention, its own text tokens), its image tokens' keys and values —
or values only — are the source branch's. RF-Solver-Edit (Wang et al. 2024, arXiv 2411.04746) and FireFlow (Deng
et al. 2024, arXiv 2412.07517) replace the values of FLUX's later single-stream blocks during the first steps;
Stable Flow (Avrahami et al., CVPR 2025, arXiv 2411.14430) replaces image keys and values in a few "vital" layers;
MasaCtrl (Cao et al., ICCV 2023) lets a UNet's self-attention query the source's keys and values.

Mechanism: module forward hooks on each chosen attention module's ``to_k`` / ``to_v`` projections. Their outputs
are the image tokens' keys/values before the per-token q/k norm and the rotary embedding (SD3's joint blocks, FLUX's
double-stream blocks and a UNet's self-attention see image tokens only; the text goes through ``add_k_proj`` /
``add_v_proj``), so copying the source row's output into each target row of the same CFG half is the same as
copying the normalised, rotated keys. FLUX's single-stream blocks project [text tokens, image tokens] together:
only the last ``n_image`` tokens are copied, ``n_image`` being read each call from the first double-stream block's
``to_k`` (image tokens only).

Options (fractions, so one rule fits a tiny and a real model; "auto" / None = the model's default below):

- ``share``: "kv" (keys and values) or "v" (values only);
- ``blocks``: "single" (FLUX's single-stream blocks), "joint" (SD3's / FLUX's double-stream blocks) or "all"
  (every block; on a UNet: every self-attention layer);
- ``start_layer`` / ``end_layer``: block number k of the n chosen blocks (forward order) is controlled when
  start_layer·n ≤ k < end_layer·n;
- ``start_step`` / ``end_step``: of the N steps, steps round(start_step·N) … round(end_step·N) − 1 inject (at
  least one). (A step count is ``steps`` in `invedit.edit` already, hence an end rather than a length.)

Defaults, by what the model has:

- single-stream blocks (FLUX): values only, single-stream blocks from half their depth on (FLUX.1: 19–37 of 38),
  the first 12% of the steps — RF-Solver-Edit injects V in single blocks 20–37 (``info['id'] > 19``) for 3 of 25
  steps (``run_art_mari.sh``), FireFlow for 1 of 8 (the half-depth rule keeps a block on small models);
- other flow transformers (SD3): the same rule over the joint blocks (no reference code edits SD3 this way);
- a UNet: keys and values in self-attention from 10/16 of the depth on, from step 4/50 to the end — MasaCtrl's
  ``start_layer=10``, ``start_step=4``, without its mask (`invedit.editing.masactrl`).

Unlike RF-Solver-Edit and FireFlow, which store V (text and image tokens) during the inversion and read it back
while editing, the keys/values come from the source branch computed beside the target in the same batch (with
Direct Inversion that branch is z* itself), and the target's text tokens stay its own.

`rows_read` asks for the source rows of the target's CFG halves at injected steps only, so Direct Inversion (which
otherwise skips the source rows) computes them while injecting and saves them afterwards. The source branch keeps
its given prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from ..backbones import backbone
from ..backbones.base import LayerInfo
from ..errors import InveditError, check_number
from ..sampling import HALVES, Row, halves_needed
from .base import AttentionEditor, ForwardHook, register

SHARES = ("kv", "v")
BLOCKS = ("single", "joint", "all")
#: Option values by what the model has (see the module docstring for where they come from).
SINGLE_STREAM_DEFAULTS = {"share": "v", "blocks": "single", "start_layer": 0.5, "end_layer": 1.0, "start_step": 0.0,
                          "end_step": 0.12}
JOINT_DEFAULTS = {**SINGLE_STREAM_DEFAULTS, "blocks": "joint"}
UNET_DEFAULTS = {"share": "kv", "blocks": "all", "start_layer": 10 / 16, "end_layer": 1.0, "start_step": 4 / 50,
                 "end_step": 1.0}
FRACTIONS = {"start_layer": (0.0, 1.0), "end_layer": (0.0, 1.0), "start_step": (0.0, 1.0), "end_step": (0.0, 1.0)}


def rounded(x: float) -> int:
    """x rounded half up (Python's round() rounds half to even)."""
    return int(x + 0.5)


@register
class SharedAttention(AttentionEditor):
    """The target's image keys/values (or values) are the source's in chosen layers and steps."""

    name = "shared-attention"
    description = ("target image tokens attend over the source's keys/values in chosen layers and steps "
                   "(RF-Solver-Edit / FireFlow / Stable Flow on SD3/FLUX, MasaCtrl without mask on a UNet); "
                   "auto / null options take the model's defaults")
    defaults: dict[str, Any] = {"share": "auto", "blocks": "auto", "start_layer": None, "end_layer": 1.0,
                                "start_step": None, "end_step": None}
    schedule_kinds = ("ddim", "flow")

    def __init__(self, layers: dict[str, LayerInfo], counter: str | None, steps: frozenset[int], share: str,
                 embedded: bool, options: dict[str, Any]):
        super().__init__()
        self.layers, self.counter, self.injected, self.share = layers, counter, steps, share
        self.options = options
        self.target_halves: tuple[str, ...] = ("cond",) if embedded else HALVES
        self.embedded = embedded
        self.image_tokens: int | None = None  # this call's image tokens (read by ``counter``)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        for key, (low, high) in FRACTIONS.items():
            if opts[key] is not None:
                opts[key] = check_number(key, opts[key], low, high, low_open=key in ("end_step", "end_layer"))
        for key, allowed in (("share", SHARES), ("blocks", BLOCKS)):
            if opts[key] in (None, "auto"):
                opts[key] = None
            elif opts[key] not in allowed:
                raise InveditError(f"shared-attention {key} must be one of {', '.join(map(repr, ('auto', *allowed)))}, "
                                   f"got {opts[key]!r}")
        return opts

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> SharedAttention:
        model = backbone(pipe)
        infos = [info for _, _, info in model.attention_layers() if not info.is_cross]
        places = {info.place for info in infos}
        if "single" in places:
            model_defaults = SINGLE_STREAM_DEFAULTS
        elif model.schedule_kind == "flow":
            model_defaults = JOINT_DEFAULTS
        else:
            model_defaults = UNET_DEFAULTS
        opts = cls.validate_options(options)
        return cls.build(model, steps, {k: model_defaults[k] if v is None else v for k, v in opts.items()})

    @classmethod
    def build(cls, model, steps: int, opts: dict[str, Any]) -> SharedAttention:
        """The editor for resolved options (every fraction a number, ``share``/``blocks`` chosen) on ``model`` (an
        `invedit.backbones.Backbone`); editors built on this one (`invedit.editing.rf_solver_edit`) call it with
        the options their own translate to."""
        infos = [info for _, _, info in model.attention_layers() if not info.is_cross]
        opts = dict(opts)
        layers = cls.choose_layers(infos, opts, model.family)
        counter = None
        if any(info.place == "single" for info in layers.values()):
            joint = [info for info in infos if info.place == "joint"]
            if not joint:
                raise InveditError("shared-attention in single-stream blocks needs a double-stream block to count the "
                                   "image tokens; this model has none")
            counter = joint[0].name
        if opts["start_step"] >= opts["end_step"]:
            raise InveditError(f"shared-attention start_step {opts['start_step']:g} must be below end_step "
                               f"{opts['end_step']:g}")
        first = rounded(opts["start_step"] * steps)
        injected = frozenset(range(first, min(steps, max(first + 1, rounded(opts["end_step"] * steps)))))
        if not injected:
            raise InveditError(f"shared-attention start_step {opts['start_step']:g} leaves none of the {steps} steps "
                               "to inject in")
        opts["controlled_blocks"] = sorted({info.block for info in layers.values()},
                                           key=lambda b: next(i.order for i in infos if i.block == b))
        opts["injected_steps"] = sorted(injected)
        return cls(layers, counter, injected, opts["share"], model.guidance_mode == "embedded", opts)

    @staticmethod
    def choose_layers(infos: list[LayerInfo], opts: dict[str, Any], family: str) -> dict[str, LayerInfo]:
        """The controlled attention layers by name: blocks of the chosen kind, then the [start, end) depth slice."""
        if opts["start_layer"] >= opts["end_layer"]:
            raise InveditError(f"shared-attention start_layer {opts['start_layer']:g} must be below end_layer "
                               f"{opts['end_layer']:g}")
        kind = opts["blocks"]
        candidates = [info for info in infos if kind == "all" or info.place == kind]
        if not candidates:
            have = sorted({info.place for info in infos} & {"single", "joint"}) + ["all"]
            raise InveditError(f"shared-attention blocks={kind!r}: {family} models have no such blocks; use one of: "
                               f"{', '.join(have)}")
        blocks = sorted({info.order for info in candidates})
        n = len(blocks)
        chosen = {order for k, order in enumerate(blocks)
                  if opts["start_layer"] * n <= k < opts["end_layer"] * n}
        if not chosen:
            raise InveditError(f"shared-attention layers [{opts['start_layer']:g}, {opts['end_layer']:g}) of the depth "
                               f"hold none of this model's {n} {kind} blocks")
        return {info.name: info for info in candidates if info.order in chosen}

    # ---- loop hooks ----------------------------------------------------------------------------------------
    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        """Unchanged; notes which CFG halves the target computes (the source rows `rows_read` asks for)."""
        if not self.embedded:
            self.target_halves = halves_needed(scales["target"])
        return scales

    def rows_read(self, step: int) -> frozenset[Row]:
        if step not in self.injected:
            return frozenset()
        return frozenset(("source", half) for half in self.target_halves)

    def wants_layer(self, info: LayerInfo) -> bool:
        return False  # no attention processor: module hooks on the projections do the work

    def forward_hooks(self, unet) -> list[tuple[torch.nn.Module, ForwardHook]]:
        hooks: list[tuple[torch.nn.Module, ForwardHook]] = []
        if self.counter is not None:
            hooks.append((unet.get_submodule(self.counter).to_k, self._count_image_tokens))
        projections = ("to_k", "to_v") if self.share == "kv" else ("to_v",)
        for name, info in self.layers.items():
            attn = unet.get_submodule(name)
            for projection in projections:
                hooks.append((getattr(attn, projection), self._replacer(info)))
        return hooks

    def _count_image_tokens(self, module, args, output) -> None:
        self.image_tokens = output.shape[1]

    def _replacer(self, info: LayerInfo) -> ForwardHook:
        single = info.place == "single"

        def replace(module, args, output: torch.Tensor) -> torch.Tensor | None:
            if self.step not in self.injected:
                return None
            if output.shape[0] != len(self.rows):
                raise RuntimeError(f"shared-attention: {info.name} saw a batch of {output.shape[0]} for rows "
                                   f"{self.rows}")
            pairs = [(row, self.row_index("source", half)) for row, (branch, half) in enumerate(self.rows)
                     if branch == "target"]
            pairs = [(t, s) for t, s in pairs if s is not None]
            if not pairs:
                return None
            tokens = self.image_tokens if single else output.shape[1]
            if tokens is None or tokens > output.shape[1]:
                raise RuntimeError(f"shared-attention: {info.name} cannot place {tokens} image tokens")
            out = output.clone()
            targets, sources = [t for t, _ in pairs], [s for _, s in pairs]
            out[targets, -tokens:] = output[sources, -tokens:]
            return out

        return replace

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}
