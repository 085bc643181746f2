"""The on-disk inversion cache: one file per (image, prompt, model, steps, method, options, …), shared by runs.

An inversion depends on the image's bytes, the prompt it is made under, the model (its fingerprint), the
schedule, the method and its options, the guidance it may be fitted to, the seed of methods that draw noise, the
dtype and device kind the networks ran in, and the invedit version that computed it. The key hashes all of them,
so a changed prompt or option is a miss, never a stale hit. Files are written atomically
(`invedit.inversion.storage`); an unreadable file counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InveditError
from ..inversion.base import Inverted
from ..inversion.storage import load_inverted, save_inverted

KEY_FORMAT = 1


def default_cache_dir() -> Path:
    """``$INVEDIT_CACHE``, else ``$XDG_CACHE_HOME/invedit/inversions``, else ``~/.cache/invedit/inversions``."""
    if os.environ.get("INVEDIT_CACHE"):
        return Path(os.environ["INVEDIT_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "invedit" / "inversions"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inversion_key(image_sha256: str, prompt: str, model_fingerprint: str, steps: int, method: str,
                  options: dict[str, Any], guidance_scale: float, seed: int, dtype: str, device_type: str,
                  resolution: int, version: str) -> str:
    """The cache key (hex) of one inversion."""
    fields = {"format": KEY_FORMAT, "image": image_sha256, "prompt": prompt, "model": model_fingerprint,
              "steps": steps, "method": method, "options": options, "guidance": guidance_scale, "seed": seed,
              "dtype": dtype, "device": device_type, "resolution": resolution, "invedit": version}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:40]


class InversionCache:
    """Inversions by key in ``folder`` (``None``: a cache that never hits and stores nothing)."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.unreadable: list[str] = []

    def path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str, device) -> Inverted | None:
        if self.folder is None or not self.path(key).is_file():
            return None
        try:
            return load_inverted(self.path(key), device)
        except InveditError as exc:
            self.unreadable.append(str(exc))
            return None

    def put(self, key: str, inverted: Inverted) -> None:
        if self.folder is not None:
            save_inverted(inverted, self.path(key))
