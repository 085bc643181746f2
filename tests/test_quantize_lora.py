"""Quantised networks and LoRA adapters through `invedit.load` and the command line, on tiny models saved to folders
(the real loading path): a quantised edit stays close to the float32 one on every flow inversion, Direct's source
branch still ends on z*₀; a LoRA changes the edit, scale 0 equals no LoRA bit for bit; bad choices are refused in one
line before any weight is read."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import invedit
from invedit.backbones import backbone
from invedit.cli import app
from invedit.errors import InveditError
from invedit.load_options import check_load_options, check_quantize, parse_lora
from invedit.testing import tiny_lora, tiny_pipeline

from .bounds import max_abs, measured
from .conftest import SOURCE, TARGET, scene_image

STEPS = 2
HAS_QUANTO = importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.quanto") is not None
HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_quanto = pytest.mark.skipif(not HAS_QUANTO, reason="optimum-quanto not installed (pip install 'invedit[quant]')")
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (pip install 'invedit[lora]')")

#: Each flow inversion with the editor it is run with here (the none inversion keeps no trajectory: FlowEdit).
FLOW_METHODS = {"euler": "none", "direct": "none", "rf-solver": "none", "fireflow": "none", "uniedit": "none",
                "rf-inversion": "none", "none": "flowedit"}
#: max |quantised − float32| of the final latents (both branches; latents have std ≈ 1), measured at 2 steps on the
#: tiny models (docs/test-bounds.md): largest 4.4e-3 on SD3 (euler) and 1.0e-2 on FLUX (rf-inversion); the bound
#: leaves ×2, while a wrong scale or dequantisation moves the latents by O(1).
QUANTIZED_BOUND = 2e-2


FIXTURES = Path(__file__).parent / "fixtures" / "parity_flow"


class Folders(dict):
    """Tiny SD 1.x, SDXL, SD3 and FLUX.1-dev pipelines as diffusers folders, each made when first asked for: SD3 and
    FLUX are copies of the saved parity fixtures (no build) reading 16 T5 tokens (their invedit.json), which keeps
    these tests fast; SD and SDXL are `tiny_pipeline`s saved."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, kind):
        folder = self.root / kind
        if kind in ("sd3", "flux"):
            shutil.copytree(FIXTURES / f"tiny_{kind}", folder)
            (folder / "invedit.json").write_text(json.dumps({"call_options": {"max_sequence_length": 16}}))
        else:
            tiny_pipeline(kind=kind).save_pretrained(folder)
        self[kind] = folder
        return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return Folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def float_and_int8(folders):
    """``kind`` → (the float32 pipeline, the int8 one), each loaded from its folder once per module."""
    loaded = {}

    def get(kind):
        if kind not in loaded:
            loaded[kind] = load(folders[kind]), load(folders[kind], quantize="int8")
        return loaded[kind]

    return get


def load(folder, **options):
    return invedit.load(str(folder), device="cpu", resolution=64, **options)


def edit(pipe, inversion="direct", editor="none", **options):
    return invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion=inversion, editor=editor, steps=STEPS,
                        guidance_scale=3.0, **options)


# ---- quantisation ----------------------------------------------------------------------------------------------------
@needs_quanto
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_a_quantised_edit_runs_every_flow_inversion_close_to_float32(float_and_int8, kind):
    """int8 weights (optimum-quanto) in the transformer and T5; every flow inversion runs, its edit within
    `QUANTIZED_BOUND` of the float32 one but not equal to it; Direct's source branch still ends on z*₀ exactly."""
    from optimum.quanto import QModuleMixin

    full, quantised = float_and_int8(kind)
    model = backbone(quantised)
    for component in model.quantized_components():
        kept = {n for n, m in getattr(quantised, component).named_modules()
                if isinstance(m, torch.nn.Linear) and not isinstance(m, QModuleMixin)}
        # transformers keeps T5's feed-forward output projections ("wo") out of quantisation (_keep_in_fp32_modules)
        assert {n.rpartition(".")[2] for n in kept} <= ({"wo"} if component.startswith("text_encoder") else set())
    assert not any(isinstance(m, QModuleMixin) for m in quantised.vae.modules())
    assert model.fingerprint() != backbone(full).fingerprint()
    for inversion, editor in FLOW_METHODS.items():
        if inversion == "rf-inversion" and kind != "flux":
            continue
        a, b = edit(full, inversion, editor), edit(quantised, inversion, editor)
        difference = measured(f"int8 vs float32 final latents, {inversion}+{editor}, max",
                              max_abs(a.latents, b.latents))
        assert 0 < difference < QUANTIZED_BOUND, (inversion, difference)
        assert b.latents.dtype == torch.float32 and b.settings["quantize"] == "int8"
        if inversion == "direct":
            assert torch.equal(b.latents[:1], model.encode_image(scene_image()))  # pinned to z*_0, bit for bit


