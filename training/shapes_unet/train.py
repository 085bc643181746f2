"""Train the embedded shapes model: a small Stable-Diffusion-shaped pipeline on the procedural shapes world.

``python -m training.shapes_unet [--out DIR] [--stage vae|decoder|unet|ground|all|none] [--minutes M]
[--resume] [--export]``

Stage ``vae`` trains an `AutoencoderKL` (4x down, 4 latent channels) on random crops and sets its
``scaling_factor``; stage ``decoder`` fine-tunes its decoder on full-size images with the encoder (the latent
space) frozen; stage ``unet`` trains a `UNet2DConditionModel` jointly with a from-scratch
`CLIPTextModel` (word-level `CLIPTokenizer`) on the frozen VAE's latents, with EMA, caption dropout and
min-SNR loss weighting; stage ``ground`` fine-tunes the text encoder and the UNet's cross-attention query/key
projections (or everything: `TrainConfig.ground_params`) with the denoising loss plus a token-grounding loss (each
caption word's cross-attention pulled into its object or the background; optionally weighted by ᾱ_t). Stages
checkpoint to the run dir every few minutes and continue with ``--resume``; ``--export`` writes the EMA
weights as a fp16 `StableDiffusionPipeline` folder (with the editor settings recommended for it in
``invedit.json``).
Everything is driven by `TrainConfig` and its seed (the shipped weights record their config and step).
The code lives in `training.shapes_unet`, one module per stage; this module is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from invedit.models import cpu_has_fast_bf16
from training.shapes_unet.common import PRECISION, ThreadGovernor, _optimisation
from training.shapes_unet.config import DEFAULT_RUN_DIR, EDITOR_DEFAULTS, SMOKE, WEIGHTS_DIR, TrainConfig
from training.shapes_unet.export import export
from training.shapes_unet.grounding import (
    _grounding_selector,
    grounding_loss,
    grounding_targets,
    record_cross_attention,
    train_grounding,
)
from training.shapes_unet.models import build_text_encoder, build_unet
from training.shapes_unet.unet import train_unet
from training.shapes_unet.vae import train_decoder, train_vae

# the CLI's names, and those tests and benchmarks import from here
__all__ = ["DEFAULT_RUN_DIR", "EDITOR_DEFAULTS", "PRECISION", "SMOKE", "WEIGHTS_DIR", "TrainConfig",
           "_grounding_selector", "_optimisation", "build_text_encoder", "build_unet", "export", "grounding_loss",
           "grounding_targets", "main", "record_cross_attention"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.shapes_unet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_RUN_DIR, help="run directory (checkpoints, logs)")
    ap.add_argument("--stage", choices=("vae", "decoder", "unet", "ground", "all", "none"), default="all")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock bound for this invocation")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoints")
    ap.add_argument("--export", action="store_true", help="export the EMA pipeline after the stages")
    ap.add_argument("--export-dir", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--smoke", action="store_true", help="tiny configuration, for checking the script")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="bf16 autocast or fp32 (auto: bf16 where the CPU has native bf16)")
    args = ap.parse_args(argv)
    PRECISION["value"] = args.precision if args.precision != "auto" else ("bf16" if cpu_has_fast_bf16() else "fp32")
    print(f"precision: {PRECISION['value']}", file=sys.stderr)

    cfg = TrainConfig(**SMOKE) if args.smoke else TrainConfig()
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    if args.stage != "none":
        has_ckpt = any((run_dir / n).exists() for n in ("vae.ckpt.pt", "unet.ckpt.pt"))
        if has_ckpt and not args.resume:
            ap.error(f"{run_dir} has checkpoints: pass --resume to continue, or choose another --out")
        if cfg_path.exists() and TrainConfig.from_dict(json.loads(cfg_path.read_text())) != cfg:
            ap.error(f"{run_dir} was trained with another configuration ({cfg_path})")
        cfg_path.write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
    deadline = time.time() + (args.minutes * 60 if args.minutes else math.inf)
    gov = ThreadGovernor(cfg.max_threads)
    torch.set_float32_matmul_precision("high")
    done = True
    if args.stage in ("vae", "all"):
        done = train_vae(cfg, run_dir, deadline, gov)
    if done and args.stage in ("decoder", "all"):
        done = train_decoder(cfg, run_dir, deadline, gov)
    if done and args.stage in ("unet", "all"):
        done = train_unet(cfg, run_dir, deadline, gov)
    if done and args.stage in ("ground", "all"):
        done = train_grounding(cfg, run_dir, deadline, gov)
    print("training finished" if done else "stopped (time bound); continue with --resume", file=sys.stderr)
    if args.export and (run_dir / "unet.ckpt.pt").exists():
        print(f"exported to {export(run_dir, args.export_dir)}", file=sys.stderr)
    elif args.export:
        print("nothing to export yet (no UNet checkpoint)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
