"""The shared-attention editor: the target's image keys/values are the source's in exactly the chosen layers and
steps, on SD3, FLUX and a UNet; Direct Inversion computes the source rows only while injecting; the other editors
refuse flow models in one line that says why."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import invedit
from invedit.backbones import backbone
from invedit.cli import app
from invedit.editing import EDITORS
from invedit.editing.shared_attention import SharedAttention
from invedit.errors import InveditError
from invedit.testing import tiny_pipeline

from .conftest import scene_image

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 4
FLOW_KINDS = ("sd3", "flux", "flux-schnell")


@pytest.fixture(scope="module", params=FLOW_KINDS)
def flow_pipe(request):
    return tiny_pipeline(kind=request.param)


def record_projections(monkeypatch) -> list[tuple]:
    """After the editor's own hooks, record every attention layer's to_k / to_v output with the step and rows."""
    records: list[tuple] = []
    original = SharedAttention.forward_hooks

    def with_recorders(self, unet):
        hooks = list(original(self, unet))
        for name, attn, info in backbone_of[unet].attention_layers():
            if info.is_cross:
                continue
            for projection in ("to_k", "to_v"):
                def record(module, args, output, name=name, projection=projection, info=info, editor=self):
                    records.append((editor.step, name, info.place, projection, list(editor.rows), output.clone()))
                hooks.append((getattr(attn, projection), record))
        return hooks

    backbone_of: dict = {}
    monkeypatch.setattr(SharedAttention, "forward_hooks", with_recorders)
    return records, backbone_of


@pytest.mark.parametrize("share", ["kv", "v"])
def test_target_image_keys_values_are_the_sources_in_exactly_the_chosen_layers_and_steps(flow_pipe, share,
                                                                                       monkeypatch):
    """Euler inversion (both branches computed every step), CFG 4: in the chosen blocks at the injected steps each
    target row's image tokens in to_k/to_v (only to_v for share='v') equal the source row of its CFG half, bit for
    bit; FLUX's single-stream text tokens stay the target's; everywhere else the conditional rows differ (different
    prompts)."""
    records, backbone_of = record_projections(monkeypatch)
    model = backbone(flow_pipe)
    backbone_of[model.denoiser] = model
    # FLUX: 2 joint + 2 single blocks, "all" from 1/4 of the depth -> joint 1, single 0, 1; SD3: 2 joint -> joint 1
    start_layer = 0.25 if model.family == "flux" else 0.5
    result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="shared-attention",
                          steps=STEPS, guidance_scale=4.0, share=share, blocks="all", start_layer=start_layer,
                          start_step=0.25, end_step=0.75)
    chosen = set(result.record()["editor"]["controlled_blocks"])
    assert chosen == ({"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"}
                      if model.family == "flux" else {"transformer_blocks.1"})
    assert result.record()["editor"]["injected_steps"] == [1, 2]
    image_tokens = (64 // model.vae_factor // model.patch) ** 2
    seen = {(step, name, projection) for step, name, *_ in records for projection in ("to_k", "to_v")}
    assert {step for step, *_ in seen} == set(range(STEPS))
    compared = replaced = 0
    for step, name, place, projection, rows, output in records:
        block = name.rsplit(".", 1)[0]
        injected = step in (1, 2) and block in chosen and (projection == "to_v" or share == "kv")
        for t, (branch, half) in enumerate(rows):
            if branch != "target":
                continue
            s = rows.index(("source", half))
            image_t, image_s = output[t, -image_tokens:], output[s, -image_tokens:]
            compared += 1
            if injected:
                replaced += 1
                assert torch.equal(image_t, image_s), (step, name, projection, half)
            elif half == "cond":  # the unconditional rows share the empty prompt: equal until the latents part
                assert not torch.equal(image_t, image_s), (step, name, projection, half)
            if place == "single" and half == "cond":
                assert output.shape[1] > image_tokens
                assert not torch.equal(output[t, :-image_tokens], output[s, :-image_tokens])
    rows_per_branch = 1 if model.guidance_mode == "embedded" else 2
    layers_per_step = len(model.attention_layers()) * 2  # to_k and to_v
    assert compared == STEPS * layers_per_step * rows_per_branch
    assert replaced == 2 * len(chosen) * (2 if share == "kv" else 1) * rows_per_branch


def test_same_prompt_gives_the_source_and_direct_pins_the_source_to_z_star(flow_pipe):
    """Euler inversion with target prompt = source prompt: the target branch equals the source branch; with Direct
    Inversion the source branch ends exactly at z*_0 (the image's latent) while the editor injects."""
    image = scene_image()
    options = {"start_step": 0.0, "end_step": 1.0, "blocks": "all", "share": "kv"}
    same = invedit.edit(flow_pipe, image, SOURCE, SOURCE, inversion="euler", editor="shared-attention", steps=STEPS,
                        guidance_scale=4.0, **options)
    assert torch.equal(same.latents[1:], same.latents[:1])
    direct = invedit.edit(flow_pipe, image, SOURCE, TARGET, inversion="direct", editor="shared-attention",
                          steps=STEPS, guidance_scale=4.0, **options)
    z0 = backbone(flow_pipe).encode_image(image)
    assert torch.equal(direct.latents[:1], z0)
    assert (direct.latents[1:] - z0).abs().max() > 1e-3


def test_direct_computes_the_source_rows_only_while_injecting(flow_pipe):
    """NFE = rows computed: Euler computes both branches every step; Direct the target's rows every step plus the
    source rows of the target's CFG halves at the one injected step (FLUX.1-dev: one conditional row per branch)."""
    image = scene_image()
    rows = 1 if backbone(flow_pipe).guidance_mode == "embedded" else 2
    inverted = {m: invedit.invert(flow_pipe, image, SOURCE, m, steps=STEPS) for m in ("euler", "direct")}
    nfe = {}
    for method, inv in inverted.items():
        result = invedit.edit(flow_pipe, inv, SOURCE, TARGET, editor="shared-attention", guidance_scale=4.0,
                              start_step=0.0, end_step=0.25)
        assert result.record()["editor"]["injected_steps"] == [0]
        nfe[method] = result.nfe_edit
    assert nfe == {"euler": 2 * rows * STEPS, "direct": rows * STEPS + rows}
    assert nfe["direct"] < nfe["euler"]
    unguided = invedit.edit(flow_pipe, inverted["direct"], SOURCE, TARGET, editor="shared-attention",
                            guidance_scale=1.0, end_step=0.25)
    assert unguided.nfe_edit == STEPS + 1  # guidance 1: the conditional rows only


def _hooks_state(module):
    return ({k: type(v) for k, v in module.attn_processors.items()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()))


def test_hooks_are_removed_after_a_run_and_after_a_run_that_raised(monkeypatch):
    pipe = tiny_pipeline(kind="flux")
    transformer = backbone(pipe).denoiser
    before = _hooks_state(transformer)
    invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="shared-attention", steps=STEPS)
    assert _hooks_state(transformer) == before
    original = SharedAttention.step_callback

    def fail_at_step_2(self, step, latents):
        if step == 2:
            assert _hooks_state(transformer) != before  # they were installed
            raise RuntimeError("boom")
        return original(self, step, latents)

    monkeypatch.setattr(SharedAttention, "step_callback", fail_at_step_2)
    with pytest.raises(RuntimeError, match="boom"):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="shared-attention", steps=STEPS)
    assert _hooks_state(transformer) == before


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_on_a_unet_it_is_masactrl_without_the_mask(kind, image):
    """On the tiny SD and SDXL UNets, shared keys/values in self-attention from 10/16 of the depth and step 1 of 4 on
    give MasaCtrl's edit (start_layer=10, start_step=1, the given source prompt) bit for bit; the defaults are
    MasaCtrl's fractions. (Measured also bit for bit with ddpm, direct, edict, negative-prompt, null-latent and
    null-text inversions.)"""
    pipe = tiny_pipeline(kind=kind)
    inverted = invedit.invert(pipe, image, SOURCE, "ddim", steps=STEPS)
    masactrl = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="masactrl", start_step=1, start_layer=10,
                            source_branch="given")
    shared = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="shared-attention", start_step=0.25)
    assert torch.equal(shared.latents, masactrl.latents)
    plain = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="none")
    assert not torch.equal(shared.latents, plain.latents)
    settings = shared.record()["editor"]
    assert (settings["share"], settings["blocks"], settings["start_layer"]) == ("kv", "all", 0.625)
    assert settings["injected_steps"] == [1, 2, 3]


