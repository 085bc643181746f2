"""Export a run's EMA transformer, with the embedded UNet model's VAE, tokenizer and text encoder, as the fp16
`StableDiffusion3Pipeline` folder that ships (with training.json and the settings it is run with in invedit.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from invedit.models import MODEL_SETTINGS_FILE
from invedit.toy import scenes
from training.shapes_flow.config import (
    DEFAULT_RUN_DIR,
    EDIT_GUIDANCE,
    EDIT_STEPS,
    EDITOR_DEFAULTS,
    UNET_MODEL_DIR,
    WEIGHTS_DIR,
    FlowTrainConfig,
)
from training.shapes_flow.models import build_scheduler, build_transformer, load_shared


def export(run_dir: str | Path = DEFAULT_RUN_DIR, out_dir: str | Path = WEIGHTS_DIR,
           unet_dir: Path = UNET_MODEL_DIR) -> Path:
    """Write the EMA weights of a run as a fp16 `StableDiffusion3Pipeline` folder; returns it.

    The VAE's config gains the run's latent ``shift_factor`` / ``scaling_factor`` (SD3 normalises latents as
    ``(z − shift) × scale``); its weights are the UNet model's. No T5: ``text_encoder_3`` is None and the folder's
    invedit.json asks for ``max_sequence_length=0``, the zero-token T5 stand-in the transformer was trained with.
    """
    from diffusers import StableDiffusion3Pipeline

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    finetuned = (run_dir / "finetune.ckpt.pt").exists()  # the fine-tune stage's, when the run has one
    ck = torch.load(run_dir / ("finetune.ckpt.pt" if finetuned else "flow.ckpt.pt"), weights_only=False,
                    map_location="cpu")
    cfg = FlowTrainConfig.from_dict(ck["config"])
    vae, tokenizer, text = load_shared(unet_dir, cfg)
    transformer = build_transformer(cfg, text.config.hidden_size)
    transformer.load_state_dict(ck["ema"])
    vae.register_to_config(shift_factor=ck["latent_shift"], scaling_factor=ck["latent_scale"],
                           _name_or_path="shapes-flow/vae")
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=build_scheduler(cfg), vae=vae,
                                    text_encoder=text, tokenizer=tokenizer, text_encoder_2=text, tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.to(torch.float16)
    if finetuned:  # read before out_dir (which may be the initial model's folder) is replaced
        init = json.loads((Path(ck["init_dir"]) / "training.json").read_text())
        # a fine-tune of a fine-tuned model: the steps of every fine-tune so far, each stage's record nested
        stage = {"steps_done": init["steps_done"],
                 "finetune_steps_done": init.get("finetune_steps_done", 0) + ck["ft_step"],
                 "finetuned_from": {"sha256": ck["init_sha256"], "training": init}}
    else:
        stage = {"steps_done": ck["step"]}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    info = {**stage, "config": ck["config"], "latent_shift": ck["latent_shift"],
            "latent_scale": ck["latent_scale"], "shared_with": "shapes-64 (VAE, tokenizer, text encoder)",
            "held_out": [list(h) for h in scenes.HELD_OUT], "vocabulary": list(scenes.VOCABULARY)}
    (out_dir / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    settings = {"guidance": EDIT_GUIDANCE, "steps": EDIT_STEPS, "editor_defaults": EDITOR_DEFAULTS,
                "call_options": {"max_sequence_length": cfg.t5_tokens}}
    (out_dir / MODEL_SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    return out_dir