@needs_quanto
def test_quantised_weights_take_a_quarter_of_float32s_memory(float_and_int8):
    """The quantised linear weights are stored as int8 (one byte each) beside one scale per output row; checked
    here so the README's arithmetic rests on what the library stores."""
    from optimum.quanto import QModuleMixin

    full, quantised = float_and_int8("flux")
    for component in ("transformer", "text_encoder_2"):
        q_modules = dict(getattr(quantised, component).named_modules())
        quantised_layers = 0
        for name, module in getattr(full, component).named_modules():
            if isinstance(q_modules.get(name), QModuleMixin):
                weight = q_modules[name].weight
                assert weight._data.dtype == torch.int8 and weight._data.shape == module.weight.shape
                assert weight._scale.numel() == module.out_features
                quantised_layers += 1
        assert quantised_layers > 0


def test_quantisation_choices_are_refused_in_one_line_before_loading(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(InveditError, match="quantize must be one of int8, nf4, bnb-int8, got 'int4'"):
        load("/nonexistent/model", quantize="int4")
    with pytest.raises(InveditError, match=r"quantize 'nf4' \(bitsandbytes\) runs on cuda, not on cpu; use int8"):
        load("/nonexistent/model", quantize="nf4")
    with pytest.raises(InveditError, match="with offload 'sequential' is not supported"):
        check_quantize("nf4", cuda, "sequential")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optimum" else real(name, *a))
    with pytest.raises(InveditError, match=r"quantize 'int8' needs optimum-quanto >= 0.2.6 \(not installed\): "
                                           r"pip install 'invedit\[quant\]'"):
        check_quantize("int8", cpu)
    with pytest.raises(InveditError, match="quantize 'nf4' needs bitsandbytes"):
        check_quantize("nf4", cuda)  # a CUDA device asked for (none here): the missing library is what is said


def test_offload_and_quantize_are_refused_from_the_command_line_before_loading(tmp_path):
    """CPU offload needs a GPU; nf4 needs CUDA: one `error:` line, exit 2, before the (missing) model is read."""
    image = tmp_path / "in.png"
    scene_image().save(image)
    for extra, message in ((["--offload", "model"], "offload keeps the networks in CPU memory"),
                           (["--quantize", "nf4"], "quantize 'nf4' (bitsandbytes) runs on cuda, not on cpu"),
                           (["--lora", str(tmp_path / "missing.safetensors")], "LoRA not found")):
        for command in (["edit", str(image), "-s", SOURCE, "-t", TARGET], ["ui"]):
            result = CliRunner().invoke(app, [*command, "--model", "/nonexistent/model", "--device", "cpu", *extra])
            assert result.exit_code == 2, (command, extra, result.stdout, result.stderr)
            assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr


# ---- LoRA --------------------------------------------------------------------------------------------------------
@needs_peft
@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "flux"])
def test_a_lora_changes_the_edit_and_scale_zero_equals_none(folders, kind, tmp_path):
    """A random LoRA on the denoiser's attention, saved in diffusers' LoRA format, loads on every family: the edit
    changes; at scale 0 it equals the edit without the LoRA bit for bit; the record names it, its scale and the
    file's SHA-256, and the fingerprint tells the three apart."""
    plain = load(folders[kind])
    file = tiny_lora(plain, tmp_path / "lora")
    inversion = "direct" if kind in ("sd3", "flux") else "ddim"
    with_lora, zero = (load(folders[kind], loras=loras) for loras in ([file], [f"{file}:0"]))
    base, changed, unchanged = (edit(p, inversion) for p in (plain, with_lora, zero))
    assert measured("LoRA vs none, target latents, max (must be large)",
                    max_abs(changed.latents[1], base.latents[1])) > 1e-2
    assert torch.equal(unchanged.latents, base.latents)
    digest = hashlib.sha256(open(file, "rb").read()).hexdigest()
    assert changed.settings["loras"] == [{"name": file, "scale": 1.0, "file": file, "sha256": digest}]
    assert unchanged.settings["loras"][0]["scale"] == 0.0 and base.settings["loras"] == []
    assert len({backbone(p).fingerprint() for p in (plain, with_lora, zero)}) == 3


