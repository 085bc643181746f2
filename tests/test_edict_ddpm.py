"""Edit-friendly DDPM inversion and EDICT on the tiny model: exact source branches, seeds, skips, NFE, P2P."""

from __future__ import annotations

import pytest
import torch

import invedit
from invedit.api import encode_image
from invedit.inversion.ddpm import skipped_steps
from invedit.inversion.edict import coupling_coefficients, edict_inverse_step, edict_step, unet_in_dtype
from invedit.sampling import DDIMSchedule, ddim_sigma

from .bounds import max_abs, measured
from .conftest import SOURCE, TARGET, scene_image


@pytest.fixture(scope="module")
def z0(pipe):
    return encode_image(pipe, scene_image())[0].cpu()


class UNetSpy:
    """Records the timestep, batch size and input dtype of every UNet call."""

    def __init__(self, unet):
        self.calls: list[tuple[int, int, torch.dtype]] = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        sample, t = args[0], args[1]
        self.calls.append((int(t), sample.shape[0], sample.dtype))

    def __enter__(self) -> UNetSpy:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def unet_dtypes(pipe) -> set[torch.dtype]:
    return {p.dtype for p in pipe.unet.parameters()}


# ---- edit-friendly DDPM -----------------------------------------------------------------------------------
def test_sigma_is_ddim_eq_16(pipe):
    schedule = DDIMSchedule.from_pipe(pipe, 10)
    for i in (0, 4, 9):
        t, prev = schedule.timesteps[i], schedule.next_timestep(i)
        variance = pipe.scheduler._get_variance(t, prev)  # diffusers' DDIM σ_t(1)², eq. 16
        torch.testing.assert_close(ddim_sigma(schedule, i, 1.0), variance**0.5)
        torch.testing.assert_close(ddim_sigma(schedule, i, 0.5), 0.5 * variance**0.5)


@pytest.mark.parametrize("source_guidance", [1.0, 3.0])
def test_ddpm_source_branch_reproduces_z0_with_p2p(pipe, z0, source_guidance):
    inv = invedit.invert(pipe, scene_image(), SOURCE, "ddpm", steps=8, skip=2, source_guidance=source_guidance)
    result = invedit.edit(pipe, inv, None, TARGET, blend_words="red blue")
    # Rounding only: the source re-computes μ_t in another batch than the inversion did. Worst 1.2e-5 over CPU
    # kernels/threads (docs/test-bounds.md); an off-by-one noise map gives 9.9.
    assert measured("ddpm source vs z0, max", max_abs(result.latents[0], z0)) <= 1e-4
    # lowest 1.2 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("ddpm target vs z0, max (must be large)", max_abs(result.latents[1], z0)) > 0.1
    assert result.image.size == (64, 64) and result.settings["inversion"] == "ddpm"
    # the x_t are samples of q(x_t | x0): at the start level the latent is mostly noise, not z0
    assert (inv.latents[-1] - inv.z0[0]).abs().mean() > 0.5


def test_ddpm_noise_maps_are_seeded(pipe):
    a, b = (invedit.invert(pipe, scene_image(), SOURCE, "ddpm", steps=6, skip=1, seed=3) for _ in range(2))
    c = invedit.invert(pipe, scene_image(), SOURCE, "ddpm", steps=6, skip=1, seed=4)
    assert a.noise_maps.shape == (5, 4, 16, 16)
    assert torch.equal(a.noise_maps, b.noise_maps) and torch.equal(a.latents, b.latents)
    assert (a.noise_maps - c.noise_maps).abs().mean() > 0.1
    assert (a.latents[1:] - c.latents[1:]).abs().mean() > 0.01 and torch.equal(a.latents[0], c.latents[0])


def test_ddpm_skip_starts_the_edit_at_step_skip(pipe):
    steps, skip = 8, 3
    schedule = DDIMSchedule.from_pipe(pipe, steps)
    inv = invedit.invert(pipe, scene_image(), SOURCE, "ddpm", steps=steps, skip=skip)
    assert inv.first_step == skip and inv.stats.nfe == steps - skip  # noise maps only for the steps edited
    with UNetSpy(pipe.unet) as spy:
        result = invedit.edit(pipe, inv, None, TARGET, editor="none")
    assert [t for t, _, _ in spy.calls] == list(schedule.timesteps[skip:])
    # rows per step: source cond (source CFG 1) + target uncond and cond (CFG 7.5)
    assert [n for _, n, _ in spy.calls] == [3] * (steps - skip)
    assert result.nfe_edit == 3 * (steps - skip) and result.nfe_inversion == steps - skip
    # the default skip is the reference's 12 of 50 steps
    assert skipped_steps(0.24, 50) == 12 and skipped_steps(12, 50) == 12 and skipped_steps(0.24, 25) == 6


@pytest.mark.parametrize("bad", [{"eta": 0}, {"eta": 1.5}, {"skip": 1.5}, {"skip": -1}, {"skip": 8},
                                 {"source_guidance": -1}])
def test_ddpm_bad_options(pipe, bad):
    with pytest.raises(invedit.InveditError):
        invedit.invert(pipe, scene_image(), SOURCE, "ddpm", steps=8, **bad)


