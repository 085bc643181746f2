"""Train the embedded flow model: an SD3-shaped rectified-flow transformer (MM-DiT) on the shapes world.

``python -m training.shapes_flow [--out DIR] [--minutes M] [--resume] [--stage base|finetune] [--export] [--smoke]``

The base stage (training/shapes_flow/train.py) trains from the seed; the fine-tune stage
(training/shapes_flow/finetune.py) continues an exported model with the flow and grounding losses; ``--export``
writes the EMA weights as a `StableDiffusion3Pipeline` folder (training/shapes_flow/export.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from training.shapes_flow.config import DEFAULT_RUN_DIR, SMOKE, WEIGHTS_DIR, FlowTrainConfig
from training.shapes_flow.export import export
from training.shapes_flow.finetune import finetune
from training.shapes_flow.train import train
from training.shapes_unet.common import PRECISION, ThreadGovernor

_KINDS = {int: "an integer", float: "a number", str: "a string"}


def overrides(items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` items as typed `FlowTrainConfig` fields (each value parsed as the field's default is typed)."""
    defaults = dataclasses.asdict(FlowTrainConfig())
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in defaults:
            raise ValueError(f"--set {item}: expected FIELD=VALUE with FIELD one of {', '.join(defaults)}")
        kind = type(defaults[name])
        try:
            out[name] = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
        except ValueError:
            raise ValueError(f"--set {item}: {name} takes {_KINDS.get(kind, kind.__name__)}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.shapes_flow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_RUN_DIR, help="run directory (checkpoints, logs)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock bound for this invocation")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    ap.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                    help="train (--no-train: only export)")
    ap.add_argument("--export", action="store_true", help="export the EMA pipeline after training")
    ap.add_argument("--export-dir", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--smoke", action="store_true", help="tiny configuration, for checking the script")
    ap.add_argument("--stage", choices=("base", "finetune"), default="base",
                    help="base: train from the seed; finetune: continue --init's transformer with the flow + "
                         "grounding loss (training/shapes_flow/finetune.py)")
    ap.add_argument("--init", type=Path, default=WEIGHTS_DIR,
                    help="exported model folder the fine-tune starts from (default: the shipped one)")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="finetune: stop (and checkpoint) once this many steps are done, short of ft_steps")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                    help="override one FlowTrainConfig field (repeatable), e.g. --set ft_steps=8000; recorded in "
                         "the run's config.json and the weights' training.json")
    ap.add_argument("--max-threads", type=int, default=None,
                    help="at most this many intra-op threads (default: the config's max_threads)")
    args = ap.parse_args(argv)
    PRECISION["value"] = "fp32"  # the shared VAE's latent pass (training.shapes_unet.vae.latent_stats)
    try:
        cfg = FlowTrainConfig(**{**(SMOKE if args.smoke else {}), **overrides(args.overrides)})
    except ValueError as exc:
        ap.error(str(exc))
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    ckpt = "finetune.ckpt.pt" if args.stage == "finetune" else "flow.ckpt.pt"
    if args.train:
        if (run_dir / ckpt).exists() and not args.resume:
            ap.error(f"{run_dir} has a checkpoint: pass --resume to continue, or choose another --out")
        if cfg_path.exists() and FlowTrainConfig.from_dict(json.loads(cfg_path.read_text())) != cfg:
            ap.error(f"{run_dir} was trained with another configuration ({cfg_path})")
        cfg_path.write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
        deadline = time.time() + (args.minutes * 60 if args.minutes else math.inf)
        gov = ThreadGovernor(min(cfg.max_threads, args.max_threads or cfg.max_threads))
        if args.stage == "finetune":
            done = finetune(cfg, run_dir, args.init, deadline, gov, stop_at=args.stop_at)
        else:
            done = train(cfg, run_dir, deadline, gov)
        print("training finished" if done else "stopped (time bound); continue with --resume", file=sys.stderr)
    if args.export:
        if not any((run_dir / name).exists() for name in ("flow.ckpt.pt", "finetune.ckpt.pt")):
            print("nothing to export yet (no checkpoint)", file=sys.stderr)
            return 1
        print(f"exported to {export(run_dir, args.export_dir)}", file=sys.stderr)
    return 0
