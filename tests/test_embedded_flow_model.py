"""The embedded flow model (`shapes-flow`): an SD3-shaped MM-DiT trained on the shapes world, shipped in the package,
loaded offline through the same code path as a real SD 3 checkpoint, and really editing — Direct Inversion keeps the
background of a shared-attention edit better than Euler inversion, as on the UNet model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import invedit
from invedit.api import decode_latents, encode_image
from invedit.backbones import backbone
from invedit.images import psnr
from invedit.models import embedded_model_path, native_resolution
from invedit.sampling import RunStats
from invedit.toy.generation import generate
from invedit.toy.metrics import background_psnr, region_color
from invedit.toy.scenes import VOCABULARY, make_edit_example, make_scene

from .bounds import measured


@pytest.fixture(scope="module")
def flow_model():
    return invedit.load("shapes-flow", device="cpu", dtype="float32")


def test_loads_offline_by_name_as_an_sd3_pipeline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = invedit.load("shapes-flow", device="cpu")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and native_resolution(pipe) == 64
    record = backbone(pipe)
    assert (record.family, record.name, record.t5_tokens, record.schedule_kind) == ("sd3", "shapes-flow", 0, "flow")
    folder = embedded_model_path("shapes-flow")
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    for word in VOCABULARY:
        assert len(pipe.tokenizer(word).input_ids) == 3


def test_diffusers_own_pipeline_generates_what_invedit_samples(flow_model):
    """Same weights, same conditioning, same schedule: StableDiffusion3Pipeline called with the model's call options
    (max_sequence_length=0) and invedit's Euler steps over its backbone give the same latents."""
    from invedit.flow import euler_sample

    model = backbone(flow_model)
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    prompt = "a blue star on a dotted background"
    ref = flow_model(prompt, latents=start, num_inference_steps=6, guidance_scale=1.0, height=64, width=64,
                     max_sequence_length=0, output_type="latent").images
    emb = model.encode_prompts([prompt])
    ours = euler_sample(lambda x, t: model.denoise(x, t, emb, RunStats()), model.schedule(6), start)
    assert torch.equal(ours[-1:], ref)


def test_it_draws_the_prompted_colour(flow_model):
    """Generation through invedit (Euler, CFG 7.5): the prompted colour dominates the image."""
    from invedit.toy.metrics import majority_color
    from invedit.toy.scenes import COLORS

    images = generate(flow_model, [f"a {c} circle on a gray background" for c in COLORS], steps=20)
    hits = sum(majority_color(im) == colour for im, colour in zip(images, COLORS))
    assert measured("shapes-flow generation colour hits of 6", hits) >= 5


def test_it_draws_triangles_squares_and_stars(flow_model):
    """Generation (Euler, CFG 7.5): the prompted shape is recognised by the benchmark's judge. The first weights
    drew blobs (squares 17%, triangles 58% of benchmarks/flow_toy_quality.md's prompts; 2 and 4 of these 6 each);
    the shipped ones 100% / 100% there, 6 and 6 of 6 here (AVX2 and AVX-512, one thread). Stars, the hardest shape
    (sub-token points): 83% there, 5 of 6 here; the fourth fine-tune's weights drew 2 of 6 (62% there)."""
    from invedit.toy.metrics import dominant_object
    from invedit.toy.scenes import COLORS

    hits = {}
    for shape in ("triangle", "square", "star"):
        images = generate(flow_model, [f"a {c} {shape} on a gray background" for c in COLORS], steps=20)
        hits[shape] = sum(dominant_object(im)[1] == shape for im in images)
    assert measured("shapes-flow generation triangle hits of 6", hits["triangle"]) >= 5, hits
    assert measured("shapes-flow generation square hits of 6", hits["square"]) >= 4, hits
    assert measured("shapes-flow generation star hits of 6", hits["star"]) >= 3, hits


def test_euler_inversion_reconstructs_at_guidance_one(flow_model):
    values = []
    for seed in range(900_000, 900_004):  # scenes outside the training draw
        scene = make_scene(seed)
        image = Image.fromarray(scene.image)
        result = invedit.edit(flow_model, image, scene.caption, scene.caption,
                              inversion="euler", editor="none", guidance_scale=1.0, steps=28)
        values.append(psnr(result.reconstruction, decode_latents(flow_model, encode_image(flow_model, image))[0]))
    assert measured("shapes-flow euler reconstruction, mean dB", np.mean(values)) >= 30, values


def test_the_shipped_model_recommends_its_shared_attention_settings_and_edits_use_them(flow_model):
    from training.shapes_flow.config import EDITOR_DEFAULTS

    edit = make_edit_example(0, "color")
    result = invedit.edit(flow_model, Image.fromarray(edit.source_image), edit.source_prompt, edit.target_prompt,
                          editor="shared-attention", steps=6, guidance_scale=2.0)
    assert result.settings["editor_model_defaults"] == EDITOR_DEFAULTS["shared-attention"]  # what training exports
    assert result.settings["editor"]["share"] == "v" and result.settings["editor"]["blocks"] == "all"


def test_direct_keeps_the_background_of_a_shared_attention_edit_better_than_euler(flow_model):
    """The paper's claim carried to the flow model: same shared-attention edit (the model's settings, CFG 2),
    Direct vs Euler inversion, background PSNR outside the edit mask."""
    gains, reached = [], 0
    for seed in range(4):
        edit = make_edit_example(seed, "color")
        direct = invedit.invert(flow_model, Image.fromarray(edit.source_image), edit.source_prompt, "direct",
                                steps=28, guidance_scale=2.0)
        bg = {}
        for inverted in (direct, direct.as_method("euler")):  # one Euler inversion serves both
            result = invedit.edit(flow_model, inverted, None, edit.target_prompt, editor="shared-attention",
                                  guidance_scale=2.0)
            bg[inverted.method] = background_psnr(np.asarray(result.image), edit.source_image, edit.mask)
            if inverted.method == "direct":
                wanted = edit.blend_words.split()[1]
                reached += region_color(np.asarray(result.image), edit.mask & edit.target.object_mask) == wanted
        gains.append(bg["direct"] - bg["euler"])
    # measured +2.4 dB on these 4 edits (AVX2 and AVX-512, 1 thread; −0.9, +0.3, +6.0, +4.1: the first is the demo's
    # scene); +3.0 dB on 100 held-out colour edits (benchmarks/flow_toy_quality.md); docs/test-bounds.md
    assert measured("shapes-flow direct - euler background, mean dB", np.mean(gains)) >= 2, gains
    # measured 3 of 4 (65% of 100 in the benchmark: the shared values that hold the layout also hold the colour)
    assert measured("shapes-flow direct colour edits reaching the target of 4", reached) >= 1


def test_demo_and_bench_run_on_it(tmp_path):
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.cli import app
    from invedit.toy.bench import write_toy_bench

    out = tmp_path / "demo.png"
    result = CliRunner().invoke(app, ["demo", "--model", "shapes-flow", "--steps", "8", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).width == 5 * 192  # source | reconstruction | Euler+SA | Direct+SA | true target
    assert "Euler+SA" in result.stdout and "Direct+SA" in result.stdout and "background_psnr" in result.stdout
    write_toy_bench(tmp_path / "data", 1, seed=1)
    summary = run_bench(tmp_path / "data", tmp_path / "run", parse_methods("direct+shared-attention,none+flowedit"),
                        model="shapes-flow", steps=6, limit=2, progress=False, say=lambda *a: None)
    assert (summary.done, summary.failed) == (4, 0)
