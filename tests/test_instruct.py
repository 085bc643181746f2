"""Instruction-trained baselines (FLUX.1 Kontext, Qwen-Image-Edit) through the ``instruct`` editor with inversion
``none``: an edit equals the model's own diffusers pipeline called with the same image, instruction, seed, steps and
guidance (final latents bit for bit, images within the one level that rounding vs truncating to uint8 moves); the
other methods, a missing or misplaced instruction and old diffusers are refused in one line before any network call
(the CLI: before the load); the CLI and `bench` run them on the instruction (PIE-Bench's ``editing_instruction``)
and the report puts them in their own group.

Qwen-Image-Edit's pipeline conditions on the image resized to about one megapixel whatever the output size (its
``calculate_dimensions(1024 * 1024, …)``): 20 s per tiny edit on a CPU, nearly all VAE encoding. These tests
replace that function by the working size on both sides of each comparison (`small_condition`), which is the same
code path at a size the suite can afford.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import invedit
from invedit.backbones import backbone
from invedit.backbones.instruct import FluxKontextBackbone, QwenImageEditBackbone
from invedit.cli import app
from invedit.errors import InveditError
from invedit.testing import tiny_instruction_pipeline, tiny_pipeline

from .conftest import scene_image

INSTRUCTION = "make the square blue"
STEPS, SEED = 2, 3


@pytest.fixture(scope="module")
def small_condition():
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as qwen

    original = qwen.calculate_dimensions
    qwen.calculate_dimensions = lambda area, ratio: (64, 64, None)
    yield
    qwen.calculate_dimensions = original


@pytest.fixture(scope="module")
def kontext():
    return tiny_instruction_pipeline("flux-kontext")


@pytest.fixture(scope="module")
def qwen(small_condition):
    return tiny_instruction_pipeline("qwen-image-edit")


def diffusers_edit(pipe, image, output_type: str, **arguments):
    """The pipeline called directly, as a user of diffusers would, with a CPU generator seeded with SEED."""
    return pipe(image=image, prompt=INSTRUCTION, height=64, width=64, num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type=output_type, **arguments).images


@pytest.mark.parametrize("family", ["flux-kontext", "qwen-image-edit"])
def test_an_edit_is_the_models_own_pipeline(family, request):
    """Kontext at guidance 2.5 (embedded; one row per step), Qwen-Image-Edit at true_cfg_scale 4 against " " (two
    calls per step): the final latent is the pipeline's bit for bit, the image within one level of its PIL output;
    the source branch is the VAE's reconstruction of z0; the record names the instruction and the model's settings."""
    pipe = request.getfixturevalue("kontext" if family == "flux-kontext" else "qwen")
    image = scene_image()
    result = invedit.edit(pipe, image, None, None, inversion="none", editor="instruct", steps=STEPS, seed=SEED,
                          instruction=INSTRUCTION)
    model = backbone(pipe)
    if family == "flux-kontext":
        arguments = dict(guidance_scale=2.5, max_area=64 * 64, _auto_resize=False)
        nfe = STEPS
    else:
        arguments = dict(true_cfg_scale=4.0, negative_prompt=" ")
        nfe = 2 * STEPS
    latents = diffusers_edit(pipe, image, "latent", **arguments)
    assert torch.equal(result.latents[1:], model.unpack(latents).float())
    own = np.asarray(diffusers_edit(pipe, image, "pil", **arguments)[0], dtype=int)
    assert np.abs(np.asarray(result.image, dtype=int) - own).max() <= 1
    assert torch.equal(result.latents[:1], model.encode_image(image))
    assert (result.nfe_inversion, result.nfe_edit) == (0, nfe)
    record = result.record()
    assert (record["instruction"], record["target_prompt"], record["inversion"]) == (INSTRUCTION, None, "none")
    guidance = 2.5 if family == "flux-kontext" else 4.0
    negative = None if family == "flux-kontext" else " "
    assert record["editor"] == {"editor": "instruct", "guidance": guidance, "negative_prompt": negative}
    assert record["model_kind"] == family


def test_options_reach_the_pipeline(kontext):
    """``guidance`` is Kontext's embedded guidance; a negative prompt turns on its true CFG (two calls per step)."""
    image = scene_image()
    result = invedit.edit(kontext, image, "a red square", None, inversion="none", editor="instruct", steps=STEPS,
                          seed=SEED, instruction=INSTRUCTION, guidance=4.0, negative_prompt="a circle")
    latents = diffusers_edit(kontext, image, "latent", guidance_scale=4.0, max_area=64 * 64, _auto_resize=False,
                             negative_prompt="a circle", true_cfg_scale=4.0)
    assert torch.equal(result.latents[1:], backbone(kontext).unpack(latents).float())
    assert result.nfe_edit == 2 * STEPS and result.record()["source_prompt"] == "a red square"


