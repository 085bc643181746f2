"""Issue 29, "fail before the load": everything a model folder's configs say is checked before any weight is
read (`invedit.preflight`, `invedit.models.inspect`), for the command line, Python, the benchmark and the UI.

Config-only folders (the tiny SD 3 / FLUX fixtures with every weight file deleted) prove it: a check that ran only
after a load would end in "has no weights" instead of its own message. Plus the broken-folder messages, the memory
limit, the family's defaults (editor, guidance, FLUX.1-schnell) and the smaller items of the issue.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import invedit
from invedit.cli import app
from invedit.errors import InveditError, InveditWarning, ModelNotFoundError
from invedit.models import inspect
from invedit.prepare import check_settings, model_numbers

from .conftest import SOURCE, TARGET, scene_image

FIXTURES = Path(__file__).parent / "fixtures" / "parity_flow"
NO_WEIGHTS = "has no weights"


def copy_model(kind: str, dest: Path, weights: bool = True) -> Path:
    """The tiny fixture checkpoint of ``kind`` ("sd3", "flux") copied to ``dest``; without weight files unless
    ``weights``."""
    shutil.copytree(FIXTURES / f"tiny_{kind}", dest)
    if not weights:
        for path in dest.rglob("*.safetensors"):
            path.unlink()
    return dest


@pytest.fixture(scope="module")
def config_only(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("config-only")
    return {kind: copy_model(kind, root / kind, weights=False) for kind in ("sd3", "flux")}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "in.png"
    scene_image().save(path)
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + result.stderr


def edit(image_file, model, *args) -> tuple[int, str]:
    return run("edit", image_file, "-s", "a cat", "-t", "a dog", "--model", model, "--out",
               image_file.parent / "out.png", "-q", *args)


# ---- every family / option refusal before any weight --------------------------------------------------------
REFUSALS = [  # (model kind, arguments, the start of the message)
    ("flux", ["--editor", "p2p"], "editor 'p2p' does not run on flux models (flow schedule)"),
    ("sd3", ["--inversion", "ddim", "--editor", "none"], "inversion 'ddim' does not run on sd3 models"),
    ("sd3", ["--inversion", "rf-inversion", "--editor", "none"], "inversion 'rf-inversion' runs on FLUX models only"),
    ("sd3", ["--editor", "masactrl"], "editor 'masactrl' does not run on sd3 models"),
    ("flux", ["-o", "start_step=0.9", "-o", "end_step=0.5"], "shared-attention start_step 0.9 must be below end_step"),
    ("flux", ["--editor", "kv-edit"], "editor 'kv-edit' edits only inside a mask"),
    ("sd3", ["--steps", "5000"], "steps must be an integer from 1 to 1000"),
    ("sd3", ["--resolution", "0"], "resolution must be an integer of at least 32 pixels (a multiple of 16"),
    ("sd3", ["--resolution", "16"], "resolution must be an integer of at least 32 pixels"),
    ("sd3", ["--resolution", "72"], "resolution must be a multiple of 16 pixels (the VAE factor × 2), got 72; e.g. 64"),
    ("sd3", ["--resolution", "1000000"], "resolution 1000000 needs about"),
    ("flux", ["--max-memory", "0.000001"], "resolution 1024 needs about"),
]


@pytest.mark.parametrize(("kind", "args", "message"), REFUSALS, ids=[" ".join(r[1]) for r in REFUSALS])
def test_family_and_option_refusals_come_before_any_weight(config_only, image_file, kind, args, message):
    code, output = edit(image_file, config_only[kind], *args)
    assert code == 2, output
    assert output.startswith(f"error: {message}") and output.count("\n") == 1, output


def test_a_valid_edit_on_a_config_only_folder_gets_as_far_as_the_weights(config_only, image_file):
    """The control: nothing above was refused by accident: a good command passes every check, then needs weights."""
    for kind in ("sd3", "flux"):
        code, output = edit(image_file, config_only[kind], "--steps", "2")
        assert code == 2 and NO_WEIGHTS in output and "transformer/" in output, output


def test_the_bench_refuses_a_method_the_model_cannot_run_once_before_any_entry(config_only, tmp_path):
    from invedit.toy.bench import write_toy_bench

    data = write_toy_bench(tmp_path / "data", 2, seed=0, size=64)
    bench = ["bench", data, "--model", config_only["sd3"], "--out", tmp_path / "run", "--no-cache", "-q"]
    for methods, options, message in (
            ("direct+p2p", [], "method direct+p2p: editor 'p2p' does not run on sd3 models"),
            ("rf-inversion+none", [], "method rf-inversion+none: inversion 'rf-inversion' runs on FLUX models only"),
            ("direct+shared-attention,direct+none", ["-o", "direct+shared-attention:start_step=0.9",
                                                     "-o", "direct+shared-attention:end_step=0.5"],
             "method direct+shared-attention: shared-attention start_step 0.9 must be below end_step 0.5")):
        code, output = run(*bench, "--methods", methods, *options)
        assert code == 2 and output.startswith(f"error: {message}") and output.count("\n") == 1, output
        assert not (tmp_path / "run").exists()  # refused before the run folder, the first entry or any weight
    code, output = run(*bench, "--methods", "direct+shared-attention", "--steps", "2")
    assert code == 2 and NO_WEIGHTS in output and not (tmp_path / "run").exists(), output


def test_inspect_reads_no_weight_and_knows_the_model(config_only):
    started = time.perf_counter()
    with pytest.raises(InveditError, match=r"resolution 1000000 needs about .* GB \(estimate: .* weights \+ .* "
                                           r"activations at 1000000×1000000, 4 rows\), more than the .* limit"):
        invedit.load(str(config_only["sd3"]), resolution=1_000_000)
    assert time.perf_counter() - started < 1.0  # refused from the configs: nothing built, nothing read
    sd3, flux = inspect(str(config_only["sd3"])), inspect(str(config_only["flux"]))
    assert (sd3.family, sd3.schedule_kind, sd3.default_editor, sd3.resolution) == ("sd3", "flow", "shared-attention",
                                                                                   256)
    assert flux.guidance_mode == "embedded" and flux.default_guidance == (7.5, "family")
    assert next(flux.denoiser.parameters()).is_meta  # layers for the editors' dry runs, no weights
    assert len(flux.attention_layers()) == 4


def test_the_memory_limit_is_overridable(config_only, monkeypatch):
    monkeypatch.setenv("INVEDIT_MAX_MEMORY", "0.000001")
    with pytest.raises(InveditError, match=r"more than the .* limit \(INVEDIT_MAX_MEMORY\); pass a smaller "
                                           r"--resolution \(the model's own: 256\), or raise the limit"):
        inspect(str(config_only["sd3"]), modules=False)
    assert inspect(str(config_only["sd3"]), modules=False, max_memory=1000).resolution == 256  # the flag wins
    monkeypatch.setenv("INVEDIT_MAX_MEMORY", "lots")
    with pytest.raises(InveditError, match="INVEDIT_MAX_MEMORY must be a number of GB, e.g. 48, got 'lots'"):
        inspect(str(config_only["sd3"]), modules=False)


# ---- broken folders -----------------------------------------------------------------------------------------
def _drop(folder: Path, name: str) -> None:
    shutil.rmtree(folder / name)


def _empty_vae_config(folder: Path) -> None:
    (folder / "vae" / "config.json").write_text("{}")


def _more_heads(folder: Path) -> None:
    path = folder / "transformer" / "config.json"
    path.write_text(path.read_text().replace('"num_attention_heads": 2', '"num_attention_heads": 4'))


def _more_layers(folder: Path) -> None:
    path = folder / "transformer" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "num_layers": config["num_layers"] + 1}))


def _no_vocabulary(folder: Path) -> None:
    from invedit.testing import tiny_t5_tokenizer

    _drop(folder, "tokenizer_2")
    tiny_t5_tokenizer(words=()).save_pretrained(folder / "tokenizer_2")
    path = folder / "tokenizer_2" / "tokenizer.json"  # every piece but <unk> gone: each prompt is unknown tokens
    data = json.loads(path.read_text())
    data["model"]["vocab"] = data["model"]["vocab"][:4]
    path.write_text(json.dumps(data))


BROKEN = [  # (kind, break it, the message after "model folder F (kind): ")
    ("flux", lambda f: _drop(f, "tokenizer_2"), "tokenizer_2/ (T5's tokenizer) is missing; the download is incomplete"),
    ("sd3", lambda f: _drop(f, "tokenizer_3"), "tokenizer_3/ (T5's tokenizer) is missing"),
    ("flux", lambda f: _drop(f, "tokenizer"), "tokenizer/ (CLIP-L's tokenizer) is missing"),
    ("flux", lambda f: _drop(f, "transformer"), "transformer/ (the MM-DiT transformer) is missing"),
    ("sd3", lambda f: _drop(f, "scheduler"), "scheduler/ (the flow scheduler) is missing"),
    ("flux", _empty_vae_config, "vae/config.json has no block_out_channels (an empty or foreign config); download it "
                                "again"),
    ("flux", _more_heads, "transformer/config.json does not match its weights (time_text_embed.timestep_embedder."
                          "linear_1.weight: the config makes [64, 256], the weights hold [32, 256])"),
    ("flux", _more_layers, "transformer/config.json does not match its weights (the weights lack 32 tensors it "
                           "makes (e.g. transformer_blocks.2."),
    ("flux", _no_vocabulary, "tokenizer_2/ (T5's tokenizer) maps the prompt 'a photo of a cat' to unknown tokens "
                             "only"),
]


@pytest.mark.parametrize(("kind", "breaking", "message"), BROKEN, ids=[b[2][:30] for b in BROKEN])
def test_a_broken_folder_names_the_component_in_one_line(tmp_path, kind, breaking, message):
    folder = copy_model(kind, tmp_path / kind)
    breaking(folder)
    with pytest.raises(InveditError) as caught:
        invedit.load(str(folder))
    text = str(caught.value)
    assert text.startswith(f"model folder {folder} ({kind}): {message}") and "\n" not in text, text


def test_a_missing_hub_id_is_one_quiet_line_without_retries(monkeypatch, capfd):
    """Without HF_HUB_OFFLINE, an id that is not cached asks the hub once (here: nobody listens), no retry lines."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=r"^model 'nobody/not-cached-anywhere' not found locally; the hub is "
                                                 r"unreachable or has no such model; pass a local folder$"):
        inspect("nobody/not-cached-anywhere")
    assert time.perf_counter() - started < 10
    captured = capfd.readouterr()
    assert "Retry" not in captured.out + captured.err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"the hub is unreachable \(HF_HUB_OFFLINE is set, so it is not "
                                                 r"asked\)"):
        inspect("nobody/not-cached-anywhere")


