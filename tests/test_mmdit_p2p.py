"""MM-DiT Prompt-to-Prompt (Shin et al., ICCV 2025) against the official code's recorded outputs on the tiny random
SD3 / FLUX pipelines (tests/fixtures/parity_flow3: final latents, LocalBlend masks, decoded images of the official
SNU-VGILab/exploring-mmdit controller at commit a1721cd, README.md there), and its properties with Direct Inversion.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

import invedit
from invedit.api import loop_context
from invedit.backbones import backbone
from invedit.backbones.flux import pack_latents, unpack_latents
from invedit.editing import get_editor
from invedit.editing.mmdit_p2p import MMDiTPromptToPrompt, known_model
from invedit.errors import InveditError
from invedit.inversion.base import InversionInputs
from invedit.inversion.euler import EulerInverted
from invedit.inversion.generated import Generated
from invedit.models import prepare_pipeline
from invedit.sampling import RunStats, denoise_two_branches

FIXTURE = Path(__file__).parent / "fixtures"
RUNS = torch.load(FIXTURE / "parity_flow3" / "mmdit_runs.pt")
IMAGES = np.load(FIXTURE / "parity_flow3" / "mmdit_images.npz")
SOURCE, TARGET = "a yellow square on a striped background", "a yellow star on a striped background"
SEEDS = {"sd3": 864, "flux": 12341234}  # the official examples' seeds (sd3m_editing.ipynb, README Quick Start)
# Measured (torch 2.14.1 CPU, 1 thread): max|diff| of the final latents 0 (FLUX, every run: the same operations in
# the same order) and up to 2.7e-6 (SD3; |latents| up to ~5); the official replacement alone moves the target by
# 5e-5 to 5e-3 (README M8), partial LocalBlend by 7e-3 to 0.1, so the bound separates them.
ATOL = 1e-5
MIN_PSNR = 45.0


@pytest.fixture(scope="module")
def pipes():
    def load(family):
        pipe = DiffusionPipeline.from_pretrained(str(FIXTURE / "parity_flow" / f"tiny_{family}"), local_files_only=True)
        return prepare_pipeline(pipe, resolution=128)

    return {family: load(family) for family in ("sd3", "flux")}


def family_of(run: str) -> str:
    return "flux" if "_flux_" in run else "sd3"


def options_of(ref: dict) -> dict:
    options = {}
    if "local_blend_words" in ref:
        options = {"local_blend_words": f"{ref['local_blend_words'][0][0]} {ref['local_blend_words'][1][0]}",
                   "local_blend_threshold": ref["local_blend_threshold"], "aggregate_blocks": ref["aggregate_blocks"]}
    if "replace_steps" in ref:
        options["replace_steps"] = ref["replace_steps"]
    return options


def euler_inverted(pipe, z0: torch.Tensor, steps: int = 10) -> EulerInverted:
    """Plain Euler inversion (guidance 1) of given latents under the source prompt: the official runs' harness."""
    model = backbone(pipe)
    cond, null = model.encode_prompts([SOURCE, ""]).split(1)
    inputs = InversionInputs(model=model, z0=z0, prompt=SOURCE, cond=cond, null=null, schedule=model.schedule(steps),
                             guidance_scale=1.0, stats=RunStats(), generator=torch.Generator().manual_seed(0))
    return EulerInverted.run(inputs, **EulerInverted.validate_options({"inversion_guidance": 1.0}))


def run_editor(pipe, inverted, guidance: float, editor: str = "mmdit-p2p", **options):
    """One edit through the loop `invedit.edit` runs; returns the latents, the editor and the cost."""
    built = get_editor(editor).create(pipe, SOURCE, TARGET, inverted.steps, **options)
    ctx = loop_context(pipe, inverted, built, SOURCE, TARGET, guidance, 0)
    with built.attach(ctx.denoiser.model, ctx.denoiser.values):
        latents = denoise_two_branches(inverted.sampler(ctx), ctx, built)
    return latents, built, ctx.denoiser.stats