def test_the_web_page_edits_by_the_instruction_in_its_target_box(kontext):
    """On an instruction model the page's target box holds the instruction: the session's edit equals
    `invedit.edit` with that instruction (latents bit for bit), and "edit this result again" starts the next
    instruction empty."""
    from invedit.ui.session import EditRequest, EditSession

    image = scene_image()
    outcome = EditSession(kontext).edit(EditRequest(image, "a red square", INSTRUCTION, inversion="none",
                                                    editor="instruct", steps=STEPS, seed=SEED))
    direct = invedit.edit(kontext, image, "a red square", None, inversion="none", editor="instruct", steps=STEPS,
                          seed=SEED, instruction=INSTRUCTION)
    assert torch.equal(outcome.result.latents, direct.latents)
    assert (outcome.result.settings["instruction"], outcome.result.settings["target_prompt"]) == (INSTRUCTION, None)
    follow_up = outcome.follow_up()
    assert (follow_up["source_prompt"], follow_up["target_prompt"]) == ("", "")


def _refuse_any_call(monkeypatch, pipe):
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("the pipeline was called"))
    monkeypatch.setattr(backbone(pipe).pipe.vae, "encode", lambda *a, **k: pytest.fail("the VAE was called"))


def test_other_methods_and_misplaced_prompts_are_refused_in_one_line(kontext, monkeypatch):
    _refuse_any_call(monkeypatch, kontext)
    image = scene_image()
    cases = [
        (dict(inversion="direct", editor="p2p", target="a blue square"),
         r"^inversion 'direct' does not run on flux-kontext models \(instruction schedule\); use one of: none$"),
        (dict(inversion="none", editor="flowedit", target="a blue square"),
         r"^editor 'flowedit' does not run on flux-kontext models \(instruction schedule\): it integrates an ODE "
         r"between rectified flows \(SD3/FLUX\); use one of: instruct$"),
        (dict(inversion="direct", editor="instruct", instruction=INSTRUCTION),
         r"^editor 'instruct' needs no inversion; use it with inversion 'none', not 'direct'$"),
        (dict(inversion="none", editor="instruct"),
         r"^editor 'instruct' needs an instruction \(instruction= in Python, --instruction on the command line\)"),
        (dict(inversion="none", editor="instruct", target="a blue square"),
         r"^editor 'instruct' edits from an instruction, not a target prompt: give instruction= \(--instruction\) "
         r"instead$"),
        (dict(inversion="none", editor="instruct", instruction="  "), r"^the instruction is empty$"),
        (dict(inversion="none", editor="instruct", instruction="make it purple", guidance=-1),
         r"^guidance must be a number in \[0, 50\], got -1$"),
    ]
    for case, message in cases:
        with pytest.raises(InveditError, match=message):
            invedit.edit(kontext, image, "a red square", case.pop("target", None), steps=STEPS, **case)
    flux = tiny_pipeline(kind="flux")
    with pytest.raises(InveditError, match=r"^editor 'p2p' takes a target prompt, not an instruction; the "
                                           r"instruction editors \(instruct\) run instruction-trained models$"):
        invedit.edit(flux, image, "a red square", "a blue square", editor="p2p", instruction=INSTRUCTION)
    with pytest.raises(InveditError, match=r"^editor 'instruct' does not run on flux models \(flow schedule\): it "
                                           r"runs an instruction-trained model's own pipeline"):
        invedit.edit(flux, image, None, None, inversion="none", editor="instruct", instruction=INSTRUCTION)


def test_old_diffusers_is_refused_in_one_line(monkeypatch, tmp_path):
    """Both pipelines came to diffusers long after invedit's lowest declared 0.30: a folder of either family is
    refused before its weights load (`Backbone.check_requirements`)."""
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.30.0" if name == "diffusers" else real(name))
    for family in (FluxKontextBackbone, QwenImageEditBackbone):
        with pytest.raises(InveditError, match=rf"^{family.family} models need diffusers >= 0.42.1 \(tested with it; "
                                               r"found 0.30.0\): pip install -U 'diffusers>=0.42.1'$"):
            family.check_requirements()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxKontextPipeline"}))
    with pytest.raises(InveditError, match=r"^flux-kontext models need diffusers >= 0.42.1"):
        invedit.load(str(tmp_path), device="cpu")


