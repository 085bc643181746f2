"""The VAE stages of training.shapes_unet.train: the decoder fine-tune must leave the latent space (encoder, quant_conv,
scaling factor) exactly as the UNet was trained on it, export must ship the tuned decoder, and a run is a function of
its seed (initial weights included)."""

from __future__ import annotations

import torch

from training.shapes_unet import train


def test_decoder_stage_keeps_the_latent_space_and_export_ships_it(tmp_path):
    from diffusers import AutoencoderKL

    run = tmp_path / "run"
    assert train.main(["--smoke", "--out", str(run), "--stage", "vae"]) == 0
    assert train.main(["--smoke", "--out", str(run), "--stage", "decoder", "--resume"]) == 0
    before = AutoencoderKL.from_pretrained(run / "vae").state_dict()
    after = AutoencoderKL.from_pretrained(run / "vae_decoder")
    assert after.config.scaling_factor == AutoencoderKL.from_pretrained(run / "vae").config.scaling_factor
    state = after.state_dict()
    latent_side = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder_side = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert latent_side and decoder_side and len(latent_side) + len(decoder_side) == len(before)
    assert all(torch.equal(before[k], state[k]) for k in latent_side)
    assert any(not torch.equal(before[k], state[k]) for k in decoder_side)

    # export (after the UNet stage) picks the tuned decoder
    assert train.main(["--smoke", "--out", str(run), "--stage", "unet", "--resume", "--export",
                       "--export-dir", str(tmp_path / "export")]) == 0
    shipped = AutoencoderKL.from_pretrained(tmp_path / "export" / "vae").state_dict()
    assert all(torch.equal(shipped[k], state[k].half()) for k in state)


def test_training_is_a_function_of_the_seed(tmp_path):
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel

    for i, run in enumerate(("a", "b")):  # each stage as its own invocation, from another global RNG state
        out = ["--smoke", "--out", str(tmp_path / run)]
        torch.manual_seed(i)
        assert train.main([*out, "--stage", "vae"]) == 0
        torch.manual_seed(10 + i)
        assert train.main([*out, "--stage", "unet", "--resume", "--export",
                           "--export-dir", str(tmp_path / run / "export")]) == 0
    for sub, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel)):
        a, b = (cls.from_pretrained(tmp_path / run / "export" / sub).state_dict() for run in ("a", "b"))
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    info = json.loads((tmp_path / "a" / "export" / "training.json").read_text())
    assert info["config"]["seed"] == train.TrainConfig().seed
