"""SD3 and FLUX through the user's workflows beside `invedit.edit`: `invedit bench` (resume, shared inversions,
records) and the web UI's edit session."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from invedit.testing import tiny_pipeline

from .conftest import SOURCE, TARGET, scene_image

STEPS = 3


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "model"
    tiny_pipeline(kind=request.param).save_pretrained(folder)
    return request.param, folder


def test_bench_runs_direct_and_euler_on_a_flow_model_and_resumes(flow_dir, tmp_path):
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.toy.bench import write_toy_bench

    kind, folder = flow_dir
    data = write_toy_bench(tmp_path / "data", 1, seed=3, size=64)
    methods = parse_methods("direct+none,euler+none")
    run = dict(model=str(folder), steps=STEPS, resolution=64, limit=2, progress=False, say=lambda m: None,
               cache_dir=tmp_path / "cache")
    summary = run_bench(data, tmp_path / "run", methods, **run)
    assert (summary.done, summary.failed) == (4, 0)
    records = sorted((tmp_path / "run" / "edits").glob("*/*.json"))
    assert len(records) == 4
    for path in records:
        record = json.loads(path.read_text())
        assert record["model_kind"] == kind and record["resolution"] == 64 and record["steps"] == STEPS
        # guidance-distilled FLUX.1-dev: one row per branch; SD3: CFG rows. Direct skips the pinned source rows.
        rows = 1 if kind == "flux" else 2
        expected_edit = STEPS * rows * (1 if record["inversion"] == "direct" else 2)
        assert record["nfe_edit"] == expected_edit and record["nfe_inversion"] == STEPS
    again = run_bench(data, tmp_path / "run", methods, **run)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)  # resumed: nothing redone


def test_the_web_sessions_edit_runs_on_a_flow_model(flow_dir):
    import invedit
    from invedit.ui.session import EditRequest, EditSession

    kind, folder = flow_dir
    session = EditSession(invedit.load(str(folder), resolution=64))
    request = EditRequest(image=scene_image(), source_prompt=SOURCE, target_prompt=TARGET, inversion="direct",
                          editor="none", steps=STEPS, guidance=2.0)
    first = session.edit(request)
    second = session.edit(EditRequest(**{**request.__dict__, "target_prompt": "a green square on a striped "
                                                                             "background"}))
    assert not first.cached_inversion and second.cached_inversion
    record = json.loads(first.record_path.read_text())
    assert record["model_kind"] == kind and record["inversion"] == "direct"
    assert np.asarray(first.result.reconstruction).shape == (64, 64, 3)


def test_bench_gives_kv_edit_each_entrys_mask_and_says_so(flow_dir, tmp_path):
    """`invedit bench` hands a mask-taking editor (kv-edit) the entry's ground-truth mask (its true region, no border)
    and records it: ``mask_given`` in run.json's method and in each record's bench metadata, the mask's hash in the
    record; text-only methods get none and say nothing."""
    from invedit.bench.data import load_benchmark
    from invedit.bench.methods import parse_methods
    from invedit.bench.runner import run_bench
    from invedit.masks import EditMask
    from invedit.toy.bench import write_toy_bench

    kind, folder = flow_dir
    data = write_toy_bench(tmp_path / "data", 1, seed=5, size=64)
    methods = parse_methods("direct+kv-edit,euler+kv-edit,direct+none")
    run = dict(model=str(folder), steps=STEPS, resolution=64, limit=2, progress=False, say=lambda m: None,
               cache_dir=tmp_path / "cache")
    summary = run_bench(data, tmp_path / "run", methods, **run)
    assert (summary.done, summary.failed) == (6, 0)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["methods"]
    assert settings["direct+kv-edit"]["mask_given"] is True and settings["euler+kv-edit"]["mask_given"] is True
    assert "mask_given" not in settings["direct+none"]
    items = {item.id: item for item in load_benchmark(data)}
    for path in sorted((tmp_path / "run" / "edits").glob("*/*.json")):
        record = json.loads(path.read_text())
        item = items[record["bench"]["id"]]
        if record["editor"]["editor"] == "kv-edit":
            assert record["bench"]["mask_given"] is True
            expected = EditMask.from_pixels(item.mask((64, 64)))
            assert record["mask"]["sha256"] == expected.record()["sha256"]
            assert record["mask"]["source"] == f"entry {item.id}"
        else:
            assert "mask" not in record and "mask_given" not in record["bench"]
    again = run_bench(data, tmp_path / "run", methods, **run)
    assert (again.done, again.skipped, again.failed) == (0, 6, 0)


def test_the_web_session_takes_a_mask_for_kv_edit(flow_dir, tmp_path):
    """The page's mask upload reaches kv-edit (the same rule as --mask); without one, or with one for an editor that
    takes none, the page says so in one line naming the upload by its own file name."""
    import invedit
    from invedit.errors import InveditError
    from invedit.ui.session import EditRequest, EditSession

    _, folder = flow_dir
    session = EditSession(invedit.load(str(folder), resolution=64))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 16:40] = 255
    path = tmp_path / "upload-123.png"
    Image.fromarray(mask).save(path)
    request = EditRequest(image=scene_image(), source_prompt=SOURCE, target_prompt=TARGET, inversion="direct",
                          editor="kv-edit", steps=STEPS, guidance=2.0, mask=str(path), mask_name="my-mask.png")
    outcome = session.edit(request)
    record = json.loads(outcome.record_path.read_text())
    assert record["editor"]["editor"] == "kv-edit" and record["mask"]["edited_fraction"] == 0.140625
    with pytest.raises(InveditError, match=r"^editor 'kv-edit' edits only inside a mask: give one with --mask"):
        session.edit(EditRequest(**{**request.__dict__, "mask": None}))
    with pytest.raises(InveditError, match=r"^editor 'none' takes no mask"):
        session.edit(EditRequest(**{**request.__dict__, "editor": "none"}))
    Image.fromarray(mask[:32]).save(path)
    with pytest.raises(InveditError, match=r"^mask my-mask.png is 64x32 pixels but the image is 64x64"):
        session.edit(request)
