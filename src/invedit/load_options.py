"""What `invedit.load` takes besides the model, checked without loading anything: CPU offload, quantisation of the
networks and LoRA adapters.

Every caller (`invedit.load`, the command line's ``edit`` / ``bench`` / ``ui`` / ``demo``) goes through
`check_load_options`, so a bad choice is one line before any weight is read. (These checks live here, not in
`invedit.prepare`, because `invedit.models` calls them and `invedit.prepare` sits above the models in the import
graph.)
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InveditError

#: What ``offload`` takes: diffusers' CPU-offload hooks (accelerate), whole networks or layer by layer.
OFFLOAD_MODES = ("model", "sequential")


def check_offload(offload: str | None, device: torch.device) -> None:
    """Refuse an unknown offload mode, or offloading when there is no GPU to offload to."""
    if offload is None:
        return
    if offload not in OFFLOAD_MODES:
        raise InveditError(f"offload must be 'model' or 'sequential', got {offload!r}")
    if device.type != "cuda":
        raise InveditError(f"offload keeps the networks in CPU memory and moves each to the GPU while it runs; it "
                           f"needs a CUDA device, not {device.type}")


# ---- quantisation -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantization:
    """One ``quantize`` setting: which library quantises the denoiser and the T5 encoder, how, and where it runs.

    ``bits``: storage per quantised weight, block scales included, per-row scales (under 0.1 % at these widths) not
    (for the memory arithmetic of benchmarks/quantized_memory.py); only linear layers' weights are quantised, the
    rest keeps the load dtype.
    """

    name: str
    package: str  # the distribution to install
    module: str  # the import name
    lowest: str  # the lowest version diffusers accepts for it
    devices: tuple[str, ...]
    bits: float
    description: str
    takes_loras: bool = True  # peft can put a LoRA on its quantised layers


#: The ``quantize`` settings. optimum-quanto runs on a CPU too (what the tests use); bitsandbytes needs CUDA.
QUANTIZATIONS: dict[str, Quantization] = {q.name: q for q in (
    Quantization("int8", "optimum-quanto", "optimum.quanto", "0.2.6", ("cpu", "cuda"), 8,
                 "int8 weights, one scale per output channel (optimum-quanto, weight-only; CPU or CUDA)",
                 takes_loras=False),
    Quantization("nf4", "bitsandbytes", "bitsandbytes", "0.43.3", ("cuda",), 4 + 8 / 64 + 32 / (64 * 256),
                 "4-bit NormalFloat weights in blocks of 64, double-quantised scales, computed in the load dtype "
                 "(bitsandbytes; CUDA)"),
    Quantization("bnb-int8", "bitsandbytes", "bitsandbytes", "0.43.3", ("cuda",), 8,
                 "LLM.int8 weights, one scale per row, outliers in float16 (bitsandbytes; CUDA)"),
)}


def check_quantize(quantize: str | None, device: torch.device, offload: str | None = None) -> Quantization | None:
    """The `Quantization` named ``quantize`` (None: none), refused in one line when unknown, when its library is
    missing or too old, when it cannot run on ``device``, or with layer-by-layer offload."""
    if quantize is None:
        return None
    q = QUANTIZATIONS.get(quantize) if isinstance(quantize, str) else None
    if q is None:
        raise InveditError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if device.type not in q.devices:
        others = [n for n, o in QUANTIZATIONS.items() if device.type in o.devices]
        raise InveditError(f"quantize {q.name!r} ({q.package}) runs on {' or '.join(q.devices)}, not on "
                           f"{device.type}" + (f"; use {' or '.join(others)}" if others else ""))
    if offload == "sequential":
        raise InveditError(f"quantize {q.name!r} with offload 'sequential' is not supported (that offload moves the "
                           "weights layer by layer); use offload 'model' or none")
    found = _version(q.package) if importlib.util.find_spec(q.module.split(".")[0]) else None
    if found is None or _older(found, q.lowest):
        have = f"found {found}" if found else "not installed"
        raise InveditError(f"quantize {q.name!r} needs {q.package} >= {q.lowest} ({have}): "
                           f"pip install 'invedit[quant]'")
    return q


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _older(found: str, lowest: str) -> bool:
    from packaging.version import Version

    return Version(found) < Version(lowest)


# ---- LoRA ---------------------------------------------------------------------------------------------------------
#: What a LoRA file may be: safetensors only (a pickle could run code when read).
LORA_SUFFIX = ".safetensors"
#: The file name diffusers' ``save_lora_weights`` writes (looked for in a folder and in a hub repository).
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+\.safetensors)?$")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to load: ``source`` (a .safetensors file, a folder holding one, or a hub id ``OWNER/REPO`` or
    ``OWNER/REPO/FILE.safetensors``) and its ``scale``. ``file``: the local file once known (a hub LoRA's is found
    when the model loads)."""

    source: str
    scale: float = 1.0
    file: Path | None = None

    @property
    def is_hub(self) -> bool:
        return self.file is None


