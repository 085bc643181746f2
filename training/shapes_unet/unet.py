"""The UNet stage: train the UNet jointly with the text encoder on the frozen VAE's latents, with DDIM previews."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from invedit.sampling import DDIMSchedule, RunStats, ddim_move, ddim_step, guided
from training.shapes_unet.common import (
    StepLog,
    ThreadGovernor,
    _autocast,
    _log,
    _lr,
    _min_snr_loss,
    _optimisation,
    _optimiser_step,
    _save_atomic,
)
from training.shapes_unet.config import TrainConfig
from training.shapes_unet.data import save_grid, scene_cache, to_uint8
from training.shapes_unet.models import (
    _classic_attention,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    encode_prompts,
)
from training.shapes_unet.vae import cached_latent_stats

PREVIEW_PROMPTS = (
    "a red circle on a gray background", "a blue square on a striped background",
    "a green triangle on a dotted background", "a yellow star on a checkered background",
    "a purple circle and a orange square on a gray background", "a red star and a blue triangle on a dotted background",
    "a purple star on a gray background", "a orange triangle on a dotted background",  # held out
)


@torch.no_grad()

def unet_eps(unet, latents: torch.Tensor, t: int, embeddings: torch.Tensor, stats: RunStats) -> torch.Tensor:
    """One call of a bare UNet (in its dtype, float32 out), counted in ``stats``."""
    out = unet(latents.to(unet.dtype), t, encoder_hidden_states=embeddings.to(unet.dtype)).sample
    stats.nfe += latents.shape[0]
    stats.unet_calls += 1
    return out.float()

def sample(unet, text_encoder, vae, tokenizer, prompts: list[str], steps: int = 25, guidance: float = 7.5,
           seed: int = 0) -> np.ndarray:
    """DDIM + classifier-free guidance (`invedit.sampling`'s math, batched, under `_autocast`) -> uint8 images."""
    schedule = DDIMSchedule.from_pipe(SimpleNamespace(scheduler=build_scheduler()), steps)  # reads only .scheduler
    ids = encode_prompts(tokenizer, list(prompts) + [""] * len(prompts))
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    lat = torch.randn(len(prompts), 4, size, size, generator=g)
    stats = RunStats()
    with _autocast():
        emb = text_encoder(ids)[0]
        for i, t in enumerate(schedule.timesteps):
            cond, uncond = unet_eps(unet, torch.cat([lat, lat]), t, emb, stats).chunk(2)
            lat = ddim_step(schedule, guided({"cond": cond, "uncond": uncond}, guidance), i, lat)
        img = vae.decode(lat / vae.config.scaling_factor).sample
    return to_uint8(img)


def color_accuracy(images: np.ndarray, prompts: list[str]) -> float:
    """Fraction of single-object prompts whose image's dominant saturated colour is the prompted one."""
    from invedit.toy.metrics import majority_color

    single = [(im, p) for im, p in zip(images, prompts) if " and " not in p]
    return sum(majority_color(im) == p.split()[1] for im, p in single) / max(len(single), 1)


def train_unet(cfg: TrainConfig, run_dir: Path, deadline: float, gov: ThreadGovernor) -> bool:
    """Train (or continue) UNet + text encoder; returns True once ``unet_steps`` are done."""
    from diffusers import AutoencoderKL

    ckpt_path = run_dir / "unet.ckpt.pt"
    vae = AutoencoderKL.from_pretrained(run_dir / "vae").eval().requires_grad_(False)
    images, captions = scene_cache(cfg, run_dir)
    lat_mean, lat_std = cached_latent_stats(vae, images, run_dir)
    del images
    scale = vae.config.scaling_factor
    tokenizer = build_tokenizer(run_dir / "tokenizer")
    uniq = sorted(set(captions))
    uniq_ids = encode_prompts(tokenizer, uniq)
    where = {c: i for i, c in enumerate(uniq)}
    cap_idx = np.array([where[c] for c in captions])
    empty_ids = encode_prompts(tokenizer, [""])[0]

    torch.manual_seed(cfg.seed + 20)  # the initial weights too
    unet, text = build_unet(cfg), build_text_encoder(cfg, tokenizer)
    _classic_attention(unet)
    ema_unet, ema_text = build_unet(cfg), build_text_encoder(cfg, tokenizer)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text.state_dict())
    _classic_attention(ema_unet)
    params, ema_params, opt = _optimisation(unet, text, ema_unet, ema_text, cfg.unet_lr)
    sched = build_scheduler()
    alphas = sched.alphas_cumprod.float()
    rng = np.random.default_rng(cfg.seed + 20)
    torch.manual_seed(cfg.seed + 20)
    step = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        text.load_state_dict(ck["text"])
        ema_unet.load_state_dict(ck["ema_unet"])
        ema_text.load_state_dict(ck["ema_text"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        rng.bit_generator.state = ck["np_rng"]
        torch.set_rng_state(ck["torch_rng"])
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    n_text = sum(p.numel() for p in text.parameters()) / 1e6
    print(f"UNet {n_unet:.2f} M, text {n_text:.2f} M params, latent scale {scale:.4f}, step {step}/{cfg.unet_steps}",
          file=sys.stderr, flush=True)

    def checkpoint() -> None:
        _save_atomic({"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema_unet.state_dict(),
                      "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "step": step,
                      "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                      "config": dataclasses.asdict(cfg)}, ckpt_path)

    def preview() -> None:
        imgs = sample(ema_unet, ema_text, vae, tokenizer, list(PREVIEW_PROMPTS), steps=cfg.preview_steps, seed=step)
        (run_dir / "previews").mkdir(exist_ok=True)
        save_grid(imgs, run_dir / "previews" / f"unet_{step:06d}.png")
        _log(log_path, {"step": step, "preview_color_acc": color_accuracy(imgs, list(PREVIEW_PROMPTS))})

    log_path = run_dir / "log_unet.jsonl"
    log = StepLog(log_path, cfg.unet_steps, step, "unet", cfg.log_every, cfg.ckpt_minutes)
    unet.train()
    text.train()
    while step < cfg.unet_steps and time.time() < deadline:
        threads = gov.update()
        lr = _lr(step, cfg.unet_lr, cfg.unet_warmup, cfg.unet_steps, cfg.unet_decay_from)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(len(lat_mean), size=cfg.unet_batch)
        mean, std = torch.from_numpy(lat_mean[idx]).float(), torch.from_numpy(lat_std[idx]).float()
        x0 = (mean + std * torch.randn_like(std)) * scale
        ids = uniq_ids[cap_idx[idx]]
        drop = torch.from_numpy(rng.random(cfg.unet_batch) < cfg.caption_dropout)
        ids = torch.where(drop[:, None], empty_ids[None], ids)
        t = torch.from_numpy(rng.integers(0, 1000, size=cfg.unet_batch))
        noise = torch.randn_like(x0)
        xt = ddim_move(x0, noise, alphas[t].view(-1, 1, 1, 1))  # z_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
        with _autocast():
            emb = text(ids)[0]
            pred = unet(xt, t, emb).sample.float()
        loss = _min_snr_loss(pred, noise, alphas[t], cfg.min_snr_gamma)
        step += 1
        _optimiser_step(opt, params, ema_params, loss, min(cfg.ema_decay, (1 + step) / (10 + step)))
        log.add(step, {"loss": loss.item()}, lr=lr, threads=threads)
        if log.checkpoint_due():
            checkpoint()
            preview()
    log.close()
    checkpoint()
    preview()
    return step >= cfg.unet_steps