# ---- EDICT --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first", [0, 1])
def test_edict_step_is_exactly_invertible(pipe, first):
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    weight = torch.randn(4, 4, 3, 3, generator=gen, dtype=torch.float64)

    def eps(v: torch.Tensor) -> torch.Tensor:  # a nonlinear stand-in for the UNet
        return torch.tanh(torch.nn.functional.conv2d(v, weight, padding=1))

    a, b = coupling_coefficients(DDIMSchedule.from_pipe(pipe, 10), 3)
    x1, y1 = edict_step(x, y, eps, a, b, 0.93, first)
    assert (x1 - x).abs().max() > 0.1 and (y1 - x1).abs().max() > 1e-3
    x0, y0 = edict_inverse_step(x1, y1, eps, a, b, 0.93, first)
    torch.testing.assert_close(x0, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(y0, y, rtol=0, atol=1e-12)
    # the leapfrog order matters: undoing with the other order does not return
    xw, _ = edict_inverse_step(x1, y1, eps, a, b, 0.93, 1 - first)
    assert (xw - x).abs().max() > 1e-3


def test_edict_coefficients_are_the_ddim_step(pipe):
    schedule = DDIMSchedule.from_pipe(pipe, 10)
    x, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    from invedit.sampling import ddim_step

    a, b = coupling_coefficients(schedule, 2)
    torch.testing.assert_close(a * x + b * eps, ddim_step(schedule, eps, 2, x))


def test_edict_float64_regenerates_the_input_latent(pipe, z0):
    steps = 4
    inv = invedit.invert(pipe, scene_image(), SOURCE, "edict", steps=steps, strength=1.0)
    assert inv.first_step == 0 and inv.start_pair.dtype == torch.float64 and inv.latents.dtype == torch.float32
    assert unet_dtypes(pipe) == {torch.float32}  # the UNet is back to float32 after the inversion
    with UNetSpy(pipe.unet) as spy:
        result = invedit.edit(pipe, inv, None, SOURCE, editor="none")
    assert {d for _, _, d in spy.calls} == {torch.float64} and unet_dtypes(pipe) == {torch.float32}
    assert result.latents.dtype == torch.float32
    # worst 2.4e-07 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("edict float64 identity vs z0, max", max_abs(result.latents, z0)) <= 1e-6  # both branches
    # NFE: 2 UNet calls per step (ε of the y chains, then of the x chains), each with every CFG row
    assert [n for _, n, _ in spy.calls] == [4] * (2 * steps)
    assert result.nfe_edit == 2 * 4 * steps and result.nfe_inversion == 2 * 2 * steps


def test_edict_with_p2p_keeps_the_source_exact(pipe, z0):
    steps = 5  # strength 0.8: the edit starts at step 5 − int(4.0) = 1
    inv = invedit.invert(pipe, scene_image(), SOURCE, "edict", steps=steps, guidance_scale=3.0)
    assert inv.first_step == 1 and torch.isnan(inv.latents[-1]).all() and not torch.isnan(inv.latents[-2]).any()
    result = invedit.edit(pipe, inv, None, TARGET, guidance_scale=3.0, blend_words="red blue", blend_threshold=0.9)
    # worst 3e-08 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("edict float64 p2p source vs z0, max", max_abs(result.latents[0], z0)) <= 1e-6
    # lowest 0.24 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("edict p2p target vs z0, max (must be large)", max_abs(result.latents[1], z0)) > 0.1
    same = (result.latents[1] == result.latents[0]).all(dim=0).float().mean()
    assert 0 < same < 1  # LocalBlend kept the source outside the blend words' region
    assert result.nfe_edit == 2 * 4 * (steps - 1) and result.nfe_inversion == 2 * 2 * (steps - 1)
    with pytest.raises(invedit.InveditError, match="guidance 3.0"):
        invedit.edit(pipe, inv, None, TARGET, guidance_scale=7.5)


def test_edict_float32_and_guidance_one(pipe, z0):
    steps = 4
    inv = invedit.invert(pipe, scene_image(), SOURCE, "edict", steps=steps, strength=1.0, precision="float32",
                         guidance_scale=1.0)
    with UNetSpy(pipe.unet) as spy:
        result = invedit.edit(pipe, inv, None, TARGET, guidance_scale=1.0)
    assert {d for _, _, d in spy.calls} == {torch.float32}
    # worst 1.6e-05 over CPU kernels and thread counts (docs/test-bounds.md)
    assert measured("edict float32 source vs z0, max", max_abs(result.latents[0], z0)) <= 1e-3
    # guidance 1: only the conditional rows, which are also what P2P reads
    assert result.nfe_edit == 2 * 2 * steps and inv.stats.nfe == 2 * steps


def test_unet_precision_is_restored_after_errors(pipe):
    with pytest.raises(RuntimeError), unet_in_dtype(pipe.unet, torch.float64):
        assert unet_dtypes(pipe) == {torch.float64}
        raise RuntimeError
    assert unet_dtypes(pipe) == {torch.float32}


@pytest.mark.parametrize("bad", [{"mix_weight": 0}, {"mix_weight": 1.2}, {"precision": "float16"},
                                 {"strength": 0}])
def test_edict_bad_options(pipe, bad):
    with pytest.raises(invedit.InveditError):
        invedit.invert(pipe, scene_image(), SOURCE, "edict", steps=4, **bad)