# ---- defaults that fit the model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_pipe():
    from invedit.testing import tiny_flow_pipeline

    return tiny_flow_pipeline("sd3")


def test_the_default_editor_and_guidance_follow_the_model(flow_pipe, pipe):
    from invedit.backbones import backbone

    image = scene_image()
    result = invedit.edit(flow_pipe, image, "a cat", "a dog", steps=2)
    assert result.settings["editor"]["editor"] == "shared-attention" == backbone(flow_pipe).default_editor
    assert result.settings["guidance_scale"] == 7.5
    assert result.settings["defaulted"] == {"editor": "family", "guidance_scale": "family"}
    model = backbone(flow_pipe)
    model.recommended_guidance, model.recommended_steps = 3.0, 2  # as a folder's invedit.json sets them
    try:
        inverted = invedit.invert(flow_pipe, image, "a cat")
        result = invedit.edit(flow_pipe, inverted, None, "a dog", editor="none")
    finally:
        model.recommended_guidance = model.recommended_steps = None
    assert inverted.steps == 2 and result.settings["guidance_scale"] == 3.0
    assert result.settings["defaulted"] == {"guidance_scale": "model"}
    assert backbone(pipe).default_editor == "p2p"
    with pytest.raises(InveditError, match="editor 'p2p' does not run on sd3 models"):
        invedit.edit(flow_pipe, image, "a cat", "a dog", editor="p2p", steps=2)


