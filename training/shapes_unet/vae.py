"""The VAE stages: train the `AutoencoderKL` (stage ``vae``), then fine-tune its decoder alone (stage ``decoder``)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.shapes_unet.common import StepLog, ThreadGovernor, _autocast, _log, _lr, _save_atomic
from training.shapes_unet.config import TrainConfig
from training.shapes_unet.data import eval_scenes, save_grid, scene_cache, to_tensor, to_uint8
from training.shapes_unet.models import _classic_attention, build_vae


def _vae_batch(images: np.ndarray, rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    """``batch`` random images, one random ``crop``² window for all, rotated by k·90° and maybe mirrored."""
    idx = rng.integers(len(images), size=batch)
    size = images.shape[1]
    oy, ox = rng.integers(0, size - crop + 1, size=2)
    x = images[idx, oy:oy + crop, ox:ox + crop]
    x = np.rot90(x, k=int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    return to_tensor(np.ascontiguousarray(x))


def vae_loss(vae, x: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE + image-gradient L1 + (tiny) KL."""
    with _autocast():
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample.float()
    l1 = (rec - x).abs().mean()
    mse = F.mse_loss(rec, x)
    edge = ((rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean())
    kl = post.kl().float().mean() / x[0].numel()
    loss = l1 + mse + cfg.vae_edge_weight * edge + cfg.vae_kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "edge": edge.item(), "kl": kl.item()}


@torch.no_grad()
def vae_psnr(vae, images: np.ndarray) -> float:
    """Mean PSNR (dB) of deterministic (posterior-mean) reconstructions."""
    x = to_tensor(images)
    with _autocast():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).mean())


