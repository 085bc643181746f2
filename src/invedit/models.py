"""Load any diffusers checkpoint of a family invedit runs (hub id or folder), or the embedded model.

What invedit knows about a loaded pipeline, and does with it, is its `invedit.backbones.Backbone`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .backbones import Backbone, attach, backbone, family_of_class
from .backbones.unet import make_ddim_scheduler
from .errors import InveditError, ModelNotFoundError
from .load_options import (  # noqa: F401  (check_offload, OFFLOAD_MODES: importable from here as before)
    LORA_WEIGHT_NAME,
    OFFLOAD_MODES,
    LoraSpec,
    Quantization,
    check_load_options,
    check_offload,
)

EMBEDDED_MODEL_NAME = "shapes-64"
#: Models shipped inside the package, by the name `load` takes: the Stable-Diffusion-shaped UNet model (the default)
#: and the SD3-shaped rectified-flow transformer trained on the same shapes world (docs/embedded-model.md).
EMBEDDED_MODELS = {"shapes-64": "shapes-64", "embedded": "shapes-64", "shapes-flow": "shapes-flow"}
T = TypeVar("T")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def embedded_model_path(name: str = EMBEDDED_MODEL_NAME) -> Path:
    """Folder of an embedded model shipped inside the package (a diffusers pipeline folder; `EMBEDDED_MODELS`)."""
    return Path(__file__).parent / "toy" / "weights" / EMBEDDED_MODELS[name]


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


def _pipeline_family(index: dict[str, Any], where: str) -> type[Backbone]:
    name = index.get("_class_name", "StableDiffusionPipeline")
    family = family_of_class(name)
    if family is not None:
        return family
    raise InveditError(f"{where}: {name} is not supported; invedit runs StableDiffusionPipeline (SD 1.x/2.x), "
                       "StableDiffusionXLPipeline (SDXL base; the refiner is not used), StableDiffusion3Pipeline "
                       "(SD3/3.5) and FluxPipeline (FLUX.1) checkpoints, and as instruction-trained baselines "
                       "FluxKontextPipeline (FLUX.1 Kontext) and QwenImageEditPipeline (Qwen-Image-Edit)")


def _from_pretrained(source: str, dtype: torch.dtype, local_only: bool, quantization: Quantization | None = None):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    index = DiffusionPipeline.load_config(source, local_files_only=local_only)
    family = _pipeline_family(index, source)
    family.check_requirements()
    loader = getattr(family, "load_pipeline", None)
    with warnings.catch_warnings(), _quiet_quantizers(quantization):
        warnings.simplefilter("ignore", FutureWarning)  # the steps_offset deprecation (we set it); quanto's notice
        extra = {}
        if quantization is not None:
            components = [c for c in family.quantized_components() if isinstance(index.get(c), list)
                          and index[c] != [None, None]]
            extra["quantization_config"] = quantization_config(quantization, components, dtype)
        if loader is not None:  # families that load their own pipeline class (SD3, FLUX)
            return loader(source, dtype, local_only, **extra)
        if family.family == "sdxl":
            return StableDiffusionXLPipeline.from_pretrained(source, torch_dtype=dtype, local_files_only=local_only,
                                                             **extra)
        return StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=local_only, **extra,
        )


def quantization_config(quantization: Quantization, components: list[str], dtype: torch.dtype):
    """diffusers' `PipelineQuantizationConfig` quantising ``components`` (the denoiser through diffusers' config
    class, the text encoders through transformers' one) as ``quantization`` says."""
    import diffusers
    import transformers
    from diffusers import PipelineQuantizationConfig

    def config(library):
        if quantization.name == "int8":
            return (library.QuantoConfig(weights_dtype="int8") if library is diffusers
                    else library.QuantoConfig(weights="int8"))
        if quantization.name == "nf4":
            return library.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        if quantization.name == "bnb-int8":
            return library.BitsAndBytesConfig(load_in_8bit=True)
        raise InveditError(f"unknown quantization {quantization.name!r}")

    return PipelineQuantizationConfig(quant_mapping={
        name: config(transformers if name.startswith("text_encoder") else diffusers) for name in components})


class _quiet_quantizers:
    """Silence what the quantisation libraries say while a pipeline loads: torch's "no CUDA runtime" note when
    optimum-quanto imports its kernel builder on a CPU machine, diffusers' notice that quanto is deprecated."""

    NAMES = ("torch.utils.cpp_extension", "diffusers.quantizers")

    def __init__(self, quantization: Quantization | None):
        self.active = quantization is not None
        self.levels: list[tuple[Any, int]] = []

    def __enter__(self):
        if self.active:
            import logging

            for name in self.NAMES:
                logger = logging.getLogger(name)
                self.levels.append((logger, logger.level))
                logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for logger, level in self.levels:
            logger.setLevel(level)
        return False


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
    _pipeline_family(config, str(folder))


