"""The grounding stage: fine-tune with the denoising loss plus a loss pulling each caption word's cross-attention
into its object (or the background), and the cross-attention recorder that loss reads."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from invedit.sampling import ddim_move
from invedit.toy import scenes
from training.shapes_unet.common import (
    StepLog,
    ThreadGovernor,
    _autocast,
    _min_snr_loss,
    _optimisation,
    _optimiser_step,
    _save_atomic,
)
from training.shapes_unet.config import TrainConfig
from training.shapes_unet.data import to_tensor
from training.shapes_unet.models import build_scheduler, build_text_encoder, build_tokenizer, build_unet, encode_prompts


class _CrossAttentionRecorder:
    """Classic cross-attention that also keeps its probabilities (batch·heads, queries, 77) for the loss."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        residual = hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)
        self.store.append(probs)
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def record_cross_attention(unet, store: list[torch.Tensor]) -> None:
    """Classic attention everywhere; cross-attention layers also append their probabilities to ``store``."""
    from diffusers.models.attention_processor import AttnProcessor

    recorder = _CrossAttentionRecorder(store)
    unet.set_attn_processor({name: recorder if name.endswith("attn2.processor") else AttnProcessor()
                             for name in unet.attn_processors})


def grounding_targets(scene: scenes.Scene, grid: int) -> list[tuple[int, np.ndarray]]:
    """(token index, mask on a ``grid``² latent grid) for every word that names a region of ``scene``.

    Caption "a C S and a C S on a B background": colour and shape words → their object's mask; the background
    word and "background" → the area outside all objects. Token index = word index + 1 (BOS first).
    """
    def down(mask: np.ndarray) -> np.ndarray:
        f = mask.shape[0] // grid
        return mask.reshape(grid, f, grid, f).mean(axis=(1, 3)).astype(np.float32)

    targets = []
    for k, mask in enumerate(scene.masks):
        m = down(mask)
        targets += [(4 * k + 2, m), (4 * k + 3, m)]
    n = len(scene.objects)
    background = down(~np.any(scene.masks, axis=0))
    targets += [(4 * n + 2, background), (4 * n + 3, background)]
    return targets


