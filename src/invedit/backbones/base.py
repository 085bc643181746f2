"""The backbone contract: what invedit knows about a loaded pipeline and does with it, one class per family.

A `Backbone` wraps one diffusers pipeline and is the one visible record of invedit's state for it (its name, the
resolution it works at, the editor settings its folder recommends, its fingerprint), beside what differs between
model families: the prompt conditioning, the schedule and its steps, the denoiser call, the VAE, and where
attention can be hooked. The loop, the inversions and the editors call only this contract and never name a family;
a new family is one subclass registered with `register_family`. ``invedit.load`` still returns the plain diffusers
pipeline; `backbone(pipe)` finds its record.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InveditError


@dataclass(frozen=True)
class LayerInfo:
    """Where an attention layer sits.

    ``name``: module path; ``place``: part of the network ("down" | "mid" | "up" on a U-Net); ``is_cross``: cross-
    or self-attention; ``downsample``: the layer's token grid is the latent grid divided by this; ``block``: its
    transformer block's path; ``order``: that block's index in forward order (down → mid → up, as the reference
    editors count layers); ``count``: transformer blocks in the network. Editors choose layers by these, never by
    counting calls.
    """

    name: str
    place: str
    is_cross: bool
    downsample: int
    block: str = ""
    order: int = -1
    count: int = 0


class Backbone(ABC):
    """One loaded pipeline of one model family (see the module docstring).

    Attributes:
        pipe: the diffusers pipeline.
        name: a readable model name (hub id, folder or the embedded model's name).
        resolution: the image side in pixels the pipeline works at.
        editor_defaults: editor options the model recommends, by editor name (its folder's ``invedit.json``).
        call_options: arguments its diffusers pipeline is called with where they differ from the pipeline's
            defaults (its folder's ``invedit.json``; e.g. SD3's ``max_sequence_length``).
        quantize: the quantisation its networks were loaded with (``invedit.load(quantize=)``), or None.
        loras: the LoRAs loaded into it, one record each (``name``, ``scale``, ``file``, ``sha256``).
    """

    #: Short family name recorded with every result ("sd", "sdxl", …).
    family: ClassVar[str] = "base"
    #: ``_class_name`` values of model_index.json this family runs.
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: How guidance reaches the network: "cfg" (an unconditional and a conditional row per branch), "embedded"
    #: (one conditional row, the scale given to ``denoise(..., guidance=...)``: FLUX.1-dev) or "none" (FLUX.1-schnell:
    #: no guidance input; CFG rows still work).
    guidance_mode: ClassVar[str] = "cfg"
    #: The kind of schedule the family samples with: "ddim" (UNet, ε/v prediction) or "flow" (rectified flow);
    #: inversions and editors declare the kinds they run on (``schedule_kinds``).
    schedule_kind: ClassVar[str] = "ddim"
    #: Lowest versions of libraries this family is tested with, beyond the package's own requirements.
    requires: ClassVar[dict[str, str]] = {}
    #: The editor an edit uses when none is named (``editor=None``): the one place the family's default lives.
    default_editor: ClassVar[str] = "p2p"
    #: The classifier-free guidance scale an edit uses when neither the caller nor the model folder's invedit.json
    #: names one (the paper's 7.5).
    family_guidance: ClassVar[float] = 7.5
    #: Components the family's pipeline needs, by model_index.json name, with what each is (for messages); those
    #: in `optional_components` may be saved as absent (``[null, null]``).
    components: ClassVar[dict[str, str]] = {}
    optional_components: ClassVar[tuple[str, ...]] = ()
    #: The pipeline component names of the denoiser and of the T5 text encoder (None: the family has none): what
    #: ``invedit.load(quantize=)`` quantises.
    denoiser_name: ClassVar[str] = "unet"
    t5_name: ClassVar[str | None] = None

    def __init__(self, pipe, name: str | None = None, resolution: int | None = None,
                 editor_defaults: dict[str, dict[str, Any]] | None = None,
                 call_options: dict[str, Any] | None = None, quantize: str | None = None,
                 loras: list[dict[str, Any]] | None = None, guidance: float | None = None,
                 steps: int | None = None):
        self.pipe = pipe
        self.name = name or str(pipe.config.get("_name_or_path", "") or "unknown")
        self.resolution = self.check_resolution(resolution)
        self.editor_defaults = dict(editor_defaults or {})
        self.call_options = dict(call_options or {})
        self.quantize = quantize
        self.loras = [dict(r) for r in loras or ()]
        #: The guidance scale and steps the model's folder recommends (invedit.json), None when it names none.
        self.recommended_guidance = guidance
        self.recommended_steps = steps
        self._fingerprint: str | None = None

    # ---- setup --------------------------------------------------------------------------------------------
    @classmethod
    def check_requirements(cls) -> None:
        """Refuse, in one line, library versions below what this family is tested with (`requires`)."""
        from importlib.metadata import PackageNotFoundError, version

        from packaging.version import Version

        for package, lowest in cls.requires.items():
            try:
                found = version(package)
            except PackageNotFoundError:
                found = "none"
            if found == "none" or Version(found) < Version(lowest):
                raise InveditError(f"{cls.family} models need {package} >= {lowest} (tested with it; found {found}): "
                                   f"pip install -U '{package}>={lowest}'")

    @classmethod
    def prepare(cls, pipe, device: torch.device | None = None, **options: Any):
        """Put a freshly loaded pipeline into invedit's state (scheduler, eval mode, quiet); returns it."""
        if device is not None:
            pipe.to(device)
        for module in cls.modules_of(pipe):
            module.eval().requires_grad_(False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def modules_of(cls, pipe) -> list[torch.nn.Module]:
        """The networks of the pipeline: denoiser, VAE, text encoders."""
        return [m for m in (cls.denoiser_of(pipe), pipe.vae, *cls.text_encoders_of(pipe)) if m is not None]

    @classmethod
    def quantized_components(cls) -> tuple[str, ...]:
        """The components ``invedit.load(quantize=)`` quantises: the denoiser and the T5 encoder, if any."""
        return (cls.denoiser_name,) + ((cls.t5_name,) if cls.t5_name else ())

    @classmethod
    @abstractmethod
    def denoiser_of(cls, pipe) -> torch.nn.Module:
        """The denoising network (the UNet or transformer) of a pipeline of this family."""

    @classmethod
    def text_encoders_of(cls, pipe) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(pipe, n, None) for n in names) if m is not None]

    # ---- what every family has ----------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        """What editors hook and the loop calls: the UNet or the transformer."""
        return self.denoiser_of(self.pipe)

    @property
    def tokenizer(self):
        """The tokenizer prompts are checked with (the first CLIP one)."""
        return self.pipe.tokenizer

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return self.text_encoders_of(self.pipe)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell (8 for Stable Diffusion)."""
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def resolution_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE factor × what the denoiser's grid needs)."""
        return self.vae_factor * 8

    @property
    def native_resolution(self) -> int:
        """The side the checkpoint was made for."""
        return int(self.denoiser.config.sample_size) * self.vae_factor

    @property
    def device(self) -> torch.device:
        """Where the networks run (the GPU they are moved to under CPU offload)."""
        execution = getattr(self.pipe, "_execution_device", None)
        return torch.device(execution) if execution is not None else self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def smallest_resolution(self) -> int:
        """The smallest image side accepted: a multiple of `resolution_multiple` no smaller than the smallest image
        invedit inverts (`invedit.images.MIN_SIDE`)."""
        from ..images import MIN_SIDE

        step = self.resolution_multiple
        return -(-MIN_SIDE // step) * step

    def check_resolution(self, resolution: int | None) -> int:
        """``resolution`` (``None``: the native one) as a valid image side.

        Raises:
            InveditError: not an integer, below `smallest_resolution`, or not a multiple of `resolution_multiple`.
        """
        if resolution is None:
            return self.native_resolution
        step, low = self.resolution_multiple, self.smallest_resolution
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < low:
            raise InveditError(f"resolution must be an integer of at least {low} pixels (a multiple of {step}: the "
                               f"VAE factor × {step // self.vae_factor}), got {resolution!r}")
        if resolution % step:
            raise InveditError(f"resolution must be a multiple of {step} pixels (the VAE factor × "
                               f"{step // self.vae_factor}), got {resolution!r}; e.g. {resolution // step * step} "
                               f"or {(resolution // step + 1) * step}")
        return resolution

    @property
    def default_guidance(self) -> tuple[float, str]:
        """``(scale, where it comes from)`` of an edit that names none: the model folder's recommendation
        ("model": its invedit.json), else the family's (`family_guidance`, "family")."""
        if self.recommended_guidance is not None:
            return float(self.recommended_guidance), "model"
        return self.family_guidance_scale, "family"

    @property
    def family_guidance_scale(self) -> float:
        """The family's default guidance (a property: FLUX.1-schnell's depends on its transformer's config)."""
        return self.family_guidance

    def check_guidance_for_model(self, guidance: float) -> None:  # noqa: B027 (optional hook)
        """Refuse a guidance scale the model cannot use as given (FLUX.1-schnell overrides this)."""

    # ---- memory --------------------------------------------------------------------------------------------
    def activation_width(self) -> int:
        """Channels per latent-grid token at the denoiser's widest full-resolution layer."""
        return int(self.denoiser.config.block_out_channels[0])

    def denoiser_tokens(self, resolution: int) -> int:
        """Tokens (grid cells) at the denoiser's full-resolution layers at image side ``resolution``."""
        return (resolution // self.vae_factor) ** 2

    def _attention_level(self) -> int:
        """The UNet level (0: full latent resolution) of its first attention block."""
        types = self.denoiser.config.get("down_block_types") or ()
        return next((i for i, name in enumerate(types) if "Attn" in name), 0)

    def attention_tokens(self, resolution: int) -> int:
        """Tokens of the denoiser's largest self-attention (the UNet's first level with attention)."""
        return self.denoiser_tokens(resolution) // 4 ** self._attention_level()

    def attention_heads(self) -> int:
        """Heads of that self-attention (diffusers' UNet configs name them ``attention_head_dim``)."""
        heads = self.denoiser.config.get("attention_head_dim", 8)
        if isinstance(heads, (list, tuple)):
            heads = heads[min(self._attention_level(), len(heads) - 1)]
        return int(heads)

    def memory_estimate(self, resolution: int, rows: int = 4, value_bytes: int = 4,
                        weight_bytes: int | None = None) -> dict[str, int]:
        """A lower estimate of the memory one edit needs at image side ``resolution``, in bytes:
        ``{"weights", "activations"}``.

        Activations: the denoiser's widest layer over ``rows`` rows (two branches × the CFG halves), about 16
        values per token and channel (attention projections, the MLP's 4× expansion, residuals), plus one map of its
        largest self-attention (the editors that read attention form it: rows × heads × tokens²), plus the VAE decoder's
        full-resolution feature maps for the two decoded images (4 copies of its first level's channels). Weights:
        ``weight_bytes`` (the files' sizes) when known, else the denoiser's parameter count × ``value_bytes``.
        """
        tokens, attended = self.denoiser_tokens(resolution), self.attention_tokens(resolution)
        denoiser = rows * tokens * self.activation_width() * 16 * value_bytes
        attention = rows * self.attention_heads() * attended * attended * value_bytes
        vae = 2 * resolution * resolution * self.vae_decoder_channels() * 4 * value_bytes
        if weight_bytes is None:
            weight_bytes = sum(p.numel() for p in self.denoiser.parameters()) * value_bytes
        return {"weights": int(weight_bytes), "activations": int(denoiser + attention + vae)}

    def vae_decoder_channels(self) -> int:
        """Channels of the VAE decoder's full-resolution level (`memory_estimate`)."""
        return int(self.pipe.vae.config.block_out_channels[0])

    def model_editor_defaults(self, editor: str) -> dict[str, Any]:
        """Options the model recommends for ``editor`` (explicit options and an inversion's pairing win)."""
        return dict(self.editor_defaults.get(editor, {}))

    #: Config keys that name where or with which library version a model was saved, not what it computes.
    VOLATILE_CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({
        "_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash", "dtype", "torch_dtype",
        "_use_default_values"})

    def fingerprint(self) -> str:
        """Short hash of the model's identity (configs, a sample of weights, the quantisation and each LoRA's file
        hash and scale), recorded with every result: caches keyed by it never mix these."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            if self.quantize or self.loras:
                h.update(json.dumps({"quantize": self.quantize,
                                     "loras": [(r["sha256"], r["scale"]) for r in self.loras]}).encode())
            for module in self.modules_of(self.pipe):
                config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
                stable = {k: v for k, v in config.items() if k not in self.VOLATILE_CONFIG_KEYS}
                h.update(json.dumps(stable, sort_keys=True, default=str).encode())
                params = list(module.parameters())
                for p in params[:: max(1, len(params) // 16)]:
                    h.update(_sample(p))
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ---- what differs between families --------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The conditioning of each prompt as one tensor per prompt, (N, L, D) float32; methods treat it as one
        embedding (null-text optimises it), `denoise` splits it again."""

    @abstractmethod
    def schedule(self, steps: int):
        """The schedule of a run of ``steps`` steps: ``steps``, ``timesteps``, ``step``, ``inverse_step``."""

    @abstractmethod
    def denoise(self, latents: torch.Tensor, t, embeddings: torch.Tensor, stats) -> torch.Tensor:
        """One network call on ``latents`` (N, C, h, w) at timestep ``t``; counts ``stats.nfe += N``; returns
        float32 (float64 for float64 latents) in the latent layout. Families whose `guidance_mode` is "embedded"
        also take a keyword ``guidance`` (one scale, or one per row)."""

    @abstractmethod
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """Latent z₀ of an image at the working resolution, float32 (1, C, h, w)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Images of latents (N, C, h, w)."""

    @abstractmethod
    def attention_layers(self) -> list[tuple[str, torch.nn.Module, LayerInfo]]:
        """Every attention module editors may hook, with its `LayerInfo`, in forward order."""


def _sample(p: torch.Tensor) -> bytes:
    """The first 64 values of a parameter as float32 bytes; of a quantised one (its own tensor subclass, or packed
    integers) the first 64 stored bytes."""
    data = p.detach()
    if type(data) is torch.Tensor or type(data) is torch.nn.Parameter:
        if data.is_floating_point():
            return data.float().flatten()[:64].cpu().numpy().tobytes()
        return data.flatten()[:64].cpu().numpy().tobytes()
    for name in ("_data", "qdata", "data"):  # optimum-quanto's WeightQBytesTensor keeps its int8 values in _data
        inner = getattr(data, name, None)
        if isinstance(inner, torch.Tensor) and type(inner) is torch.Tensor:
            return inner.flatten()[:64].cpu().numpy().tobytes()
    return str((type(data).__name__, tuple(data.shape))).encode()


FAMILIES: dict[str, type[Backbone]] = {}
_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_family(cls: type[Backbone]) -> type[Backbone]:
    """Class decorator: run pipelines whose model_index.json names one of ``cls.pipeline_classes``."""
    for name in cls.pipeline_classes:
        FAMILIES[name] = cls
    return cls


def family_of_class(class_name: str) -> type[Backbone] | None:
    """The backbone class that runs pipelines of ``class_name`` (model_index.json's ``_class_name``), if any."""
    return FAMILIES.get(class_name)


def attach(pipe, record: Backbone) -> Backbone:
    """Make ``record`` the pipeline's backbone (what `invedit.load` does after loading)."""
    _RECORDS[pipe] = record
    return record


def backbone(pipe) -> Backbone:
    """The pipeline's `Backbone` (made with default settings for a pipeline not loaded by invedit).

    Raises:
        InveditError: a pipeline of no registered family.
    """
    record = _RECORDS.get(pipe)
    if record is None:
        cls = family_of_class(type(pipe).__name__)
        if cls is None:
            raise InveditError(f"{type(pipe).__name__} is not a pipeline invedit runs")
        record = attach(pipe, cls(pipe))
    return record
