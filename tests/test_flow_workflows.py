"""SD3 and FLUX through the user's workflows beside `invedit.edit`: `invedit bench` (resume, shared inversions,
records) and the web UI's edit session."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