@pytest.fixture(scope="module")
def kontext_folder(kontext, tmp_path_factory):
    root = tmp_path_factory.mktemp("kontext")
    kontext.save_pretrained(root / "model")
    scene_image().save(root / "in.png")
    return root


def test_the_cli_edits_by_instruction_and_refuses_the_rest_before_loading(kontext_folder, tmp_path, monkeypatch):
    base = ["edit", str(kontext_folder / "in.png"), "--model", str(kontext_folder / "model"), "--resolution", "64",
            "--steps", str(STEPS), "-q"]
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [*base, "--out", str(out), "--inversion", "none", "--editor", "instruct",
                                      "--instruction", INSTRUCTION, "--seed", str(SEED)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["instruction"], record["model_kind"], record["nfe_edit"]) == (INSTRUCTION, "flux-kontext", STEPS)

    import invedit.models

    monkeypatch.setattr(invedit.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    for argv, message in [
        (["-s", "a red square", "-t", "a blue square"], "error: inversion 'direct' does not run on flux-kontext "
                                                        "models (instruction schedule); use one of: none"),
        (["--inversion", "none", "--editor", "instruct", "-t", "a blue square"],
         "error: editor 'instruct' edits from an instruction, not a target prompt: give instruction= "
         "(--instruction) instead"),
        (["--inversion", "none", "--editor", "instruct"], "error: editor 'instruct' needs an instruction"),
        (["-s", "a red square", "--instruction", INSTRUCTION], "error: Missing option '--target' / '-t'."),
    ]:
        refused = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "no.png"), *argv])
        assert refused.exit_code == 2 and refused.stderr.strip().startswith(message), refused.output
        assert not (tmp_path / "no.png").exists()


def test_bench_runs_them_on_the_instruction_and_the_report_groups_them(kontext_folder, tmp_path):
    """`bench` on PIE-Bench-format data: the entry's ``editing_instruction`` is the instruction (recorded beside
    the entry's prompts); other methods are refused in one line before the first entry; the report lists it under
    its own heading."""
    from invedit.bench.methods import parse_methods
    from invedit.bench.report import instruction_families
    from invedit.bench.runner import run_bench
    from invedit.toy.bench import write_toy_bench

    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    entries = json.loads((data / "mapping_file.json").read_text())
    with pytest.raises(InveditError, match=r"^method direct\+p2p: inversion 'direct' does not run on flux-kontext "
                                           r"models \(instruction schedule\); use one of: none$"):
        run_bench(data, tmp_path / "refused", parse_methods("none+instruct,direct+p2p"),
                  model=str(kontext_folder / "model"), steps=STEPS, resolution=64, limit=2, progress=False,
                  say=lambda m: None)
    assert not (tmp_path / "refused").exists()  # refused before the first entry
    summary = run_bench(data, tmp_path / "run", parse_methods("none+instruct"),
                        model=str(kontext_folder / "model"), steps=STEPS, resolution=64, limit=2, progress=False,
                        say=lambda m: None)
    assert (summary.done, summary.failed) == (2, 0)
    for path in sorted((tmp_path / "run" / "edits" / "none+instruct").glob("*.json")):
        record = json.loads(path.read_text())
        entry = entries[record["bench"]["id"]]
        assert record["instruction"] == record["bench"]["instruction"] == entry["editing_instruction"]
        assert record["source_prompt"] == entry["original_prompt"] and record["nfe_edit"] == STEPS
    assert instruction_families() == {"flux-kontext", "qwen-image-edit"}


def test_qwen_image_edit_runs_from_bench(qwen, tmp_path):
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.toy.bench import write_toy_bench

    qwen.save_pretrained(tmp_path / "model")
    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    summary = run_bench(data, tmp_path / "run", parse_methods("none+instruct"), model=str(tmp_path / "model"),
                        steps=STEPS, resolution=64, limit=1, progress=False, say=lambda m: None)
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    record = json.loads(next((tmp_path / "run" / "edits" / "none+instruct").glob("*.json")).read_text())
    assert record["model_kind"] == "qwen-image-edit" and record["nfe_edit"] == 2 * STEPS
    assert record["instruction"] == record["bench"]["instruction"]
