"""RF-Solver-Edit's editor (`rf-solver-edit`, also FireFlow's). ``features="inversion"`` (default): the values
stored while inverting, the target denoised alone, at the reference's NFE; with Direct Inversion the stored values
are the pinned source's own. ``features="source"``: shared-attention at share="v", blocks="single" and steps
[0, inject), bit for bit, with every flow inversion that steps a trajectory. ``inject`` counts steps from the first as
the reference's ``inject_list`` does; the block indices are FLUX.1's; SD 3, UNets and bad options are refused in one
line before any network call; it runs by name from the API, the CLI and `bench`. Parity with the official code:
tests/test_flow_parity2.py."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import invedit
from invedit.backbones import backbone
from invedit.cli import app
from invedit.editing.rf_solver_edit import FLUX1_SINGLE_BLOCKS, RFSolverEdit, single_blocks
from invedit.errors import InveditError
from invedit.sampling import RunStats
from invedit.testing import tiny_pipeline

from .conftest import scene_image

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 4
PAIRED_INVERSIONS = ("direct", "rf-solver", "fireflow", "euler")


@pytest.fixture(scope="module", params=["flux", "flux-schnell"])
def flux_pipe(request):
    return tiny_pipeline(kind=request.param)


@pytest.mark.parametrize("inversion", PAIRED_INVERSIONS)
def test_it_is_shared_attention_on_values_of_the_later_single_blocks(flux_pipe, inversion):
    """Defaults (inject 2, indices 20-37 → block 1 of the tiny model's 2) equal shared-attention with share=v,
    blocks=single, start_layer=0.5, steps [0, 0.5) bit for bit, and differ from no editing; the record names the
    reference's options and the resolved blocks and steps."""
    inverted = invedit.invert(flux_pipe, scene_image(), SOURCE, inversion, steps=STEPS)
    ours = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="rf-solver-edit", guidance_scale=3.0,
                        features="source")
    shared = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="shared-attention", guidance_scale=3.0,
                          share="v", blocks="single", start_layer=0.5, end_layer=1.0, start_step=0.0, end_step=0.5)
    plain = invedit.edit(flux_pipe, inverted, SOURCE, TARGET, editor="none", guidance_scale=3.0)
    assert torch.equal(ours.latents, shared.latents)
    assert not torch.equal(ours.latents[1:], plain.latents[1:])
    assert (ours.nfe_inversion, ours.nfe_edit) == (shared.nfe_inversion, shared.nfe_edit)
    assert ours.record()["editor"] == {"editor": "rf-solver-edit", "inject": 2, "start_layer_index": 20,
                                       "end_layer_index": 37, "features": "source",
                                       "controlled_blocks": ["single_transformer_blocks.1"], "injected_steps": [0, 1]}


def test_every_single_block_and_one_step_equal_shared_attention_too():
    """start_layer_index 0 (FireFlow's scripts: 0-37) → both single blocks; inject 1 → step 0 only."""
    pipe = tiny_pipeline(kind="flux")
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "fireflow", steps=STEPS)
    ours = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="rf-solver-edit", inject=1, start_layer_index=0,
                        features="source")
    shared = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="shared-attention", share="v", blocks="single",
                          start_layer=0.0, start_step=0.0, end_step=0.25)
    assert torch.equal(ours.latents, shared.latents)
    assert ours.record()["editor"]["controlled_blocks"] == ["single_transformer_blocks.0",
                                                            "single_transformer_blocks.1"]


@pytest.mark.parametrize("inject, steps, injected", [(1, 4, [0]), (2, 4, [0, 1]), (3, 15, [0, 1, 2]),
                                                     (8, 8, list(range(8))), (20, 15, list(range(15)))])
def test_inject_counts_the_first_denoising_steps(inject, steps, injected):
    """The reference's ``inject_list = [True] * inject + [False] * (N - inject)`` over the denoising steps from the
    noisiest: steps 0 … inject − 1 (every step when inject ≥ N)."""
    editor = RFSolverEdit.create(tiny_pipeline(kind="flux"), SOURCE, TARGET, steps, inject=inject)
    assert editor.settings()["injected_steps"] == injected
    assert sorted(editor.injected) == injected