def prepare_pipeline(pipe, device: torch.device | None = None, steps_offset: int = 1, resolution: int | None = None,
                     name: str | None = None, editor_defaults: dict[str, dict[str, Any]] | None = None,
                     call_options: dict[str, Any] | None = None, quantize: str | None = None,
                     loras: list[dict[str, Any]] | None = None):
    """Put a loaded pipeline into invedit's state (its family's scheduler, eval mode, quiet) and record what invedit
    knows about it (`invedit.backbones.backbone(pipe)`: ``name``, the ``resolution`` it works at, default the
    model's native one, the ``editor_defaults`` and pipeline ``call_options`` its folder recommends, the
    quantisation it was loaded with and the LoRAs `load_loras` loaded)."""
    family = backbone_class(pipe)
    family.prepare(pipe, device, steps_offset=steps_offset)
    attach(pipe, family(pipe, name=name, resolution=resolution, editor_defaults=editor_defaults,
                        call_options=call_options, quantize=quantize, loras=loras))
    return pipe


# ---- LoRA ---------------------------------------------------------------------------------------------------------
#: How diffusers reports LoRA weights it could not place in the model (unexpected or missing adapter keys).
UNPLACED_LORA_REPORT = "Loading adapter weights from state_dict led to"


def load_loras(pipe, specs: tuple[LoraSpec, ...] | list[LoraSpec], model: str = "the model") -> list[dict[str, Any]]:
    """Load each LoRA into ``pipe`` with diffusers' ``load_lora_weights`` (peft), as adapter ``lora0``, ``lora1``,
    …, and weight them by their scales; return one record per LoRA (``name``, ``scale``, ``file``, ``sha256``).

    A LoRA is refused (and unloaded) when loading it raises (a shape that does not match), when diffusers reports
    weights it could not place, or when none of its weights landed in the model; a LoRA in diffusers' own layout
    must land whole (its LoRA tensors' sizes add up to the adapter's).
    Raises:
        InveditError: one line naming the LoRA and the model.
    """
    if not specs:
        return []
    family = backbone_class(pipe)
    records, names = [], []
    for i, spec in enumerate(specs):
        file = spec.file or _hub_lora_file(spec.source)
        state, digest = _read_lora(file, spec.source)
        name = f"lora{i}"
        try:
            with _diffusers_reports() as reports:
                pipe.load_lora_weights(dict(state), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
            _unload(pipe, name)
            raise InveditError(f"LoRA {spec.source} does not fit {model}: {_first_line(exc)}") from None
        loaded = sum(p.numel() for module in family.modules_of(pipe) for key, p in module.named_parameters()
                     if f".{name}." in key)
        expected = sum(v.numel() for k, v in state.items() if ".lora_A." in k or ".lora_B." in k)
        problem = next((_unplaced(r) for r in reports if r.startswith(UNPLACED_LORA_REPORT)), None)
        if problem is None and loaded == 0:
            problem = "none of its weights names a layer of this model"
        if problem is None and expected and loaded != expected:
            problem = f"{loaded} of its {expected} LoRA weights were placed"
        if problem is not None:
            _unload(pipe, name)
            raise InveditError(f"LoRA {spec.source} does not fit {model}: {problem[:200]}")
        names.append(name)
        records.append({"name": spec.source, "scale": spec.scale, "file": str(file), "sha256": digest})
    pipe.set_adapters(names, adapter_weights=[r["scale"] for r in records])
    return records


def _read_lora(file: Path, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The LoRA's tensors (safetensors, read without running code) and the file's SHA-256."""
    import hashlib

    from safetensors.torch import load_file

    try:
        data = Path(file).read_bytes()
        state = load_file(str(file))
    except Exception as exc:  # safetensors raises its own SafetensorError for a malformed file
        raise InveditError(f"cannot read LoRA {source}: {_first_line(exc)}") from None
    return state, hashlib.sha256(data).hexdigest()


def _hub_lora_file(source: str) -> Path:
    """The local file of a hub LoRA (``OWNER/REPO`` → its ``pytorch_lora_weights.safetensors``, or
    ``OWNER/REPO/FILE.safetensors``): from the cache first, then from the hub unless ``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import hf_hub_download

    parts = source.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or LORA_WEIGHT_NAME
    for local_only in (True, False):
        if not local_only and _hub_offline():
            break
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=local_only))
        except Exception:  # noqa: BLE001 (not cached / unreachable / no such repo: all mean "not available")
            continue
    raise ModelNotFoundError(f"LoRA {source!r} not found locally; the hub is unreachable or has no such file; "
                             "pass a local .safetensors file")


