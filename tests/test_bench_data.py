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


def _entry(tmp_path, **fields) -> dict:
    """A valid entry with a 4×4 image, changed by ``fields``."""
    folder = tmp_path / "annotation_images"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(folder / "x.png")
    return {"image_path": "x.png", "original_prompt": "a red mug", "editing_prompt": "a [blue] mug",
            "editing_type_id": "6", "mask": [5, 2], "blended_word": "red blue", **fields}


def test_entries_the_reference_would_misread_are_refused_per_entry(tmp_path):
    from invedit.bench.data import read_benchmark

    entries = {
        "000000000001": _entry(tmp_path),
        "000000000002": _entry(tmp_path, mask=[10, 7]),  # runs past the 16 cells of the 4×4 grid
        "000000000003": _entry(tmp_path, mask=[16, 1]),  # wholly outside it
        "000000000004": _entry(tmp_path, editing_type_id="12"),
        "000000000005": _entry(tmp_path, editing_type_id=True),
        "000000000006": _entry(tmp_path, editing_type_id=9, mask=[0, 16]),  # a style edit: the whole image
    }
    text = json.dumps(entries)[:-1] + ', "000000000001": ' + json.dumps(_entry(tmp_path)) + "}"  # a duplicate id
    twice = json.dumps(_entry(tmp_path))[:-1] + ', "image_path": "y.png"}'  # a field given twice
    text = text[:-1] + ', "000000000007": ' + twice + "}"
    (tmp_path / "mapping_file.json").write_text(text)
    items, problems = read_benchmark(tmp_path)
    assert [i.id for i in items] == ["000000000006"] and items[0].edit_type == "9" and items[0].mask((4, 4)).all()
    reasons = dict(problems)
    assert "appears 2 times" in reasons["000000000001"]
    assert "runs past the 4×4 image grid" in reasons["000000000002"]
    assert "runs past" in reasons["000000000003"]
    assert "editing_type_id '12' is not one of PIE-Bench's 0–9" in reasons["000000000004"]
    assert "editing_type_id True" in reasons["000000000005"]
    assert "has field image_path more than once" in reasons["000000000007"]


def test_real_pie_bench_quirks_are_read_as_meant(tmp_path):
    entries = {
        # a blend word whose case differs from the prompt's word: kept, with a note for the record
        "000000000001": _entry(tmp_path, blended_word="Mug mug", original_prompt="a red mug,",
                               editing_prompt="a red [mug] with a [star]"),
        # brackets in one prompt only, leading the prompt, or twice
        "000000000002": _entry(tmp_path, original_prompt="[a red] mug", editing_prompt="a blue mug"),
        "000000000003": _entry(tmp_path, original_prompt="a red mug", editing_prompt="[a] [blue] mug"),
    }
    (tmp_path / "mapping_file.json").write_text(json.dumps(entries))
    items = {i.id: i for i in load_benchmark(tmp_path)}
    first = items["000000000001"]
    assert first.blend_words == "Mug mug" and first.target_prompt == "a red mug with a star"
    assert first.notes == ["blended_word 'Mug' matched the prompt's 'mug,' ignoring case and punctuation"]
    assert items["000000000002"].source_prompt == "a red mug" and items["000000000002"].target_prompt == "a blue mug"
    assert items["000000000003"].target_prompt == "a blue mug" and not items["000000000003"].notes


def test_a_whole_image_mask_gives_nan_background_metrics_left_out_of_means():
    from invedit.bench.evaluate import aggregate
    from invedit.bench.metrics import background_metrics

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    values = background_metrics(image, image + 1, np.ones((8, 8), dtype=bool))
    assert all(np.isnan(v) for v in values.values())
    rows = [{"method": "m", "psnr": str(values["psnr"])}, {"method": "m", "psnr": "30.0"}]
    (entry,) = aggregate(rows, ("method",))
    assert entry["psnr"] == 30.0 and entry["n"] == 2
