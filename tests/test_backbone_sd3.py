"""The SD3 backbone (invedit.backbones.sd3) against diffusers' own StableDiffusion3Pipeline on a tiny random SD3."""

import numpy as np
import pytest
import torch
from PIL import Image

from invedit.backbones.base import backbone as backbone_of
from invedit.backbones.mmdit import unpack_pooled
from invedit.backbones.sd3 import SD3Backbone
from invedit.flow import euler_sample
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

PROMPTS = ["a red circle on a gray background", "a yellow star on a striped background", ""]


@pytest.fixture(scope="module")
def backbone():
    record = backbone_of(tiny_pipeline(kind="sd3"))
    assert isinstance(record, SD3Backbone)
    return record


def test_what_it_declares(backbone):
    assert (backbone.family, backbone.guidance_mode, backbone.pipeline_classes) == (
        "sd3", "cfg", ("StableDiffusion3Pipeline",))
    assert (backbone.vae_factor, backbone.resolution_multiple, backbone.resolution) == (4, 8, 64)
    assert (backbone.native_resolution, backbone.name) == (64, "tiny-sd3-0-64")
    assert backbone.denoiser is backbone.pipe.transformer
    assert backbone.tokenizer.model_max_length == 77
    assert backbone.fingerprint() == backbone_of(tiny_pipeline(kind="sd3")).fingerprint()
    assert backbone.fingerprint() != backbone_of(tiny_pipeline(kind="sd3", seed=1)).fingerprint()
    layers = backbone.attention_layers()
    assert [name for name, _, _ in layers] == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert [(info.order, info.count, info.place) for _, _, info in layers] == [(0, 2, "joint"), (1, 2, "joint")]


def test_conditioning_equals_diffusers_encode_prompt(backbone):
    """Token states and pooled embedding are exactly StableDiffusion3Pipeline.encode_prompt's (prompt and the
    CFG negative ""), packed with the pooled one as a last, zero-padded token."""
    emb = backbone.encode_prompts(PROMPTS)
    assert emb.shape == (3, 77 + 256 + 1, 96) and emb.dtype == torch.float32
    hidden, pooled = unpack_pooled(emb, 64)
    ref_hidden, ref_neg, ref_pooled, ref_neg_pooled = backbone.pipe.encode_prompt(
        PROMPTS[:2], None, None, do_classifier_free_guidance=True, negative_prompt="")
    assert torch.equal(hidden[:2], ref_hidden) and torch.equal(pooled[:2], ref_pooled)
    assert torch.equal(hidden[2:], ref_neg[:1]) and torch.equal(pooled[2:], ref_neg_pooled[:1])
    assert torch.equal(emb[:, -1, 64:], torch.zeros(3, 32))
    assert not torch.equal(emb[0], emb[1])


def test_denoise_is_one_transformer_call(backbone):
    """denoise() equals a direct SD3Transformer2DModel call (timestep σ·1000, pooled projections) and counts NFE."""
    emb = backbone.encode_prompts(PROMPTS[:2])
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = backbone.schedule(10).timesteps[3]
    stats = RunStats()
    out = backbone.denoise(x, t, emb, stats)
    hidden, pooled = unpack_pooled(emb, 64)
    ref = backbone.pipe.transformer(hidden_states=x, timestep=torch.tensor([t, t]), encoder_hidden_states=hidden,
                                    pooled_projections=pooled, return_dict=False)[0]
    assert torch.equal(out, ref)
    assert (stats.nfe, stats.unet_calls) == (2, 1)
    with pytest.raises(ValueError, match="no guidance input"):
        backbone.denoise(x, t, emb, stats, guidance=3.5)


def test_euler_sampling_equals_the_pipeline(backbone):
    """The schedule and the Euler steps over denoise() regenerate exactly what StableDiffusion3Pipeline does from the
    same start latents without CFG (guidance_scale 1), and the schedule is the one the pipeline set."""
    pipe = backbone.pipe
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = pipe(PROMPTS[0], latents=start, num_inference_steps=4, guidance_scale=1.0, height=64, width=64,
               output_type="latent").images
    schedule = backbone.schedule(4)
    assert torch.equal(schedule.sigmas, pipe.scheduler.sigmas)
    emb = backbone.encode_prompts(PROMPTS[:1])
    ours = euler_sample(lambda x, t: backbone.denoise(x, t, emb, RunStats()), schedule, start)
    assert torch.equal(ours[-1:], ref)


def test_vae_uses_shift_and_scale_as_diffusers(backbone):
    """encode_image = (mode − shift_factor)·scaling_factor of diffusers' preprocessing; decode inverts it as the
    pipeline's decode + postprocess does (truncation instead of rounding: within one level)."""
    pipe = backbone.pipe
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    z0 = backbone.encode_image(image)
    vae = pipe.vae
    ref = (vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode() - vae.config.shift_factor) \
        * vae.config.scaling_factor
    assert z0.shape == (1, 4, 16, 16)
    # measured max|diff| 2.4e-6: invedit scales pixels as x/127.5 - 1, diffusers as (x/255)*2 - 1 (1-ulp inputs)
    assert torch.allclose(z0, ref, atol=1e-5, rtol=0)
    decoded = np.asarray(backbone.decode(z0)[0]).astype(int)
    raw = vae.decode(z0 / vae.config.scaling_factor + vae.config.shift_factor).sample
    expected = (pipe.image_processor.postprocess(raw, output_type="np")[0] * 255).round().astype(int)
    assert np.abs(decoded - expected).max() <= 1


def test_a_folder_without_t5_loads_with_the_call_options_it_asks_for(backbone, tmp_path):
    """An SD3 folder saved without its T5 encoder (model_index.json: [null, null]) loads through `invedit.load`, and
    the T5 length its invedit.json asks for (``call_options.max_sequence_length``, how the embedded shapes-flow
    model ships) is the conditioning diffusers builds when called with it. A bad value is refused in one line."""
    import json

    from diffusers import StableDiffusion3Pipeline

    from invedit import InveditError, load

    pipe = backbone.pipe
    StableDiffusion3Pipeline(**{**pipe.components, "text_encoder_3": None, "tokenizer_3": None}).save_pretrained(
        tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["text_encoder_3"] == [None, None]
    plain = backbone_of(load(tmp_path, device="cpu"))
    assert plain.pipe.text_encoder_3 is None and plain.t5_tokens == 256
    (tmp_path / "invedit.json").write_text(json.dumps({"call_options": {"max_sequence_length": 8}}))
    short = backbone_of(load(tmp_path, device="cpu"))
    assert short.t5_tokens == 8
    emb = short.encode_prompts(PROMPTS[:1])
    assert emb.shape == (1, 77 + 8 + 1, 96)
    ref_hidden, _, ref_pooled, _ = short.pipe.encode_prompt(PROMPTS[0], None, None, do_classifier_free_guidance=False,
                                                           max_sequence_length=8)
    hidden, pooled = unpack_pooled(emb, 64)
    assert torch.equal(hidden, ref_hidden) and torch.equal(pooled, ref_pooled)
    for bad, message in (({"max_sequence_length": 600}, r"integer in \[0, 512\], got 600"),
                         ({"max_sequence_length": "8"}, "integer in"),
                         ({"height": 64}, "unknown call option 'height'")):
        (tmp_path / "invedit.json").write_text(json.dumps({"call_options": bad}))
        with pytest.raises(InveditError, match=rf"cannot read .*invedit\.json: .*{message}"):
            load(tmp_path, device="cpu")
