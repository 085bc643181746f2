"""Tests that edit one image with several methods whose inversions are the same computation (DDIM inversion at
guidance 1 under the same prompt: ``ddim``, ``direct``, the first half of ``null-text``) invert it once and hand the
trajectory to each method: bit for bit what each method's own `invedit.invert` returns, at a fraction of the time."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from invedit.inversion import Inverted


def as_method(inverted: Inverted, method: type[Inverted], options: dict[str, Any] | None = None,
              **fields: Any) -> Inverted:
    """``inverted``'s trajectory (a clone: a test may overwrite z_T), prompt, schedule and image as a result of
    ``method``, with ``method``'s validated ``options`` and its own ``fields`` (e.g. null-text's ``nulls``)."""
    assert inverted.options.get("inversion_guidance", 1.0) == 1.0, "only guidance-1 DDIM trajectories are shared"
    common = {f.name: getattr(inverted, f.name) for f in dataclasses.fields(Inverted)}
    common.update(latents=inverted.latents.clone(), stats=copy.copy(inverted.stats),
                  options=method.validate_options(options or {}), **fields)
    return method(**common)