BAD_OPTIONS = [
    ({"share": "q"}, r"^shared-attention share must be one of 'auto', 'kv', 'v', got 'q'$"),
    ({"blocks": "single"}, r"^shared-attention blocks='single': sd3 models have no such blocks; use one of: joint, "
                           r"all$"),
    ({"start_layer": 0.6, "end_layer": 0.5}, r"^shared-attention start_layer 0.6 must be below end_layer 0.5$"),
    ({"start_layer": 0.9}, r"^shared-attention layers \[0.9, 1\) of the depth hold none of this model's 2 joint "
                           r"blocks$"),
    ({"end_step": 0}, r"^end_step must be a number in \(0, 1\], got 0$"),
    ({"start_step": 0.5, "end_step": 0.5}, r"^shared-attention start_step 0.5 must be below end_step 0.5$"),
    ({"start_step": 0.9, "end_step": 1.0}, r"^shared-attention start_step 0.9 leaves none of the 4 steps to "
                                           r"inject in$"),
    ({"start_layer": "half"}, r"^start_layer must be a number in \[0, 1\], got 'half'$"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_refused_in_one_line_before_inverting(options, message, monkeypatch):
    pipe = tiny_pipeline(kind="sd3")
    monkeypatch.setattr(backbone(pipe), "denoise", lambda *a, **k: pytest.fail("the model was called"))
    with pytest.raises(InveditError, match=message):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="shared-attention",
                     steps=STEPS, **options)


WHY = {"p2p": "it rewrites a UNet's cross-attention maps (SD3/FLUX attend to text and image jointly)",
       "masactrl": "it hooks a UNet's self-attention (shared-attention is its core on SD3/FLUX)",
       "pnp": "it injects the ResNet features of a UNet's decoder",
       "pix2pix-zero": "its guidance matches a UNet's cross-attention maps"}


@pytest.fixture(scope="module")
def flow_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow-models")
    for kind in ("sd3", "flux"):
        tiny_pipeline(kind=kind).save_pretrained(root / kind)
    scene_image().save(root / "in.png")
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 40, 40))
    mask.save(root / "mask.png")
    return root


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_every_editor_from_the_cli_on_flow_model_folders(flow_folders, kind, tmp_path):
    """Every registered editor × {euler, direct}: none, shared-attention, uniedit, kv-edit (with --mask),
    rf-solver-edit and stable-flow (FLUX) write the edit and its record; the rest refuse in one line saying why, exit
    code 2, nothing written (the inversion-free flowedit, dnaedit, drfs, flowalign: they pair with inversion none only;
    rf-solver-edit, stable-flow: FLUX only; instruct: it takes an instruction, not a target prompt)."""
    free = {"flowedit", "dnaedit", "drfs", "flowalign"}
    assert set(EDITORS) == {"none", "shared-attention", "uniedit", "rf-solver-edit", "kv-edit", "stable-flow",
                            "instruct", *free, *WHY}
    for editor in sorted(EDITORS):
        for inversion in ("euler", "direct"):
            out = tmp_path / f"{editor}-{inversion}.png"
            argv = ["edit", str(flow_folders / "in.png"), "-s", SOURCE, "-t", TARGET, "--model",
                    str(flow_folders / kind), "--resolution", "64", "--steps", "2", "--out", str(out), "-q",
                    "--inversion", inversion, "--editor", editor]
            if editor == "kv-edit":
                argv += ["--mask", str(flow_folders / "mask.png")]
            result = CliRunner().invoke(app, argv)
            if editor in free:
                assert result.exit_code == 2, (editor, inversion, result.output)
                assert result.stderr.strip() == (f"error: editor {editor!r} needs no inversion; use it with inversion "
                                                 f"'none', not {inversion!r}")
                assert not out.exists()
            elif editor == "instruct":
                assert result.exit_code == 2, (editor, inversion, result.output)
                assert result.stderr.strip() == ("error: editor 'instruct' edits from an instruction, not a target "
                                                 "prompt: give instruction= (--instruction) instead")
                assert not out.exists()
            elif editor == "stable-flow" and kind == "sd3":
                assert result.exit_code == 2, (editor, inversion, result.output)
                assert result.stderr.strip() == ("error: editor 'stable-flow' runs on FLUX models only: its vital "
                                                 "layers are FLUX's double- and single-stream blocks (sd3 has none)")
                assert not out.exists()
            elif editor == "rf-solver-edit" and kind == "sd3":
                assert result.exit_code == 2, (editor, inversion, result.output)
                assert result.stderr.strip() == ("error: editor 'rf-solver-edit' runs on FLUX models only: sd3 has no "
                                                 "single-stream blocks (shared-attention applies its rule to the "
                                                 "later joint blocks)")
                assert not out.exists()
            elif editor in WHY:
                assert result.exit_code == 2, (editor, inversion, result.output)
                assert result.stderr.strip() == (f"error: editor {editor!r} does not run on {kind} models (flow "
                                                 f"schedule): {WHY[editor]}; use one of: dnaedit, drfs, "
                                                 f"flowalign, flowedit, kv-edit, none, rf-solver-edit, "
                                                 f"shared-attention, stable-flow, uniedit")
                assert not out.exists()
            else:
                assert result.exit_code == 0, (editor, inversion, result.output)
                record = json.loads(out.with_suffix(".json").read_text())
                assert (record["inversion"], record["editor"]["editor"]) == (inversion, editor)
                assert ("mask" in record) == (editor == "kv-edit")