def _unplaced(report: str) -> str:
    """diffusers' report of unplaced LoRA weights, shortened: how many, and the first."""
    keys = [k.strip(" .") for k in report.partition(": ")[2].split("Loading adapter")[0].split(",") if k.strip(" .")]
    return f"{len(keys)} of its weights name layers or shapes this model does not have (first: {keys[0]})"


def _unload(pipe, name: str) -> None:
    try:
        pipe.delete_adapters(name)
    except (ValueError, KeyError, AttributeError):
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


class _diffusers_reports:
    """Collect what diffusers logs (its "unexpected keys" report) and peft warns while a LoRA loads, instead of
    printing it: `load_loras` turns the reports that mean "does not fit" into one refusal."""

    def __enter__(self) -> list[str]:
        import logging

        self.reports: list[str] = []
        reports = self.reports

        class Collect(logging.Handler):
            def emit(self, record):
                reports.append(record.getMessage())

        self.logger = logging.getLogger("diffusers")
        self.handler, self.level = Collect(logging.WARNING), self.logger.level
        self.saved_handlers = self.logger.handlers[:]
        self.logger.handlers = [self.handler]
        self.warnings = warnings.catch_warnings(record=True)
        self.caught = self.warnings.__enter__()
        warnings.simplefilter("always")
        return reports

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.reports.extend(str(w.message) for w in self.caught)
        self.logger.handlers = self.saved_handlers
        return False


def backbone_class(pipe) -> type[Backbone]:
    """The family that runs ``pipe``."""
    family = family_of_class(type(pipe).__name__)
    if family is None:
        raise InveditError(f"{type(pipe).__name__} is not a pipeline invedit runs")
    return family


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
        except InveditError:
            raise
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
    if model is None or str(model) in EMBEDDED_MODELS:
        name = EMBEDDED_MODELS[str(model or EMBEDDED_MODEL_NAME)]
        folder = embedded_model_path(name)
        if not (folder / "model_index.json").exists():
            raise ModelNotFoundError(f"the embedded model {name} is missing from this install ({folder}); "
                                     f"reinstall invedit")
        return str(folder), name
    name = str(model)
    path = Path(name).expanduser()
    if path.exists():
        _check_folder(path)
        return str(path), name
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model folder not found: {name}")
    return name, name