def test_block_indices_are_flux1s_and_scale_to_other_depths():
    """Indices i…j name blocks ⌊i·n/38⌋ … ⌊(j+1)·n/38⌋ − 1 of n (at least one): the identity on FLUX.1's 38 (the
    reference's ``info['id'] > 19``: 20-37), block 1 of 2 on the tiny models for the defaults."""
    assert FLUX1_SINGLE_BLOCKS == 38
    assert single_blocks(20, 37, 38) == range(20, 38)
    assert single_blocks(0, 37, 38) == range(0, 38)
    assert single_blocks(20, 37, 2) == range(1, 2)
    assert single_blocks(0, 37, 2) == range(0, 2)
    assert single_blocks(0, 18, 2) == range(0, 1)
    assert single_blocks(20, 37, 76) == range(40, 76)
    assert single_blocks(5, 5, 2) == range(0, 1) and single_blocks(37, 37, 2) == range(1, 2)
    assert single_blocks(5, 5, 38) == range(5, 6)


def test_it_costs_the_published_nfe_at_15_steps():
    """FLUX.1-dev (one row per branch), 15 steps, inject 2. Stored features (default): RF-Solver 30 + 30 = 60 and
    FireFlow 16 + 16 = 32, the reference's (the target alone); Direct 15 + 15 + 1 (the source row at the top level,
    which no inversion evaluates). features="source": Direct computes the source's rows at the two injected steps
    (15 + 15 + 2 = 32), RF-Solver 30 + 2·30 = 90 and FireFlow 16 + 2·16 = 48 denoise both branches every step."""
    pipe = tiny_pipeline(kind="flux")
    nfe = {(inversion, features): invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion=inversion,
                                               editor="rf-solver-edit", steps=15, features=features).nfe
           for inversion in ("direct", "rf-solver", "fireflow") for features in ("inversion", "source")}
    assert nfe == {("direct", "inversion"): 31, ("rf-solver", "inversion"): 60, ("fireflow", "inversion"): 32,
                   ("direct", "source"): 32, ("rf-solver", "source"): 90, ("fireflow", "source"): 48}


def test_stored_values_are_the_pinned_sources_own():
    """Direct Inversion's source branch is z*: at level k it evaluates the model at (z*ₖ, σₖ), where the Euler
    inversion did, so the values stored there are bit for bit those the source row computes (inversion and edit both
    at guidance 1 under the source prompt). The store holds the levels the injected steps read (the top level none),
    on the CPU, and the record says so; an inversion made without the store is refused in one line."""
    pipe = tiny_pipeline(kind="flux")
    model = backbone(pipe)
    request = invedit.feature_request(pipe, "rf-solver-edit", STEPS, "direct")
    assert request.modules == ("single_transformer_blocks.1.attn.to_v",)
    assert request.levels == (0.0, 0.5, 1.0, 1.5, 2.0)
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "direct", steps=STEPS, record=request)
    assert inverted.features.levels() == [1.0, 2.0]  # Euler inversion evaluates levels 1 … N only
    cond = model.encode_prompts([SOURCE])
    seen = {}
    module = model.denoiser.get_submodule(request.modules[0])
    handle = module.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out.detach().clone()))
    try:
        for level in (1, 2):
            model.denoise(inverted.latents[STEPS - level][None], inverted.schedule.level_timesteps[level], cond,
                          RunStats(), guidance=1.0)
            stored = inverted.features.get(level, request.modules[0])
            assert stored.device.type == "cpu" and torch.equal(stored, seen["v"].cpu())
    finally:
        handle.remove()
    result = invedit.edit(pipe, inverted, SOURCE, TARGET, editor="rf-solver-edit", guidance_scale=1.0)
    assert (result.nfe_inversion, result.nfe_edit) == (STEPS, STEPS + 1)
    assert result.record()["inversion_features"]["stored_levels"] == ["1", "2"]
    bare = invedit.invert(pipe, scene_image(), SOURCE, "rf-solver", steps=STEPS)
    with pytest.raises(InveditError, match=r"^rf-solver-edit features='inversion' reads the values stored while "
                                           r"inverting, and this inversion stored none: "):
        invedit.edit(pipe, bare, SOURCE, TARGET, editor="rf-solver-edit")


