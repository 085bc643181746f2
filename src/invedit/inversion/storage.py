"""Saving an `Inverted` to disk and loading it back exactly (the benchmark's inversion cache uses it).

Every inversion result is a frozen dataclass of tensors, tuples, small dataclasses (the DDIM schedule, run
stats, StyleDiffusion's scale/shift pairs), options and a PIL image. `save_inverted` turns it into plain
containers of tensors that ``torch.load(weights_only=True)`` reads without unpickling any code; `load_inverted`
rebuilds the classes, accepting only dataclasses defined inside invedit. Tensors keep their exact values; those
that lived on the model's device go to the device given at load.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InveditError
from ..outputs import write_atomically
from .base import Inverted

FORMAT = 1


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().clone(), "on_model": value.device.type != "cpu"}
    if isinstance(value, Image.Image):
        return {"__image__": torch.from_numpy(np.array(value.convert("RGB"), dtype=np.uint8))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only string-keyed dicts can be stored")
        return {"__dict__": {k: _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in an inversion file")


def _dataclass(path: str) -> type:
    module, _, name = path.partition(":")
    if not (module == "invedit" or module.startswith("invedit.")):
        raise InveditError(f"inversion file names a class outside invedit ({path})")
    cls: Any = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise InveditError(f"inversion file names {path}, which is not a result class")
    return cls


def _decode(value: Any, device: torch.device) -> Any:
    if isinstance(value, list):
        return [_decode(v, device) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        tensor = value["__tensor__"]
        return tensor.to(device) if value["on_model"] else tensor
    if "__image__" in value:
        return Image.fromarray(value["__image__"].numpy())
    if "__tuple__" in value:
        return tuple(_decode(v, device) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, device) for k, v in value["__dict__"].items()}
    if "__dataclass__" in value:
        cls = _dataclass(value["__dataclass__"])
        return cls(**{k: _decode(v, device) for k, v in value["fields"].items()})
    raise InveditError("inversion file holds an unknown entry")


def save_inverted(inverted: Inverted, path: str | os.PathLike) -> Path:
    """Write ``inverted`` to ``path`` atomically (a reader sees the old file, the new one or none)."""
    path = Path(path)
    state = {"format": FORMAT, "inverted": _encode(inverted)}
    write_atomically([(path, lambda f: torch.save(state, f))])
    return path


def load_inverted(path: str | os.PathLike, device: str | torch.device = "cpu") -> Inverted:
    """The `Inverted` saved at ``path``, with its model-side tensors on ``device``.

    Raises:
        InveditError: the file is not an inversion file of this format (unreadable, truncated, foreign).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty, truncated, not a torch file, holding code, unreadable
        lines = str(exc).splitlines()
        reason = lines[0][:160] if lines else type(exc).__name__
        raise InveditError(f"cannot read inversion file {path}: {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InveditError(f"{path} is not an invedit inversion file of format {FORMAT}")
    try:
        inverted = _decode(state["inverted"], torch.device(device))
    except InveditError:
        raise
    except Exception as exc:  # a torch file of another shape: missing keys, wrong fields
        raise InveditError(f"{path} is not a readable inversion file ({type(exc).__name__})") from None
    if not isinstance(inverted, Inverted):
        raise InveditError(f"{path} does not hold an inversion result")
    return inverted
