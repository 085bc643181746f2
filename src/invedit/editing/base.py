"""The editor contract, the registry, and the "none" editor (plain two-branch sampling)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import torch

from ..errors import InveditError, merge_options
from ..sampling import Branches, Row
from .attention import LayerInfo, editor_processors, value_processors

EDITORS: dict[str, type[Editor]] = {}
#: A transform of one batch row's cross-attention value context, (1, 77, D) → (1, 77, D).
ValueTransform = Callable[[torch.Tensor], torch.Tensor]


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
    """An editor steers the target branch with what the source branch computes.

    The loop calls: ``attach(unet)`` (a context manager around the run), ``rows_read(step)`` (UNet rows the
    editor reads besides those the latent updates need), ``begin_step(step, rows)`` before each UNet call, and
    ``step_callback(step, latents)`` after each step's update and correction. The denoiser also sets
    ``value_transforms`` (per-row transforms of the cross-attention value input an inversion asks for) before
    each UNet call; the attention processors read them through ``value_context``.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self.active = True
        self.rows: list[Row] = []
        self.step = 0
        self.value_transforms: dict[Row, ValueTransform] = {}
        self.value_calls = 0  # attention layers that applied value_transforms in the current UNet call

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options merged over the defaults; unknown names raise."""
        return merge_options("editor", cls.name, cls.defaults, options)

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int,
               blend_words: tuple[str, str] | None = None, **options: Any) -> Editor:
        """Build the editor for one edit, validating prompts and options."""
        raise InveditError(f"editor {cls.name!r} cannot be created")

    def rows_read(self, step: int) -> frozenset[Row]:
        return frozenset()

    def attach(self, unet):
        return nullcontext()

    def begin_step(self, step: int, rows: list[Row]) -> None:
        self.step, self.rows = step, rows

    def value_context(self, context: torch.Tensor) -> torch.Tensor | None:
        """Cross-attention value input: each row's context through its row's transform (None: unchanged)."""
        if not self.active or not self.value_transforms:
            return None
        if context.shape[0] != len(self.rows):
            raise RuntimeError(f"value transforms for rows {self.rows} but a batch of {context.shape[0]}")
        self.value_calls += 1
        rows = context.split(1)
        return torch.cat([self.value_transforms[row](x) if row in self.value_transforms else x
                          for row, x in zip(self.rows, rows)])

    def value_hooks(self, unet):
        """Context in which every cross-attention layer applies ``value_transforms`` (see `value_processors`)."""
        return value_processors(unet, self)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run UNet calls with the editor's hooks passing through (plain attention)."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def step_callback(self, step: int, latents: Branches) -> Branches:
        return latents

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name}


@register
class NoEditor(Editor):
    """No attention control: each branch follows its own prompt (the target ignores the source)."""

    name = "none"
    description = "no editing control: target branch sampled from z*_T with the target prompt alone"

    @classmethod
    def create(cls, pipe, source_prompt, target_prompt, steps, blend_words=None, **options) -> NoEditor:
        cls.validate_options(options)
        if blend_words:
            raise InveditError("editor 'none' does not use blend words")
        return cls()


class AttentionEditor(Editor):
    """Base of editors that act through attention processors (see `editing.attention`)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_calls = 0

    def wants_layer(self, info: LayerInfo) -> bool:
        raise InveditError(f"editor {self.name!r} declares no attention layers")

    def attend(self, info: LayerInfo, attn, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor | None:
        """Attention output (B, heads, tokens, d) for the whole batch, or None for plain SDPA."""
        return None

    def attach(self, unet):
        self.layer_calls = 0
        return editor_processors(unet, self)

    def row_index(self, branch: str, half: str) -> int | None:
        """Index of a (branch, half) row in the current UNet batch, or None when it is not computed."""
        try:
            return self.rows.index((branch, half))
        except ValueError:
            return None

    def step_callback(self, step: int, latents: Branches) -> Branches:
        if step == 0 and self.layer_calls == 0:
            raise InveditError(f"editor {self.name!r}: the UNet never called its attention hooks")
        return latents
