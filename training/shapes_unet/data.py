"""Training data: the rendered scene cache, the fixed evaluation scenes, and image <-> tensor conversion."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from invedit.toy import scenes
from training.shapes_unet.config import TrainConfig


def scene_cache(cfg: TrainConfig, run_dir: Path) -> tuple[np.ndarray, list[str]]:
    """``n_scenes`` training scenes (held-out combinations excluded): uint8 NxHxWx3 images and captions.

    Rendered once from ``cfg.seed`` and stored in the run dir.
    """
    img_path = run_dir / f"scenes-{cfg.seed}-{cfg.n_scenes}-{cfg.size}.npy"
    cap_path = img_path.with_suffix(".txt")
    if img_path.exists() and cap_path.exists():
        return np.load(img_path), cap_path.read_text().splitlines()
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed)
    images = np.empty((cfg.n_scenes, cfg.size, cfg.size, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(cfg.n_scenes), desc="render scenes", mininterval=1 if sys.stderr.isatty() else 30):
        s = scenes.make_scene(rng, size=cfg.size, include_held_out=False)
        images[i] = s.image
        captions.append(s.caption)
    np.save(img_path.with_suffix(".tmp.npy"), images)
    os.replace(img_path.with_suffix(".tmp.npy"), img_path)
    cap_path.write_text("\n".join(captions) + "\n")
    return images, captions


def eval_scenes(cfg: TrainConfig) -> tuple[np.ndarray, list[str]]:
    """A fixed evaluation set of ``cfg.eval_scenes`` scenes (held-out combinations included)."""
    rng = np.random.default_rng(cfg.seed + 1)
    ss = [scenes.make_scene(rng, size=cfg.size) for _ in range(cfg.eval_scenes)]
    return np.stack([s.image for s in ss]), [s.caption for s in ss]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWx3 -> float Nx3xHxW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float Nx3xHxW in [-1, 1] -> uint8 NxHxWx3."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, path: Path, cols: int = 8) -> None:
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    Image.fromarray(grid).resize((cols * w * 2, rows * h * 2), Image.NEAREST).save(path)
