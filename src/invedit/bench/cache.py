"""The on-disk inversion cache: one file per (image, prompt, model, steps, method, options, …), shared by runs.

An inversion depends on the image's bytes, the prompt it is made under, the model (its fingerprint), the
schedule, the method and its options, the guidance it may be fitted to, the seed of methods that draw noise, the
dtype and device kind the networks ran in, and the invedit version that computed it. The key hashes all of them,
so a changed prompt or option is a miss, never a stale hit. Files are written atomically
(`invedit.inversion.storage`); an unreadable file counts as a miss and is rewritten.

The cache is an optimisation: a folder that cannot be used (a file, unwritable) is reported once up front and the
run goes on without it (`open_cache`); a write that fails later (a full disk) is reported once and writing stops,
never failing the edit whose inversion it was storing.
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
from ..outputs import prepare_output_dir

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
    """Inversions by key in ``folder`` (``None``: a cache that never hits and stores nothing).

    ``say`` reports, once, the first write that failed (after which nothing more is written).
    """

    def __init__(self, folder: str | os.PathLike | None, say=None):
        self.folder = Path(folder) if folder is not None else None
        self.unreadable: list[str] = []
        self.write_failed: str | None = None
        self.say = say or (lambda message: None)

    def path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str, device) -> Inverted | None:
        """The stored inversion, or ``None`` (absent, or unreadable: empty, truncated, foreign, not a file)."""
        if self.folder is None:
            return None
        path = self.path(key)
        try:
            if not path.is_file():
                return None
            return load_inverted(path, device)
        except (InveditError, OSError) as exc:
            self.unreadable.append(str(exc) if isinstance(exc, InveditError) else
                                   f"cannot read inversion file {path}: {exc.strerror or type(exc).__name__}")
            return None

    def put(self, key: str, inverted: Inverted) -> None:
        """Store ``inverted``; a failure is reported once and turns writing off (the edit goes on)."""
        if self.folder is None or self.write_failed is not None:
            return
        try:
            save_inverted(inverted, self.path(key))
        except (OSError, InveditError) as exc:
            reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
            self.write_failed = reason
            self.say(f"warning: cannot write to the inversion cache {self.folder} ({reason}); going on without "
                     "storing inversions")


def open_cache(folder: str | os.PathLike | None, say=print) -> InversionCache:
    """The cache in ``folder``, checked up front: a folder that cannot be created or written is reported in one
    line and the run goes on without a cache (``--no-cache`` in effect)."""
    if folder is None:
        return InversionCache(None, say)
    try:
        prepare_output_dir(folder, "the inversion cache")
    except InveditError as exc:
        say(f"warning: {exc}; running without the inversion cache")
        return InversionCache(None, say)
    return InversionCache(folder, say)