BAD = [
    ({"inject": 0}, r"^inject must be an integer in \[1, inf\], got 0$"),
    ({"inject": 1.5}, r"^inject must be an integer in \[1, inf\], got 1.5$"),
    ({"start_layer_index": 30, "end_layer_index": 25}, r"^rf-solver-edit start_layer_index 30 must not exceed "
                                                       r"end_layer_index 25$"),
    ({"end_layer_index": 38}, r"^end_layer_index must be an integer in \[0, 37\], got 38$"),
    ({"inject": "two"}, r"^editor 'rf-solver-edit' option 'inject' must be a number, got 'two'$"),
    ({"share": "kv"}, r"^editor 'rf-solver-edit' has no option 'share' \(options: end_layer_index, features, "
                      r"inject, start_layer_index\)$"),
    ({"features": "cache"}, r"^rf-solver-edit features must be 'inversion' \(reference\) or 'source', got 'cache'$"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_options_are_refused_in_one_line_before_inverting(options, message, monkeypatch):
    pipe = tiny_pipeline(kind="flux")
    monkeypatch.setattr(backbone(pipe), "denoise", lambda *a, **k: pytest.fail("the model was called"))
    with pytest.raises(InveditError, match=message):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="rf-solver-edit", steps=STEPS,
                     **options)


def test_sd3_unets_and_the_none_inversion_are_refused_in_one_line(monkeypatch):
    sd3 = tiny_pipeline(kind="sd3")
    monkeypatch.setattr(backbone(sd3), "denoise", lambda *a, **k: pytest.fail("the model was called"))
    with pytest.raises(InveditError, match=r"^editor 'rf-solver-edit' runs on FLUX models only: sd3 has no "
                                           r"single-stream blocks \(shared-attention applies its rule to the later "
                                           r"joint blocks\)$"):
        invedit.edit(sd3, scene_image(), SOURCE, TARGET, inversion="rf-solver", editor="rf-solver-edit", steps=STEPS)
    with pytest.raises(InveditError, match=r"^editor 'rf-solver-edit' does not run on sd models \(ddim schedule\): "
                                           r"it replaces values in FLUX's single-stream blocks; use one of: "):
        invedit.edit(tiny_pipeline(), scene_image(), SOURCE, TARGET, inversion="ddim", editor="rf-solver-edit",
                     steps=STEPS)
    with pytest.raises(InveditError, match=r"^inversion 'none' keeps no trajectory for editor 'rf-solver-edit'"):
        invedit.edit(tiny_pipeline(kind="flux"), scene_image(), SOURCE, TARGET, inversion="none",
                     editor="rf-solver-edit", steps=STEPS)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    tiny_pipeline(kind="flux").save_pretrained(root / "model")
    scene_image().save(root / "in.png")
    return root


def test_the_cli_lists_it_and_edits_with_its_options(flux_folder, tmp_path):
    listed = json.loads(CliRunner().invoke(app, ["methods", "--json"]).output)
    options = {m["name"]: m["options"] for m in listed["editors"]}
    assert options["rf-solver-edit"] == {"inject": 2, "start_layer_index": 20, "end_layer_index": 37,
                                         "features": "inversion"}
    for inversion in PAIRED_INVERSIONS:
        out = tmp_path / f"{inversion}.png"
        result = CliRunner().invoke(app, [
            "edit", str(flux_folder / "in.png"), "-s", SOURCE, "-t", TARGET, "--model", str(flux_folder / "model"),
            "--resolution", "64", "--steps", "3", "--out", str(out), "-q", "--inversion", inversion,
            "--editor", "rf-solver-edit", "-o", "inject=1", "-o", "start_layer_index=0"])
        assert result.exit_code == 0, result.output
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["inversion"] == inversion
        assert record["editor"]["inject"] == 1 and record["editor"]["injected_steps"] == [0]
    result = CliRunner().invoke(app, [
        "edit", str(flux_folder / "in.png"), "-s", SOURCE, "-t", TARGET, "--model", str(flux_folder / "model"),
        "--resolution", "64", "--steps", "3", "--out", str(tmp_path / "bad.png"), "-q", "--inversion", "direct",
        "--editor", "rf-solver-edit", "-o", "inject=0"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: inject must be an integer in [1, inf], got 0"


def test_bench_runs_every_pairing_on_flux_and_resumes(flux_folder, tmp_path):
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.toy.bench import write_toy_bench

    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    methods = parse_methods(",".join(f"{inv}+rf-solver-edit" for inv in PAIRED_INVERSIONS),
                            editor_options=["inject=1"])
    run = dict(model=str(flux_folder / "model"), steps=3, resolution=64, limit=1, progress=False,
               say=lambda m: None, cache_dir=tmp_path / "cache")
    summary = run_bench(data, tmp_path / "run", methods, **run)
    assert (summary.done, summary.failed) == (4, 0)
    nfe = {}
    for path in sorted((tmp_path / "run" / "edits").glob("*/*.json")):
        record = json.loads(path.read_text())
        assert record["editor"]["editor"] == "rf-solver-edit" and record["editor"]["injected_steps"] == [0]
        nfe[record["inversion"]] = (record["nfe_inversion"], record["nfe_edit"])
    # one row per branch (FLUX.1-dev), the values stored while inverting: the target alone; Direct: the target each
    # step + the source at the injected step 0 (the top level, which no inversion evaluates)
    assert nfe == {"direct": (3, 3 + 1), "euler": (3, 3), "rf-solver": (6, 6), "fireflow": (4, 4)}
    again = run_bench(data, tmp_path / "run", methods, **run)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)