def parse_lora(spec: str | LoraSpec | tuple[str, float]) -> LoraSpec:
    """``PATH_OR_ID[:SCALE]`` (what ``--lora`` takes), a ``(source, scale)`` pair or a `LoraSpec`, checked: a finite
    scale, a local file that exists and is safetensors (or a folder holding one), else a hub id.

    Raises:
        InveditError: one line naming the problem.
    """
    if isinstance(spec, LoraSpec):
        source, scale = spec.source, spec.scale
    elif isinstance(spec, tuple) and len(spec) == 2:
        source, scale = str(spec[0]), spec[1]
    elif isinstance(spec, str):
        source, scale = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head and not Path(spec).exists():
            try:
                scale = float(tail)
            except ValueError:
                raise InveditError(f"--lora {spec!r}: the scale after ':' must be a number, got {tail!r}") from None
            source = head
    else:
        raise InveditError(f"a LoRA is 'PATH_OR_ID[:SCALE]' or (PATH_OR_ID, SCALE), got {spec!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InveditError(f"LoRA {source!r}: the scale must be a finite number, got {scale!r}")
    if not source:
        raise InveditError("a LoRA needs a file, folder or hub id before ':SCALE'")
    path = Path(source).expanduser()
    if path.is_dir():
        return LoraSpec(source, float(scale), _lora_in_folder(path))
    if path.is_file():
        if path.suffix != LORA_SUFFIX:
            raise InveditError(f"LoRA {source}: only {LORA_SUFFIX} files are read (a pickle could run code), got "
                               f"{path.suffix or 'no suffix'}")
        return LoraSpec(source, float(scale), path)
    if not _HUB_ID.match(source) or source.startswith((".", "~")) or (source.endswith(LORA_SUFFIX)
                                                                        and source.count("/") < 2):
        raise InveditError(f"LoRA not found: {source} (a {LORA_SUFFIX} file, a folder holding one, or a hub id "
                           "OWNER/REPO[/FILE.safetensors])")
    return LoraSpec(source, float(scale))


def _lora_in_folder(folder: Path) -> Path:
    named = folder / LORA_WEIGHT_NAME
    if named.is_file():
        return named
    found = sorted(folder.glob(f"*{LORA_SUFFIX}"))
    if len(found) != 1:
        raise InveditError(f"LoRA folder {folder} holds {len(found)} {LORA_SUFFIX} files; name the file "
                           f"(or keep one, or call it {LORA_WEIGHT_NAME})")
    return found[0]


def check_loras(loras: Any) -> tuple[LoraSpec, ...]:
    """Each of ``loras`` (None, or a list of what `parse_lora` takes) checked; the same source twice is refused."""
    if loras is None:
        return ()
    if isinstance(loras, (str, LoraSpec)):
        loras = [loras]
    specs = tuple(parse_lora(s) for s in loras)
    sources = [str(s.file.resolve()) if s.file else s.source for s in specs]
    for source in sources:
        if sources.count(source) > 1:
            raise InveditError(f"LoRA {source} is given twice; give it once with the scale you want")
    return specs


def check_load_options(device: torch.device, offload: str | None = None, quantize: str | None = None,
                       loras: Any = None) -> tuple[Quantization | None, tuple[LoraSpec, ...]]:
    """Every check of `invedit.load`'s options that needs no model: offload, quantisation, LoRAs."""
    check_offload(offload, device)
    quantization, specs = check_quantize(quantize, device, offload), check_loras(loras)
    if quantization is not None and specs and not quantization.takes_loras:
        takers = [n for n, q in QUANTIZATIONS.items() if q.takes_loras]
        raise InveditError(f"LoRAs cannot be loaded onto quantize {quantization.name!r} ({quantization.package}'s "
                           f"layers are not ones peft adapts); drop --quantize or use {' or '.join(takers)} (CUDA)")
    return quantization, specs
