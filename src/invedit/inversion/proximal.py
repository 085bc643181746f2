"""Proximal guidance (ProxEdit, Han et al., WACV 2024), an option of null-text and negative-prompt inversion.

The guidance direction ε_c − ε_u is thresholded at its ``quantile`` τ ("l0" as the reference computes it:
values within ±τ are dropped and the rest move towards 0 by τ; "l1": they shrink by a further τ). After each
step below ``recon_t`` both branches are pulled back to z* outside the (dilated) region the thresholded
direction touches: z ← z − λ·(z − z*_{t−1})·(1 − mask).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InveditError, check_number
from ..sampling import Branches, ddim_step

PROXIMAL_DEFAULTS: dict[str, Any] = {"proximal": None, "quantile": 0.75, "recon_t": 400, "recon_lr": 1.0,
                                     "dilate": 1}


def check_proximal_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Validate the ProxEdit options in ``opts`` (in place) and return it."""
    if opts["proximal"] not in (None, "l0", "l1"):
        raise InveditError(f"proximal must be 'l0', 'l1' or null, got {opts['proximal']!r}")
    if not -1e9 < float(opts["quantile"]) < 1:
        raise InveditError(f"quantile must be < 1 (a negative value is a fixed threshold), got {opts['quantile']}")
    opts["dilate"] = check_number("dilate", opts["dilate"], 0, integer=True)
    return opts


def proximal_direction(delta: torch.Tensor, quantile: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Thresholded guidance direction and its threshold τ (the quantile of |δ| over the whole batch)."""
    tau = delta.abs().flatten().quantile(quantile) if quantile > 0 else torch.tensor(-quantile).to(delta)
    out = delta - delta.clamp(-tau, tau)
    if mode == "l1":  # shrink once more, keeping the sign (the reference's two `where`s can flip small values)
        out = out.sign() * (out.abs() - tau).clamp(min=0)
    return out, tau


def proximal_step(sampler, info, latents: Branches) -> Branches:
    """One ProxEdit step of both branches (reference-settings §4); ``sampler`` supplies null embeddings and z*."""
    opts, ctx, i, t = sampler.options, sampler.ctx, info.index, info.t
    raw = ctx.denoiser.raw(i, t, latents, {"source", "target"}, sampler.null_embeddings(info))
    branches = ("source", "target")
    u = torch.cat([raw[(b, "uncond")] for b in branches])
    delta, tau = proximal_direction(torch.cat([raw[(b, "cond")] for b in branches]) - u,
                                    float(opts["quantile"]), opts["proximal"])
    g = torch.tensor([ctx.denoiser.guidance[b] for b in branches], device=u.device).view(-1, 1, 1, 1)
    z = torch.cat([latents.source, latents.target])
    z_next = ddim_step(ctx.schedule, u + g * delta, i, z)
    if t < int(opts["recon_t"]):
        edit_region = (delta.abs() > tau).float()
        r = int(opts["dilate"])
        if r > 0:
            edit_region = F.max_pool2d(edit_region, kernel_size=2 * r + 1, stride=1, padding=r)
        z_star = sampler.inverted.z_star_after(i).expand_as(z_next)
        z_next = z_next - float(opts["recon_lr"]) * (z_next - z_star) * (1 - edit_region)
    return Branches(z_next[:1], z_next[1:])


class ProximalOptions:
    """Mixin for an `Inverted` whose edits may use ProxEdit: validates its options (pair with `ProximalSampler`)."""

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_proximal_options(super().validate_options(options))


class ProximalSampler:
    """Mixin for a `Sampler`: the ProxEdit step when ``proximal`` is set, the method's own step otherwise."""

    def step(self, info, latents: Branches) -> Branches:
        if self.options["proximal"]:
            return proximal_step(self, info, latents)
        return super().step(info, latents)
