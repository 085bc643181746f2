"""Shared by every training stage: the thread governor, autocast precision, LR schedule, optimiser + EMA step,
atomic checkpoints and JSONL logs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class ThreadGovernor:
    """Use several intra-op threads only while no other process is busy.

    With 2 cores, an OpenMP team of 2 threads next to one busy foreign process makes each step ~20x slower
    (barriers wait for the descheduled thread); one thread keeps ~60% of the idle speed. The load of other
    processes is measured from ``/proc`` (total busy time minus this process's CPU time).
    """

    def __init__(self, max_threads: int, interval: float = 3.0) -> None:
        self.max_threads = max(1, min(max_threads, os.cpu_count() or 1))
        self.interval = interval
        self.threads = self.max_threads
        self.calm = 0
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()
        torch.set_num_threads(self.threads)

    @staticmethod
    def _sample() -> tuple[float, int, int] | None:
        try:
            cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            busy = sum(int(cpu[i]) for i in (0, 1, 2, 5, 6, 7))
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            return time.monotonic(), busy, int(own[11]) + int(own[12])
        except (OSError, IndexError, ValueError):
            return None

    def update(self) -> int:
        """Re-decide the thread count (at most every ``interval`` s); returns it."""
        if self.max_threads == 1 or self._last is None:
            return self.threads
        now = self._sample()
        if now is None or now[0] - self._last[0] < self.interval:
            return self.threads
        others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / self._hz / (now[0] - self._last[0])
        self._last = now
        if others > 0.3:
            self.calm, want = 0, 1
        else:
            self.calm += 1
            want = self.max_threads if self.calm >= 2 else self.threads
        if want != self.threads:
            self.threads = want
            torch.set_num_threads(want)
        return self.threads


#: Mixed precision of the training's forward passes: "bf16" (autocast) or "fp32". ``main`` sets it: bf16 where the
#: CPU computes it natively (the shipped weights were trained so), fp32 elsewhere, where emulated bf16 is far slower.
PRECISION = {"value": "bf16"}


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=PRECISION["value"] == "bf16")


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, mininterval=1 if tty else 30, dynamic_ncols=tty)


class StepLog:
    """A training loop's bookkeeping: the progress bar, the running means of per-step values written as one JSONL
    record every ``every`` steps (with seconds per step and whatever the loop adds) and shown on the bar, and the
    checkpoint cadence (`checkpoint_due`, every ``ckpt_minutes``)."""

    def __init__(self, path: Path, total: int, initial: int, desc: str, every: int, ckpt_minutes: float) -> None:
        self.path, self.every, self.ckpt_seconds = path, every, ckpt_minutes * 60
        self.bar = _progress(total, initial, desc)
        self.t_log = self.last_ckpt = time.time()
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, step: int, values: dict[str, float], **extra: Any) -> None:
        """One step's ``values`` (averaged until the next record); ``extra`` goes into that record as it is."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.n += 1
        self.bar.update(1)
        if step % self.every:
            return
        now = time.time()
        means = {key: total / self.n for key, total in self.sums.items()}
        _log(self.path, {"step": step, **means, **extra, "sec_per_step": (now - self.t_log) / self.n})
        self.bar.set_postfix(**{k: f"{v:.4f}" for k, v in means.items()}, s_it=f"{(now - self.t_log) / self.n:.2f}",
                             thr=extra.get("threads", ""))
        self.t_log, self.sums, self.n = now, {}, 0

    def checkpoint_due(self) -> bool:
        """True once every ``ckpt_minutes`` (and then restarts the clock)."""
        if time.time() - self.last_ckpt <= self.ckpt_seconds:
            return False
        self.last_ckpt = time.time()
        return True

    def close(self) -> None:
        self.bar.close()


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _lr(step: int, base: float, warmup: int, total: int, decay_from: float) -> float:
    """Linear warmup, constant, then cosine to 10% between ``decay_from * total`` and ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    start = int(decay_from * total)
    if step < start:
        return base
    p = min(1.0, (step - start) / max(1, total - start))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def _optimisation(unet, text, ema_unet, ema_text, lr: float, select: Callable[[str], bool] | None = None):
    """Trainable parameters, their EMA copies and AdamW, for the UNet + text encoder stages.

    ``select(name)`` (names prefixed ``unet.`` / ``text.``) picks the trainable ones; the rest are frozen.
    """
    for model in (text, ema_text):  # eager attention: ~1.7x faster than SDPA for this tiny encoder on CPU
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
    ema_unet.requires_grad_(False).eval()
    ema_text.requires_grad_(False).eval()
    params, ema_params = [], []
    for prefix, model, ema in (("unet.", unet, ema_unet), ("text.", text, ema_text)):
        for (name, p), q in zip(model.named_parameters(), ema.parameters()):
            if select is None or select(prefix + name):
                params.append(p)
                ema_params.append(q)
            else:
                p.requires_grad_(False)
    return params, ema_params, torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.01)


def _min_snr_loss(pred: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """ε-prediction MSE per sample, weighted by min(SNR, γ)/SNR (min-SNR weighting), averaged."""
    snr = alpha_bar / (1 - alpha_bar)
    return ((snr.clamp(max=gamma) / snr) * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def _optimiser_step(opt, params, ema_params, loss: torch.Tensor, ema_decay: float) -> None:
    """Backward, clip to norm 1, AdamW step, then move the EMA copies toward the parameters."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - ema_decay)