def peek_family(model: str | os.PathLike | None) -> type[Backbone] | None:
    """The family of a model folder or cached hub id, read from its model_index.json without loading anything
    (the embedded models' too); ``None`` when that file is not available locally (loading the model then says
    why). Lets callers refuse methods the family does not run before the load."""
    try:
        source, _ = resolve_model_source(model)
    except InveditError:
        return None
    path = Path(source) / "model_index.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # noqa: BLE001 (not a hub id, no cache: the load reports it)
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return family_of_class(index.get("_class_name", "StableDiffusionPipeline")) if isinstance(index, dict) else None


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
         dtype: str | torch.dtype | None = None, steps_offset: int = 1, resolution: int | None = None,
         offload: str | None = None, quantize: str | None = None, loras=None):
    """Load a Stable Diffusion pipeline ready for inversion and editing.

    Args:
        model: a Hugging Face hub id (e.g. ``"CompVis/stable-diffusion-v1-4"``), a local diffusers folder,
            or ``None`` for the embedded shapes model that ships with invedit (no download).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default: the best available.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``; default float16 on CUDA, float32 elsewhere.
            Latents and the DDIM arithmetic always stay float32; the dtype applies to the networks.
        steps_offset: 1 gives the paper's timesteps (981 … 1 for 50 steps); 0 gives Plug-and-Play's reference
            timesteps (980 … 0).
        resolution: image side in pixels (default: the model's native size, 512 for SD 1.x, 1024 for SDXL, SD3
            and FLUX); a multiple of the VAE factor × 8 (× 2 on SD3/FLUX).
        offload: ``"model"`` or ``"sequential"``: keep the networks in CPU memory and move each (or each layer) to
            the GPU while it runs (diffusers' CPU-offload hooks; for FLUX on a 24 GB or 16 GB GPU).
        quantize: ``"int8"`` (optimum-quanto, CPU or CUDA), ``"nf4"`` or ``"bnb-int8"`` (bitsandbytes, CUDA):
            the denoiser's and the T5 encoder's linear weights are quantised as they load, through diffusers'
            `PipelineQuantizationConfig` (`invedit.load_options.QUANTIZATIONS`); the rest keeps ``dtype``, and
            latents and the sampling arithmetic stay float32.
        loras: LoRA adapters, each ``"PATH_OR_ID[:SCALE]"``, ``(PATH_OR_ID, SCALE)`` or a
            `invedit.load_options.LoraSpec`: a .safetensors file in diffusers' (or a format diffusers converts)
            LoRA layout, a folder holding one, or a hub id; loaded with diffusers' ``load_lora_weights`` (peft) and
            weighted by their scales. A LoRA none of whose weights fit the model is refused.
    Returns:
        A `diffusers.StableDiffusionPipeline` or `diffusers.StableDiffusionXLPipeline` (detected from the
        checkpoint) with the DDIM scheduler of the paper (reference-settings §1).
    Raises:
        ModelNotFoundError: the model is not available offline and the hub cannot be reached.
        InveditError: the folder is not a Stable Diffusion 1.x/2.x or SDXL base pipeline; a bad resolution; a
            quantisation that cannot run here or is not installed; a LoRA that is missing or does not fit.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    make_ddim_scheduler({}, steps_offset)  # checks steps_offset before the load
    quantization, lora_specs = check_load_options(dev, offload, quantize, loras)
    source, name = resolve_model_source(model)
    pipe = load_pretrained(lambda src, local_only: _from_pretrained(src, torch_dtype, local_only, quantization),
                           source, "model")
    lora_records = load_loras(pipe, lora_specs, name)
    settings = read_model_settings(Path(source)) if Path(source).exists() else {}
    pipe = prepare_pipeline(pipe, None if offload else dev, steps_offset, resolution, name=name,
                            editor_defaults=settings.get("editor_defaults", {}),
                            call_options=settings.get("call_options", {}),
                            quantize=quantization.name if quantization else None, loras=lora_records)
    if offload == "model":  # each network moves to the GPU while it runs (text encoders, then the denoiser, VAE)
        pipe.enable_model_cpu_offload(device=dev)
    elif offload == "sequential":  # each layer moves to the GPU while it runs: least memory, slowest
        pipe.enable_sequential_cpu_offload(device=dev)
    return pipe


#: Optional file in a model folder: editor settings recommended for that model and the options its diffusers
#: pipeline must be called with (the call arguments the model was trained with), e.g.
#: ``{"editor_defaults": {"p2p": {"cross_replace_steps": 1.0}}, "call_options": {"max_sequence_length": 0}}``.
MODEL_SETTINGS_FILE = "invedit.json"
#: Pipeline call options a model folder may set (see `MODEL_SETTINGS_FILE`), with the range each takes.
CALL_OPTIONS = {"max_sequence_length": (0, 512)}


def read_model_settings(folder: Path) -> dict[str, dict[str, Any]]:
    """A model folder's ``invedit.json`` (`MODEL_SETTINGS_FILE`), checked: ``{"editor_defaults": …,
    "call_options": …}``, ``{}`` when it has none."""
    path = Path(folder) / MODEL_SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        defaults = data.get("editor_defaults", {})
        if not isinstance(defaults, dict) or not all(isinstance(v, dict) for v in defaults.values()):
            raise ValueError("editor_defaults must map editor names to option objects")
        call = data.get("call_options", {})
        if not isinstance(call, dict):
            raise ValueError("call_options must be an object")
        for key, value in call.items():
            if key not in CALL_OPTIONS:
                raise ValueError(f"unknown call option {key!r} (known: {', '.join(CALL_OPTIONS)})")
            low, high = CALL_OPTIONS[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"call option {key} must be an integer in [{low}, {high}], got {value!r}")
    except (OSError, ValueError, AttributeError) as exc:
        raise InveditError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    return {"editor_defaults": defaults, "call_options": call}


# Read-outs of a pipeline's record (`invedit.backbones.backbone(pipe)`), for callers that hold only the pipeline.
def model_editor_defaults(pipe, editor: str) -> dict[str, Any]:
    """Options the model recommends for ``editor`` (explicit options and an inversion's pairing win)."""
    return backbone(pipe).model_editor_defaults(editor)


def model_name(pipe) -> str:
    """A readable name of the pipeline's model (hub id, folder or the embedded model's name)."""
    return backbone(pipe).name


def model_kind(pipe) -> str:
    """The model family: ``"sd"`` (1.x/2.x) or ``"sdxl"``."""
    return backbone(pipe).family


def model_fingerprint(pipe) -> str:
    """Short hash of the model's identity (configs and a sample of weights), recorded with every result."""
    return backbone(pipe).fingerprint()


def native_resolution(pipe) -> int:
    """Image side the pipeline works at: what `load` was given, else the model's native size."""
    return backbone(pipe).resolution
