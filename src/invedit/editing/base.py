"""The editor contract, the registry, and the "none" editor (plain two-branch sampling)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from ..errors import InveditError, merge_options
from ..sampling import Branches, Row
from .attention import EditorAttnProcessor, LayerInfo, ValueTransforms, installed

EDITORS: dict[str, type[Editor]] = {}
#: A module forward hook: (module, args, output) -> replaced output, or None to keep it.
ForwardHook = Callable[[torch.nn.Module, tuple, Any], Any]


def register(cls: type[Editor]) -> type[Editor]:
    """Class decorator: make an editor available by its ``name``."""
    EDITORS[cls.name] = cls
    return cls


def get_editor(name: str) -> type[Editor]:
    """The editor class registered as ``name``; a clear error for unknown names."""
    try:
        return EDITORS[name]
    except KeyError:
        raise InveditError(f"unknown editor {name!r}; choose one of: {', '.join(sorted(EDITORS))}") from None


class Editor:
    """An editor steers the target branch with what the source branch computes (one instance per edit).

    What the loop calls, in order:

    - ``bind(inverted)`` once, with the inversion the edit steps;
    - ``embeddings(encode, cond, null)`` and ``branch_guidance(scales)`` once: the branches' embeddings and CFG
      scales (default unchanged; Plug-and-Play's negative prompt and unguided source change them);
    - ``wrap_sampler(sampler)`` once: the step policy the loop runs (the inversion's sampler by default);
    - ``attach(model, values)`` around the run: installs ``wants_layer``/``attend`` attention processors and
      ``forward_hooks`` through `attention.installed`, restored in a ``finally``;
    - per step: ``rows_read(step)`` (UNet rows read besides those the latent updates need), then
      ``begin_step(step, rows)`` before each UNet call, ``guide(step, t, latents, model)`` before the update
      (a gradient step on the latents, with a gradient-capable model), and ``step_callback(step, latents)``
      after the update and the inversion's correction.

    Steps count from the first step the edit runs. ``requires_hooks`` editors that hook nothing, or whose
    hooks the UNet never calls, raise.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: Whether the editor acts through hooks (then hooking nothing, or never being called, is an error).
    requires_hooks: ClassVar[bool] = False
    #: Whether ``guide`` changes the latents (the loop then gives it a gradient-capable model).
    guides: ClassVar[bool] = False
    #: Whether a row ``guide`` computes without a graph is what the step's update would compute for it (the editor
    #: leaves that row's forward pass as a plain one in both calls): the update then reads it instead of calling
    #: the model again (`invedit.sampling.GuidedDenoiser.raw`).
    guide_rows_reusable: ClassVar[bool] = False
    #: The kinds of schedule (`Backbone.schedule_kind`) whose models the editor runs on: its hooks know the UNet's
    #: attention and DDIM's arithmetic unless it names "flow" too.
    schedule_kinds: ClassVar[tuple[str, ...]] = ("ddim",)
    #: Why it does not run on the other kinds, in a few words (the refusal message says it).
    refusal: ClassVar[str] = ""
    #: The editor needs no inversion (FlowEdit): it runs with inversion "none" and `sampler` supplies the edit's
    #: step policy; every other editor steps an inversion's trajectory (`prepare.check_pairing`).
    inversion_free: ClassVar[bool] = False
    #: The editor needs a mask of the region to edit (KV-Edit): ``create`` gets it as ``mask`` (an
    #: `invedit.masks.EditMask`); editors without it are given none (`invedit.prepare.check_mask`).
    takes_mask: ClassVar[bool] = False
    #: Options that choose between the reference's behaviour and another (RF-Solver-Edit's ``features``, KV-Edit's
    #: ``layout``): reports name the mode a result ran in.
    modes: ClassVar[tuple[str, ...]] = ()
    #: The editor edits from an instruction (``instruction=``, ``--instruction``) in place of a target prompt: an
    #: instruction-trained model's own pipeline (`invedit.editing.instruct`); a source prompt is optional.
    takes_instruction: ClassVar[bool] = False

    def __init__(self) -> None:
        self.active = True
        self.rows: list[Row] = []
        self.step = 0
        self.layer_calls = 0  # hooked layers and modules called since `attach`
        self.timestep: Any = None  # the network timestep of the current call (set by the denoiser)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options merged over the defaults; unknown names raise."""
        return merge_options("editor", cls.name, cls.defaults, options)

    @classmethod
    def source_branch_prompt(cls, source_prompt: str, options: dict[str, Any]) -> str:
        """The prompt the source branch is denoised under (MasaCtrl's reference: the empty one)."""
        return source_prompt

    @classmethod
    def inversion_prompt(cls, source_prompt: str, options: dict[str, Any]) -> str:
        """The prompt the image is inverted under: the source branch's (`source_branch_prompt`) unless the editor's
        reference inverts under another one (UniEdit-Flow's demo: the empty prompt, ``inversion_prompt="empty"``)."""
        return cls.source_branch_prompt(source_prompt, options)

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> Editor:
        """Build the editor for one edit, validating prompts and options.

        It may read the pipeline (its tokenizer, its layers through `invedit.backbones.backbone`) and compute from
        it, but must not change it or anything else: callers build an editor before inverting, only to check the
        settings (a dry run), and build it again for the edit. Hooks go on in `attach`, never here.
        """
        raise InveditError(f"editor {cls.name!r} cannot be created")

    # ---- what the editor hooks --------------------------------------------------------------------------
    def wants_layer(self, info: LayerInfo) -> bool:
        """Whether the editor attends in this attention layer (see `attend`)."""
        return False

    def attend(self, info: LayerInfo, attn, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor | None:
        """Attention output (B, heads, tokens, d) for the whole batch, or None for plain SDPA."""
        return None

    def attention_processor(self, info: LayerInfo, values: ValueTransforms | None = None):
        """The attention processor `attach` puts on a layer ``wants_layer`` chose: the UNet's, which hands q, k, v
        to `attend` (`invedit.editing.attention.EditorAttnProcessor`); editors of joint attention name their own."""
        return EditorAttnProcessor(self, info, values)

    @classmethod
    def blend_option(cls) -> str | None:
        """The option that takes LocalBlend's "SRC TGT" words (the CLI's ``--blend``, PIE-Bench's blended_word):
        P2P's ``blend_words``, MM-DiT P2P's ``local_blend_words``; None for editors without LocalBlend."""
        return next((k for k in ("blend_words", "local_blend_words") if k in cls.defaults), None)

    def forward_hooks(self, unet) -> list[tuple[torch.nn.Module, ForwardHook]]:
        """Module forward hooks ``hook(module, args, output) -> output | None`` to install for the run."""
        return []

    def attach(self, model, values: ValueTransforms | None = None):
        """Context manager: the editor's hooks (and ``values``) on the model's denoiser for the run
        (`attention.installed`; ``model``: an `invedit.backbones.Backbone`)."""
        self.layer_calls = 0
        return installed(model, self, values)

    def bind(self, inverted) -> None:  # noqa: B027 (optional hook)
        """Called once per edit, before its loop is built, with the frozen `invedit.inversion.Inverted` it steps
        (KV-Edit reads its guidance and trajectory); default: nothing."""

    def feature_request(self, pinned: bool = False):
        """What the editor reads from the inversion's feature store (an `invedit.features.FeatureRequest`: modules'
        outputs and latents at noise levels, recorded while inverting), or None: it reads the source branch.
        ``pinned``: the inversion's edits set the source branch to z* (`Inverted.pins_source`)."""
        return None

    @property
    def source_needed(self) -> bool:
        """Whether the edit reads the source branch (its rows or its latents); False: the loop denoises the target
        alone (the editor reads what it needs from the inversion's stored features)."""
        return True

    def wrap_sampler(self, sampler):
        """The edit's step policy: the inversion's per-edit sampler, or one the editor puts around it (KV-Edit
        skips steps, re-initialises the target and re-composites the background around each step); default: as
        is."""
        return sampler

    def sampler(self, inverted, ctx):
        """The per-edit step policy of an inversion-free editor (an `invedit.inversion.Sampler` over the "none"
        inversion's z₀ and the loop context ``ctx``)."""
        raise InveditError(f"editor {self.name!r} steps an inversion's trajectory; it supplies no sampler")

    # ---- loop hooks -------------------------------------------------------------------------------------
    def embeddings(self, encode: Callable[[list[str]], torch.Tensor], cond: dict[str, torch.Tensor],
                   null: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-branch conditional and unconditional embeddings of the edit; ``encode`` embeds prompts."""
        return cond, null

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        """CFG scale per branch during the edit (Plug-and-Play re-samples the source without guidance)."""
        return scales

    def rows_read(self, step: int) -> frozenset[Row]:
        return frozenset()

    def begin_step(self, step: int, rows: list[Row]) -> None:
        self.step, self.rows = step, rows

    def row_index(self, branch: str, half: str) -> int | None:
        """Index of a (branch, half) row in the current UNet batch, or None when it is not computed."""
        try:
            return self.rows.index((branch, half))
        except ValueError:
            return None

    def guide(self, step: int, t: int, latents: Branches, model: Callable[..., dict[Row, torch.Tensor]]) -> Branches:
        """Latents moved before the step's update (only called when ``guides``); ``model`` has gradients."""
        return latents

    def step_callback(self, step: int, latents: Branches) -> Branches:
        if self.requires_hooks and step == 0 and self.layer_calls == 0:
            raise InveditError(f"editor {self.name!r}: the UNet never called its attention hooks")
        return latents

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run UNet calls with the editor's hooks passing through (plain attention, no module hooks)."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name}


def reference_editor_options(pipe, editor: str) -> dict[str, Any]:
    """The editor's own defaults for every option the model recommends otherwise: pass them to `edit` to run
    the reference settings on a model that ships its own (benchmarks compare models this way)."""
    from ..backbones import backbone

    defaults = get_editor(editor).defaults
    return {k: defaults[k] for k in backbone(pipe).model_editor_defaults(editor) if k in defaults}


@register
class NoEditor(Editor):
    """No attention control: each branch follows its own prompt (the target ignores the source)."""

    name = "none"
    description = "no editing control: target branch sampled from z*_T with the target prompt alone"
    schedule_kinds = ("ddim", "flow")

    @classmethod
    def create(cls, pipe, source_prompt, target_prompt, steps, **options) -> NoEditor:
        cls.validate_options(options)
        return cls()


class AttentionEditor(Editor):
    """Base of editors that act through attention processors and module hooks."""

    requires_hooks = True

    def wants_layer(self, info: LayerInfo) -> bool:
        raise InveditError(f"editor {self.name!r} declares no attention layers")