def grounding_loss(store: list[torch.Tensor], batch: int, token_ids: torch.Tensor,
                   masks: dict[int, torch.Tensor], valid: torch.Tensor,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 − (share of each word's cross-attention mass inside its region), averaged over words and layers.

    ``token_ids`` (B, K), ``masks[grid]`` (B, K, grid²), ``valid`` (B, K), ``sample_weight`` (B,) or None (all
    1). Heads are averaged first (the maps P2P and LocalBlend read).
    """
    weight = valid if sample_weight is None else valid * sample_weight[:, None].to(valid)
    losses = []
    for probs in store:
        n = probs.shape[1]
        grid = int(round(n**0.5))
        if grid not in masks:
            continue
        p = probs.float().view(batch, -1, n, probs.shape[-1]).mean(1)  # (B, N, 77)
        sel = p.gather(2, token_ids[:, None, :].expand(-1, n, -1))  # (B, N, K)
        sel = sel / sel.sum(1, keepdim=True).clamp_min(1e-8)
        inside = (sel * masks[grid].transpose(1, 2)).sum(1)  # (B, K)
        losses.append(((1 - inside) * weight).sum() / valid.sum().clamp_min(1))
    return torch.stack(losses).mean()


def _grounding_selector(which: str) -> Callable[[str], bool] | None:
    """Parameter filter of the grounding fine-tune (`TrainConfig.ground_params`)."""
    if which == "all":
        return None
    if which == "cross_attention":
        return lambda name: name.startswith("text.") or ".attn2.to_q." in name or ".attn2.to_k." in name
    raise ValueError(f"unknown ground_params {which!r}")


def train_grounding(cfg: TrainConfig, run_dir: Path, deadline: float, gov: ThreadGovernor) -> bool:
    """Fine-tune the trained UNet + text encoder with denoising + token-grounding loss on fresh scenes.

    Starts from the UNet stage's EMA weights; checkpoints to ``ground.ckpt.pt`` (export prefers it).
    """
    from diffusers import AutoencoderKL

    ckpt_path = run_dir / "ground.ckpt.pt"
    vae = AutoencoderKL.from_pretrained(run_dir / "vae").eval().requires_grad_(False)
    scale = vae.config.scaling_factor
    tokenizer = build_tokenizer(run_dir / "tokenizer")
    empty_ids = encode_prompts(tokenizer, [""])[0]
    unet, text = build_unet(cfg), build_text_encoder(cfg, tokenizer)
    ema_unet, ema_text = build_unet(cfg), build_text_encoder(cfg, tokenizer)
    source = ckpt_path if ckpt_path.exists() else run_dir / "unet.ckpt.pt"
    ck = torch.load(source, weights_only=False)
    step = ck["ground_step"] if source == ckpt_path else 0
    for model, key in ((unet, "unet"), (text, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
        model.load_state_dict(ck[key if source == ckpt_path else "ema_" + key.removeprefix("ema_")])
    store: list[torch.Tensor] = []
    record_cross_attention(unet, store)
    params, ema_params, opt = _optimisation(unet, text, ema_unet, ema_text, cfg.ground_lr,
                                            _grounding_selector(cfg.ground_params))
    if source == ckpt_path:
        opt.load_state_dict(ck["opt"])
    alphas = build_scheduler().alphas_cumprod.float()
    rng = np.random.default_rng(cfg.seed + 30 + step)
    torch.manual_seed(cfg.seed + 30 + step)
    latent = cfg.size // 2 ** (len(cfg.vae_channels) - 1)
    grids = [latent // 2**k for k in range(len(cfg.unet_channels) - 1)]  # cross-attention resolutions

    def checkpoint() -> None:
        _save_atomic({"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema_unet.state_dict(),
                      "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "ground_step": step,
                      "step": ck["step"], "config": dataclasses.asdict(cfg)}, ckpt_path)

    log_path = run_dir / "log_ground.jsonl"
    log = StepLog(log_path, cfg.ground_steps, step, "ground", cfg.log_every, cfg.ckpt_minutes)
    unet.train()
    text.train()
    while step < cfg.ground_steps and time.time() < deadline:
        threads = gov.update()
        batch = [scenes.make_scene(rng, size=cfg.size, include_held_out=False) for _ in range(cfg.ground_batch)]
        with torch.no_grad():
            x0 = vae.encode(to_tensor(np.stack([s.image for s in batch]))).latent_dist.sample() * scale
        ids = encode_prompts(tokenizer, [s.caption for s in batch])
        drop = torch.from_numpy(rng.random(cfg.ground_batch) < cfg.caption_dropout)
        ids = torch.where(drop[:, None], empty_ids[None], ids)
        per_scene = {g: [grounding_targets(s, g) for s in batch] for g in grids}
        k_max = max(len(t) for t in per_scene[grids[0]])
        token_ids = torch.zeros(len(batch), k_max, dtype=torch.long)
        valid = torch.zeros(len(batch), k_max)
        masks = {g: torch.zeros(len(batch), k_max, g * g) for g in grids}
        for b in range(len(batch)):
            for j, (tok, _) in enumerate(per_scene[grids[0]][b]):
                token_ids[b, j], valid[b, j] = tok, float(not drop[b])
                for g in grids:
                    masks[g][b, j] = torch.from_numpy(per_scene[g][b][j][1].ravel())
        t = torch.from_numpy(rng.integers(0, 1000, size=len(batch)))
        noise = torch.randn_like(x0)
        xt = ddim_move(x0, noise, alphas[t].view(-1, 1, 1, 1))  # z_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
        store.clear()
        with _autocast():
            pred = unet(xt, t, text(ids)[0]).sample.float()
        denoise = _min_snr_loss(pred, noise, alphas[t], cfg.min_snr_gamma)
        ground = grounding_loss(store, len(batch), token_ids, masks, valid,
                                alphas[t] if cfg.ground_signal_weighted else None)
        step += 1
        _optimiser_step(opt, params, ema_params, denoise + cfg.ground_weight * ground, cfg.ema_decay)
        log.add(step, {"loss": denoise.item(), "ground": ground.item()}, threads=threads)
        if log.checkpoint_due():
            checkpoint()
    log.close()
    checkpoint()
    return step >= cfg.ground_steps
