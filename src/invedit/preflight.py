"""What a model folder says before any weight is read, checked in one place (`inspect_folder`).

A diffusers folder's ``model_index.json`` names the family and its components; each component's config says
its sizes. From those alone invedit knows the family (so which inversions and editors run on it), the resolutions
it takes and how much memory an edit needs at one, and whether a component is missing or broken. `inspect_folder`
returns a `Backbone` over a `ConfigPipeline` (the configs, the scheduler and tokenizers themselves — small files —
and, with ``modules``, the denoiser built on PyTorch's meta device: its layers without weights), so the same
checks that run on a loaded pipeline (`invedit.prepare.prepare_edit`, the editors' dry runs) run on it before
loading. `check_weights` compares the denoiser's and the VAE's configs with their weight files' headers (the
shapes, not the values) just before the load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .backbones import Backbone, attach, family_of_class
from .errors import InveditError

#: A prompt every real tokenizer reads (`check_tokenizer`): a tokenizer that maps all of it to its unknown token
#: has lost its vocabulary.
PROBE_PROMPT = "a photo of a cat"
#: Config keys a component must name (the rest have diffusers' defaults).
REQUIRED_KEYS = {"vae": ("block_out_channels", "latent_channels"), "unet": ("block_out_channels", "sample_size"),
                 "transformer": ("num_attention_heads", "attention_head_dim")}
#: Environment variable of the memory limit in GB (`memory_limit`; ``--max-memory`` on the command line).
MAX_MEMORY_ENV = "INVEDIT_MAX_MEMORY"
GB = 2**30

#: Optional file in a model folder: editor settings recommended for that model, the options its diffusers
#: pipeline must be called with (the call arguments the model was trained with), and the guidance scale and steps
#: edits use when the caller names none, e.g. ``{"editor_defaults": {"p2p": {"cross_replace_steps": 1.0}},
#: "call_options": {"max_sequence_length": 0}, "guidance": 2.0, "steps": 28}``.
MODEL_SETTINGS_FILE = "invedit.json"
#: Pipeline call options a model folder may set (see `MODEL_SETTINGS_FILE`), with the range each takes.
CALL_OPTIONS = {"max_sequence_length": (0, 512)}


def read_model_settings(folder: Path) -> dict[str, Any]:
    """A model folder's ``invedit.json`` (`MODEL_SETTINGS_FILE`), checked: ``{"editor_defaults": …,
    "call_options": …}`` plus ``"guidance"`` / ``"steps"`` where it recommends them; ``{}`` when it has none."""
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
        settings: dict[str, Any] = {"editor_defaults": defaults, "call_options": call}
        guidance = data.get("guidance")
        if guidance is not None:
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 50:
                raise ValueError(f"guidance must be a number in [0, 50], got {guidance!r}")
            settings["guidance"] = float(guidance)
        steps = data.get("steps")
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
                raise ValueError(f"steps must be an integer from 1 to 1000, got {steps!r}")
            settings["steps"] = steps
    except (OSError, ValueError, AttributeError) as exc:
        raise InveditError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    return settings


class Config(dict):
    """A component's config: a dict whose keys read as attributes too (like diffusers' ``FrozenDict``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class Component:
    """A component known by its config alone (no module, no weights)."""

    def __init__(self, config: dict[str, Any]):
        self.config = Config(config)


class ConfigPipeline:
    """A pipeline as its folder describes it, without weights: ``config`` (model_index.json), each component
    by name (a `Component` with its config, or, with ``modules``, the scheduler and denoiser objects: the
    denoiser on the meta device), the tokenizers, and ``folder``."""

    weights_loaded = False
    local = True  # the folder holds the checkpoint itself (not a hub id's downloaded configs)

    def __init__(self, folder: Path, index: dict[str, Any], configs: dict[str, dict | None] | None = None):
        self.folder = folder
        self.config = Config(index)
        self.configs = dict(configs or {})

    def set_progress_bar_config(self, **_: Any) -> None:  # the pipeline API the backbones call; nothing to show
        pass


def component_entry(index: dict[str, Any], name: str) -> list | None:
    """model_index.json's ``[library, class]`` of a component, None when absent (or saved as ``[null, null]``)."""
    entry = index.get(name)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        return None
    return list(entry)


def _where(folder: Path, family: type[Backbone]) -> str:
    return f"model folder {folder} ({family.family})"


