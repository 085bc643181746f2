"""The fine-tune stage of the flow model: continue an exported model's transformer with the flow loss plus a
grounding loss on the joint blocks' image→text attention, on freshly rendered scenes.

An MM-DiT has no cross-attention: its word maps are the rows of the joint attention in which image tokens (queries)
attend to the prompt's tokens (keys), the maps an MM-DiT Prompt-to-Prompt reads. As the UNet model's grounding
stage did for cross-attention (`training.shapes_unet.grounding`), the loss is 1 − the share of each caption word's
map that falls inside its object (colour and shape words) or the background (background words), heads averaged,
then averaged over words and blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from invedit.toy import scenes
from training.shapes_flow.config import EDIT_STEPS, UNET_MODEL_DIR, FlowTrainConfig
from training.shapes_flow.models import build_transformer, encode_captions, flow_schedule, load_shared, shifted_sigma
from training.shapes_flow.train import sample
from training.shapes_unet.common import StepLog, ThreadGovernor, _log, _lr, _optimiser_step, _save_atomic
from training.shapes_unet.data import save_grid, to_tensor
from training.shapes_unet.grounding import grounding_loss, grounding_targets
from training.shapes_unet.unet import PREVIEW_PROMPTS, color_accuracy

TRANSFORMER_FILE = "transformer/diffusion_pytorch_model.safetensors"


class JointAttentionRecorder:
    """Joint attention computed as diffusers' `JointAttnProcessor2_0` computes it, with explicit probabilities; the
    image queries' probabilities over the prompt's keys, (batch·heads, image tokens, prompt tokens), are appended
    to ``store``."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, n_img = hidden_states.shape[:2]
        head_dim = attn.to_k.out_features // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq, ck, cv = (heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states)),
                      heads(attn.add_v_proj(encoder_hidden_states)))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
        self.store.append(probs[:, :, :n_img, n_img:].reshape(batch * attn.heads, n_img, -1))
        out = (probs @ v).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        img, txt = out[:, :n_img], out[:, n_img:]
        img = attn.to_out[1](attn.to_out[0](img))
        if attn.context_pre_only:
            return img, txt
        return img, attn.to_add_out(txt)


def record_joint_attention(transformer, store: list[torch.Tensor]) -> int:
    """Put a `JointAttentionRecorder` on every joint block's attention; returns how many."""
    recorder = JointAttentionRecorder(store)
    for block in transformer.transformer_blocks:
        block.attn.set_processor(recorder)
    return len(transformer.transformer_blocks)


def init_from(init_dir: Path) -> tuple[dict[str, torch.Tensor], float, float, str]:
    """An exported model's transformer weights (float32), its latent ``(shift, scale)`` and the sha256 of its
    transformer file (recorded: the fine-tune is a function of its seed *and* of these weights)."""
    from safetensors.torch import load_file

    path = init_dir / TRANSFORMER_FILE
    weights = {k: v.float() for k, v in load_file(path).items()}
    vae = json.loads((init_dir / "vae" / "config.json").read_text())
    return weights, float(vae["shift_factor"]), float(vae["scaling_factor"]), \
        hashlib.sha256(path.read_bytes()).hexdigest()


