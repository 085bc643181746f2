"""KV-Edit (Zhu et al., "KV-Edit: Training-Free Image Editing for Precise Background Preservation", ICCV 2025,
arXiv 2502.17363; official code Xilluill/KV-Edit, FLUX): inside a mask the target is re-generated, outside it the
image is kept exactly.

The method, per denoising step of the edit (official ``flux/sampling.py`` ``denoise_kv``, ``flux/modules/layers.py``
``DoubleStreamBlock_kv`` / ``SingleStreamBlock_kv``, ``models/kv_edit.py``):

- in every attention block (FLUX's double- and single-stream blocks; SD3's joint blocks, and SD3.5's image-only
  second attention) the keys and values of the **background** image tokens are the source's, cached from the
  inversion; the foreground (mask) tokens keep their own, and the target's text tokens theirs;
- only the foreground tokens are queries of the target: the background is not re-generated;
- the background latent follows the inversion trajectory: before each step the cells outside the mask are the
  source's, and at the end every background cell of the latent is the image's own latent z₀, before decoding.

A token is foreground when any of its latent cells is in the mask (the official ``mask.sum(dim=2) > 0.5`` over a
token's 2×2 cells × channels); cells of a foreground token that lie outside the mask are re-set to the source each
step, as the official code does.

How invedit runs it (``layout``):

- ``layout="reference"`` (default; the official gradio page's path): the inversion runs all N steps and records
  (`invedit.features`) every attention block's image keys/values at each level the edit reads; the source branch is
  not denoised. The foreground starts from the latent the official stores under its top key, z*_{σ_1} (the input
  of the inversion's last step: nearly pure noise, whatever ``skip_step``), and denoising step i (at σ_i) reads the
  background keys/values and the background latent stored under the step's timestep, which the official's
  inversion computed one level lower, at (z*_{σ_{i+1}}, σ_{i+1}). Forward hooks on each attention's ``to_k`` /
  ``to_v`` put the stored background image tokens into the target rows (before the per-token q/k norm and the
  rotary embedding, which then act on them exactly as on the official cached ones; FLUX's single-stream blocks
  project [text, image] together: the last ``n_image`` tokens are the image). Cost: N + (N − skip_step) NFE, 28 + 24
  = 52 at the demo's 28 steps, the official count. Memory: the image keys/values of every block at N − skip_step
  levels, on the CPU in the model's dtype as the official keeps them (FLUX.1-dev at 1024², bf16: 2 × 4096 × 3072 ×
  2 B = 50 MB per double-stream block, 57 MB per single-stream block, whose stored projection includes the 512
  text tokens; 3.1 GB per level, 75 GB for the demo's 24 levels).
- ``layout="exact"``: same level. At step i the target (at σ_i) reads the source's keys/values and background at
  σ_i, and the target starts from the trajectory's latent at the first edited level. The source branch runs beside
  the target in the same batch, pinned to z* (one source row per step and CFG half it reads: 28 + 2·24 = 76 NFE at
  28 steps on FLUX.1-dev), and no store is kept; with Direct Inversion (whose source branch is z* itself) the
  keys/values come from the store at the step's own level instead, which is the pinned source's exactly when the
  inversion ran under its prompt and guidance (an Euler inversion evaluates the model at (z*ₖ, σₖ)): 28 + 24 = 52.
  Why one might prefer it: the background context and latent the target sees are at the target's own noise level
  (the official pairs a step at σ_i with a context from σ_{i+1}, and starts the foreground from σ_1 whatever
  ``skip_step``: with skip_step 4 of 28 the official's foreground starts from a noisier latent than the level it is
  denoised at), so a consistent ODE step; ``source_guidance`` and ``attn_mask`` act on the source rows; and
  without Direct it needs no store (the reference layout's keys/values of every block and level cost tens of GB
  on FLUX.1-dev at 1024²). With both changes the official code agrees with it to ~1e-6.

The target's background tokens are still computed as queries, but their keys and values are replaced in every
layer, so they never reach a foreground token: the foreground's output equals the official foreground-only
forward; their own velocities are discarded by the re-composition (`KVEditSampler`). Another inversion (rf-solver,
fireflow) changes the trajectory that feeds it (and, in the reference layout, its midpoint calls read the stored
midpoints).

Options (official defaults: ``gradio_kv_edit.py``'s page and ``SamplingOptions``):

- ``skip_step``: the first edit steps run no network call; both branches follow z* and the target starts at the
  trajectory's latent at that level. Official 4 of its 28 steps; None: that share of the edit's steps,
  ⌊4·N/28 + ½⌋ (4 at 28, 7 at 50, 1 at 4);
- ``re_init``: the foreground starts from (1 − σ)·z₀ + σ·ε at the first edited level instead of the inverted
  latent (official False); ε from the edit's seeded generator, in the latent layout;
- ``attn_scale``: added to the attention logits of every target query for the background keys (official 1.0,
  "increase it to reduce the discontinuity with the background"); 0 = none;
- ``attn_mask``: official False. True separates foreground and background in the source's attention (background
  queries see text + background, foreground queries text + foreground; text sees all), so the cached background
  keys/values do not depend on the foreground;
- ``source_guidance``: the guidance the source rows (the cache) are computed with. None: the inversion's
  ``inversion_guidance`` (the official caches during the inversion, at its ``inversion_guidance``); on SD 3 a
  target CFG half reads the source row of the same half when the source computes it, else its conditional row.
- ``layout``: "reference" (default) or "exact", above. ``attn_mask`` and ``source_guidance`` act on source rows,
  which the reference layout does not compute: they are refused there.

Differences from the official code, on purpose or by construction:

- the inversion is invedit's, shared with other editors: it runs all N steps (the official gradio page does too;
  its ``Flux_kv_edit.forward`` inverts only N − skip_step) and is unmasked: ``attn_mask`` acts on the source rows
  during the edit (``layout="exact"``), where the official applies it during the inversion, so that its z*
  trajectory is masked as well;
- the mask is max-pooled to the latent grid (`invedit.masks`); the official interpolates it bilinearly and keeps
  every cell above 0;
- the official runs FLUX only; on SD 3 the same rules apply to its joint attention (no reference exists).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..backbones import backbone
from ..backbones.base import LayerInfo
from ..errors import InveditError, check_number
from ..features import FeatureRequest, FeatureStore
from ..masks import EditMask
from ..sampling import HALVES, Branches, Row, halves_needed
from .base import Editor, ForwardHook, register

#: `torch.nn.functional.scaled_dot_product_attention`'s arguments, in their positional order.
SDPA_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
#: The official demo's steps and skipped steps (``gradio_kv_edit.py``: 28 denoising steps, 4 skipped).
REFERENCE_STEPS, REFERENCE_SKIP = 28, 4
#: Where the background keys/values and latents come from (see the module docstring).
LAYOUTS = ("reference", "exact")


def default_skip(steps: int) -> int:
    """The official 4 of 28 skipped steps as a share of ``steps``, rounded half up."""
    return int(REFERENCE_SKIP * steps / REFERENCE_STEPS + 0.5)


def token_mask(cells: np.ndarray, patch: int) -> np.ndarray:
    """Foreground tokens, row-major over the (h/patch, w/patch) token grid: a token is foreground when any of its
    patch × patch latent cells is (the order of SD3's patch embedding and FLUX's packing)."""
    h, w = cells.shape
    return cells.reshape(h // patch, patch, w // patch, patch).any(axis=(1, 3)).reshape(-1)


class KVEditSampler:
    """KV-Edit's latent policy around the inversion's per-edit sampler (which it delegates everything else to).

    Steps before ``skip_step`` run no network call: both branches are set to z* at the step's end. At the first
    edited step with ``re_init`` the target's foreground is re-initialised. Every edited step is the inversion's own
    step, after which the source is set to z* and the target's background cells to z* (at the last step: z₀).
    """

    def __init__(self, inner, editor: KVEdit):
        self.inner, self.editor = inner, editor
        self.inverted, self.ctx = inner.inverted, inner.ctx
        self.mask: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def first_step(self) -> int:
        return self.inner.first_step

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        if self.mask is None or self.mask.device != like.device:
            self.mask = torch.from_numpy(self.editor.cells).to(like.device)[None, None]
        return self.mask

    def step(self, info, latents: Branches) -> Branches:
        editor, i = self.editor, info.index
        after = self.inverted.z_star_after(i)
        if info.edit_index < editor.skip:
            return Branches(after.clone(), after.clone())
        if info.edit_index == editor.skip and editor.options["re_init"]:
            z0, sigma = self.inverted.z0, self.ctx.schedule.sigma(i).to(after.device)
            noise = torch.randn(z0.shape, generator=self.ctx.generator).to(z0.device)
            fresh = (1 - sigma) * z0 + sigma * noise
            latents = Branches(latents.source, torch.where(self._mask(fresh), fresh, latents.target))
        elif info.edit_index == editor.skip and editor.reference:  # the official's start: its top key's latent
            top = self.inverted.z_star_after(0)
            latents = Branches(latents.source, torch.where(self._mask(top), top, latents.target))
        if editor.reference:  # the background the official stored under the step's timestep: one level lower
            latents = Branches(latents.source, torch.where(self._mask(after), latents.target, after))
        out = self.inner.step(info, latents)
        return Branches(after.clone(), torch.where(self._mask(after), out.target, after))


class _AttentionBias(TorchFunctionMode):
    """While entered (around one attention module's forward), gives its scaled-dot-product attention the editor's
    additive mask (`KVEdit.attention_mask`)."""

    def __init__(self, editor: KVEdit, info: LayerInfo):
        super().__init__()
        self.editor, self.info = editor, info

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        if len(args) > len(SDPA_ARGUMENTS):
            raise RuntimeError(f"kv-edit: unexpected scaled_dot_product_attention call in {self.info.name}")
        given = {**dict(zip(SDPA_ARGUMENTS, args)), **kwargs}
        if given.get("attn_mask") is not None:
            raise RuntimeError(f"kv-edit: {self.info.name} already has an attention mask")
        given["attn_mask"] = self.editor.attention_mask(self.info, given["query"], given["key"], given["value"])
        return func(**given)


@register
class KVEdit(Editor):
    """KV-Edit: background keys/values from the source in every attention block, the background latent kept
    (see the module docstring); takes a mask."""

    name = "kv-edit"
    description = ("KV-Edit (ICCV'25): inside --mask the target is re-generated attending over the source's "
                   "background keys/values; outside it the latent is the image's, exactly (SD3/FLUX)")
    defaults: dict[str, Any] = {"skip_step": None, "re_init": False, "attn_scale": 1.0, "attn_mask": False,
                                "source_guidance": None, "layout": "reference"}
    schedule_kinds = ("flow",)
    refusal = ("it caches the image tokens' keys/values of a transformer's joint attention (SD3/FLUX); a UNet's "
               "convolutions would carry the target's background into the foreground")
    takes_mask = True
    requires_hooks = True
    modes = ("layout",)

    def __init__(self, layers: dict[str, LayerInfo], counter: str | None, cells: np.ndarray, tokens: np.ndarray,
                 embedded: bool, options: dict[str, Any]):
        super().__init__()
        self.layers, self.counter, self.cells, self.tokens = layers, counter, cells, tokens
        self.embedded, self.options = embedded, options
        self.skip: int = options["skip_step"]
        self.source_guidance: float | None = options["source_guidance"]
        self.source_halves: tuple[str, ...] = ("cond",)
        self.image_tokens: int | None = None  # this call's image tokens (read by ``counter``)
        self.pairs: list[tuple[int, int]] = []  # (target row, source row) of this network call
        self.kv_step = False
        self._background: dict[torch.device, torch.Tensor] = {}
        self._value: torch.Tensor | None = None  # the current layer's to_v output (where the image tokens sit)
        self._image_first: dict[str, bool] = {}
        self._modes: list[_AttentionBias] = []
        self.reference = options["layout"] == "reference"
        self.steps: int = options["steps"]
        self.store: FeatureStore | None = None  # the inversion's keys/values, when the edit reads them (`bind`)
        self.pinned = False
        self.schedule: Any = None
        self.first_step = 0
        self.position: float | None = None  # the stored level this call reads

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        for key in ("re_init", "attn_mask"):
            if not isinstance(opts[key], bool):
                raise InveditError(f"kv-edit {key} must be true or false, got {opts[key]!r}")
        opts["attn_scale"] = check_number("attn_scale", opts["attn_scale"], 0)
        if opts["source_guidance"] is not None:
            opts["source_guidance"] = check_number("source_guidance", opts["source_guidance"], 0, 50)
        if opts["layout"] not in LAYOUTS:
            raise InveditError(f"kv-edit layout must be 'reference' (official) or 'exact', got {opts['layout']!r}")
        if opts["layout"] == "reference":
            for key, off in (("attn_mask", False), ("source_guidance", None)):
                if opts[key] != off:
                    raise InveditError(f"kv-edit {key} acts on the source rows, which layout='reference' does not "
                                       "compute (it reads the inversion's keys/values); use layout='exact'")
        return opts

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, mask: EditMask | None = None,
               **options: Any) -> KVEdit:
        if mask is None:
            raise InveditError("editor 'kv-edit' edits only inside a mask: give one with --mask FILE (mask= in "
                               "Python; white = the region to edit)")
        model = backbone(pipe)
        opts = cls.validate_options(options)
        skip = default_skip(steps) if opts["skip_step"] is None else opts["skip_step"]
        opts["skip_step"] = check_number("skip_step", skip, 0, steps - 1, integer=True)
        side = model.resolution // model.vae_factor
        patch = getattr(model, "patch", 1)
        cells = mask.grid(side)
        if not cells.any():
            raise InveditError(f"the mask covers no cell of the {side}x{side} latent grid; paint a larger region")
        tokens = token_mask(cells, patch)
        infos = [info for _, _, info in model.attention_layers() if not info.is_cross]
        if not infos:
            raise InveditError(f"kv-edit finds no attention layer in this {model.family} model")
        counter = None
        if any(info.place == "single" for info in infos):
            joint = [info for info in infos if info.place == "joint"]
            if not joint:
                raise InveditError("kv-edit in single-stream blocks needs a double-stream block to count the image "
                                   "tokens; this model has none")
            counter = joint[0].name
        opts.update({"steps": steps, "edited_cells": int(cells.sum()), "latent_cells": int(cells.size),
                     "edited_tokens": int(tokens.sum()), "image_tokens": int(tokens.size)})
        return cls({info.name: info for info in infos}, counter, cells, tokens,
                   model.guidance_mode == "embedded", opts)

    # ---- the edit's setup ----------------------------------------------------------------------------------
    # ---- features from the inversion ------------------------------------------------------------------------
    def kv_modules(self) -> list[str]:
        return [f"{name}.{projection}" for name in sorted(self.layers) for projection in ("to_k", "to_v")]

    def feature_request(self, pinned: bool = False) -> FeatureRequest | None:
        """The reference layout: every block's keys/values at the levels its edited steps read (one below each
        step's start, and any solver midpoint). The exact layout with a source pinned to z* (Direct Inversion) at the
        inversion's guidance, unmasked: each edited step's own level. Otherwise none (the source rows are
        computed)."""
        edited = range(self.skip, self.steps)
        if self.reference:
            levels = {x for i in edited for x in (i + 0.5, i + 1.0)}
        elif pinned and self.source_guidance is None and not self.options["attn_mask"]:
            levels = {float(i) for i in edited}
        else:
            return None
        return FeatureRequest(tuple(self.kv_modules()), tuple(sorted(levels)))

    @property
    def source_needed(self) -> bool:
        return not self.reference

    def bind(self, inverted) -> None:
        """The source rows are computed at the inversion's guidance unless ``source_guidance`` is given; the
        reference layout (and the exact one over a pinned source) reads the inversion's stored keys/values."""
        reads_store = self.reference or (self.source_guidance is None and not self.options["attn_mask"]
                                         and inverted.source_on_trajectory)
        if self.source_guidance is None:
            self.source_guidance = float(inverted.options.get("inversion_guidance", 1.0))
        if tuple(inverted.latents.shape[-2:]) != self.cells.shape:
            raise InveditError(f"the mask's latent grid {self.cells.shape} is not the inversion's "
                               f"{tuple(inverted.latents.shape[-2:])}")
        store = inverted.features
        has_store = store is not None and set(self.kv_modules()) <= set(store.request.modules)
        if self.reference and inverted.first_step:
            raise InveditError(f"kv-edit layout='reference' reads the levels an inversion of every step stores; "
                               f"{inverted.method!r} starts the edit at step {inverted.first_step}: pass "
                               "layout='exact'")
        if self.reference and not has_store:
            raise InveditError("kv-edit layout='reference' reads the keys/values stored while inverting, and this "
                               "inversion stored none: let invedit.edit invert the image, invert with "
                               "record=invedit.feature_request(...), or pass layout='exact'")
        if reads_store and has_store:  # (exact layout without the store: the pinned source's rows are computed)
            self.store, self.pinned = store, inverted.source_on_trajectory
            self.schedule, self.first_step = inverted.schedule, inverted.first_step

    def read_position(self) -> float:
        """The stored level this call reads: the official's keying in the reference layout (a step's call at σ_i
        reads σ_{i+1}; a midpoint the same midpoint), the call's own level over a pinned source."""
        position = self.schedule.level_position(float(self.timestep))
        return position + 1 if self.reference and position == int(position) else position

    def branch_guidance(self, scales: dict[str, float]) -> dict[str, float]:
        source = scales["source"] if self.source_guidance is None else self.source_guidance
        self.source_halves = ("cond",) if self.embedded else halves_needed(source)
        return {"source": source, "target": scales["target"]}

    def wrap_sampler(self, sampler) -> KVEditSampler:
        edited = sampler.ctx.schedule.steps - sampler.first_step
        if self.skip >= edited:
            raise InveditError(f"kv-edit skip_step {self.skip} leaves none of the edit's {edited} steps")
        return KVEditSampler(sampler, self)

    def rows_read(self, step: int) -> frozenset[Row]:
        if step < self.skip:
            return frozenset()
        if self.store is not None and (self.reference or self.store.has(step + self.first_step)):
            return frozenset()  # read from the store (a pinned source's top level, never inverted, is computed)
        return frozenset(("source", half) for half in self.source_halves)

    def begin_step(self, step: int, rows: list[Row]) -> None:
        super().begin_step(step, rows)
        self.position = None
        if self.store is not None and step >= self.skip:
            position = self.read_position()
            if self.store.has(position):
                self.position = position
            elif self.reference:
                raise InveditError(f"kv-edit layout='reference': the inversion stored no keys/values at level "
                                   f"{position:g} (this inversion does not evaluate the model there)")
        pairs = []
        for t, (branch, half) in enumerate(rows):
            if branch != "target":
                continue
            s = self.row_index("source", half)
            if s is None:
                s = next((self.row_index("source", h) for h in (*self.source_halves, *HALVES)
                          if self.row_index("source", h) is not None), None)
            if self.position is not None:
                pairs.append((t, None))  # from the store
            elif s is not None:
                pairs.append((t, s))
        self.pairs = pairs
        self.kv_step = step >= self.skip and bool(pairs)

    # ---- hooks -----------------------------------------------------------------------------------------------
    @property
    def biased(self) -> bool:
        """Whether the attention gets an additive mask (attn_scale on a background, or attn_mask)."""
        has_background = not self.tokens.all()
        return has_background and (self.options["attn_scale"] != 0 or self.options["attn_mask"])

    def wants_layer(self, info: LayerInfo) -> bool:
        return False  # no attention processor: module hooks on the projections (and around SDPA) do the work

    def forward_hooks(self, unet) -> list[tuple[torch.nn.Module, ForwardHook]]:
        hooks: list[tuple[torch.nn.Module, ForwardHook]] = []
        if self.counter is not None:
            hooks.append((unet.get_submodule(self.counter).to_k, self._count_image_tokens))
        for name, info in self.layers.items():
            attn = unet.get_submodule(name)
            hooks.append((attn.to_k, self._replacer(info, keep_value=False)))
            hooks.append((attn.to_v, self._replacer(info, keep_value=True)))
        return hooks

    @contextmanager
    def attach(self, model, values=None) -> Iterator[int]:
        """The projection hooks (`Editor.attach`), and, when the attention is biased, a scaled-dot-product mask
        around each attention module's forward (removed, and any mode left entered exited, in a ``finally``)."""
        with super().attach(model, values) as hooked:
            handles = []
            try:
                if self.biased:
                    for name, info in self.layers.items():
                        attn = model.denoiser.get_submodule(name)
                        handles.append(attn.register_forward_pre_hook(self._enter_bias(info)))
                        handles.append(attn.register_forward_hook(self._exit_bias, always_call=True))
                yield hooked
            finally:
                for handle in handles:
                    handle.remove()
                while self._modes:
                    self._modes.pop().__exit__(None, None, None)

    def _count_image_tokens(self, module, args, output) -> None:
        self.image_tokens = output.shape[1]

    def _background_tokens(self, device: torch.device) -> torch.Tensor:
        if device not in self._background:
            self._background[device] = torch.from_numpy(~self.tokens).to(device)
        return self._background[device]

    def _image_count(self, info: LayerInfo, output: torch.Tensor) -> int:
        tokens = self.image_tokens if info.place == "single" else output.shape[1]
        if tokens is None or tokens > output.shape[1] or tokens != self.tokens.size:
            raise RuntimeError(f"kv-edit: {info.name} cannot place {tokens} image tokens (the mask has "
                               f"{self.tokens.size})")
        return tokens

    def _replacer(self, info: LayerInfo, keep_value: bool) -> ForwardHook:
        def replace(module, args, output: torch.Tensor) -> torch.Tensor | None:
            if not self.kv_step:
                return None
            if output.shape[0] != len(self.rows):
                raise RuntimeError(f"kv-edit: {info.name} saw a batch of {output.shape[0]} for rows {self.rows}")
            n = self._image_count(info, output)
            background = self._background_tokens(output.device)[None, :, None]
            image = slice(output.shape[1] - n, None)
            out = output.clone()
            stored = None
            if self.position is not None:
                stored = self.store.get(self.position, f"{info.name}.{'to_v' if keep_value else 'to_k'}")
            for t, s in self.pairs:
                if s is None:
                    row = stored[0 if len(stored) == 1 else HALVES.index(self.rows[t][1])]
                    source = row[-n:].to(output.device, output.dtype)
                else:
                    source = output[s, image]
                out[t, image] = torch.where(background, source, output[t, image])
            if keep_value:
                self._value = out
            return out

        return replace

    def _enter_bias(self, info: LayerInfo):
        def enter(module, args) -> None:
            if self.active and self.kv_step:
                mode = _AttentionBias(self, info)
                mode.__enter__()
                self._modes.append(mode)

        return enter

    def _exit_bias(self, module, args, output) -> None:
        if self._modes:
            self._modes.pop().__exit__(None, None, None)

    def attention_mask(self, info: LayerInfo, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor) -> torch.Tensor:
        """The additive mask of one attention call (B, 1, 1 or L, L): ``attn_scale`` on the target rows' background
        keys; with ``attn_mask``, −inf between the source rows' foreground and background image tokens."""
        n, total = self.tokens.size, key.shape[-2]
        start = self._image_start(info, total, n, value)
        background = torch.zeros(total, dtype=torch.bool, device=key.device)
        background[start:start + n] = self._background_tokens(key.device)
        rows = len(self.rows)
        queries = total if self.options["attn_mask"] else 1
        bias = torch.zeros(rows, 1, queries, total, dtype=query.dtype, device=query.device)
        for t, _ in self.pairs:
            bias[t, 0, :, background] = self.options["attn_scale"]
        if self.options["attn_mask"]:
            foreground = torch.zeros_like(background)
            foreground[start:start + n] = ~self._background_tokens(key.device)
            blocked = (background[:, None] & foreground[None, :]) | (foreground[:, None] & background[None, :])
            for s, (branch, _) in enumerate(self.rows):
                if branch == "source":
                    bias[s, 0][blocked] = float("-inf")
        return bias

    def _image_start(self, info: LayerInfo, total: int, n: int, value: torch.Tensor) -> int:
        """Where the image tokens start in an attention call's token sequence: all of it (SD3.5's image-only
        attention), after the text (FLUX's single-stream blocks, which project [text, image]), or, in joint
        attention, before or after the text, read once per layer from where the values of the image tokens sit."""
        if total == n:
            return 0
        if info.place == "single":
            return total - n
        if info.name not in self._image_first:
            tokens = value.transpose(1, 2).flatten(2)
            if self._value is not None and torch.equal(tokens[:, :n], self._value.to(tokens.dtype)):
                self._image_first[info.name] = True
            elif self._value is not None and torch.equal(tokens[:, -n:], self._value.to(tokens.dtype)):
                self._image_first[info.name] = False
            else:
                raise RuntimeError(f"kv-edit: cannot find the image tokens in {info.name}'s attention")
        return 0 if self._image_first[info.name] else total - n

    def step_callback(self, step: int, latents: Branches) -> Branches:
        if step == self.skip and self.layer_calls == 0:
            raise InveditError(f"editor {self.name!r}: the transformer never called its attention hooks")
        return latents

    def settings(self) -> dict[str, Any]:
        options = {k: v for k, v in self.options.items() if k != "steps"}
        return {"editor": self.name, **options, "source_guidance": self.source_guidance,
                "kv_from": "inversion" if self.store is not None else "source rows"}
