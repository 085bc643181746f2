"""SDXL: the conditioning (two text encoders, pooled embedding, size ids) in the one loop; every method on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import invedit
from invedit.backbones import attach, backbone
from invedit.backbones.unet import StableDiffusionXL
from invedit.backbones.unet import unet_attention_layers as attention_layers
from invedit.cli import app
from invedit.editing.masactrl import MutualSelfAttention
from invedit.editing.pnp import PlugAndPlay
from invedit.errors import InveditError
from invedit.inversion import INVERSIONS
from invedit.models import model_fingerprint, model_kind, native_resolution
from invedit.prompts import encode_prompts
from invedit.sampling import RunStats
from invedit.testing import SDXL_BASE_UNET, tiny_image_encoder, tiny_pipeline

SOURCE = "a red circle on a striped background"
TARGET = "a blue circle on a striped background"


@pytest.fixture(scope="module")
def xl():
    return tiny_pipeline(seed=2, kind="sdxl")


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory, xl):
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    xl.save_pretrained(folder)
    return folder


def test_the_folder_loads_as_an_sdxl_pipeline(xl, xl_dir):
    pipe = invedit.load(xl_dir)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and model_kind(pipe) == "sdxl"
    assert model_fingerprint(pipe) == model_fingerprint(xl) and native_resolution(pipe) == 64
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.set_alpha_to_one


def test_conditioning_is_both_encoders_plus_the_pooled_embedding(xl):
    emb = encode_prompts(xl, [SOURCE, ""])
    assert emb.shape == (2, 78, 64)
    with torch.no_grad():
        tok = xl.tokenizer([SOURCE], padding="max_length", max_length=77, return_tensors="pt").input_ids
        first = xl.text_encoder(tok, output_hidden_states=True).hidden_states[-2]
        out = xl.text_encoder_2(tok, output_hidden_states=True)
    torch.testing.assert_close(emb[0, :77], torch.cat([first[0], out.hidden_states[-2][0]], dim=-1))
    torch.testing.assert_close(emb[0, 77, :32], out.text_embeds[0])
    assert emb[0, 77, 32:].abs().sum() == 0 and emb[1].abs().sum() == 0  # padding; "" is zeros on SDXL
    # The UNet call equals diffusers' SDXL call with the pooled embedding and the size ids passed explicitly.
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = backbone(xl).denoise(latents, 501, emb[:1], RunStats())
    with torch.no_grad():
        direct = xl.unet(latents, 501, encoder_hidden_states=emb[:1, :77], added_cond_kwargs={
            "text_embeds": out.text_embeds, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}).sample
    torch.testing.assert_close(ours, direct)


def test_direct_inversion_source_branch_is_exact_and_cheaper_than_ddim(xl, image):
    inverted = invedit.invert(xl, image, SOURCE, method="direct", steps=8)
    result = invedit.edit(xl, inverted, None, TARGET, blend_words="red blue")
    assert torch.equal(result.latents[0:1], inverted.z0.cpu())  # the source branch ends exactly on z*_0
    ddim = invedit.edit(xl, image, SOURCE, TARGET, inversion="ddim", steps=8, blend_words="red blue")
    assert result.nfe < ddim.nfe
    assert not np.array_equal(np.asarray(result.image), np.asarray(result.reconstruction))


def test_resolution_is_any_multiple_of_the_vae_factor_times_8(xl_dir, image):
    pipe = invedit.load(xl_dir, resolution=96)
    time_ids = backbone(pipe).conditioning(encode_prompts(pipe, [""]))[1]["added_cond_kwargs"]["time_ids"]
    assert native_resolution(pipe) == 96 and time_ids.tolist() == [[96, 96, 0, 0, 96, 96]]
    result = invedit.edit(pipe, image, SOURCE, TARGET, steps=3)
    assert result.image.size == (96, 96)
    with pytest.raises(InveditError, match="multiple of 32"):
        invedit.load(xl_dir, resolution=100)


def test_editors_declare_their_sdxl_layers(xl):
    infos = [info for _, _, info in attention_layers(xl.unet)]
    pnp = PlugAndPlay.create(xl, SOURCE, TARGET, 10)
    assert pnp.options["layers"] == "relative" and pnp.options["feature_layer"] == "up_blocks.0.resnets.1"
    up_self = [i.name for i in infos if i.place == "up" and not i.is_cross]
    assert pnp.options["attention_layers"] == [n for n in up_self if not n.startswith("up_blocks.0.attentions.0.")]
    masa = MutualSelfAttention.create(xl, "", TARGET, 10)
    count = infos[0].count
    assert masa.options["controlled_blocks"] == [o for o in range(count) if o * 16 >= 10 * count]
    for editor, options, message in ((PlugAndPlay, {"layers": "reference"}, "Stable Diffusion 1.x blocks"),
                                     (MutualSelfAttention, {"layers": "reference"}, "on SDXL use 'relative'")):
        with pytest.raises(InveditError, match=message):
            editor.create(xl, "", TARGET, 10, **options)


def test_pnp_relative_rule_picks_the_reference_layers_on_an_sd_layout():
    from pathlib import Path

    from invedit.testing import tiny_pipeline as sd_pipeline

    parity = invedit.load(Path(__file__).parent / "fixtures" / "parity" / "model")
    rel = PlugAndPlay.create(parity, SOURCE, TARGET, 10, layers="relative")
    ref = PlugAndPlay.create(parity, SOURCE, TARGET, 10)
    assert ref.options["layers"] == "reference"
    assert rel.options["attention_layers"] == ref.options["attention_layers"]
    assert rel.options["feature_layer"] == ref.options["feature_layer"] == "up_blocks.1.resnets.1"
    assert sd_pipeline is not None


def _cli_extra(inversion: str, editor: str, encoder: str) -> list[str]:
    extra = {"style-diffusion": ["-i", f"image_encoder={encoder}", "-i", "inner_steps=1"],
             "null-text": ["-i", "inner_steps=2"], "null-latent": ["-i", "inner_steps=2"]}.get(inversion, [])
    if editor == "masactrl":
        extra += ["-o", "start_step=1"]
    if editor == "p2p":
        extra += ["--blend", "red blue"]
    return extra


@pytest.mark.parametrize("inversion", sorted(n for n, c in INVERSIONS.items() if "ddim" in c.schedule_kinds))
def test_every_inversion_with_every_editor_from_the_cli(xl, xl_dir, tmp_path, image, inversion):
    fingerprint = model_fingerprint(xl)  # the folder's (test_the_folder_loads_as_an_sdxl_pipeline)
    encoder = tiny_image_encoder(tmp_path / "encoder") if inversion == "style-diffusion" else ""
    image.save(tmp_path / "in.png")
    for editor in ("p2p", "masactrl", "pnp", "pix2pix-zero", "none"):
        out = tmp_path / f"{editor}.png"
        args = ["edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--inversion", inversion,
                "--editor", editor, "--model", str(xl_dir), "--steps", "4", "--out", str(out), "-q",
                *_cli_extra(inversion, editor, encoder)]
        result = CliRunner().invoke(app, args)
        if inversion == "edict" and editor == "pix2pix-zero":
            assert result.exit_code == 2 and "2 chains per branch" in result.output
            continue
        assert result.exit_code == 0, f"{inversion}+{editor}: {result.output}"
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["inversion"] == inversion and record["editor"]["editor"] == editor
        assert record["nfe"] > 0 and record["model_fingerprint"] == fingerprint


def test_an_sd1_only_option_on_sdxl_is_one_line(xl_dir, tmp_path, image):
    image.save(tmp_path / "in.png")
    result = CliRunner().invoke(app, ["edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--editor",
                                      "masactrl", "-o", "layers=reference", "--model", str(xl_dir), "--steps", "6",
                                      "--out", str(tmp_path / "x.png"), "-q"])
    assert result.exit_code == 2 and "on SDXL use 'relative'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_cli_resolution_reaches_the_model_and_the_record(xl_dir, tmp_path, image):
    image.save(tmp_path / "in.png")
    out = tmp_path / "big.png"
    result = CliRunner().invoke(app, ["edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--model",
                                      str(xl_dir), "--steps", "3", "--resolution", "96", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["resolution"] == 96 and record["model_kind"] == "sdxl"
    from PIL import Image

    assert Image.open(out).size == (96, 96)
    bad = CliRunner().invoke(app, ["edit", str(tmp_path / "in.png"), "-s", SOURCE, "-t", TARGET, "--model",
                                   str(xl_dir), "--resolution", "50", "--out", str(tmp_path / "x.png"), "-q"])
    assert bad.exit_code == 2 and "resolution must be a multiple of 32" in bad.output


def test_layer_choices_on_the_real_sdxl_architecture():
    """SDXL base's UNet (built on the meta device: shapes only) — the layers each editor hooks there."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from invedit.editing.p2p import PromptToPrompt

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE_UNET)
    class MetaPipe:  # what the editors read of an SDXL pipeline: its UNet and the VAE's factor
        config: dict = {}
        vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(128, 256, 512, 512)))

    pipe = MetaPipe()
    pipe.unet = unet
    attach(pipe, StableDiffusionXL(pipe, name="sdxl-base-meta"))
    assert PromptToPrompt.default_blend_downsample(unet) == 4  # 128 / 4 = 32×32 maps at 1024 px
    infos = [info for _, _, info in attention_layers(unet)]
    assert infos[0].count == 70  # transformer blocks: 2·2·1 + 2·2·10 down, 10 mid, 3·2 + 3·10 up
    pnp = PlugAndPlay.create(pipe, "", TARGET, 50)
    assert pnp.options["feature_layer"] == "up_blocks.0.resnets.1"
    assert {n.rsplit(".transformer_blocks", 1)[0] for n in pnp.options["attention_layers"]} == {
        "up_blocks.0.attentions.1", "up_blocks.0.attentions.2", "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"}
    assert len(pnp.options["attention_layers"]) == 2 * 10 + 3 * 2
    masa = MutualSelfAttention.create(pipe, "", TARGET, 50)
    assert masa.options["controlled_blocks"] == list(range(44, 70))  # from 10/16 of the depth: 43.75 → 44


