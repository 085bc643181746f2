"""Datasets from strangers: ids and paths in a mapping file never make `invedit bench` / `evaluate` write or read
outside the run folder and the dataset folder. Each test builds a malicious dataset beside sibling folders and lists
the filesystem around them before and after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import invedit
from invedit.bench.data import check_id, read_benchmark
from invedit.bench.evaluate import MetricModels, evaluate_run
from invedit.bench.methods import parse_methods
from invedit.bench.runner import EDITS_DIR, edit_paths, run_bench
from invedit.outputs import path_inside
from invedit.toy.bench import write_toy_bench

STEPS = 2


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, int]:
    """Every path under ``root`` (files with their size), leaving out the ``skip`` folders' contents."""
    out = {}
    for path in root.rglob("*"):
        if any(path.is_relative_to(s) and path != s for s in skip):
            continue
        out[str(path.relative_to(root))] = path.stat().st_size if path.is_file() else -1
    return out


def malicious_dataset(area: Path) -> tuple[Path, str, dict[str, str]]:
    """A toy dataset with one good entry and entries whose ids or image paths point out of their folders.

    Returns the folder, the good id and {bad id: what its refusal says}.
    """
    data = write_toy_bench(area / "data", 1, seed=3, size=64)
    mapping = json.loads((data / "mapping_file.json").read_text())
    good_id = "600000000000"
    good = mapping[good_id]
    secret = area / "sibling" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    os.symlink(secret, data / "annotation_images" / "link.png")
    bad = {
        "../../../../x": "not a plain name",
        "../../sibling/evil": "not a plain name",
        str(area / "sibling" / "abs"): "not a plain name",
        "a/b": "not a plain name",
        "..": "not a plain name",
        "x..y": "not a plain name",
        "line\nbreak": "not a plain name",
        "9" * 200: "not a plain name",
        "000000000001": "leaves",  # image_path ../../sibling/secret.png
        "000000000002": "leaves",  # absolute image_path
        "000000000003": "leaves",  # a link inside annotation_images pointing out
    }
    out = {good_id: {**good, "blended_word": "Blue yellow"}}  # case differs from the prompt's "blue"
    for bad_id in bad:
        out[bad_id] = dict(good)
    out["000000000001"]["image_path"] = "../../sibling/secret.png"
    out["000000000002"]["image_path"] = str(secret)
    out["000000000003"]["image_path"] = "link.png"
    (data / "mapping_file.json").write_text(json.dumps(out))
    return data, good_id, bad


def test_ids_and_image_paths_that_leave_their_folders_are_refused_per_entry(model_dir, tmp_path):
    area = tmp_path / "area"
    data, good_id, bad = malicious_dataset(area)
    run_dir, cache = area / "run", area / "cache"
    before = tree(tmp_path)
    said: list[str] = []
    summary = run_bench(data, run_dir, parse_methods("direct+p2p"), model=str(model_dir), steps=STEPS,
                        cache_dir=cache, progress=False, say=said.append)
    assert summary.done == 1 and summary.failed == len(bad)
    after = tree(tmp_path, skip=(run_dir, cache))
    assert {k: v for k, v in after.items() if not k.startswith(("area/run", "area/cache"))} == before
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert written == ["edits/direct+p2p/600000000000.json", "edits/direct+p2p/600000000000.png", "failures.jsonl",
                       "run.json"]
    logged = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert len(logged) == len(bad) and all(e["method"] == "*" for e in logged)
    for entry in logged:
        assert "\n" not in entry["id"] and len(entry["id"]) <= 60
    for bad_id, message in bad.items():
        assert any(message in e["error"] and (e["id"] == bad_id or ascii(bad_id)[:20] in e["id"]) for e in logged), \
            bad_id
    assert len(said) == len(bad) and all("\n" not in line for line in said)
    # The good entry's blend word matched the prompt's "blue" ignoring case, and the record says so.
    record = json.loads((run_dir / EDITS_DIR / "direct+p2p" / f"{good_id}.json").read_text())
    assert record["bench"]["blended_word"] == "Blue yellow"
    assert record["bench"]["notes"] == ["blended_word 'Blue' matched the prompt's 'blue' ignoring case and "
                                        "punctuation"]


def test_evaluate_reads_no_image_a_record_names_outside_the_run(model_dir, tmp_path):
    area = tmp_path / "area"
    data = write_toy_bench(area / "data", 1, seed=3, size=64)
    run_dir = area / "run"
    run_bench(data, run_dir, parse_methods("direct+p2p"), model=str(model_dir), steps=STEPS, limit=2,
              progress=False, say=lambda m: None)
    outside = area / "outside.png"
    record_path = sorted((run_dir / EDITS_DIR / "direct+p2p").glob("*.json"))[0]
    shutil.copy(record_path.with_suffix(".png"), outside)
    record = json.loads(record_path.read_text())
    sha = record["files"].pop(record_path.with_suffix(".png").name)
    record["files"][f"../../../{record_path.stem}.png"] = sha  # a hand-made record naming a file outside the run
    record_path.write_text(json.dumps(record))
    # and a dataset whose true target of the other entry points out of the dataset
    mapping = json.loads((data / "mapping_file.json").read_text())
    other = sorted((run_dir / EDITS_DIR / "direct+p2p").glob("*.json"))[1].stem
    mapping[other]["target_image_path"] = "../outside.png"
    (data / "mapping_file.json").write_text(json.dumps(mapping))
    summary = evaluate_run(run_dir, models=MetricModels(dino_model=str(tmp_path / "none"),
                                                        clip_model=str(tmp_path / "none")),
                           metrics=["psnr", "target_psnr"], say=lambda m: None)
    assert summary.evaluated == 0 and len(summary.failed) == 2
    assert "not a file beside it" in summary.failed[0] and "leaves" in summary.failed[1]


def test_id_and_path_checks():
    for good in ("000000000001", "a", "img_1.v2-b"):
        assert check_id(good) == good
    for bad in ("", ".", "..", ".hidden", "a/b", "a\\b", "x..y", "/abs", "a b", "é", "a\x00", "1" * 129):
        with pytest.raises(invedit.InveditError, match="not a plain name"):
            check_id(bad)
    with pytest.raises(invedit.InveditError, match="not a plain name"):
        edit_paths(Path("run"), "direct+p2p", "../../x", False)
    with pytest.raises(invedit.InveditError, match="leaves"):
        path_inside(Path("run"), "edits", "../../x")
    assert path_inside(Path("run"), "edits", "a.png") == Path("run/edits/a.png")


def test_a_dataset_read_refuses_escaping_entries_without_reading_them(tmp_path):
    data, good_id, bad = malicious_dataset(tmp_path / "area")
    items, problems = read_benchmark(data)
    assert [i.id for i in items] == [good_id]
    assert len(problems) == len(bad)
