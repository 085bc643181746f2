"""Versions of invedit and the libraries whose behaviour shapes results (recorded with every result)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {}
    for package in ("invedit", "torch", "diffusers", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out
