"""Numerical bounds of the suite, with the values they are measured against.

Each floating-point bound in the tests compares a `measured(...)` value. Normally that is just the value; with
``INVEDIT_BOUNDS_LOG=FILE`` set, every measured value is also appended to FILE (one JSON line: test, name,
value, CPU kernel, threads), so `benchmarks/bound_spread.py` can run the suite under other kernels and thread
counts (an AVX2-only CPU, no vector kernels, 1 or 2 threads) and tabulate the spread each bound has to cover
(docs/test-bounds.md).
"""

from __future__ import annotations

import json
import os

import torch


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().mean().item()


def measured(name: str, value: float | torch.Tensor) -> float:
    """``value`` as a float; logged under ``name`` (with the running test's id) when INVEDIT_BOUNDS_LOG is set."""
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    log = os.environ.get("INVEDIT_BOUNDS_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
        record = {"test": test, "name": name, "value": value, "capability": torch.backends.cpu.get_cpu_capability(),
                  "threads": torch.get_num_threads()}
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    return value
