"""Load any diffusers Stable Diffusion 1.x/2.x or SDXL (base) checkpoint (hub id or folder), or the embedded model."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .errors import InveditError, ModelNotFoundError

EMBEDDED_MODEL_NAME = "shapes-64"
T = TypeVar("T")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def embedded_model_path() -> Path:
    """Folder of the embedded shapes model shipped inside the package (a diffusers pipeline folder)."""
    return Path(__file__).parent / "toy" / "weights" / EMBEDDED_MODEL_NAME


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` or the best available one (cuda, then mps, then cpu)."""
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise InveditError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InveditError(f"device {device!r} requested but CUDA is not available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise InveditError(f"device {device!r} requested but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` (name or torch dtype), defaulting to float16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InveditError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise InveditError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX, and PyTorch using those kernels).

    Elsewhere (AVX2-only CPUs, or ``ATEN_CPU_CAPABILITY=avx2``) PyTorch emulates bf16 and is many times slower
    than float32.
    """
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or model.endswith("/") or "\\" in model


#: The pipelines invedit runs, by the ``_class_name`` of a checkpoint's model_index.json.
PIPELINE_KINDS = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


def _pipeline_kind(index: dict[str, Any], where: str) -> str:
    name = index.get("_class_name", "StableDiffusionPipeline")
    if name in PIPELINE_KINDS:
        return PIPELINE_KINDS[name]
    if "transformer" in index:
        raise InveditError(f"{where}: {name} is a transformer model; invedit runs Stable Diffusion 1.x/2.x and SDXL "
                           "(UNet) checkpoints")
    raise InveditError(f"{where}: {name} is not supported; invedit runs StableDiffusionPipeline (SD 1.x/2.x) and "
                       "StableDiffusionXLPipeline (SDXL base; the refiner is not used) checkpoints")


def _from_pretrained(source: str, dtype: torch.dtype, local_only: bool):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    index = DiffusionPipeline.load_config(source, local_files_only=local_only)
    kind = _pipeline_kind(index, source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the steps_offset deprecation; we set it ourselves
        if kind == "sdxl":
            return StableDiffusionXLPipeline.from_pretrained(source, torch_dtype=dtype, local_files_only=local_only)
        return StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=local_only,
        )


def _check_folder(folder: Path) -> None:
    if folder.is_file():
        raise InveditError(f"{folder} is a single file; pass a diffusers folder (with model_index.json)")
    index = folder / "model_index.json"
    if not index.exists():
        raise InveditError(f"{folder} is not a diffusers Stable Diffusion folder (no model_index.json)")
    try:
        config = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8 text
        raise InveditError(f"cannot load model folder {folder}: model_index.json is unreadable or not valid JSON "
                           f"({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(config, dict):
        raise InveditError(f"cannot load model folder {folder}: model_index.json does not hold a JSON object")
    _pipeline_kind(config, str(folder))


def model_kind(pipe) -> str:
    """``"sdxl"`` for an SDXL pipeline (two text encoders, pooled embedding and size conditioning), else ``"sd"``."""
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


def text_encoders(pipe) -> list:
    return [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]


def make_ddim_scheduler(config: dict, steps_offset: int = 1):
    """The DDIM scheduler of reference-settings §1 on the checkpoint's betas and prediction type.

    clip_sample off, final alpha = ᾱ[0] (set_alpha_to_one False), "leading" spacing with steps_offset 1, so
    50 steps give t = 981, 961, …, 1 — what every reference run actually used, except Plug-and-Play's, which
    builds its scheduler without the pipeline and so runs 980, 960, …, 0 (``steps_offset=0``).
    """
    if steps_offset not in (0, 1):
        raise InveditError(f"steps_offset must be 0 or 1, got {steps_offset!r}")
    from diffusers import DDIMScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DDIMScheduler.from_config(
            dict(config), clip_sample=False, set_alpha_to_one=False, steps_offset=steps_offset,
            timestep_spacing="leading", thresholding=False, rescale_betas_zero_snr=False,
        )


def prepare_pipeline(pipe, device: torch.device | None = None, steps_offset: int = 1, resolution: int | None = None):
    """Put a loaded pipeline into invedit's state: the DDIM scheduler (reference-settings §1), eval mode, quiet,
    the image size it works at (``resolution``, default the model's native one) and, on SDXL, the size
    conditioning that goes with it."""
    pipe.scheduler = make_ddim_scheduler(pipe.scheduler.config, steps_offset)
    if pipe.scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise InveditError(f"unsupported prediction type {pipe.scheduler.config.prediction_type!r}")
    if device is not None:
        pipe.to(device)
    for module in (pipe.unet, pipe.vae, *text_encoders(pipe)):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    set_resolution(pipe, resolution)
    return pipe


def set_resolution(pipe, resolution: int | None) -> None:
    """Make the pipeline work at ``resolution``² pixels (``None``: the UNet's native size).

    Raises:
        InveditError: a size that is not a positive multiple of the VAE factor × 8 (what the UNet's down path needs).
    """
    step = vae_scale_factor(pipe) * 8
    if resolution is None:
        resolution = int(pipe.unet.config.sample_size) * vae_scale_factor(pipe)
    elif isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < step or resolution % step:
        raise InveditError(f"resolution must be a multiple of {step} pixels (the VAE factor × 8), got {resolution!r}")
    pipe._invedit_resolution = resolution
    # SDXL's micro-conditioning: original size, crop top-left, target size (no crop, the size we work at).
    pipe.unet._invedit_time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]],
                                               dtype=torch.float32)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_pretrained(loader: Callable[[str, bool], T], name: str, what: str) -> T:
    """``loader(source, local_files_only)`` for a local folder or a hub id, every failure as one line.

    A folder loads from disk only; a hub id from the local cache first, and from the hub only when it is not
    cached and ``HF_HUB_OFFLINE`` is not set. ``what`` names the thing in messages ("model", "image encoder").
    Raises:
        ModelNotFoundError: a missing folder, or a hub id neither cached nor downloadable.
        InveditError: a folder that exists but does not load.
    """
    path = Path(name).expanduser()
    if path.exists():
        try:
            return loader(str(path), True)
        except (OSError, ValueError) as exc:
            raise InveditError(f"cannot load {what} folder {name}: {str(exc).splitlines()[0][:200]}") from None
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{what} folder not found: {name}")
    try:
        return loader(name, True)
    except (OSError, ValueError):
        if not _hub_offline():
            try:
                return loader(name, False)
            except (OSError, ValueError):
                pass
    raise ModelNotFoundError(f"{what} {name!r} not found locally; the hub is unreachable or has no such model; "
                             "pass a local folder")


def resolve_model_source(model: str | os.PathLike | None) -> tuple[str, str]:
    """``(what to pass to from_pretrained, the model's name)``: the embedded folder, a checked local folder, or
    a hub id. Raises `ModelNotFoundError` / `InveditError` for a missing or malformed folder."""
    if model is None or str(model) in (EMBEDDED_MODEL_NAME, "embedded"):
        folder = embedded_model_path()
        if not (folder / "model_index.json").exists():
            raise ModelNotFoundError(f"the embedded model is missing from this install ({folder}); reinstall invedit")
        return str(folder), EMBEDDED_MODEL_NAME
    name = str(model)
    path = Path(name).expanduser()
    if path.exists():
        _check_folder(path)
        return str(path), name
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model folder not found: {name}")
    return name, name


def load_tokenizer(model: str | os.PathLike | None):
    """The model's tokenizer alone, from its folder or the local cache (fast: checks prompts before the model
    loads); ``None`` when it is not available locally (loading the model then says why)."""
    from transformers import CLIPTokenizer

    source, _ = resolve_model_source(model)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError):
        return None
    # With no files found, some transformers versions return an empty tokenizer instead of raising.
    return tokenizer if len(tokenizer) > 2 else None


def load(model: str | os.PathLike | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, steps_offset: int = 1, resolution: int | None = None):
    """Load a Stable Diffusion pipeline ready for inversion and editing.

    Args:
        model: a Hugging Face hub id (e.g. ``"CompVis/stable-diffusion-v1-4"``), a local diffusers folder,
            or ``None`` for the embedded shapes model that ships with invedit (no download).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default: the best available.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``; default float16 on CUDA, float32 elsewhere.
            Latents and the DDIM arithmetic always stay float32; the dtype applies to the networks.
        steps_offset: 1 gives the paper's timesteps (981 … 1 for 50 steps); 0 gives Plug-and-Play's reference
            timesteps (980 … 0).
        resolution: image side in pixels (default: the model's native size, 512 for SD 1.x, 1024 for SDXL); a
            multiple of the VAE factor × 8.
    Returns:
        A `diffusers.StableDiffusionPipeline` or `diffusers.StableDiffusionXLPipeline` (detected from the
        checkpoint) with the DDIM scheduler of the paper (reference-settings §1).
    Raises:
        ModelNotFoundError: the model is not available offline and the hub cannot be reached.
        InveditError: the folder is not a Stable Diffusion 1.x/2.x or SDXL base pipeline; a bad resolution.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    make_ddim_scheduler({}, steps_offset)  # checks steps_offset before the load
    source, name = resolve_model_source(model)
    pipe = load_pretrained(lambda src, local_only: _from_pretrained(src, torch_dtype, local_only), source, "model")
    pipe = prepare_pipeline(pipe, dev, steps_offset, resolution)
    pipe._invedit_name = name
    pipe._invedit_editor_defaults = read_editor_defaults(Path(source)) if Path(source).exists() else {}
    return pipe


#: Optional file in a model folder: editor settings recommended for that model, e.g.
#: ``{"editor_defaults": {"p2p": {"cross_replace_steps": 1.0}}}``.
MODEL_SETTINGS_FILE = "invedit.json"


def read_editor_defaults(folder: Path) -> dict[str, dict[str, Any]]:
    """Editor defaults a model folder recommends (its ``invedit.json``), ``{}`` when it has none."""
    path = Path(folder) / MODEL_SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        defaults = data.get("editor_defaults", {})
        if not isinstance(defaults, dict) or not all(isinstance(v, dict) for v in defaults.values()):
            raise ValueError("editor_defaults must map editor names to option objects")
    except (OSError, ValueError, AttributeError) as exc:
        raise InveditError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    return defaults


def model_editor_defaults(pipe, editor: str) -> dict[str, Any]:
    """Options the model recommends for ``editor`` (explicit options and an inversion's pairing win)."""
    return dict(getattr(pipe, "_invedit_editor_defaults", {}).get(editor, {}))


def reference_editor_options(pipe, editor: str) -> dict[str, Any]:
    """The editor's own defaults for every option the model recommends otherwise: pass them to `edit` to run
    the reference settings on a model that ships its own (benchmarks compare models this way)."""
    from .editing import get_editor

    defaults = get_editor(editor).defaults
    return {k: defaults[k] for k in model_editor_defaults(pipe, editor) if k in defaults}


def model_name(pipe) -> str:
    """A readable name of the pipeline's model (hub id, folder or the embedded model's name)."""
    return getattr(pipe, "_invedit_name", None) or str(pipe.config.get("_name_or_path", "unknown"))


# Keys that name where or with which library version a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash", "dtype",
                         "torch_dtype", "_use_default_values"}


def model_fingerprint(pipe) -> str:
    """Short hash of the model's identity (configs and a sample of UNet weights), recorded with every result."""
    cached = getattr(pipe, "_invedit_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for module in (pipe.unet, pipe.vae, *text_encoders(pipe)):
        config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
        stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(stable, sort_keys=True, default=str).encode())
        params = list(module.parameters())
        for p in params[:: max(1, len(params) // 16)]:
            h.update(p.detach().float().flatten()[:64].cpu().numpy().tobytes())
    pipe._invedit_fingerprint = h.hexdigest()[:16]
    return pipe._invedit_fingerprint


def native_resolution(pipe) -> int:
    """Image side the pipeline works at: what `load` was given, else UNet sample size × the VAE's factor."""
    return getattr(pipe, "_invedit_resolution", None) or int(pipe.unet.config.sample_size) * vae_scale_factor(pipe)


def vae_scale_factor(pipe) -> int:
    """Pixels per latent cell (8 for Stable Diffusion)."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)