def cached_latent_stats(vae, images: np.ndarray, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """`latent_stats` of a run's scene cache, computed once and kept in the run dir (``latents.npz``)."""
    path = run_dir / "latents.npz"
    if path.exists():
        z = np.load(path)
        return z["mean"], z["std"]
    mean, std = latent_stats(vae, images)
    np.savez(run_dir / "latents.tmp.npz", mean=mean, std=std)
    os.replace(run_dir / "latents.tmp.npz", path)
    return mean, std


@torch.no_grad()
def latent_stats(vae, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std (fp16, Nx4xhxw) of every image."""
    means, stds = [], []
    from tqdm import tqdm

    for i in tqdm(range(0, len(images), batch), desc="encode latents", mininterval=30):
        with _autocast():
            post = vae.encode(to_tensor(images[i:i + batch])).latent_dist
        means.append(post.mean.float().half().numpy())
        stds.append(post.std.float().half().numpy())
    return np.concatenate(means), np.concatenate(stds)


def _fit_autoencoder(vae, trained: torch.nn.Module, params: list[torch.nn.Parameter], *, cfg: TrainConfig,
                     images: np.ndarray, ev_images: np.ndarray, lr: float, steps: int, batch: int, crop: int,
                     seed: int, ckpt_path: Path, log_path: Path, desc: str, deadline: float, gov: ThreadGovernor,
                     max_seconds: float = math.inf) -> tuple[int, bool]:
    """The VAE stages' loop: AdamW on ``params`` (``trained`` is the module put in train mode) with `vae_loss`,
    resumable from ``ckpt_path``, logging to ``log_path``, eval PSNR at each checkpoint. Returns (step, finished)."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    step, spent = 0, 0.0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, spent = ck["step"], ck["spent"]
        rng.bit_generator.state = ck["np_rng"]
        torch.set_rng_state(ck["torch_rng"])
    print(f"{desc}: step {step}/{steps}", file=sys.stderr, flush=True)

    def checkpoint() -> None:
        _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "spent": spent,
                      "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                      "config": dataclasses.asdict(cfg)}, ckpt_path)

    log = StepLog(log_path, steps, step, desc, cfg.log_every, cfg.ckpt_minutes)
    trained.train()
    while step < steps and spent < max_seconds and time.time() < deadline:
        t0 = time.time()
        threads = gov.update()
        for g in opt.param_groups:
            g["lr"] = _lr(step, lr, cfg.vae_warmup, steps, 0.0)
        loss, parts = vae_loss(vae, _vae_batch(images, rng, batch, crop), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        spent += time.time() - t0
        log.add(step, {"loss": loss.item()}, **parts, lr=opt.param_groups[0]["lr"], threads=threads,
                spent_min=spent / 60)
        if log.checkpoint_due():
            vae.eval()
            _log(log_path, {"step": step, "eval_psnr": vae_psnr(vae, ev_images)})
            trained.train()
            checkpoint()
    log.close()
    checkpoint()
    vae.eval()
    return step, step >= steps or spent >= max_seconds


def train_vae(cfg: TrainConfig, run_dir: Path, deadline: float, gov: ThreadGovernor) -> bool:
    """Train (or continue) the VAE; returns True once it is finished (saved to ``run_dir/vae``)."""
    out = run_dir / "vae"
    if (out / "config.json").exists():
        return True
    images, _ = scene_cache(cfg, run_dir)
    ev_images, _ = eval_scenes(cfg)
    torch.manual_seed(cfg.seed + 10)  # the initial weights too
    vae = build_vae(cfg)
    _classic_attention(vae)
    print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params", file=sys.stderr, flush=True)
    log_path = run_dir / "log_vae.jsonl"
    step, finished = _fit_autoencoder(
        vae, vae, list(vae.parameters()), cfg=cfg, images=images, ev_images=ev_images, lr=cfg.vae_lr,
        steps=cfg.vae_steps, batch=cfg.vae_batch, crop=cfg.vae_crop, seed=cfg.seed + 10,
        ckpt_path=run_dir / "vae.ckpt.pt", log_path=log_path, desc="vae", deadline=deadline, gov=gov,
        max_seconds=cfg.vae_max_minutes * 60)
    if not finished:
        return False  # out of time for this invocation; --resume continues
    psnr = vae_psnr(vae, ev_images)
    mean, _ = latent_stats(vae, images[:2048])
    scale = float(1.0 / mean.astype(np.float32).std())
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(out)
    _log(log_path, {"step": step, "eval_psnr": psnr, "scaling_factor": scale, "done": True})
    print(f"VAE done at step {step}: PSNR {psnr:.2f} dB, scaling_factor {scale:.4f}", file=sys.stderr, flush=True)
    with torch.no_grad(), _autocast():
        x = to_tensor(ev_images[:16])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    save_grid(np.concatenate([ev_images[:16], to_uint8(rec)]), run_dir / "vae_recon.png")
    return True


def train_decoder(cfg: TrainConfig, run_dir: Path, deadline: float, gov: ThreadGovernor) -> bool:
    """Fine-tune the finished VAE's decoder with its encoder frozen; saves ``run_dir/vae_decoder`` when done.

    The latent space (encoder, ``quant_conv``, scaling factor) is untouched, so the UNet trained on ``run_dir/vae``
    latents stays valid; export prefers this VAE. Full-size images (the decoder sees whole scenes, as at inference).
    """
    from diffusers import AutoencoderKL

    out = run_dir / "vae_decoder"
    if (out / "config.json").exists():
        return True
    images, _ = scene_cache(cfg, run_dir)
    ev_images, _ = eval_scenes(cfg)
    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    _classic_attention(vae)
    start_psnr = vae_psnr(vae.eval(), ev_images)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    print(f"decoder fine-tune from PSNR {start_psnr:.2f} dB", file=sys.stderr, flush=True)
    log_path = run_dir / "log_decoder.jsonl"
    # the KL term of vae_loss is a constant here (encoder frozen)
    step, finished = _fit_autoencoder(
        vae, vae.decoder, trained, cfg=cfg, images=images, ev_images=ev_images, lr=cfg.decoder_lr,
        steps=cfg.decoder_steps, batch=cfg.decoder_batch, crop=cfg.size, seed=cfg.seed + 40,
        ckpt_path=run_dir / "decoder.ckpt.pt", log_path=log_path, desc="decoder", deadline=deadline, gov=gov)
    if not finished:
        return False
    psnr = vae_psnr(vae, ev_images)
    vae.save_pretrained(out)
    _log(log_path, {"step": step, "eval_psnr": psnr, "start_psnr": start_psnr, "done": True})
    print(f"decoder done at step {step}: PSNR {start_psnr:.2f} -> {psnr:.2f} dB", file=sys.stderr, flush=True)
    return True
