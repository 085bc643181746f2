"""Shared fixtures: tiny offline pipelines and synthetic test images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from invedit.testing import tiny_pipeline

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers) each worker computes on one PyTorch thread: two workers of
    two threads each would oversubscribe a 2-core machine, and PyTorch's threads then wait for the busy cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


#: The test files that take longest (the 512-px parity runs, subprocesses, the shipped models), longest first: under
#: `make test` (--dist loadfile --no-loadscope-reorder) pytest-xdist hands whole files to whichever worker is free in
#: this order, so no long file is left to the end while the other core idles. Seconds per file, summed over its
#: tests, one PyTorch thread, 2026-12-07: 128, 114, 94, 69, 66, 64, 59, 46, 37, 22, 19, 19, 18; the suite's total
#: 973 s ran in 8 min 33 s on two workers.
SLOW_FILES = ("test_bench_runner.py", "test_editors_parity.py", "test_parity.py", "test_sdxl.py", "test_ui.py",
              "test_pix2pix_zero.py", "test_embedded_model.py", "test_embedded_flow_model.py", "test_cli.py",
              "test_shared_attention.py", "test_toy_decoder.py", "test_kv_edit.py", "test_rf_solver_edit.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(scope="session")
def pipe():
    """Tiny random-weight Stable Diffusion pipeline (64 px images, 16×16 latents)."""
    return tiny_pipeline(seed=0)


def scene_image(size: int = 64, color=(230, 40, 40)) -> Image.Image:
    """A coloured square on a striped background (deterministic)."""
    image = Image.new("RGB", (size, size), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    for x in range(0, size, 8):
        draw.rectangle([x, 0, x + 3, size], fill=(90, 90, 160))
    s = size // 4
    draw.rectangle([s, s, 3 * s, 3 * s], fill=color)
    return image


@pytest.fixture
def image() -> Image.Image:
    return scene_image()


@pytest.fixture
def noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


SOURCE = "a red square on a striped background"
TARGET = "a blue square on a striped background"


def qkv(rows: int = 4, tokens: int = 16):
    """Seeded query, key and value tensors (rows, 2 heads, tokens, 8) for an editor's ``attend``."""
    return (torch.randn(rows, 2, tokens, 8, generator=torch.Generator().manual_seed(n)) for n in range(3))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny SD pipeline (seed 1) saved as a diffusers folder, for what takes a model by folder (CLI, bench)."""
    from invedit.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_pipeline(seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A shapes-world dataset in PIE-Bench's format: one edit of each kind (5 entries), seed 3."""
    from invedit.toy.bench import write_toy_bench

    return write_toy_bench(tmp_path_factory.mktemp("data") / "toy", 1, seed=3, size=64)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (what the reference outputs were recorded with)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def denoise_rows(model, monkeypatch) -> list[int]:
    """Record the rows of every denoiser call of ``model`` (an `invedit.backbones.Backbone`): the list fills as the
    calls happen."""
    calls: list[int] = []
    original = model.denoise

    def spy(x, t, emb, stats, **kw):
        calls.append(len(x))
        return original(x, t, emb, stats, **kw)

    monkeypatch.setattr(model, "denoise", spy)
    return calls
