"""PIE-Bench format: run-length masks, the loader, and the toy-bench writer that produces it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import invedit
from invedit.bench.data import load_benchmark, rle_decode, rle_encode, strip_brackets
from invedit.toy.bench import bracketed_target, write_toy_bench
from invedit.toy.scenes import make_edit_example


def test_rle_round_trip_and_reference_convention():
    rng = np.random.default_rng(0)
    mask = rng.random((16, 24)) > 0.7
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)
    # [start, length] pairs over the row-major flattened grid, as in PIE-Bench's mapping_file.json
    assert rle_encode(np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)) == [1, 3]
    decoded = rle_decode([0, 2, 7, 100], (3, 3))
    assert decoded.ravel().tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1]  # runs are clipped at the end
    bordered = rle_decode([], (4, 4), force_border=True)
    assert bordered.sum() == 12 and not bordered[1:3, 1:3].any()
    with pytest.raises(invedit.InveditError):
        rle_decode([1, 2, 3], (3, 3))


def test_strip_brackets():
    assert strip_brackets("a [blue] cat sitting on  a [red] mat") == "a blue cat sitting on a red mat"
    assert bracketed_target("a red circle on a gray background", "a blue circle on a gray background") == \
        "a [blue] circle on a gray background"
    assert bracketed_target("a red circle on a gray background",
                            "a red circle and a blue star on a gray background") == \
        "a red circle [and a blue star] on a gray background"


def test_toy_bench_parses_with_the_pie_bench_loader(tmp_path):
    folder = write_toy_bench(tmp_path / "tb", n_per_kind=2, seed=3)
    items = load_benchmark(folder)
    assert len(items) == 10
    assert sorted({i.edit_type for i in items}) == ["1", "2", "3", "6", "8"]
    mapping = json.loads((folder / "mapping_file.json").read_text())
    for item in items:
        entry = mapping[item.id]
        edit = make_edit_example(entry["toy_seed"], entry["toy_edit_kind"])
        assert np.array_equal(np.asarray(Image.open(item.image_path)), edit.source_image)
        assert np.array_equal(np.asarray(Image.open(folder / entry["target_image_path"])), edit.target_image)
        assert np.array_equal(item.mask((64, 64)), edit.mask)
        assert item.source_prompt == edit.source_prompt and item.target_prompt == edit.target_prompt
        assert item.blend_words == edit.blend_words and len(item.id) == 12
    assert load_benchmark(folder, edit_types=["6"])[0].edit_type_name == "change color"
    with pytest.raises(invedit.InveditError, match="already holds a dataset"):
        write_toy_bench(folder, 1)


def test_loader_errors(tmp_path):
    with pytest.raises(invedit.InveditError, match="no mapping_file.json"):
        load_benchmark(tmp_path)
    (tmp_path / "mapping_file.json").write_text("{not json")
    with pytest.raises(invedit.InveditError, match="not valid JSON"):
        load_benchmark(tmp_path)
    (tmp_path / "mapping_file.json").write_text(json.dumps({"000000000001": {"image_path": "x.jpg"}}))
    with pytest.raises(invedit.InveditError, match="lacks"):
        load_benchmark(tmp_path)
    entry = {"image_path": "x.jpg", "original_prompt": "a", "editing_prompt": "b", "editing_type_id": "1",
             "mask": []}
    (tmp_path / "mapping_file.json").write_text(json.dumps({"000000000001": entry}))
    with pytest.raises(invedit.InveditError, match="not found"):
        load_benchmark(tmp_path)