def scene_targets(scene: scenes.Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(token ids (K,), masks (K, grid²))`` of a scene's caption words (`grounding_targets`)."""
    targets = grounding_targets(scene, grid)
    return (np.array([tok for tok, _ in targets]), np.stack([mask.ravel() for _, mask in targets]))


def draw_scene(rng: np.random.Generator, cfg: FlowTrainConfig) -> scenes.Scene:
    """One training scene (held-out combinations excluded); one without ``cfg.ft_boost_shape`` is kept with
    probability ``cfg.ft_boost_keep`` and otherwise drawn again (at 1.0 no extra number is drawn, so the stream is
    the one the earlier fine-tunes used)."""
    while True:
        scene = scenes.make_scene(rng, size=cfg.size, include_held_out=False)
        if cfg.ft_boost_keep == 1.0 or any(o.shape == cfg.ft_boost_shape for o in scene.objects) \
                or rng.random() < cfg.ft_boost_keep:
            return scene


def grounding_weights(sigma: torch.Tensor, power: float) -> torch.Tensor | None:
    """Per-sample weights of the grounding loss (`FlowTrainConfig.ground_sigma_power`): σᵖ over the batch's mean σᵖ
    (mean 1), or None at power 0, which leaves `grounding_loss` exactly as the earlier fine-tunes computed it."""
    if power == 0:
        return None
    w = sigma.double() ** power
    return (w / w.mean()).float()


@torch.no_grad()
def finetune_cache(cfg: FlowTrainConfig, run_dir: Path, vae) -> dict:
    """``cfg.ft_scenes`` training scenes (held-out combinations excluded) rendered from the seed, stored in the run
    dir: captions, the VAE's latent posterior (mean, std) and the grounding targets of each."""
    boost = "" if cfg.ft_boost_keep == 1.0 else f"-{cfg.ft_boost_shape}{cfg.ft_boost_keep:g}"
    path = run_dir / f"ft-scenes-{cfg.seed}-{cfg.ft_scenes}-{cfg.size}{boost}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    rng = np.random.default_rng(cfg.seed + 50)
    grid = cfg.size // 4 // cfg.patch_size
    ss = [draw_scene(rng, cfg) for _ in range(cfg.ft_scenes)]
    means, stds = [], []
    for i in range(0, len(ss), 64):
        dist = vae.encode(to_tensor(np.stack([s.image for s in ss[i:i + 64]]))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    cache = {"captions": [s.caption for s in ss], "mean": torch.cat(means), "std": torch.cat(stds),
             "targets": [scene_targets(s, grid) for s in ss]}
    _save_atomic(cache, path)
    return cache


#: How many of the edit's first levels the edit-binding samples are drawn from: the first third of its steps, where
#: a two-object edit from an inverted latent binds its words (benchmarks/flow_binding_maps.md)
EDIT_LEVELS = EDIT_STEPS // 3


def edit_binding_scenes(cfg: FlowTrainConfig) -> list[scenes.Edit]:
    """The edit-binding samples' ``cfg.ft_edit_scenes`` colour edits of two-object scenes, drawn from the seed."""
    rng = np.random.default_rng(cfg.seed + 70)
    return [scenes.make_edit(scenes.make_scene(rng, size=cfg.size, n_objects=2, include_held_out=False), "color",
                             rng, include_held_out=False) for _ in range(cfg.ft_edit_scenes)]


@torch.no_grad()
def edit_binding_cache(cfg: FlowTrainConfig, run_dir: Path, vae, model, tokenizer, text, shift: float,
                       scale: float, init_sha: str) -> dict:
    """``cfg.ft_edit_scenes`` two-object training scenes (held-out combinations excluded), each with a colour edit
    (`invedit.toy.scenes.make_edit`), Euler-inverted under ``model`` (the starting weights) with their source caption
    at guidance 1 on the edit's schedule (``EDIT_STEPS`` steps), as `invedit.invert` does. Kept: the latents at the
    first `EDIT_LEVELS` levels (levels, scenes, C, h, w), both captions' encodings and the grounding targets (the
    same for both captions: a colour edit changes a word, not a place). Stored in the run dir, named by the seed,
    the count and the starting weights."""
    path = run_dir / f"ft-edit-scenes-{cfg.seed}-{cfg.ft_edit_scenes}-{init_sha[:12]}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    grid = cfg.size // 4 // cfg.patch_size
    edits = edit_binding_scenes(cfg)
    schedule = flow_schedule(cfg, EDIT_STEPS)
    source = encode_captions(tokenizer, text, [e.source_prompt for e in edits], cfg)
    target = encode_captions(tokenizer, text, [e.target_prompt for e in edits], cfg)
    model.eval()
    kept = []
    for i in range(0, len(edits), 64):
        part = slice(i, i + 64)
        z = (vae.encode(to_tensor(np.stack([e.source_image for e in edits[part]]))).latent_dist.mean - shift) * scale
        levels = [None] * EDIT_LEVELS
        for k in range(schedule.steps):  # step k undoes forward step i = N − 1 − k: z then sits at level i
            j = schedule.steps - 1 - k
            v = model(hidden_states=z, timestep=torch.full((len(z),), schedule.inversion_timestep(j)),
                      encoder_hidden_states=source[0][part], pooled_projections=source[1][part]).sample
            z = schedule.inverse_step(v, j, z)
            if j < EDIT_LEVELS:
                levels[j] = z
        kept.append(torch.stack(levels))
    cache = {"latents": torch.cat(kept, 1), "source": source, "target": target,
             "targets": [scene_targets(e.source, grid) for e in edits],
             "prompts": [(e.source_prompt, e.target_prompt) for e in edits]}
    _save_atomic(cache, path)
    return cache


def batch_targets(targets: list[tuple[np.ndarray, np.ndarray]], grid: int, dropped: np.ndarray):
    """``(token_ids (B, K), masks {grid: (B, K, grid²)}, valid (B, K))`` of `grounding_loss` for a batch; captions
    dropped for guidance have no targets."""
    k_max = max(len(ids) for ids, _ in targets)
    token_ids = torch.zeros(len(targets), k_max, dtype=torch.long)
    valid = torch.zeros(len(targets), k_max)
    masks = torch.zeros(len(targets), k_max, grid * grid)
    for b, (ids, m) in enumerate(targets):
        token_ids[b, :len(ids)] = torch.from_numpy(ids)
        valid[b, :len(ids)] = float(not dropped[b])
        masks[b, :len(ids)] = torch.from_numpy(m)
    return token_ids, {grid: masks}, valid


def finetune(cfg: FlowTrainConfig, run_dir: Path, init_dir: Path, deadline: float, gov: ThreadGovernor,
             unet_dir: Path = UNET_MODEL_DIR, stop_at: int | None = None) -> bool:
    """Fine-tune ``init_dir``'s transformer for ``cfg.ft_steps`` (continuing ``finetune.ckpt.pt`` if there is
    one; ``stop_at``: stop once that many are done, the LR schedule unchanged); returns True once done. Each step
    draws ``cfg.ft_batch`` scenes of `finetune_cache` (a latent sampled from each one's posterior) from a generator
    seeded by the seed and the step."""
    ckpt_path = run_dir / "finetune.ckpt.pt"
    vae, tokenizer, text = load_shared(unet_dir, cfg)
    weights, shift, scale, init_sha = init_from(init_dir)
    cache = finetune_cache(cfg, run_dir, vae)
    hidden_all, pooled_all = encode_captions(tokenizer, text, cache["captions"] + [""], cfg)  # "" last
    model = build_transformer(cfg, text.config.hidden_size)
    ema = build_transformer(cfg, text.config.hidden_size)
    model.load_state_dict(weights)
    ema.load_state_dict(weights)
    edits = edit_binding_cache(cfg, run_dir, vae, model, tokenizer, text, shift, scale, init_sha) \
        if cfg.ft_edit_scenes else None
    ema.requires_grad_(False).eval()
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.ft_lr, betas=(0.9, 0.999), weight_decay=0.01)
    step = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["init_sha256"] != init_sha:
            raise SystemExit(f"error: {ckpt_path} continues another model than {init_dir}")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step = ck["ft_step"]
    # a resumed run re-seeds its stream at the step reached (as the UNet's grounding stage does)
    rng = np.random.default_rng(cfg.seed + 60 + step)
    edit_rng = np.random.default_rng(cfg.seed + 80 + step)  # its own stream: the scenes' draws stay as before
    torch.manual_seed(cfg.seed + 60 + step)
    store: list[torch.Tensor] = []
    record_joint_attention(model, store)
    grid = cfg.size // 4 // cfg.patch_size
    schedule = flow_schedule(cfg, EDIT_STEPS)
    empty = encode_captions(tokenizer, text, [""], cfg)
    prev_hidden, prev_pooled = encode_captions(tokenizer, text, list(PREVIEW_PROMPTS), cfg)
    print(f"fine-tune of {init_dir} (sha256 {init_sha[:12]}), step {step}/{cfg.ft_steps}", flush=True)

    def checkpoint() -> None:
        _save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "ft_step": step, "init_sha256": init_sha, "init_dir": str(init_dir),
                      "latent_shift": shift, "latent_scale": scale, "config": dataclasses.asdict(cfg)}, ckpt_path)

    log_path = run_dir / "log_finetune.jsonl"

    def preview() -> None:
        imgs = sample(ema, vae, prev_hidden, prev_pooled, empty, (shift, scale), cfg, cfg.preview_steps, seed=step)
        (run_dir / "previews").mkdir(exist_ok=True)
        save_grid(imgs, run_dir / "previews" / f"finetune_{step:06d}.png")
        _log(log_path, {"step": step, "preview_color_acc": color_accuracy(imgs, list(PREVIEW_PROMPTS))})

    log = StepLog(log_path, cfg.ft_steps, step, "finetune", cfg.log_every, cfg.ckpt_minutes)
    model.train()
    last = min(cfg.ft_steps, stop_at or cfg.ft_steps)
    while step < last and time.time() < deadline:
        threads = gov.update()
        lr = _lr(step, cfg.ft_lr, cfg.ft_warmup, cfg.ft_steps, cfg.ft_decay_from)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(cfg.ft_scenes, size=cfg.ft_batch)
        dropped = rng.random(cfg.ft_batch) < cfg.caption_dropout
        rows = torch.from_numpy(np.where(dropped, cfg.ft_scenes, idx))
        hidden, pooled = hidden_all[rows], pooled_all[rows]
        mean, std = cache["mean"][idx], cache["std"][idx]
        z = mean + std * torch.randn_like(std)
        x0 = (z - shift) * scale
        u = torch.from_numpy(rng.normal(cfg.logit_mean, cfg.logit_std, size=cfg.ft_batch)).float()
        sigma = shifted_sigma(torch.sigmoid(u), cfg.shift)
        noise = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1)
        inputs, targets = (1 - s) * x0 + s * noise, [cache["targets"][i] for i in idx]
        if edits is not None:  # edit-binding samples: an inverted latent under its source or target caption
            e_idx = edit_rng.integers(cfg.ft_edit_scenes, size=cfg.ft_edit_batch)
            e_level = edit_rng.integers(EDIT_LEVELS, size=cfg.ft_edit_batch)
            e_target = torch.from_numpy(edit_rng.random(cfg.ft_edit_batch) < 0.5)
            (src_hidden, src_pooled), (tgt_hidden, tgt_pooled) = edits["source"], edits["target"]
            hidden = torch.cat([hidden, torch.where(e_target[:, None, None], tgt_hidden[e_idx], src_hidden[e_idx])])
            pooled = torch.cat([pooled, torch.where(e_target[:, None], tgt_pooled[e_idx], src_pooled[e_idx])])
            inputs = torch.cat([inputs, edits["latents"][e_level, e_idx]])
            sigma = torch.cat([sigma, schedule.sigmas[torch.from_numpy(e_level)]])
            dropped = np.concatenate([dropped, np.zeros(cfg.ft_edit_batch, bool)])
            targets += [edits["targets"][i] for i in e_idx]
        store.clear()
        pred = model(hidden_states=inputs, timestep=sigma * 1000, encoder_hidden_states=hidden,
                     pooled_projections=pooled).sample
        flow = F.mse_loss(pred[:cfg.ft_batch], noise - x0)
        token_ids, masks, valid = batch_targets(targets, grid, dropped)
        ground = grounding_loss(store, len(targets), token_ids, masks, valid,
                                grounding_weights(sigma, cfg.ground_sigma_power))
        step += 1
        _optimiser_step(opt, params, ema_params, flow + cfg.ground_weight * ground, cfg.ft_ema_decay)
        log.add(step, {"loss": flow.item(), "ground": ground.item()}, lr=lr, threads=threads)
        if log.checkpoint_due():
            checkpoint()
            preview()
    log.close()
    checkpoint()
    preview()
    return step >= last