def test_sdxl_vae_runs_in_float32_when_the_networks_are_float16(xl):
    from invedit.backbones.unet import _vae_in

    vae_dtype = type(backbone(xl)).vae_dtype
    assert vae_dtype(backbone(xl)) == torch.float32  # a float32 pipeline: nothing to do
    xl.vae.to(torch.float16)
    try:
        assert xl.vae.config.force_upcast and vae_dtype(backbone(xl)) == torch.float32
        with _vae_in(xl.vae, torch.float32):
            assert xl.vae.dtype == torch.float32
        assert xl.vae.dtype == torch.float16  # back to its own dtype
        xl.vae.register_to_config(force_upcast=False)  # an fp16-fixed VAE stays in float16
        assert vae_dtype(backbone(xl)) == torch.float16
    finally:
        xl.vae.register_to_config(force_upcast=True)
        xl.vae.to(torch.float32)


def test_bench_runs_on_sdxl(xl_dir, tmp_path):
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.toy.bench import write_toy_bench

    data = write_toy_bench(tmp_path / "data", 1, seed=4, size=64)
    summary = run_bench(data, tmp_path / "run", parse_methods("direct+p2p,direct+pnp"), model=str(xl_dir), steps=3,
                        limit=2, progress=False, say=lambda m: None)
    assert (summary.done, summary.failed, summary.nfe_saved_in_run) == (4, 0, 2 * 3)
    record = json.loads(next((tmp_path / "run" / "edits" / "direct+pnp").glob("*.json")).read_text())
    assert record["model_kind"] == "sdxl" and record["editor"]["layers"] == "relative"
