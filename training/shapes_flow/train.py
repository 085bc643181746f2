"""The embedded flow model's base training: an SD3-shaped rectified-flow transformer (MM-DiT) on the shapes world
(its command line: training/shapes_flow/cli.py).

The VAE, word tokenizer and text encoder are the embedded UNet model's, frozen (the text encoder gains an identity
projection and fills both of SD3's CLIP slots; there is no T5). Only an `SD3Transformer2DModel` is trained, with the
rectified-flow loss of SD3 (Esser et al. 2024): x_σ = (1−σ)·x₀ + σ·ε, predicting the velocity ε − x₀, σ drawn
logit-normal and shifted as the scheduler shifts its sigmas; EMA weights, 10% caption dropout. It checkpoints to the
run dir every few minutes and continues with ``--resume``; ``--export`` writes the EMA weights as a fp16
`StableDiffusion3Pipeline` folder.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from invedit.sampling import guided
from training.shapes_flow.config import (
    UNET_MODEL_DIR,
    FlowTrainConfig,
)
from training.shapes_flow.models import (
    build_transformer,
    encode_captions,
    flow_schedule,
    load_shared,
    shifted_sigma,
)
from training.shapes_unet.common import StepLog, ThreadGovernor, _log, _lr, _optimiser_step, _save_atomic
from training.shapes_unet.data import save_grid, scene_cache, to_uint8
from training.shapes_unet.unet import PREVIEW_PROMPTS, color_accuracy
from training.shapes_unet.vae import cached_latent_stats


def latent_normalisation(mean: np.ndarray, std: np.ndarray, seed: int) -> tuple[float, float]:
    """``(shift_factor, scaling_factor)`` that make the sampled latents zero-mean, unit-variance (as SD3's VAE
    config normalises its latents: ``(z − shift) × scale``)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(mean), size=min(len(mean), 4096), replace=False)
    z = mean[idx].astype(np.float32) + std[idx].astype(np.float32) * rng.standard_normal(mean[idx].shape)
    shift = float(z.mean())
    return shift, float(1.0 / (z - shift).std())


@torch.no_grad()
def sample(model, vae, hidden: torch.Tensor, pooled: torch.Tensor, empty: tuple[torch.Tensor, torch.Tensor],
           norm: tuple[float, float], cfg: FlowTrainConfig, steps: int, guidance: float = 5.0,
           seed: int = 0) -> np.ndarray:
    """Euler sampling with classifier-free guidance on the scheduler's shifted sigmas (invedit's `FlowSchedule` and
    `guided`, as an edit samples) -> uint8 images."""
    side = cfg.size // 4
    schedule = flow_schedule(cfg, steps)
    n = hidden.shape[0]
    x = torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(seed))
    h = torch.cat([hidden, empty[0].expand(n, -1, -1)])
    p = torch.cat([pooled, empty[1].expand(n, -1)])
    for i in range(steps):
        t = torch.full((2 * n,), schedule.timesteps[i])
        v = model(hidden_states=torch.cat([x, x]), timestep=t, encoder_hidden_states=h, pooled_projections=p).sample
        cond, uncond = v.chunk(2)
        x = schedule.step(guided({"cond": cond, "uncond": uncond}, guidance), i, x)
    shift, scale = norm
    return to_uint8(vae.decode(x / scale + shift).sample)


def train(cfg: FlowTrainConfig, run_dir: Path, deadline: float, gov: ThreadGovernor,
          unet_dir: Path = UNET_MODEL_DIR) -> bool:
    """Train (or continue) the transformer; returns True once ``cfg.steps`` are done."""
    ckpt_path = run_dir / "flow.ckpt.pt"
    vae, tokenizer, text = load_shared(unet_dir, cfg)
    images, captions = scene_cache(cfg, run_dir)
    lat_mean, lat_std = cached_latent_stats(vae, images, run_dir)
    del images
    shift, scale = latent_normalisation(lat_mean, lat_std, cfg.seed)
    uniq = sorted(set(captions))
    where = {c: i for i, c in enumerate(uniq)}
    cap_idx = np.array([where[c] for c in captions])
    hidden, pooled = encode_captions(tokenizer, text, uniq + [""], cfg)  # the empty caption is the last row
    empty_row = len(uniq)
    prev_hidden, prev_pooled = encode_captions(tokenizer, text, list(PREVIEW_PROMPTS), cfg)

    torch.manual_seed(cfg.seed + 30)  # the initial weights too
    model = build_transformer(cfg, text.config.hidden_size)
    ema = build_transformer(cfg, text.config.hidden_size)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed + 30)
    step = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        rng.bit_generator.state = ck["np_rng"]
        torch.set_rng_state(ck["torch_rng"])
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"MM-DiT {n_params:.2f} M params, latent shift {shift:.4f} scale {scale:.4f}, step {step}/{cfg.steps}",
          file=sys.stderr, flush=True)

    def checkpoint() -> None:
        _save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                      "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                      "latent_shift": shift, "latent_scale": scale, "config": dataclasses.asdict(cfg)}, ckpt_path)

    log_path = run_dir / "log_flow.jsonl"

    def preview() -> None:
        imgs = sample(ema, vae, prev_hidden, prev_pooled, (hidden[empty_row:], pooled[empty_row:]), (shift, scale),
                      cfg, cfg.preview_steps, seed=step)
        (run_dir / "previews").mkdir(exist_ok=True)
        save_grid(imgs, run_dir / "previews" / f"flow_{step:06d}.png")
        _log(log_path, {"step": step, "preview_color_acc": color_accuracy(imgs, list(PREVIEW_PROMPTS))})

    log = StepLog(log_path, cfg.steps, step, "flow", cfg.log_every, cfg.ckpt_minutes)
    model.train()
    while step < cfg.steps and time.time() < deadline:
        threads = gov.update()
        lr = _lr(step, cfg.lr, cfg.warmup, cfg.steps, cfg.decay_from)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(len(lat_mean), size=cfg.batch)
        mean, std = torch.from_numpy(lat_mean[idx]).float(), torch.from_numpy(lat_std[idx]).float()
        x0 = (mean + std * torch.randn_like(std) - shift) * scale
        rows = np.where(rng.random(cfg.batch) < cfg.caption_dropout, empty_row, cap_idx[idx])
        rows = torch.from_numpy(rows)
        u = torch.from_numpy(rng.normal(cfg.logit_mean, cfg.logit_std, size=cfg.batch)).float()
        sigma = shifted_sigma(torch.sigmoid(u), cfg.shift)
        noise = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = model(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=hidden[rows],
                     pooled_projections=pooled[rows]).sample
        loss = (pred - (noise - x0)).pow(2).mean()
        step += 1
        _optimiser_step(opt, params, ema_params, loss, min(cfg.ema_decay, (1 + step) / (10 + step)))
        log.add(step, {"loss": loss.item()}, lr=lr, threads=threads)
        if log.checkpoint_due():
            checkpoint()
            preview()
    log.close()
    checkpoint()
    preview()
    return step >= cfg.steps