def test_the_embedded_flow_model_recommends_guidance_2():
    model = inspect("shapes-flow", modules=False)
    assert model.default_guidance == (2.0, "model") and model.default_editor == "shared-attention"
    assert model_numbers(model, None, 4.0)[1:] == (4.0, {"steps": "model"})


def test_flux_schnell_runs_at_guidance_1_and_warns_at_another(tmp_path, image_file):
    folder = copy_model("flux", tmp_path / "schnell", weights=False)
    path = folder / "transformer" / "config.json"
    path.write_text(path.read_text().replace('"guidance_embeds": true', '"guidance_embeds": false'))
    model = inspect(str(folder), modules=False)
    assert model.guidance_mode == "none" and model_numbers(model)[1:] == (1.0, {"steps": "invedit",
                                                                                "guidance_scale": "family"})
    with pytest.warns(InveditWarning, match=r"^FLUX.1-schnell has no guidance input: guidance 3 runs "
                                            r"classifier-free guidance over two rows, at twice the cost"):
        assert model_numbers(model, None, 3.0)[1] == 3.0
    with pytest.warns(InveditWarning, match=r"guidance 7\.5 runs classifier-free guidance"):
        code, output = edit(image_file, folder, "--guidance", "7.5")  # warned, then the weightless folder refused
    assert code == 2 and "has no weights" in output, output


