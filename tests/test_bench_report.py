"""`invedit report` on synthetic runs (no model): an SD 3 / FLUX run gets the flow table, each run row followed by
the published rows of the same method and family with their sources, the rest listed after, mask-taking methods
flagged; an SD run gets none of it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from invedit.bench.evaluate import ALL_METRICS, KEY_COLUMNS
from invedit.bench.report import MASK_GIVEN, PUBLISHED_FLOW, write_report
from invedit.editing import EDITORS
from invedit.toy.bench import write_toy_bench


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy_bench(tmp_path_factory.mktemp("data"), 1, seed=2, size=64)


def synthetic_run(root: Path, data: Path, family: str, methods: dict[str, dict], mask_given: set[str] = frozenset(),
                  editors: dict[str, dict] | None = None) -> Path:
    """A run folder as `bench` + `evaluate` leave it: run.json, one record per method × 2 ids (``model_kind``
    ``family``, the editor settings ``editors`` gives) and metrics.csv with struct = 10 + k, PSNR = 20 + k for the
    k-th method."""
    ids = sorted(json.loads((data / "mapping_file.json").read_text()))[:2]
    settings = {"format": 1, "data": str(data), "model": f"tiny-{family}", "model_fingerprint": "0" * 16, "steps": 15,
                "guidance_scale": 3.5, "seed": 0, "dtype": "float32", "device_type": "cpu", "resolution": 64,
                "parity": False, "invedit": "test", "methods": methods}
    root.mkdir()
    (root / "run.json").write_text(json.dumps(settings))
    rows = []
    for k, method in enumerate(methods):
        folder = root / "edits" / method
        folder.mkdir(parents=True)
        for item in ids:
            record = {"model_kind": family, "inversion": methods[method]["inversion"], "nfe": 30 + k}
            if method in mask_given:
                record["mask_given"] = True
            if editors and method in editors:
                record["editor"] = editors[method]
            (folder / f"{item}.json").write_text(json.dumps(record))
            metrics = dict.fromkeys(ALL_METRICS, "")
            metrics.update(structure_distance=10 + k, psnr=20 + k, lpips=100 + k, nfe=30 + k, seconds=1.5)
            rows.append({"method": method, "id": item, "edit_type": "1", "image_sha256": "", "source_sha256": "",
                         "inputs_sha256": "", "networks": "{}", **metrics})
    with open(root / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*KEY_COLUMNS, *ALL_METRICS])
        writer.writeheader()
        writer.writerows(rows)
    return root


def spec(inversion: str, editor: str) -> dict:
    return {"inversion": inversion, "editor": editor, "inversion_options": {}, "editor_options": {}}


def flow_section(report: str) -> list[str]:
    section = report.split("## Flow methods (SD 3 / FLUX)\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_a_flux_run_prints_the_flow_table_with_published_rows_and_their_sources(data, tmp_path):
    methods = {"rf-solver+rf-solver-edit": spec("rf-solver", "rf-solver-edit"),
               "fireflow+rf-solver-edit": spec("fireflow", "rf-solver-edit"),
               "direct+rf-solver-edit": spec("direct", "rf-solver-edit"),
               "euler+kv-edit": spec("euler", "kv-edit")}
    editors = {"euler+kv-edit": {"editor": "kv-edit", "skip_step": 4, "layout": "reference"},
               "rf-solver+rf-solver-edit": {"editor": "rf-solver-edit", "inject": 2, "features": "inversion"}}
    run = synthetic_run(tmp_path / "run", data, "flux", methods, mask_given={"euler+kv-edit"}, editors=editors)
    write_report(run)
    report = (run / "report.md").read_text()
    assert "15 flow steps" in report
    rows = flow_section(report)
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == [  # Table 1's order: by editor, then inversion (direct first)
        "method", "**euler+kv-edit**", "↳ published: KV-Edit",
        "**direct+rf-solver-edit**",
        "**fireflow+rf-solver-edit**", "↳ published: FireFlow", "↳ published: FireFlow",
        "**rf-solver+rf-solver-edit**", "↳ published: RF-Solver", "↳ published: RF-Solver",
        "*published, not in this run*", "↳ published: RF-Inversion", "↳ published: FlowEdit",
        "↳ published: FlowEdit", "↳ published: UniEdit-Flow", "↳ published: FlowEdit", "↳ published: DNAEdit",
        "↳ published: DRFS"]
    assert rows[7].startswith("| **rf-solver+rf-solver-edit** | 2 | 10.00 | 20.00 | 100.00 |")
    assert rows[8] == ("| ↳ published: RF-Solver | 700 | 31.10 | 22.90 |  |  |  | 60 |  | FLUX.1-dev, 15 steps; "
                       "FireFlow's table (Deng et al., arXiv 2412.07517); RF-Solver: Wang et al., arXiv 2411.04746 |")
    assert rows[9] == ("| ↳ published: RF-Solver | 700 | 21.79 | 24.83 |  |  |  | 60 |  | FLUX.1-dev, 15 steps; "
                       "DNAEdit's re-run (Xie et al., arXiv 2506.01430) |")
    fireflow = [row for row in rows if row.startswith("| ↳ published: FireFlow")]
    assert [r.split(" | ")[2:4] + r.split(" | ")[7:8] for r in fireflow] == [["28.30", "23.28", "32"],
                                                                             ["27.10", "23.03", "18"]]
    kv_run = next(row for row in rows if row.startswith("| **euler+kv-edit**"))
    assert kv_run.endswith(f"this run (flux); layout=reference; **{MASK_GIVEN}** (the benchmark's edit mask) |")
    assert rows[7].endswith("| this run (flux); features=inversion |")  # the mode each row ran in
    kv_published = next(row for row in rows if row.startswith("| ↳ published: KV-Edit"))
    assert " | 1.98 | 35.87 | 9.92 | " in kv_published and kv_published.endswith(
        f"KV-Edit (Zhu et al., arXiv 2502.17363); **{MASK_GIVEN}** |")
    direct = next(row for row in rows if row.startswith("| **direct+rf-solver-edit**"))
    assert MASK_GIVEN not in direct
    rest = rows[rows.index(next(r for r in rows if "not in this run" in r)) + 1:]
    assert [r.split(" | ")[-1] for r in rest] == [
        "FLUX.1-dev, 28 steps; a later paper's reprint (which table not verified here); RF-Inversion: Rout et al., "
        "arXiv 2410.10792 |",
        "SD 3; a later paper's reprint (which table not verified here); FlowEdit: Kulikov et al., arXiv 2412.08629 |",
        "FLUX.1-dev; a later paper's reprint (which table not verified here); FlowEdit: Kulikov et al., "
        "arXiv 2412.08629 |",
        "FLUX.1-dev, 15 steps; UniEdit-Flow (Jiao et al., arXiv 2504.13109) |",
        "SD 3.5; DRFS's PIE-Bench comparison on SD 3.5 (Beaudouin et al., arXiv 2509.05342; which table not verified "
        "here); FlowEdit: Kulikov et al., arXiv 2412.08629 |",
        "SD 3.5; DRFS's PIE-Bench comparison on SD 3.5 (Beaudouin et al., arXiv 2509.05342; which table not verified "
        "here); DNAEdit: Xie et al., arXiv 2506.01430 |",
        "SD 3.5, 50 steps; DRFS (Beaudouin et al., CVPR 2026, arXiv 2509.05342; which table not verified here) |"]
    assert "re-runs of one method differ between papers by several points" in report
    # every published row is printed exactly once
    assert sum(row.startswith("| ↳ published: ") for row in rows) == len(PUBLISHED_FLOW)


def test_published_rows_follow_the_run_row_of_their_own_family(data, tmp_path):
    """FlowEdit on SD 3: the SD 3 row follows it, the FLUX row is listed with the rest."""
    run = synthetic_run(tmp_path / "run", data, "sd3", {"none+flowedit": spec("none", "flowedit")})
    write_report(run)
    rows = flow_section((run / "report.md").read_text())
    assert rows[1].startswith("| **none+flowedit** | 2 |") and rows[1].endswith("| this run (sd3) |")
    assert rows[2].startswith("| ↳ published: FlowEdit | 700 | 27.24 | 22.13 |")
    assert rows[3].startswith("| ↳ published: FlowEdit | 700 | 12.73 | 26.59 |")  # SD 3.5, DRFS's table
    later = rows[rows.index(next(r for r in rows if "not in this run" in r)):]
    assert any(r.startswith("| ↳ published: FlowEdit | 700 | 27.82 | 21.96 |") for r in later)


def test_an_editor_that_takes_the_mask_is_flagged_without_a_record_field(data, tmp_path, monkeypatch):
    monkeypatch.setattr(EDITORS["rf-solver-edit"], "takes_mask", True, raising=False)
    run = synthetic_run(tmp_path / "run", data, "flux", {"direct+rf-solver-edit": spec("direct", "rf-solver-edit"),
                                                         "direct+none": spec("direct", "none")})
    write_report(run)
    rows = flow_section((run / "report.md").read_text())
    assert MASK_GIVEN in next(r for r in rows if r.startswith("| **direct+rf-solver-edit**"))
    assert MASK_GIVEN not in next(r for r in rows if r.startswith("| **direct+none**"))


def test_an_sd_run_has_no_flow_table(data, tmp_path):
    run = synthetic_run(tmp_path / "run", data, "sd", {"direct+p2p": spec("direct", "p2p"),
                                                       "ddim+p2p": spec("ddim", "p2p")})
    write_report(run)
    report = (run / "report.md").read_text()
    assert "## Flow methods" not in report and "published: " not in report and "arXiv 2412.07517" not in report
    assert "15 DDIM steps" in report
    assert "| ↳ paper (PIE-Bench, SD 1.4) | 700 | 11.65 | 27.22 |" in report  # the SD table is unchanged


def test_instruction_trained_models_are_their_own_group(data, tmp_path):
    """A FLUX.1 Kontext run: its rows leave Table 1 and the flow table for "Instruction-trained, not training-free"."""
    run = synthetic_run(tmp_path / "run", data, "flux-kontext", {"none+instruct": spec("none", "instruct")})
    write_report(run)
    report = (run / "report.md").read_text()
    table_one, rest = report.split("## Table 1 layout\n", 1)[1].split("## Instruction-trained, not training-free\n", 1)
    assert "none+instruct" not in table_one and "## Flow methods" not in report
    section = rest.split("\n## ", 1)[0]
    assert "not one of them" in section
    row = next(line for line in section.splitlines() if line.startswith("| none+instruct"))
    assert row.startswith("| none+instruct | 2 |") and " 10.00 " in row and " 20.00 " in row
    assert "15 flow steps" in report


def test_the_mask_given_flag_marks_every_place_a_row_is_shown(data, tmp_path, monkeypatch):
    """Issue 29: not only the flow table: Table 1, the per-type and toy tables, the plot's labels, the gallery and
    summary.md mark the mask-reading method, and never the others."""
    import matplotlib.axes

    from invedit.bench.evaluate import aggregate, mask_given_methods, write_tables
    from invedit.bench.report import read_metrics

    labels: list[str] = []
    original = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **k: (labels.append(text), original(self, text, *a, **k))[1])
    methods = {"euler+kv-edit": spec("euler", "kv-edit"), "direct+rf-solver-edit": spec("direct", "rf-solver-edit")}
    run = synthetic_run(tmp_path / "run", data, "flux", methods)  # no record field: the editor takes the mask
    write_report(run)
    report = (run / "report.md").read_text()
    table_one = report.split("## Table 1 layout", 1)[1].split("\n## ", 1)[0]
    assert f"| **euler+kv-edit** ({MASK_GIVEN}) | 2 |" in table_one
    assert "| **direct+rf-solver-edit** | 2 |" in table_one
    per_type = report.split("## Per edit type", 1)[1]
    assert f"| euler+kv-edit ({MASK_GIVEN}) |" in per_type and f"direct+rf-solver-edit ({MASK_GIVEN})" not in report
    assert sorted(set(labels)) == ["direct+rf-solver-edit", f"euler+kv-edit ({MASK_GIVEN})"]
    gallery = (run / "gallery.html").read_text()
    cells = gallery.split("<td>")
    assert all(MASK_GIVEN in c for c in cells if "<b>euler+kv-edit</b>" in c)
    assert not any(MASK_GIVEN in c for c in cells if "<b>direct+rf-solver-edit</b>" in c)
    flagged = mask_given_methods(json.loads((run / "run.json").read_text()))  # as `invedit evaluate` flags them
    assert flagged == {"euler+kv-edit"}
    write_tables(run, read_metrics(run), flagged)
    summary = (run / "summary.md").read_text()
    assert f"| euler+kv-edit ({MASK_GIVEN}) | 2 |" in summary and "| direct+rf-solver-edit | 2 |" in summary
    assert len(aggregate(read_metrics(run), ("method",))) == 2
