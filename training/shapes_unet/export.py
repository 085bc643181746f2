"""Export a run's EMA weights as the fp16 `StableDiffusionPipeline` folder that ships (with training.json and
the editor settings recommended for it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from invedit.models import MODEL_SETTINGS_FILE
from invedit.toy import scenes
from training.shapes_unet.config import DEFAULT_RUN_DIR, EDITOR_DEFAULTS, WEIGHTS_DIR, TrainConfig
from training.shapes_unet.models import build_scheduler, build_text_encoder, build_unet


def export(run_dir: str | Path = DEFAULT_RUN_DIR, out_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Write the EMA weights of a run as a fp16 `StableDiffusionPipeline` folder; returns it."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ground = run_dir / "ground.ckpt.pt"
    ck = torch.load(ground if ground.exists() else run_dir / "unet.ckpt.pt", weights_only=False, map_location="cpu")
    cfg = TrainConfig.from_dict(ck["config"])
    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    unet, text = build_unet(cfg), build_text_encoder(cfg, tokenizer)
    unet.load_state_dict(ck["ema_unet"])
    text.load_state_dict(ck["ema_text"])
    tuned = (run_dir / "vae_decoder" / "config.json").exists()
    vae = AutoencoderKL.from_pretrained(run_dir / ("vae_decoder" if tuned else "vae"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    config, decoder_steps = dict(ck["config"]), 0
    if tuned:  # the decoder stage's own settings (the UNet checkpoint predates them)
        dck = torch.load(run_dir / "decoder.ckpt.pt", weights_only=False, map_location="cpu")
        config.update({k: v for k, v in dck["config"].items() if k.startswith("decoder_")})
        decoder_steps = dck["step"]
    info = {"unet_steps_done": ck["step"], "grounding_steps_done": ck.get("ground_step", 0),
            "decoder_steps_done": decoder_steps, "config": config,
            "held_out": [list(h) for h in scenes.HELD_OUT], "vocabulary": list(scenes.VOCABULARY)}
    (out_dir / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    (out_dir / MODEL_SETTINGS_FILE).write_text(json.dumps({"editor_defaults": EDITOR_DEFAULTS}, indent=1) + "\n")
    return out_dir