def official_mask(family: str, recorded: torch.Tensor) -> torch.Tensor:
    """The recorded union mask as a (1, 1, 16, 16) latent mask (FLUX's is per packed token)."""
    if family == "sd3":
        return recorded
    return unpack_latents(recorded.view(1, 64, 1).expand(1, 64, 4), 16, 16)[:, :1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


@pytest.mark.parametrize("run", [r for r in RUNS if "-real-" not in r])
def test_generated_pairs_match_the_official_code(run, pipes, one_thread):
    """Source and target from the seed's initial noise, drawn as the diffusers pipeline draws it, edited by qiki
    (default windows, replace_steps 1.0) and LocalBlend (partial masks at 0.97 / 0.8, all-ones at 0.3, README M7)."""
    ref, family = RUNS[run], family_of(run)
    pipe, model = pipes[family], backbone(pipes[family])
    noise = model.initial_noise(SEEDS[family])
    assert torch.equal(pack_latents(noise) if family == "flux" else noise, ref["initial_noise"])
    start = Generated.from_seed(model, SOURCE, ref["steps"], SEEDS[family], ref["guidance_scale"])
    latents, editor, stats = run_editor(pipe, start, ref["guidance_scale"], **options_of(ref))
    final = torch.cat([latents.source, latents.target])
    assert (final - ref["final_latents"]).abs().max() < ATOL
    rows = 4 if family == "sd3" else 2  # SD3: [uncond, cond] x 2 branches under CFG 7; FLUX: guidance embedded
    assert stats.nfe == rows * ref["steps"]
    if "lb_mask_last" in ref:
        assert torch.equal(editor.blend.mask, official_mask(family, ref["lb_mask_last"]).to(editor.blend.mask))
    if f"{run}/target" in IMAGES:
        decoded = model.decode(final)
        for image, key in zip(decoded, ("source", "target")):
            assert psnr(np.asarray(image), IMAGES[f"{run}/{key}"]) >= MIN_PSNR


@pytest.mark.parametrize("run", [r for r in RUNS if "-real-" in r])
def test_real_images_match_euler_then_the_official_controller(run, pipes, one_thread):
    """The official harness: Euler inversion of the image, then the controller from z_T for both branches — exactly
    euler+mmdit-p2p (guidance 1, and the examples' guidance: SD3 CFG 7, FLUX 3.5)."""
    ref, family = RUNS[run], family_of(run)
    inverted = euler_inverted(pipes[family], ref["x_src"])
    latents, editor, _ = run_editor(pipes[family], inverted, ref["guidance_scale"], **options_of(ref))
    assert (torch.cat([latents.source, latents.target]) - ref["final_latents"]).abs().max() < ATOL
    if "lb_mask_last" in ref:
        assert torch.equal(editor.blend.mask, official_mask(family, ref["lb_mask_last"]).to(editor.blend.mask))
    if f"{run}/target" in IMAGES:
        decoded = backbone(pipes[family]).decode(torch.cat([latents.source, latents.target]))
        for image, key in zip(decoded, ("source", "target")):
            assert psnr(np.asarray(image), IMAGES[f"{run}/{key}"]) >= MIN_PSNR


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_replacement_is_what_moves_the_target(family, pipes, one_thread):
    """Without the controller the same generated pair misses the official qiki target by far more than ATOL."""
    ref = RUNS[f"mmdit-qiki-r100-s8_{family}_caseB"]
    start = Generated.from_seed(backbone(pipes[family]), SOURCE, 8, SEEDS[family], ref["guidance_scale"])
    plain, _, _ = run_editor(pipes[family], start, ref["guidance_scale"], editor="none")
    assert (plain.target - ref["final_latents"][1:]).abs().max() > 50 * ATOL  # measured 7e-4 (FLUX), 2.5e-3 (SD3)
    assert (plain.source - ref["final_latents"][:1]).abs().max() < ATOL  # the source row is never touched


def test_invedit_edit_without_an_image_is_the_generated_pair(pipes, one_thread):
    """`invedit.edit(pipe, None, ...)` runs that path; the user gets both images; bad combinations are refused."""
    ref = RUNS["mmdit-qiki-s8_flux_caseB"]
    result = invedit.edit(pipes["flux"], None, SOURCE, TARGET, editor="mmdit-p2p", steps=8, guidance_scale=3.5,
                          seed=SEEDS["flux"])
    assert (result.latents - ref["final_latents"]).abs().max() < ATOL
    assert result.settings["inversion"] == "generate" and result.nfe_inversion == 0
    assert result.source is result.reconstruction
    with pytest.raises(InveditError, match="not inverted"):
        invedit.edit(pipes["flux"], None, SOURCE, TARGET, inversion="direct", editor="mmdit-p2p", steps=2)
    with pytest.raises(InveditError, match="without inverting"):
        invedit.edit(pipes["flux"], None, SOURCE, TARGET, editor="flowedit", steps=2)


def test_generation_is_refused_on_a_unet(pipe):
    with pytest.raises(InveditError, match="SD3 / FLUX"):
        invedit.edit(pipe, None, "a red square", "a blue square", editor="p2p", steps=2)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_direct_keeps_the_source_exact_and_blends_the_background(family, pipes, one_thread):
    """direct+mmdit-p2p on the real image: the source branch ends on z*_0 bit for bit; with LocalBlend at every step
    the target equals the source outside the mask; the edit reads the source rows only while it replaces or blends
    (NFE against euler+mmdit-p2p)."""
    pipe = pipes[family]
    image = FIXTURE / "parity_flow" / "inputs" / "caseB.png"
    options = {"local_blend_words": "square star", "local_blend_threshold": 0.8 if family == "flux" else 0.97}
    inverted = invedit.invert(pipe, image, SOURCE, method="direct", steps=10, guidance_scale=1.0)
    latents, editor, stats = run_editor(pipe, inverted, 1.0, local_blend_steps=1.0, **options)
    assert torch.equal(latents.source, inverted.z0)
    outside = editor.blend.mask == 0
    assert outside.any() and not outside.all()
    assert torch.equal((latents.target - latents.source) * outside, torch.zeros_like(latents.target))
    # NFE: the target's row every step, the source's while replacing (2 of 10 steps) or blending (all 10 here;
    # 5 with the default local_blend_steps 0.5); Euler computes both rows every step.
    assert stats.nfe == 20
    _, _, default_stats = run_editor(pipe, inverted, 1.0, **options)
    assert default_stats.nfe == 15
    _, _, plain_stats = run_editor(pipe, inverted, 1.0, local_blend_words=None)
    assert plain_stats.nfe == 12


def test_blend_words_become_clip_and_t5_columns(pipes):
    """Token positions as the official get_word_inds gives them (README: CLIP square/star 3; T5 square 6-9, star
    6-7; SD3's T5 columns follow its 77 CLIP ones)."""
    sd3, flux = backbone(pipes["sd3"]), backbone(pipes["flux"])
    assert MMDiTPromptToPrompt.word_columns(sd3, SOURCE, "square") == [3, 83, 84, 85, 86]
    assert MMDiTPromptToPrompt.word_columns(sd3, TARGET, "star") == [3, 83, 84]
    assert MMDiTPromptToPrompt.word_columns(sd3, SOURCE, "square", "clip") == [3]
    assert MMDiTPromptToPrompt.word_columns(sd3, SOURCE, "square", "t5") == [83, 84, 85, 86]
    assert MMDiTPromptToPrompt.word_columns(flux, SOURCE, "square") == [6, 7, 8, 9]
    bracketed = MMDiTPromptToPrompt.word_columns(flux, "a yellow [square] on it", "square")  # PIE-Bench's marks
    assert {6, 7, 8, 9} < set(bracketed) and max(bracketed) < 14
    # An object added by the edit is named in the target only: its source map is empty, as in the official code.
    editor = MMDiTPromptToPrompt.create(pipes["flux"], SOURCE, TARGET + " and a star", 4,
                                        local_blend_words="star star")
    assert editor.blend.columns[0] == [] and editor.blend.columns[1] == [6, 7, 21, 22]
    with pytest.raises(InveditError, match="not a word of the source prompt"):
        MMDiTPromptToPrompt.create(pipes["flux"], SOURCE, TARGET, 4, local_blend_words="circle star")


def test_options_are_checked_with_clear_errors(pipes):
    for options, message in (({"method": "qq"}, "method must be one of"),
                             ({"replace_steps": 1.5}, "replace_steps"),
                             ({"local_blend_words": "square star", "aggregate_blocks": [9]}, "not one of this model"),
                             ({"local_blend_words": "square star", "aggregate_blocks": "0,x"}, "not a block index"),
                             ({"local_blend_words": "square star", "local_blend_kernel": 4}, "must be odd"),
                             ({"local_blend_words": "square star", "tokenizer_choice": "x"}, "tokenizer_choice")):
        with pytest.raises(InveditError, match=message):
            MMDiTPromptToPrompt.create(pipes["sd3"], SOURCE, TARGET, 8, **options)
    editor = MMDiTPromptToPrompt.create(pipes["sd3"], SOURCE, TARGET, 10, local_blend_words="square star",
                                        aggregate_blocks="1", replace_steps="0.1,0.3")
    assert editor.replace_window == (1, 3) and editor.aggregated == {"transformer_blocks.1.attn"}


def test_the_editor_refuses_unet_models(pipe, image):
    with pytest.raises(InveditError, match="does not run on sd models"):
        invedit.edit(pipe, image, "a red square", "a blue square", editor="mmdit-p2p", steps=2)


def test_default_blocks_follow_the_paper_and_the_depth_rule(pipes):
    """The top-5 blocks on the real models; on others the same relative depth; schnell's few-step rule."""
    from types import SimpleNamespace

    def fake(family, **config):
        return SimpleNamespace(family=family, denoiser=SimpleNamespace(config=SimpleNamespace(**config)))

    assert known_model(fake("flux", num_layers=19, num_single_layers=38)) == "flux-dev"
    assert known_model(fake("sd3", num_layers=24, dual_attention_layers=())) == "sd3-m"
    assert known_model(fake("sd3", num_layers=24, dual_attention_layers=(0, 1))) == "sd3.5-m"
    assert known_model(fake("sd3", num_layers=38, dual_attention_layers=())) == "sd3.5-l"
    assert known_model(backbone(pipes["sd3"])) is None
    words = {"local_blend_words": "square star"}
    # 2 joint blocks: SD3-medium's [7, 8, 5, 4, 9] of 24 all sit in the first half; FLUX.1-dev's [18, 17, 12, 14,
    # 11] of 19 double-stream blocks in the second.
    assert MMDiTPromptToPrompt.create(pipes["sd3"], SOURCE, TARGET, 8, **words).options["aggregate_blocks"] == [0]
    assert MMDiTPromptToPrompt.create(pipes["flux"], SOURCE, TARGET, 8, **words).options["aggregate_blocks"] == [1]
    flux = pipes["flux"].transformer
    flux.register_to_config(guidance_embeds=False)  # FLUX.1-schnell's shape (create only reads the config)
    try:
        editor = MMDiTPromptToPrompt.create(pipes["flux"], SOURCE, TARGET, 4)
    finally:
        flux.register_to_config(guidance_embeds=True)
    assert editor.replace_window == (0, 1) and editor.options["replace_blocks"] == [0, 1, 2]  # 38/57 of 4 → 3


def test_processors_are_restored_and_other_editors_keep_diffusers_processors(pipes, one_thread):
    pipe = pipes["flux"]
    before = {k: type(v) for k, v in pipe.transformer.attn_processors.items()}
    start = Generated.from_seed(backbone(pipe), SOURCE, 2, 0, 3.5)
    run_editor(pipe, start, 3.5, local_blend_words="square star")
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == before


def test_cli_generates_a_pair_and_takes_blend_words(tmp_path):
    """`invedit edit --generate` writes the edit, the generated source and the record; `--blend` becomes
    local_blend_words; bad combinations exit 2 with one line, before the model loads."""
    import json

    from typer.testing import CliRunner

    from invedit.cli import app
    from invedit.prepare import check_settings

    model = str(FIXTURE / "parity_flow" / "tiny_flux")
    out = tmp_path / "pair.png"
    common = ["-s", SOURCE, "-t", TARGET, "--model", model, "--resolution", "128", "--editor", "mmdit-p2p",
              "--guidance", "3.5", "-q"]
    result = CliRunner().invoke(app, ["edit", "--generate", *common, "--steps", "2", "--blend", "square star",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.with_name("pair.source.png").is_file()
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["inversion"], record["editor"]["method"], record["nfe_inversion"]) == ("generate", "qiki", 0)
    assert record["blend_words"] == ["square", "star"]
    assert check_settings("direct", "mmdit-p2p", blend="square star").editor_options == {
        "local_blend_words": ("square", "star")}
    image = str(FIXTURE / "parity_flow" / "inputs" / "caseB.png")
    for args, message in ((["edit", image, "--generate", *common], "give no IMAGE"),
                          (["edit", *common], "give the IMAGE"),
                          (["edit", image, *common, "--blend", "circle star"], "not a word of the source prompt")):
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and message in refused.output and "Traceback" not in refused.output
