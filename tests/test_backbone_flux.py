"""The FLUX backbone (invedit.backbones.flux) against diffusers' own FluxPipeline on tiny random FLUX.1-dev- and
-schnell-shaped pipelines."""

import numpy as np
import pytest
import torch
from PIL import Image

from invedit.backbones.base import backbone as backbone_of
from invedit.backbones.flux import FluxBackbone, image_ids, pack_latents, unpack_latents
from invedit.backbones.mmdit import unpack_pooled
from invedit.flow import euler_sample
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

PROMPTS = ["a red circle on a gray background", ""]


@pytest.fixture(scope="module")
def dev():
    return backbone_of(tiny_pipeline(kind="flux"))


@pytest.fixture(scope="module")
def schnell():
    return backbone_of(tiny_pipeline(kind="flux-schnell"))


def test_what_it_declares(dev, schnell):
    assert (dev.family, dev.pipeline_classes, dev.guidance_mode, schnell.guidance_mode) == (
        "flux", ("FluxPipeline",), "embedded", "none")
    assert isinstance(dev, FluxBackbone) and isinstance(schnell, FluxBackbone)
    assert (dev.vae_factor, dev.resolution_multiple, dev.resolution, dev.image_seq_len()) == (4, 8, 64, 64)
    assert dev.native_resolution == 512  # FluxPipeline's default: 128 latent cells
    assert dev.denoiser is dev.pipe.transformer
    layers = dev.attention_layers()
    assert [(name, info.place, info.order) for name, _, info in layers] == [
        ("transformer_blocks.0.attn", "joint", 0), ("transformer_blocks.1.attn", "joint", 1),
        ("single_transformer_blocks.0.attn", "single", 2), ("single_transformer_blocks.1.attn", "single", 3)]
    assert dev.fingerprint() != schnell.fingerprint()


def test_packing_equals_the_pipelines():
    """2×2 packing, its inverse and the position ids are FluxPipeline's."""
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 16, 12)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 16, 12))
    assert torch.equal(unpack_latents(packed, 16, 12), x)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 16 * 4, 12 * 4, 4), x)
    assert torch.equal(image_ids(16, 12), FluxPipeline._prepare_latent_image_ids(2, 8, 6, "cpu", torch.float32))


def test_conditioning_equals_diffusers_encode_prompt(dev):
    """T5 states and CLIP pooled output are exactly FluxPipeline.encode_prompt's; pooled rides as the last token."""
    emb = dev.encode_prompts(PROMPTS)
    assert emb.shape == (2, 512 + 1, 32) and emb.dtype == torch.float32
    hidden, pooled = unpack_pooled(emb, 32)
    ref_hidden, ref_pooled, text_ids = dev.pipe.encode_prompt(PROMPTS, None)
    assert torch.equal(hidden, ref_hidden) and torch.equal(pooled, ref_pooled)
    assert torch.equal(text_ids, torch.zeros(512, 3))


def test_denoise_is_one_transformer_call(dev, schnell):
    """denoise() packs, calls FluxTransformer2DModel at timestep σ (with the guidance embedding on dev) and unpacks."""
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    for backbone, guidance in ((dev, 3.5), (schnell, None)):
        emb = backbone.encode_prompts(PROMPTS)
        t = backbone.schedule(10).timesteps[2]
        stats = RunStats()
        out = backbone.denoise(x, t, emb, stats, guidance=guidance)
        hidden, pooled = unpack_pooled(emb, 32)
        ref = backbone.pipe.transformer(
            hidden_states=backbone.pipe._pack_latents(x, 2, 4, 16, 16), timestep=torch.tensor([t, t]),
            guidance=None if guidance is None else torch.tensor([guidance, guidance]), pooled_projections=pooled,
            encoder_hidden_states=hidden, txt_ids=torch.zeros(512, 3),
            img_ids=backbone.pipe._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32), return_dict=False)[0]
        assert torch.equal(out, backbone.pipe._unpack_latents(ref, 64, 64, 4))
        assert (stats.nfe, stats.unet_calls) == (2, 1)
    # FLUX.1-dev without a scale gets FluxPipeline's default 3.5; schnell refuses one.
    assert torch.equal(dev.denoise(x, t, emb, stats), dev.denoise(x, t, emb, stats, guidance=3.5))
    assert not torch.equal(dev.denoise(x, t, emb, stats), dev.denoise(x, t, emb, stats, guidance=1.0))
    with pytest.raises(ValueError, match="no guidance input"):
        schnell.denoise(x, t, emb, stats, guidance=3.5)


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_euler_sampling_equals_the_pipeline(variant, dev, schnell):
    """Our schedule (dynamic shift on dev, none on schnell) and Euler steps over denoise() regenerate exactly what
    FluxPipeline does from the same start latents (guidance embedding 3.5 on dev)."""
    backbone = dev if variant == "dev" else schnell
    pipe = backbone.pipe
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = pipe(PROMPTS[0], latents=pack_latents(start), num_inference_steps=4, guidance_scale=3.5, height=64,
               width=64, output_type="latent").images
    schedule = backbone.schedule(4)
    assert torch.equal(schedule.sigmas, pipe.scheduler.sigmas)
    emb = backbone.encode_prompts(PROMPTS[:1])
    guidance = 3.5 if variant == "dev" else None
    ours = euler_sample(lambda x, t: backbone.denoise(x, t, emb, RunStats(), guidance=guidance), schedule, start)
    assert torch.equal(pack_latents(ours[-1:]), ref)


def test_vae_uses_shift_and_scale_as_diffusers(dev):
    """encode_image = (mode − shift_factor)·scaling_factor; decode inverts it as FluxPipeline's decode + postprocess
    (truncation instead of rounding: within one level)."""
    pipe = dev.pipe
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    z0 = dev.encode_image(image)
    vae = pipe.vae
    ref = (vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode() - vae.config.shift_factor) \
        * vae.config.scaling_factor
    # measured max|diff| 6.5e-7: invedit scales pixels as x/127.5 - 1, diffusers as (x/255)*2 - 1 (1-ulp inputs)
    assert torch.allclose(z0, ref, atol=1e-5, rtol=0)
    decoded = np.asarray(dev.decode(z0)[0]).astype(int)
    raw = vae.decode(z0 / vae.config.scaling_factor + vae.config.shift_factor).sample
    expected = (pipe.image_processor.postprocess(raw, output_type="np")[0] * 255).round().astype(int)
    assert np.abs(decoded - expected).max() <= 1
