"""Stand-in for the backbone seam (the lead's `backbones/base.py` replaces it): one `Backbone` per loaded pipeline,
the one record of what invedit knows about a model family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from PIL import Image


class Backbone(ABC):
    """What the loop, the inversions and the editors may ask of a model family (see docs/architecture.md)."""

    family: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    guidance_mode: ClassVar[str] = "cfg"  # "cfg" | "embedded" | "none"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def name(self) -> str:
        return getattr(self.pipe, "_invedit_name", type(self.pipe).__name__)

    @property
    def resolution(self) -> int:
        return int(getattr(self.pipe, "_invedit_resolution", None) or self.native_resolution())

    @property
    def editor_defaults(self) -> dict:
        return dict(getattr(self.pipe, "_invedit_editor_defaults", None) or {})

    @abstractmethod
    def native_resolution(self) -> int: ...

    @abstractmethod
    def fingerprint(self) -> str: ...

    @property
    @abstractmethod
    def tokenizer(self): ...

    @property
    @abstractmethod
    def vae_factor(self) -> int: ...

    @property
    @abstractmethod
    def resolution_multiple(self) -> int: ...

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module: ...

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor: ...

    @abstractmethod
    def schedule(self, steps: int): ...

    @abstractmethod
    def denoise(self, latents: torch.Tensor, t, embeddings: torch.Tensor, guidance: float | None,
                stats) -> torch.Tensor: ...

    @abstractmethod
    def encode_image(self, image: Image.Image) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Image.Image]: ...

    @abstractmethod
    def attention_layers(self) -> list: ...
