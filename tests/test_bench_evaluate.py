"""`invedit evaluate` and `invedit report` on a real (tiny) bench run: every metric equals a direct computation."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from invedit.bench.data import load_benchmark, rle_decode
from invedit.bench.evaluate import ALL_METRICS, MetricModels, evaluate_run, load_lpips
from invedit.bench.methods import parse_methods
from invedit.bench.metrics import background_metrics
from invedit.bench.model_metrics import clip_similarity, structure_distance
from invedit.bench.report import write_report
from invedit.bench.runner import run_bench
from invedit.errors import InveditError
from invedit.images import load_image, psnr
from invedit.testing import random_lpips_backbone, tiny_clip, tiny_dino, tiny_pipeline
from invedit.toy.bench import write_toy_bench
from invedit.toy.metrics import edit_succeeded

METHODS = "direct+p2p,ddim+p2p"


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric-models")
    return {"dino": tiny_dino(root / "dino"), "clip": tiny_clip(root / "clip"),
            "lpips": random_lpips_backbone(root / "squeezenet.pth")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model = root / "model"
    tiny_pipeline(seed=1).save_pretrained(model)
    data = write_toy_bench(root / "data", 1, seed=5, size=64)
    run_bench(data, root / "run", parse_methods(METHODS), model=str(model), steps=4, progress=False,
              say=lambda m: None)
    return root / "run", data


def models_for(networks) -> MetricModels:
    return MetricModels(dino_model=networks["dino"], clip_model=networks["clip"], lpips_weights=networks["lpips"])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def lpips_by_hand(weights: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """LPIPS (Zhang et al. 2018) with SqueezeNet written out: scale, 7 feature stages, unit-normalise channels,
    squared difference, the learned 1×1 weights (shipped with torchmetrics), spatial mean, sum."""
    import torchmetrics
    import torchvision

    net = torchvision.models.squeezenet1_1(weights=None)
    net.load_state_dict(torch.load(weights, weights_only=True))
    lin_path = Path(torchmetrics.__file__).parent / "functional/image/lpips_models/squeeze.pth"
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    stages = [range(2), range(2, 5), range(5, 8), range(8, 10), range(10, 11), range(11, 12), range(12, 13)]
    total = 0.0
    with torch.no_grad():
        a, b = (x - shift) / scale, (y - shift) / scale
        for k, stage in enumerate(stages):
            for i in stage:
                a, b = net.features[i](a), net.features[i](b)
            na = a / torch.sqrt(1e-8 + (a ** 2).sum(1, keepdim=True))
            nb = b / torch.sqrt(1e-8 + (b ** 2).sum(1, keepdim=True))
            total += F.conv2d((na - nb) ** 2, lin[f"lin{k}.model.1.weight"]).mean().item()
    return total


def test_every_metric_equals_a_direct_computation(finished_run, networks):
    run_dir, data = finished_run
    summary = evaluate_run(run_dir, metrics=None, models=models_for(networks))
    assert summary.evaluated == 10 and not summary.failed and not summary.unavailable
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == 10 and {r["method"] for r in rows} == {"direct+p2p", "ddim+p2p"}
    items = {item.id: item for item in load_benchmark(data)}
    from transformers import CLIPModel, CLIPProcessor, ViTModel

    vit = ViTModel.from_pretrained(networks["dino"], add_pooling_layer=False).eval()
    clip = CLIPModel.from_pretrained(networks["clip"]).eval(), CLIPProcessor.from_pretrained(networks["clip"])
    mapping = json.loads((data / "mapping_file.json").read_text())
    checked_success = 0
    for row in rows:
        item = items[row["id"]]
        record = json.loads((run_dir / "edits" / row["method"] / f"{row['id']}.json").read_text())
        edited = np.asarray(Image.open(run_dir / "edits" / row["method"] / f"{row['id']}.png").convert("RGB"))
        source = np.asarray(load_image(item.image_path, 64))
        true_region = rle_decode(mapping[row["id"]]["mask"], (64, 64))
        mask = true_region.copy()
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True  # the reference evaluator's border
        keep = (~mask)[..., None].astype(np.float64)
        x, y = source / 255.0 * keep, edited / 255.0 * keep
        mse = ((x - y) ** 2).mean()
        assert float(row["psnr"]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
        assert float(row["mse"]) == pytest.approx(mse * 1e4, rel=1e-9)
        assert float(row["ssim"]) == pytest.approx(background_metrics(source, edited, mask)["ssim"], rel=1e-9)
        to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() * 2 - 1  # noqa: E731
        assert float(row["lpips"]) == pytest.approx(lpips_by_hand(networks["lpips"], to_tensor(x), to_tensor(y))
                                                    * 1e3, rel=1e-4)
        assert float(row["structure_distance"]) == pytest.approx(structure_distance(vit, source, edited), rel=1e-6)
        assert float(row["clip_whole"]) == pytest.approx(clip_similarity(*clip, edited, item.target_prompt), 1e-6)
        assert float(row["clip_edited"]) == pytest.approx(
            clip_similarity(*clip, edited, item.target_prompt, keep_mask=mask), rel=1e-6)
        assert float(row["nfe"]) == record["nfe"] and float(row["seconds"]) == record["seconds"]
        truth = np.asarray(Image.open(data / mapping[row["id"]]["target_image_path"]).convert("RGB"))
        assert float(row["target_psnr"]) == pytest.approx(psnr(edited, truth, true_region), rel=1e-9)
        ok = edit_succeeded(mapping[row["id"]]["toy_edit_kind"], item, edited, source, true_region)
        if ok is None:
            assert row["edit_success"] == "nan"
        else:
            assert float(row["edit_success"]) == 100.0 * ok
            checked_success += 1
    assert checked_success == 8  # every kind but the background edit has a success criterion

    # Summaries are the NaN-excluding means of those rows.
    means = {r["method"]: r for r in read_csv(run_dir / "summary.csv")}
    for method in ("direct+p2p", "ddim+p2p"):
        values = [float(r["psnr"]) for r in rows if r["method"] == method]
        assert float(means[method]["psnr"]) == pytest.approx(np.mean(values), rel=1e-12)
        success = [float(r["edit_success"]) for r in rows if r["method"] == method]
        assert float(means[method]["edit_success"]) == pytest.approx(np.nanmean(success), rel=1e-12)
        assert means[method]["n"] == "5"
    by_type = read_csv(run_dir / "by_type.csv")
    assert len(by_type) == 10 and {r["edit_type"] for r in by_type} == {"1", "2", "3", "6", "8"}
    assert "| direct+p2p | 5 |" in (run_dir / "summary.md").read_text()


def test_evaluation_is_incremental_and_missing_networks_are_reported_not_zeroed(finished_run, networks, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    for name in ("metrics.csv", "summary.csv", "summary.md", "by_type.csv", "by_type.md"):
        (run_dir / name).unlink(missing_ok=True)
    offline = MetricModels(dino_model=str(tmp_path / "no-dino"), clip_model=str(tmp_path / "no-clip"),
                           lpips_weights=str(tmp_path / "no-weights.pth"))
    first = evaluate_run(run_dir, models=offline)
    assert first.evaluated == 10
    assert set(first.unavailable) == {"structure_distance", "lpips", "clip_whole", "clip_edited"}
    assert "not found" in first.unavailable["lpips"]
    rows = read_csv(run_dir / "metrics.csv")
    assert all(r["lpips"] == "" and r["clip_whole"] == "" and r["psnr"] not in ("", "0") for r in rows)
    assert "n/a" not in (run_dir / "summary.md").read_text().split("\n")[0]  # unavailable columns are dropped
    assert "LPIPS" not in (run_dir / "summary.md").read_text()
    again = evaluate_run(run_dir, models=models_for(networks))  # now the networks exist: only those metrics run
    assert (again.evaluated, again.reused) == (10, 0)
    assert all(r["lpips"] != "" for r in read_csv(run_dir / "metrics.csv"))
    third = evaluate_run(run_dir, models=models_for(networks))
    assert (third.evaluated, third.reused) == (0, 10)
    # A changed edit is evaluated again, the others are not.
    image = run_dir / "edits" / "ddim+p2p" / f"{rows[0]['id']}.png"
    record = image.with_suffix(".json")
    Image.open(image).rotate(90).save(image)
    data = json.loads(record.read_text())
    import hashlib

    data["files"][image.name] = hashlib.sha256(image.read_bytes()).hexdigest()
    record.write_text(json.dumps(data))
    fourth = evaluate_run(run_dir, models=models_for(networks))
    assert (fourth.evaluated, fourth.reused) == (1, 9)


def test_lpips_refuses_a_wrong_weights_file(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InveditError, match="not a SqueezeNet 1.1 state dict"):
        load_lpips(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InveditError, match="cannot read LPIPS weights"):
        load_lpips(tmp_path / "junk.pth")


def test_report_tables_plot_and_gallery(finished_run, networks):
    run_dir, _ = finished_run
    if not (run_dir / "metrics.csv").exists():
        evaluate_run(run_dir, models=models_for(networks))
    paths = write_report(run_dir)
    report = (run_dir / "report.md").read_text()
    assert re.search(r"\| \*\*direct\+p2p\*\* \| 5 \| [\d.]+ \| [\d.]+ \|", report)
    assert "| ↳ paper (PIE-Bench, SD 1.4) | 700 | 11.65 | 27.22 | 54.55 | 32.86 | 84.76 | 25.02 | 22.10 |" in report
    assert "| ↳ paper (PIE-Bench, SD 1.4) | 700 | 69.43 | 17.87 |" in report  # DDIM + P2P
    assert "## Per edit type" in report and "6 change color" in report
    assert Image.open(paths[1]).size[0] > 600
    page = (run_dir / "gallery.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 5 * 4  # source, mask, two edits per image
    assert all((run_dir / s).is_file() for s in sources)


def test_cli_evaluate_and_report_refuse_in_one_line(tmp_path, finished_run):
    from typer.testing import CliRunner

    from invedit.cli import app

    for args, message in ((["evaluate", str(tmp_path)], "is not a bench run folder"),
                          (["report", str(tmp_path)], "is not a bench run folder"),
                          (["evaluate", str(finished_run[0]), "--metrics", "psnr,fid"], "unknown metric 'fid'")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output
        assert len(result.output.strip().splitlines()) == 1
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "run.json").write_text((finished_run[0] / "run.json").read_text())
    result = CliRunner().invoke(app, ["report", str(empty)])
    assert result.exit_code == 2 and "run `invedit evaluate" in result.output


def test_all_metric_names_are_documented():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in ALL_METRICS:
        assert f"`{name}`" in readme, name
    assert os.path.exists(Path(__file__).parents[1] / "docs")


def test_other_data_is_refused_and_rows_follow_what_they_were_computed_from(finished_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from invedit.cli import app

    run_dir, data = tmp_path / "run", tmp_path / "other"
    shutil.copytree(finished_run[0], run_dir)
    shutil.copytree(finished_run[1], data)
    for name in ("metrics.csv", "summary.csv", "summary.md", "by_type.csv", "by_type.md"):
        (run_dir / name).unlink(missing_ok=True)
    offline = MetricModels(dino_model=str(tmp_path / "none"), clip_model=str(tmp_path / "none"))
    first = evaluate_run(run_dir, metrics=["psnr"], models=offline, say=lambda m: None)
    assert first.evaluated == 10
    right = {(r["method"], r["id"]): r["psnr"] for r in read_csv(run_dir / "metrics.csv")}
    changed = sorted(json.loads((data / "mapping_file.json").read_text()))[0]
    source = next((data / "annotation_images").rglob(f"{changed}.png"))
    Image.open(source).rotate(90).save(source)
    with pytest.raises(InveditError, match=f"the image of entry {changed} is not the one the run edited .*"
                                           "--allow-other-data"):
        evaluate_run(run_dir, data, metrics=["psnr"], models=offline)
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--data", str(data), "--metrics", "psnr", "-q"])
    assert result.exit_code == 2 and "--allow-other-data" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--data", str(data), "--metrics", "psnr", "-q",
                                      "--allow-other-data"])
    assert result.exit_code == 0, result.output
    other = {(r["method"], r["id"]): r["psnr"] for r in read_csv(run_dir / "metrics.csv")}
    assert {k for k in right if other[k] != right[k]} == {(m, changed) for m in ("direct+p2p", "ddim+p2p")}
    # Back on the run's own data: the rows computed from the other image are computed again, the rest reused.
    again = evaluate_run(run_dir, metrics=["psnr"], models=offline, say=lambda m: None)
    assert (again.evaluated, again.reused) == (2, 8)
    assert {(r["method"], r["id"]): r["psnr"] for r in read_csv(run_dir / "metrics.csv")} == right
    # Another DINO input mode is another key as well.
    assert evaluate_run(run_dir, metrics=["psnr"], models=offline, parity=True).evaluated == 10
    # An earlier table that cannot be read is computed again, and said so.
    (run_dir / "metrics.csv").write_text("\x00garbage\n")
    said: list[str] = []
    assert evaluate_run(run_dir, metrics=["psnr"], models=offline, say=said.append).evaluated == 10
    assert said == ["note: cannot read the earlier metrics.csv (other columns); computing every row again"]


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("\x00\x01garbage\n1,2\n", "no column 'method'"),
    ("a,b\n1,2\n", "no column 'method'"),
    (None, "line 2: psnr 'abc' is not a number"),
    (None, "line 2 has fewer cells"),
])
def test_report_refuses_a_metrics_file_it_cannot_read(finished_run, networks, tmp_path, content, message):
    import shutil

    from typer.testing import CliRunner

    from invedit.cli import app

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    if not (run_dir / "metrics.csv").exists():
        evaluate_run(run_dir, models=models_for(networks))
    if content is None:
        with open(run_dir / "metrics.csv", newline="") as f:
            header, *rows = list(csv.reader(f))
        if "abc" in message:
            rows[0][header.index("psnr")] = "abc"
        else:
            rows[0] = rows[0][:3]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
        content = buffer.getvalue()
    (run_dir / "metrics.csv").write_text(content)
    (run_dir / "report.md").unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2 and message in result.output and "evaluate" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (run_dir / "report.md").exists()


def test_lpips_offline_says_nothing_of_a_download_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "cache" / "torch" / "hub"))
    try:
        with pytest.raises(InveditError, match="could not download them \\(URLError\\); pass --lpips-weights"):
            load_lpips()
    finally:
        torch.hub.set_dir(previous)
    captured = capsys.readouterr()
    assert "Downloading" not in captured.out + captured.err
    assert list(tmp_path.iterdir()) == []