@needs_peft
def test_loras_are_weighted_by_their_scales_and_refused_when_they_do_not_fit(folders, tmp_path):
    """Two LoRAs at scales 1 and −1 of the same weights cancel (bit-for-bit is not promised: the adapters add in
    turn); a LoRA made for another model is refused in one line, and the model is left without it."""
    plain = load(folders["flux"])
    flux = tiny_lora(plain, tmp_path / "flux")
    twin = tmp_path / "twin.safetensors"
    twin.write_bytes(open(flux, "rb").read())
    base = edit(plain)
    cancelled = edit(load(folders["flux"], loras=[flux, (str(twin), -1.0)]))
    # measured 4.2e-7: the adapters add their outputs in turn, so rounding leaves a trace; bound 1e-4
    assert measured("LoRA at 1 and -1 vs none, max", max_abs(cancelled.latents, base.latents)) < 1e-4
    with pytest.raises(InveditError, match=r"LoRA .* does not fit .*sd3: \d+ of its weights name layers or shapes "
                                           r"this model does not have \(first: single_transformer_blocks"):
        load(folders["sd3"], loras=[flux])
    with pytest.raises(InveditError, match=r"does not fit .*sd: none of its weights names a layer of this model"):
        load(folders["sd"], loras=[flux])


def test_lora_specs_are_checked_before_loading(tmp_path):
    good = tmp_path / "a.safetensors"
    good.write_bytes(b"")
    assert parse_lora(f"{good}:0.5").scale == 0.5 and parse_lora(str(good)).file == good
    assert parse_lora("owner/style-lora:0.8").is_hub and parse_lora("owner/repo/x.safetensors").source.count("/") == 2
    for spec, message in ((f"{good}:abc", "the scale after ':' must be a number, got 'abc'"),
                          ((str(good), float("nan")), "the scale must be a finite number"),
                          (str(tmp_path / "b.bin"), "LoRA not found"),
                          ("missing.safetensors", "LoRA not found"),
                          (str(tmp_path / "no"), "LoRA not found")):
        with pytest.raises(InveditError, match=message):
            parse_lora(spec)
    pickle = tmp_path / "c.bin"
    pickle.write_bytes(b"")
    with pytest.raises(InveditError, match="only .safetensors files are read"):
        parse_lora(str(pickle))
    (tmp_path / "d.safetensors").write_bytes(b"")
    with pytest.raises(InveditError, match="holds 2 .safetensors files; name the file"):
        parse_lora(str(tmp_path))
    with pytest.raises(InveditError, match="is given twice"):
        check_load_options(torch.device("cpu"), loras=[str(good), f"{good}:2"])


@needs_quanto
def test_loras_on_int8_weights_are_refused_before_loading(tmp_path):
    """peft adapts no optimum-quanto layer: the combination is refused before any weight is read."""
    good = tmp_path / "a.safetensors"
    good.write_bytes(b"")
    with pytest.raises(InveditError, match="LoRAs cannot be loaded onto quantize 'int8'.*use nf4 or bnb-int8"):
        load("/nonexistent/model", quantize="int8", loras=[str(good)])


@pytest.mark.parametrize("extra", [
    pytest.param(["--lora", "{lora}:0.5"], marks=needs_peft),
    pytest.param(["--quantize", "int8"], marks=needs_quanto)])
def test_the_command_line_records_the_lora_and_the_quantisation(folders, tmp_path, extra):
    file = tiny_lora(load(folders["sd3"]), tmp_path / "lora")
    image, out = tmp_path / "in.png", tmp_path / "out.png"
    scene_image().save(image)
    result = CliRunner().invoke(app, [
        "edit", str(image), "-s", SOURCE, "-t", TARGET, "--model", str(folders["sd3"]), "--resolution", "64",
        "--inversion", "direct", "--editor", "none", "--steps", "2", "--out", str(out), "-q",
        *(a.format(lora=file) for a in extra)])
    assert result.exit_code == 0, result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    if extra[0] == "--lora":
        assert record["loras"] == [{"name": file, "scale": 0.5, "file": file,
                                    "sha256": hashlib.sha256(open(file, "rb").read()).hexdigest()}]
        assert record["quantize"] is None
    else:
        assert record["quantize"] == "int8" and record["loras"] == []
