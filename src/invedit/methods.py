"""What can be run: the registered inversions and editors, with descriptions and options."""

from __future__ import annotations

from typing import Any

from .editing import EDITORS
from .inversion import INVERSIONS


def list_methods() -> dict[str, list[dict[str, Any]]]:
    """``{"inversions": [...], "editors": [...]}``, each entry with name, description and default options."""
    return {
        "inversions": [{"name": n, "description": c.description, "options": dict(c.defaults)}
                       for n, c in sorted(INVERSIONS.items())],
        "editors": [{"name": n, "description": c.description, "options": dict(c.defaults)}
                    for n, c in sorted(EDITORS.items()) if n != "base"],
    }