# ---- the smaller items ---------------------------------------------------------------------------------------
def test_inversion_options_must_be_a_dict(pipe):
    with pytest.raises(InveditError, match=r"^inversion_options must be a dict of option names to values, e\.g\. "
                                           r"\{'offset_scale': 0\.8\}, got str 'x'$"):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion_options="x", steps=2)
    with pytest.raises(InveditError, match="editor options must be a dict"):
        check_settings("direct", "p2p", editor_options=[1])


def test_an_integer_0_1_mask_is_a_mask():
    from invedit.masks import load_mask

    pixels = np.zeros((64, 64), dtype=np.int64)
    pixels[8:24, 8:24] = 1
    mask = load_mask(pixels, (64, 64))
    assert mask.pixels.sum() == 16 * 16
    grey = pixels * 255
    assert np.array_equal(load_mask(grey, (64, 64)).pixels, mask.pixels)
    with pytest.raises(InveditError, match="is empty"):
        load_mask(np.zeros((64, 64), dtype=np.uint8), (64, 64))


def test_a_reused_inversion_says_what_the_edit_spent(pipe):
    inverted = invedit.invert(pipe, scene_image(), SOURCE, steps=2)
    fresh = invedit.edit(pipe, scene_image(), SOURCE, TARGET, steps=2, editor="none")
    reused = invedit.edit(pipe, inverted, None, TARGET, editor="none")
    assert not fresh.inversion_reused and fresh.nfe_spent == fresh.nfe == fresh.nfe_inversion + fresh.nfe_edit
    assert reused.inversion_reused and reused.nfe_spent == reused.nfe_edit < reused.nfe
    assert reused.seconds_spent == reused.seconds_edit
    record = reused.record()
    assert record["inversion_reused"] is True and record["nfe_spent"] == record["nfe_edit"]


def test_the_ui_lists_only_what_the_family_runs(flow_pipe, pipe):
    from invedit.backbones import backbone
    from invedit.ui.app import usable_methods

    inversions, editors = usable_methods(backbone(flow_pipe))
    assert "p2p" not in editors and "masactrl" not in editors and "shared-attention" in editors
    assert "ddim" not in inversions and "rf-inversion" not in inversions and "direct" in inversions
    unet_inversions, unet_editors = usable_methods(backbone(pipe))
    assert "p2p" in unet_editors and "uniedit" not in unet_editors and "ddim" in unet_inversions


def test_invedit_ui_takes_guidance():
    code, output = run("ui", "--guidance", "60", "--port", "1")
    assert code == 2 and output == "error: guidance scale must be in [0, 50], got 60.0\n", output
