"""Text-to-image samples of a model through invedit's own backbone: what the embedded models' quality benchmarks
and tests judge (is the prompted shape / colour drawn?).

Deterministic sampling on the backbone's schedule (DDIM on a UNet, Euler on a flow model) with classifier-free
guidance against the empty prompt, through the same conditioning and network call the inversions and editors use.
"""

from __future__ import annotations

import numpy as np
import torch

from ..api import decode_latents
from ..backbones import backbone
from ..sampling import RunStats, guided


@torch.no_grad()
def generate(pipe, prompts: list[str], seed: int = 0, steps: int = 50, guidance: float = 7.5,
             batch: int = 32) -> list[np.ndarray]:
    """One uint8 image per prompt. The starting noise of all prompts comes, ``batch`` prompts at a time, from one
    CPU generator seeded with ``seed``, so a result depends on ``batch`` as well as on the seed."""
    model = backbone(pipe)
    schedule = model.schedule(steps)
    side = model.resolution // model.vae_factor
    channels = model.denoiser.config.in_channels
    gen = torch.Generator("cpu").manual_seed(seed)
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        cond = model.encode_prompts(chunk)
        null = model.encode_prompts([""]).expand(len(chunk), -1, -1)
        z = torch.randn(len(chunk), channels, side, side, generator=gen).to(model.device)
        for i in range(steps):
            u, c = model.denoise(torch.cat([z, z]), schedule.timesteps[i], torch.cat([null, cond]), RunStats()).chunk(2)
            z = schedule.step(guided({"uncond": u, "cond": c}, guidance), i, z)
        out += [np.asarray(im) for im in decode_latents(pipe, z)]
    return out
