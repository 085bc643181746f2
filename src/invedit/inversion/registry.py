"""Name → inversion method registry."""

from __future__ import annotations

from ..errors import InveditError

INVERSIONS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make an `Inverted` subclass available by its ``method`` name."""
    INVERSIONS[cls.method] = cls
    return cls


def get_inversion(name: str) -> type:
    """The `Inverted` subclass registered as ``name``; a clear error for unknown names."""
    try:
        return INVERSIONS[name]
    except KeyError:
        raise InveditError(f"unknown inversion {name!r}; choose one of: {', '.join(sorted(INVERSIONS))}") from None