def _read_json(path: Path, where: str, shown: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InveditError(f"{where}: {shown} is unreadable or not valid JSON ({str(exc).splitlines()[0][:100]}); "
                           "download it again") from None
    if not isinstance(data, dict):
        raise InveditError(f"{where}: {shown} does not hold a JSON object; download it again")
    return data


def component_configs(folder: Path, index: dict[str, Any], family: type[Backbone]) -> dict[str, dict | None]:
    """Each component the family needs: its config (tokenizers: ``{}``; an optional component saved as absent:
    None), checked: named in model_index.json, its folder and config present and readable, with the keys invedit
    reads.

    Raises:
        InveditError: naming the first missing or broken component and what it is.
    """
    where = _where(folder, family)
    configs: dict[str, dict | None] = {}
    for name, what in family.components.items():
        entry = component_entry(index, name)
        if entry is None:
            if name in family.optional_components:
                configs[name] = None
                continue
            raise InveditError(f"{where}: model_index.json names no {name} ({what}); the checkpoint is incomplete")
        sub = folder / name
        if not sub.is_dir():
            raise InveditError(f"{where}: {name}/ ({what}) is missing; the download is incomplete: download it "
                               "again")
        if name.startswith("tokenizer"):
            configs[name] = {}
            continue
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        if not (sub / file).is_file():
            raise InveditError(f"{where}: {name}/{file} ({what}'s config) is missing; download it again")
        config = _read_json(sub / file, where, f"{name}/{file}")
        kind = "vae" if name == "vae" else name if name in REQUIRED_KEYS else None
        for key in getattr(family, "required_config_keys", REQUIRED_KEYS).get(kind or "", ()):
            value = config.get(key)
            if value is None or value == [] or isinstance(value, bool):
                raise InveditError(f"{where}: {name}/{file} has no {key} (an empty or foreign config); download "
                                   "it again")
        configs[name] = config
    return configs


def load_tokenizers(pipe: ConfigPipeline, family: type[Backbone], index: dict[str, Any]) -> None:
    """The folder's tokenizers (small files) as ``pipe.tokenizer*``, each checked (`check_tokenizer`)."""
    import transformers

    where = _where(pipe.folder, family)
    for name, what in family.components.items():
        if not name.startswith("tokenizer"):
            continue
        entry = component_entry(index, name)
        if entry is None:
            setattr(pipe, name, None)
            continue
        cls = getattr(transformers, entry[1], None) or transformers.AutoTokenizer
        try:
            tokenizer = cls.from_pretrained(str(pipe.folder / name), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 (any failure of a tokenizer's files is the folder's)
            raise InveditError(f"{where}: {name}/ ({what}) cannot be read as a {entry[1]} "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                               "download it again") from None
        check_tokenizer(tokenizer, f"{where}: {name}/ ({what})")
        setattr(pipe, name, tokenizer)


def check_tokenizer(tokenizer, where: str) -> None:
    """Refuse a tokenizer without a vocabulary: one that maps `PROBE_PROMPT` to its unknown token only (a T5
    tokenizer whose files are missing reads every prompt so, and the model would run on nothing).

    Raises:
        InveditError: naming the tokenizer.
    """
    if len(tokenizer) <= 2:
        raise InveditError(f"{where} holds no vocabulary; download it again")
    ids = tokenizer(PROBE_PROMPT, add_special_tokens=False).input_ids
    unknown = tokenizer.unk_token_id
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # a known piece carries text: not the unknown token, not a bare word-start/-end marker
    known = [p for i, p in zip(ids, pieces) if i != unknown and str(p).replace("</w>", "").replace("\u2581", "")
             .replace("\u0120", "").strip()]
    if not known:
        raise InveditError(f"{where} maps the prompt {PROBE_PROMPT!r} to unknown tokens only: its vocabulary is "
                           "missing or not this model's; download it again")


def build_modules(pipe: ConfigPipeline, family: type[Backbone], index: dict[str, Any],
                  configs: dict[str, dict | None]) -> None:
    """The scheduler (from its config) and the denoiser on the meta device (layers, no weights) on ``pipe``."""
    import diffusers
    import torch

    where = _where(pipe.folder, family)
    for name in ("scheduler", family.denoiser_name):
        entry = component_entry(index, name)
        cls = getattr(diffusers, entry[1], None) if entry else None
        if cls is None:
            raise InveditError(f"{where}: {name} class {entry[1] if entry else None!r} is not one diffusers knows; "
                               "this diffusers version cannot load the checkpoint")
        try:
            if name == "scheduler":
                module = cls.from_config(configs[name])
            else:
                with torch.device("meta"):
                    module = cls.from_config(configs[name])
        except Exception as exc:  # noqa: BLE001 (a config diffusers cannot build is the folder's)
            raise InveditError(f"{where}: {name}/config.json does not describe a {entry[1]} "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") \
                from None
        setattr(pipe, name, module)


def weight_files(folder: Path) -> list[Path]:
    """A component folder's weight files: safetensors (single or sharded; the plain variant first), else
    PyTorch ``.bin``."""
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(p for p in folder.glob(pattern) if p.is_file() or p.is_symlink())
        plain = [p for p in files if p.name.count(".") == 1 or "-of-" in p.name]
        if plain or files:
            return plain or files
    return []


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{tensor name: (shape, dtype)}`` of safetensors files, from their headers alone."""
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in files:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100 * 2**20:
                raise ValueError("not a safetensors file")
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                shapes[name] = (tuple(info["shape"]), info["dtype"])
    return shapes


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


def weight_values(folder: Path, family: type[Backbone]) -> int | None:
    """Parameters in the folder's weight files (denoiser, VAE, text encoders), from the safetensors headers;
    None when a component has only ``.bin`` weights or none (a config-only folder)."""
    total = 0
    for name in family.components:
        if name.startswith(("tokenizer", "scheduler")) or not (folder / name).is_dir():
            continue
        files = weight_files(folder / name)
        if not files or files[0].suffix != ".safetensors":
            return None
        try:
            shapes = safetensors_shapes(files)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # the load reports a broken file
        for shape, _ in shapes.values():
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def check_weights(folder: Path, family: type[Backbone], index: dict[str, Any] | None = None) -> None:
    """Before the load: the denoiser and the VAE have weight files, and their safetensors headers hold the tensors
    their configs make, of the same shapes (a config from another checkpoint fails here in one line, not in the
    load).

    Raises:
        InveditError: naming the component, the first differing tensor and both shapes.
    """
    import diffusers
    import torch

    index = index if index is not None else _read_json(folder / "model_index.json", str(folder), "model_index.json")
    where = _where(folder, family)
    for name in (family.denoiser_name, "vae"):
        entry = component_entry(index, name)
        files = weight_files(folder / name)
        if not files:
            raise InveditError(f"{where}: {name}/ has no weights (diffusion_pytorch_model.safetensors); the download "
                               "is incomplete: download it again")
        cls = getattr(diffusers, entry[1], None) if entry else None
        if cls is None or files[0].suffix != ".safetensors":
            continue
        try:
            shapes = safetensors_shapes(files)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InveditError(f"{where}: {name}/{files[0].name} is not a readable safetensors file ({exc}); "
                               "download it again") from None
        config = _read_json(folder / name / "config.json", where, f"{name}/config.json")
        try:
            with torch.device("meta"):
                expected = {k: tuple(v.shape) for k, v in cls.from_config(config).state_dict().items()}
        except Exception:  # noqa: BLE001 (build_modules / the load report a config diffusers cannot build)
            continue
        for key, shape in expected.items():
            if key in shapes and shapes[key][0] != shape:
                raise InveditError(f"{where}: {name}/config.json does not match its weights ({key}: the config makes "
                                   f"{list(shape)}, the weights hold {list(shapes[key][0])}); the config and the "
                                   "weights come from different checkpoints: download it again")
        if name != "vae":  # the VAE of old checkpoints stores attention under names diffusers converts on load
            missing = [k for k in expected if k not in shapes]
            extra = [k for k in shapes if k not in expected]
            if missing or extra:
                detail = "; ".join(part for part in (
                    f"the weights lack {len(missing)} tensors it makes (e.g. {missing[0]})" if missing else "",
                    f"hold {len(extra)} it has no place for (e.g. {extra[0]})" if extra else "") if part)
                raise InveditError(f"{where}: {name}/config.json does not match its weights ({detail}); the config "
                                   "and the weights come from different checkpoints: download it again")


def inspect_folder(folder: Path, name: str, index: dict[str, Any], family: type[Backbone],
                   resolution: int | None = None, modules: bool = False) -> Backbone:
    """The model as its folder describes it: a `Backbone` (its family's) over a `ConfigPipeline`, with the
    folder's invedit.json settings, its resolution checked. ``modules``: also `add_modules` (the tokenizers,
    checked; the scheduler and the meta-device denoiser, for the editors' dry runs).

    Raises:
        InveditError: a missing or broken component, a bad resolution, a bad invedit.json.
    """
    family.check_requirements()  # a family the installed libraries cannot run: said first, in one line
    configs = component_configs(folder, index, family)
    pipe = ConfigPipeline(folder, index, configs)
    for component, config in configs.items():
        if not component.startswith("tokenizer"):
            setattr(pipe, component, None if config is None else Component(config))
    settings = read_model_settings(folder)
    record = family(pipe, name=name, resolution=resolution, editor_defaults=settings.get("editor_defaults", {}),
                    call_options=settings.get("call_options", {}), guidance=settings.get("guidance"),
                    steps=settings.get("steps"))
    attach(pipe, record)
    if modules:
        add_modules(record)
    return record


def add_modules(record: Backbone, modules: bool = True) -> Backbone:
    """The tokenizers (checked) and, with ``modules``, the scheduler and the meta-device denoiser on a record of
    `inspect_folder`."""
    pipe, family = record.pipe, type(record)
    family.check_requirements()
    load_tokenizers(pipe, family, dict(pipe.config))
    if modules:
        build_modules(pipe, family, dict(pipe.config), pipe.configs)
    return record


def read_index(folder: Path) -> tuple[dict[str, Any], type[Backbone]]:
    """model_index.json of a folder and the family it names.

    Raises:
        InveditError: a single file, no or a broken model_index.json, a pipeline invedit does not run.
    """
    if folder.is_file():
        raise InveditError(f"{folder} is a single file; pass a diffusers folder (with model_index.json)")
    index_path = folder / "model_index.json"
    if not index_path.exists():
        raise InveditError(f"{folder} is not a diffusers Stable Diffusion folder (no model_index.json)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8 text
        raise InveditError(f"cannot load model folder {folder}: model_index.json is unreadable or not valid JSON "
                           f"({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(index, dict):
        raise InveditError(f"cannot load model folder {folder}: model_index.json does not hold a JSON object")
    return index, pipeline_family(index, str(folder))


def pipeline_family(index: dict[str, Any], where: str) -> type[Backbone]:
    """The family model_index.json's ``_class_name`` names."""
    name = index.get("_class_name", "StableDiffusionPipeline")
    family = family_of_class(name)
    if family is not None:
        return family
    raise InveditError(f"{where}: {name} is not supported; invedit runs StableDiffusionPipeline (SD 1.x/2.x), "
                       "StableDiffusionXLPipeline (SDXL base; the refiner is not used), StableDiffusion3Pipeline "
                       "(SD3/3.5) and FluxPipeline (FLUX.1) checkpoints, and as instruction-trained baselines "
                       "FluxKontextPipeline (FLUX.1 Kontext) and QwenImageEditPipeline (Qwen-Image-Edit)")


# ---- memory --------------------------------------------------------------------------------------------------
def parse_memory(value: Any, what: str) -> float:
    """A memory limit in GB (a positive number)."""
    try:
        gb = float(str(value).strip().removesuffix("GB").removesuffix("G"))
    except ValueError:
        raise InveditError(f"{what} must be a number of GB, e.g. 48, got {value!r}") from None
    if not 0 < gb < 1e9:
        raise InveditError(f"{what} must be a positive number of GB, got {value!r}")
    return gb


def memory_limit(device, max_memory: float | str | None = None) -> tuple[int, str]:
    """``(bytes, what it is)``: ``max_memory`` GB, else $INVEDIT_MAX_MEMORY GB, else the device's memory (a CUDA
    GPU's total, MPS's recommended maximum, or this machine's physical memory)."""
    import torch

    if max_memory is not None:
        return int(parse_memory(max_memory, "--max-memory") * GB), "--max-memory"
    if os.environ.get(MAX_MEMORY_ENV):
        return int(parse_memory(os.environ[MAX_MEMORY_ENV], MAX_MEMORY_ENV) * GB), MAX_MEMORY_ENV
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory), f"the memory of GPU {index}"
    if device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory()), "MPS's recommended maximum"
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return 2**62, "unknown"


def _gb(n: float) -> str:
    return f"{n / GB:.3g} GB" if n < 1e6 * GB else f"{n / GB:.2e} GB"


def check_memory(record: Backbone, folder: Path, value_bytes: int, device, offload: str | None = None,
                 max_memory: float | str | None = None, rows: int = 4) -> dict[str, Any]:
    """Refuse a resolution whose estimated memory (`Backbone.memory_estimate`: weights + activations of ``rows``
    rows) exceeds the limit (`memory_limit`); under CPU offload the weights stay in CPU memory and only the
    activations count against the GPU. Returns the estimate (bytes) and the limit.

    Raises:
        InveditError: one line naming the estimate and the limit, and how to lift it.
    """
    values = weight_values(folder, type(record))
    weight_bytes = (values or 0) * value_bytes
    estimate = record.memory_estimate(record.resolution, rows, value_bytes, weight_bytes)
    need = estimate["activations"] + (0 if offload else estimate["weights"])
    limit, what = memory_limit(device, max_memory)
    if need > limit:
        offload_hint = ("; --offload model keeps the weights in CPU memory" if not offload and
                        str(device).startswith("cuda") and estimate["weights"] > limit / 2 else "")
        raise InveditError(
            f"resolution {record.resolution} needs about {_gb(need)} (estimate: {_gb(estimate['weights'])} weights "
            f"+ {_gb(estimate['activations'])} activations at {record.resolution}×{record.resolution}, {rows} rows), "
            f"more than the {_gb(limit)} limit ({what}); pass a smaller --resolution (the model's own: "
            f"{record.native_resolution}), or raise the limit with --max-memory GB ({MAX_MEMORY_ENV}){offload_hint}")
    return {**estimate, "limit": limit}
