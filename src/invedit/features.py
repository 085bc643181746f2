"""Features from the inversion: what an inversion records per network call, keyed by noise level, for an editor to
read back while editing instead of computing the source branch's rows.

The reference code of RF-Solver-Edit, FireFlow and KV-Edit keeps, during the inversion, the values (RF-Solver-Edit,
FireFlow) or the image keys/values and input latents (KV-Edit) of chosen transformer blocks in a dictionary, and the
edit reads them back: the source branch is never denoised. Here that is one generic mechanism of the loop:

- an editor states what it reads as a `FeatureRequest`: the denoiser's submodules whose forward output is kept
  (e.g. ``single_transformer_blocks.1.attn.to_v``), the noise levels to keep, whether the call's input latents are
  kept too, and the dtype they are stored in;
- the inversion runs as always, through a `RecordingModel` around its model (`record`): every network call it makes
  at a requested level leaves the requested outputs in a `FeatureStore`, on the CPU, keyed by the call's level
  position on the schedule (`level_position`: k at level k, k + 0.5 at a solver's midpoint between levels k and
  k + 1). No inversion knows about it;
- the frozen result carries the store (`invedit.inversion.Inverted.features`), so one inversion serves any number
  of edits and the benchmark's on-disk cache keeps it; the editor reads it after `bind`.

Which level an edit's call reads is the editor's rule (RF-Solver-Edit's reference reads, at each step's first call,
what the inversion computed one level lower); this module names no method and no editor.

Memory (the cost of not recomputing): one module output per level and stored row. On FLUX.1-dev at 1024² (4096
image tokens + 512 text tokens, hidden size 3072, stored in bf16 as the reference's ``v.cpu()`` of its bf16 model):
a single-stream block's V is 4608 × 3072 × 2 B = 28.3 MB (27 MiB) per call; RF-Solver-Edit's 18 blocks (20–37)
take 509 MB per call, 1.02 GB per RF-Solver step (two calls: start and midpoint), 2.04 GB for its default 2
injected steps (FireFlow: one midpoint call per step, 509 MB per step). KV-Edit keeps image keys and values of all
57 blocks: 2 × 4096 × 3072 × 2 B = 50.3 MB per block, 2.87 GB per level, 80 GB for 28 levels in bf16 (the
reference's 28-step demo, which keeps them in CPU memory); its input latent adds 4096 × 64 × 4 B = 1 MB per level.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InveditError

#: Storage dtypes a request may name ("model": the dtype the network computed in, as the reference code keeps it).
STORE_DTYPES = {"model": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The key of a call's input latents in a store (beside the module names).
LATENTS = "latents"


def level_key(position: float) -> str:
    """The store's text key of a level position (2 → "2", 2.5 → "2.5")."""
    return f"{float(position):g}"


@dataclass(frozen=True)
class FeatureRequest:
    """What an editor reads from the inversion: the outputs of ``modules`` (names of the denoiser's submodules) and,
    with ``latents``, the calls' input latents, at the level positions ``levels``, stored in ``dtype``."""

    modules: tuple[str, ...]
    levels: tuple[float, ...]
    latents: bool = False
    dtype: str = "model"

    def __post_init__(self):
        if self.dtype not in STORE_DTYPES:
            raise InveditError(f"feature store dtype must be one of {', '.join(STORE_DTYPES)}, got {self.dtype!r}")

    def merged(self, other: FeatureRequest | None) -> FeatureRequest:
        """What both requests read (one inversion serving two editors); the wider dtype wins."""
        if other is None:
            return self
        dtype = self.dtype if self.dtype == other.dtype else "model"
        return FeatureRequest(tuple(sorted({*self.modules, *other.modules})),
                              tuple(sorted({*self.levels, *other.levels})), self.latents or other.latents, dtype)

    def record(self) -> dict[str, Any]:
        """JSON-friendly description (records, cache keys)."""
        return {"modules": list(self.modules), "levels": [level_key(x) for x in self.levels],
                "latents": self.latents, "dtype": self.dtype}


@dataclass(frozen=True, eq=False)
class FeatureStore:
    """Recorded outputs by level and module: ``entries["<level>/<module>"]`` is the module's output of the call at
    that level position, all rows of the call's batch (on FLUX.1-dev's embedded guidance: one row), on the CPU."""

    request: FeatureRequest
    entries: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, position: float, module: str) -> torch.Tensor | None:
        return self.entries.get(f"{level_key(position)}/{module}")

    def has(self, position: float) -> bool:
        prefix = f"{level_key(position)}/"
        return any(key.startswith(prefix) for key in self.entries)

    def levels(self) -> list[float]:
        return sorted({float(key.split("/", 1)[0]) for key in self.entries})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.entries.values())

    def summary(self) -> dict[str, Any]:
        """What an edit record says about the store it read."""
        return {**self.request.record(), "stored_levels": [level_key(x) for x in self.levels()],
                "entries": len(self.entries), "megabytes": round(self.nbytes / 2**20, 3)}


class RecordingModel:
    """A model (an `invedit.backbones.Backbone`) whose network calls record a `FeatureRequest` into a store; every
    other attribute is the model's. ``schedule.level_position(t)`` places each call's timestep on the schedule."""

    def __init__(self, model, schedule, request: FeatureRequest):
        self.model, self.schedule, self.request = model, schedule, request
        self.entries: dict[str, torch.Tensor] = {}
        self.position: float | None = None
        self.levels = {level_key(x) for x in request.levels}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        dtype = STORE_DTYPES[self.request.dtype]
        kept = tensor.detach().to("cpu", dtype=dtype or tensor.dtype).clone()
        self.entries[f"{level_key(self.position)}/{name}"] = kept

    def denoise(self, latents: torch.Tensor, t, *args: Any, **kwargs: Any) -> torch.Tensor:
        position = self.schedule.level_position(float(t))
        self.position = position if level_key(position) in self.levels else None
        try:
            if self.position is not None and self.request.latents:
                self._keep(LATENTS, latents.float())
            return self.model.denoise(latents, t, *args, **kwargs)
        finally:
            self.position = None

    def hook(self, name: str):
        def keep(module, args, output) -> None:
            if self.position is not None:
                self._keep(name, output[0] if isinstance(output, tuple) else output)

        return keep

    @contextmanager
    def recording(self) -> Iterator[RecordingModel]:
        """The forward hooks on the requested modules, removed in a ``finally``."""
        denoiser = self.model.denoiser
        handles = []
        try:
            for name in self.request.modules:
                try:
                    module = denoiser.get_submodule(name)
                except AttributeError:
                    raise InveditError(f"the feature store names {name!r}, which this model does not have") from None
                handles.append(module.register_forward_hook(self.hook(name)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def store(self) -> FeatureStore:
        return FeatureStore(self.request, dict(self.entries))


def record(run, inputs, request: FeatureRequest | None):
    """``run(inputs)`` (an inversion method's run over `invedit.inversion.InversionInputs`) with ``request`` recorded:
    returns (the result, its `FeatureStore` or None). The inputs' model is wrapped for the run only."""
    if request is None:
        return run(inputs), None
    recorder = RecordingModel(inputs.model, inputs.schedule, request)
    original = inputs.model
    inputs.model = recorder
    try:
        with recorder.recording():
            result = run(inputs)
    finally:
        inputs.model = original
    return result, recorder.store()
