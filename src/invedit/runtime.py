"""Process-wide settings a command applies before it computes."""

from __future__ import annotations

import os


def setup_threads() -> None:
    """Use ``INVEDIT_THREADS`` torch threads when set (the thread count changes images by ±1 level)."""
    import torch

    threads = os.environ.get("INVEDIT_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
