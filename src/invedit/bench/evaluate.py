"""`invedit evaluate`: PIE-Bench's seven metrics for every edit of a run (reference-settings §7), incrementally.

Per edit: structure distance ×10³ (DINO), background PSNR / LPIPS ×10³ / MSE ×10⁴ / SSIM ×10² on the unedited
region, CLIP similarity of the whole edit and of the edit region to the target prompt, and the record's NFE and
seconds; on shapes-world data (entries with a true target) also PSNR against the true target inside the edit
region and edit success. The mask is the entry's, with the reference evaluator's 1-pixel border set.

``RUN_DIR/metrics.csv`` holds one row per (method, image), keyed by what it was computed from: the edited image's
SHA-256, the source image's, and ``inputs_sha256`` over the source, the mask, the true target, the target prompt and
the DINO input mode; ``networks`` names the metric networks used. Re-running computes only rows whose key changed
(all their metrics), metrics whose network changed, and metrics that were unavailable before. A dataset whose
images differ from those the run's records name is refused unless ``allow_other_data``. A metric whose network cannot be
loaded is reported once and left empty (never zero); NaN (no unedited region, …) is a value, excluded from means.
Summaries per method and per (method, edit type) go to ``summary.csv/.md`` and ``by_type.csv/.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InveditError
from ..outputs import path_inside, remove_created, write_atomically
from .cache import file_sha256
from .data import EDIT_TYPES, BenchItem, read_benchmark
from .runner import EDITS_DIR, RUN_FILE

PIE_METRICS = ("structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited")
COST_METRICS = ("nfe", "seconds")
TOY_METRICS = ("target_psnr", "edit_success")
ALL_METRICS = PIE_METRICS + COST_METRICS + TOY_METRICS
#: Which network each metric needs.
NEEDS = {"structure_distance": "dino", "lpips": "lpips", "clip_whole": "clip", "clip_edited": "clip"}
LABELS = {"structure_distance": "struct ×10³", "psnr": "PSNR", "lpips": "LPIPS ×10³", "mse": "MSE ×10⁴",
          "ssim": "SSIM ×10²", "clip_whole": "CLIP whole", "clip_edited": "CLIP edited", "nfe": "NFE",
          "seconds": "s/edit", "target_psnr": "PSNR vs true target (edit region)", "edit_success": "success %"}
KEY_COLUMNS = ("method", "id", "edit_type", "image_sha256", "source_sha256", "inputs_sha256", "networks")
#: Bumped when a metric's computation changes: every row is computed again.
METRICS_FORMAT = 1
DEFAULT_DINO = "facebook/dino-vitb8"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
LPIPS_BACKBONE_FILE = "squeezenet1_1-b8a52dc0.pth"  # torchvision's name for LPIPS's SqueezeNet weights


@dataclass
class MetricModels:
    """The networks the metrics need, loaded on first use; what could not be loaded, with why."""

    dino_model: str = DEFAULT_DINO
    clip_model: str = DEFAULT_CLIP
    lpips_weights: str | None = None
    device: str = "cpu"
    loaded: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """The network ``name`` ("dino", "clip", "lpips"), or ``None`` when unavailable (reason recorded)."""
        if name in self.unavailable:
            return None
        if name not in self.loaded:
            try:
                self.loaded[name] = getattr(self, f"_load_{name}")()
            except InveditError as exc:
                self.unavailable[name] = str(exc)
                return None
        return self.loaded[name]

    def _load_dino(self):
        from transformers import ViTModel

        from ..models import load_pretrained

        model = load_pretrained(lambda src, local: ViTModel.from_pretrained(
            src, local_files_only=local, add_pooling_layer=False), self.dino_model, "DINO model")
        return model.to(self.device).eval()

    def _load_clip(self):
        from transformers import CLIPModel, CLIPProcessor

        from ..models import load_pretrained

        model = load_pretrained(lambda src, local: CLIPModel.from_pretrained(src, local_files_only=local),
                                self.clip_model, "CLIP model")
        processor = load_pretrained(lambda src, local: CLIPProcessor.from_pretrained(src, local_files_only=local),
                                    self.clip_model, "CLIP processor")
        return model.to(self.device).eval(), processor

    def _load_lpips(self):
        return load_lpips(self.lpips_weights).to(self.device)

    def identities(self) -> dict[str, str]:
        """What each network is (its hub id or folder; the LPIPS weights' SHA-256), to key the rows by."""
        lpips = "torchvision"
        if self.lpips_weights is not None and Path(self.lpips_weights).expanduser().is_file():
            lpips = file_sha256(Path(self.lpips_weights).expanduser())
        return {"dino": str(self.dino_model), "clip": str(self.clip_model), "lpips": lpips}


def load_lpips(weights: str | os.PathLike | None = None):
    """torchmetrics' LPIPS with the SqueezeNet backbone (its linear layers ship with torchmetrics).

    The backbone's ImageNet weights come from torchvision's download host, not the model hub: ``weights`` is a
    local copy of them (``squeezenet1_1-b8a52dc0.pth``). Without it, torchvision's cache or download is tried.
    Raises:
        InveditError: the weights file is missing or unreadable, or no weights are available offline.
    """
    import torch
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    if weights is None:
        return _lpips_from_torchvision(LearnedPerceptualImagePatchSimilarity)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InveditError(f"LPIPS weights file not found: {path}")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InveditError(f"cannot read LPIPS weights {path}: {str(exc).splitlines()[0][:160]}") from None
    # torchvision finds "downloaded" weights in the hub folder by file name: show it the given file there.
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        (Path(hub) / "checkpoints").mkdir()
        os.symlink(path.resolve(), Path(hub) / "checkpoints" / LPIPS_BACKBONE_FILE)
        torch.hub.set_dir(hub)
        try:
            return LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=False).eval()
        except RuntimeError as exc:  # a state dict of another network
            raise InveditError(f"{path} is not a SqueezeNet 1.1 state dict: {str(exc).splitlines()[0][:160]}") \
                from None
        finally:
            torch.hub.set_dir(previous)


def _lpips_from_torchvision(lpips_class):
    """LPIPS with torchvision's cached or downloaded backbone. The download is announced only once it worked,
    and the hub folders it created are removed again when it did not (offline)."""
    import contextlib
    import sys

    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if (checkpoints / LPIPS_BACKBONE_FILE).is_file():
        return lpips_class(net_type="squeeze", normalize=False).eval()
    missing = []
    probe = checkpoints
    while not probe.exists() and probe != probe.parent:
        missing.insert(0, probe)
        probe = probe.parent
    announcement = io.StringIO()
    try:
        with contextlib.redirect_stdout(announcement):
            model = lpips_class(net_type="squeeze", normalize=False).eval()
    except Exception as exc:  # noqa: BLE001 (URLError, HTTPError, …: offline)
        remove_created(missing)
        raise InveditError(f"LPIPS needs the SqueezeNet weights ({LPIPS_BACKBONE_FILE}) and torchvision could "
                           f"not download them ({type(exc).__name__}); pass --lpips-weights FILE") from None
    sys.stderr.write(announcement.getvalue())
    return model


def lpips_background(lpips, source, edited, edit_mask: np.ndarray) -> float:
    """LPIPS ×10³ of the unedited region: both images × (1 − mask), mapped to [−1, 1] (reference-settings §7)."""
    import torch

    from .metrics import masked_background

    pair = masked_background(source, edited, edit_mask)
    if pair is None:
        return math.nan
    x, y = (p.float().to(next(lpips.parameters()).device) * 2 - 1 for p in pair)
    with torch.no_grad():
        return float(lpips.net(y, x).squeeze()) * 1e3


def edit_mask(item: BenchItem, size: int, force_border: bool = True) -> np.ndarray:
    """The entry's edit mask on the grid of the entry's image, with the reference evaluator's 1-pixel border set
    (``force_border``), then cropped and resized (nearest) like the image when the edit is at another size."""
    from ..images import center_crop_resize

    with Image.open(item.image_path) as image:
        width, height = image.size
    mask = item.mask((height, width), force_border=force_border)
    if mask.shape != (size, size):
        picture = Image.fromarray(mask.astype(np.uint8) * 255)
        mask = np.asarray(center_crop_resize(picture, size, Image.Resampling.NEAREST)) > 127
    return mask


def image_metrics(item: BenchItem, edited: np.ndarray, record: dict[str, Any], wanted: list[str],
                  models: MetricModels, parity: bool, data_dir: Path) -> dict[str, float]:
    """The ``wanted`` metrics of one edit (those whose network is unavailable are left out)."""
    from ..images import load_image, psnr
    from .metrics import background_metrics
    from .model_metrics import clip_similarity, structure_distance

    size = edited.shape[0]
    source = np.asarray(load_image(item.image_path, size))
    mask = edit_mask(item, size)
    out: dict[str, float] = {}
    background = [m for m in ("psnr", "mse", "ssim") if m in wanted]
    if background:
        out.update(background_metrics(source, edited, mask, tuple(background)))
    for name in wanted:
        network = models.get(NEEDS[name]) if name in NEEDS else None
        if name in NEEDS and network is None:
            continue
        if name == "structure_distance":
            out[name] = structure_distance(network, source, edited, parity=parity)
        elif name == "lpips":
            out[name] = lpips_background(network, source, edited, mask)
        elif name == "clip_whole":
            out[name] = clip_similarity(*network, edited, item.target_prompt)
        elif name == "clip_edited":
            out[name] = clip_similarity(*network, edited, item.target_prompt, keep_mask=mask)
        elif name in COST_METRICS:
            out[name] = float(record[name])
        elif name in TOY_METRICS and "target_image_path" in item.extra and "target_psnr" not in out:
            out.update(_toy_metrics(item, edited, source, data_dir, psnr))
    return {k: v for k, v in out.items() if k in wanted}


def _toy_metrics(item: BenchItem, edited, source, data_dir: Path, psnr) -> dict[str, float]:
    """Shapes-world ground truth: PSNR to the true target inside the true edit region, and edit success."""
    from ..images import load_image
    from ..toy.metrics import edit_succeeded

    truth = np.asarray(load_image(path_inside(data_dir, str(item.extra["target_image_path"])), edited.shape[0]))
    inner = edit_mask(item, edited.shape[0], force_border=False)  # the true region, not the reference's border
    ok = edit_succeeded(item.extra.get("toy_edit_kind", ""), item, edited, source, inner) if item.blend_words else None
    return {"target_psnr": psnr(edited, truth, inner) if inner.any() else math.nan,
            "edit_success": math.nan if ok is None else 100.0 * ok}


# ---- the run's table ---------------------------------------------------------------------------------------
def _read_rows(path: Path, say=print) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of an earlier evaluation; a table that cannot be read is computed again (said in one line)."""
    if not path.exists():
        return {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        if reader.fieldnames and not {"method", "id"} <= set(reader.fieldnames):  # (older tables lack some key
            raise ValueError("other columns")  # columns: their rows are simply computed again)
        return {(r["method"], r["id"]): r for r in rows}
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        say(f"note: cannot read the earlier {path.name} ({exc}); computing every row again")
        return {}


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def cell_value(value: Any) -> float | None:
    """A cell as a float (NaN included), ``None`` when empty (not computed / unavailable)."""
    if value in (None, ""):
        return None
    return float(value)


@dataclass
class EvaluationSummary:
    evaluated: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


def evaluate_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 metrics: list[str] | None = None, models: MetricModels | None = None, parity: bool | None = None,
                 progress: bool = False, say=print, allow_other_data: bool = False) -> EvaluationSummary:
    """Evaluate every finished edit of ``run_dir`` not evaluated yet; write the per-image CSV and summaries.

    ``data_dir`` defaults to the run's dataset, ``parity`` (the DINO input quirk) to the run's ``--parity``.
    Raises:
        InveditError: not a run folder, unknown metric names, a dataset that is not one, a dataset whose images
            differ from those the run edited (unless ``allow_other_data``).
    """
    run_dir = Path(run_dir)
    settings = read_run(run_dir)
    wanted = list(metrics or ALL_METRICS)
    unknown = [m for m in wanted if m not in ALL_METRICS]
    if unknown:
        raise InveditError(f"unknown metric {unknown[0]!r}; known: {', '.join(ALL_METRICS)}")
    parity = settings.get("parity", False) if parity is None else parity
    models = models or MetricModels()
    data_dir = Path(data_dir or settings["data"])
    items, _ = read_benchmark(data_dir)
    by_id = {item.id: item for item in items}
    old = _read_rows(run_dir / "metrics.csv", say)
    rows, summary = [], EvaluationSummary()
    records = [(method, path) for method in sorted(settings["methods"])
               for path in sorted((run_dir / EDITS_DIR / method).glob("*.json"))]
    sources = source_hashes(records, by_id)
    if not allow_other_data:
        check_same_sources(records, sources, data_dir, settings)
    keys = _InputKeys(sources, parity, models.identities(), data_dir)
    from tqdm.auto import tqdm

    with tqdm(records, desc="evaluate", unit="edit", disable=not progress, dynamic_ncols=True) as bar:
        for method, record_path in bar:
            row = _evaluate_edit(record_path, method, by_id, old, wanted, models, parity, data_dir, summary,
                                 bar.write if progress else say, keys)
            if row is not None:
                rows.append(row)
    summary.unavailable = {m: models.unavailable[NEEDS[m]] for m in wanted
                           if m in NEEDS and NEEDS[m] in models.unavailable}
    write_tables(run_dir, rows, mask_given_methods(settings))
    return summary


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InveditError(f"{run_dir} is not a bench run folder (no {RUN_FILE}); run `invedit bench` first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InveditError(f"cannot read {path}: {exc}") from None


def source_hashes(records: list[tuple[str, Path]], by_id: dict[str, BenchItem]) -> dict[str, str]:
    """SHA-256 of the dataset's image of every entry some record names (each file hashed once)."""
    out: dict[str, str] = {}
    for _, record_path in records:
        item = by_id.get(record_path.stem)
        if item is not None and item.id not in out:
            try:
                out[item.id] = file_sha256(item.image_path)
            except OSError:
                continue  # reported when the edit is evaluated
    return out


def check_same_sources(records: list[tuple[str, Path]], sources: dict[str, str], data_dir: Path,
                       settings: dict[str, Any]) -> None:
    """Refuse a dataset whose image of an entry is not the one the run edited (the records name its SHA-256).

    Raises:
        InveditError: the first entry whose image differs (one line, with how to go on).
    """
    for _, record_path in records:
        try:
            edited_from = json.loads(record_path.read_text())["bench"].get("source_sha256")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # unreadable records fail on their own; records from before source hashes cannot be checked
        now = sources.get(record_path.stem)
        if edited_from and now and edited_from != now:
            raise InveditError(f"{data_dir}: the image of entry {record_path.stem} is not the one the run edited "
                               f"(SHA-256 {now[:12]}…, the run's {edited_from[:12]}…); evaluate with the run's "
                               f"dataset ({settings.get('data')}) or pass --allow-other-data")


@dataclass
class _InputKeys:
    """What a metrics row is computed from, besides the edit itself (see the module docstring)."""

    sources: dict[str, str]
    parity: bool
    networks: dict[str, str]
    data_dir: Path

    def inputs(self, item: BenchItem, edit_size: tuple[int, int]) -> str:
        import hashlib

        with Image.open(item.image_path) as image:
            source_size = image.size
        target = None
        if "target_image_path" in item.extra:
            target = file_sha256(path_inside(self.data_dir, str(item.extra["target_image_path"])))
        fields = {"format": METRICS_FORMAT, "source": self.sources.get(item.id), "source_size": source_size,
                  "edit_size": edit_size, "mask": item.mask_rle, "target_image": target,
                  "target_prompt": item.target_prompt, "blend_words": item.blend_words,
                  "toy_edit_kind": item.extra.get("toy_edit_kind"), "parity": bool(self.parity)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _reusable(row: dict[str, Any], sha: str, source: str | None, inputs: str,
              networks: dict[str, str]) -> dict[str, Any]:
    """The earlier row's cells still valid for this edit: none when the edit or its inputs changed; those of a
    metric whose network changed are cleared."""
    if row.get("image_sha256") != sha or row.get("source_sha256") != source or row.get("inputs_sha256") != inputs:
        return {}
    try:
        used = json.loads(row.get("networks") or "{}")
    except ValueError:
        return {}
    kept = {k: v for k, v in row.items() if k not in NEEDS or used.get(NEEDS[k]) == networks[NEEDS[k]]}
    for metric in ALL_METRICS:  # a cell that is not a number (edited by hand?) is computed again
        try:
            cell_value(kept.get(metric))
        except (TypeError, ValueError):
            kept.pop(metric)
    return kept


def _evaluate_edit(record_path: Path, method: str, by_id: dict[str, BenchItem], old, wanted: list[str],
                   models: MetricModels, parity: bool, data_dir: Path, summary: EvaluationSummary,
                   say, keys: _InputKeys) -> dict[str, Any] | None:
    item_id = record_path.stem
    try:
        record = json.loads(record_path.read_text())
        image_name, sha = next((n, h) for n, h in record["files"].items() if Path(n).stem == item_id)
        if Path(image_name).name != image_name:
            raise InveditError(f"the record names the image {image_name!r}, not a file beside it")
        image_path = path_inside(record_path.parent, image_name)
        if file_sha256(image_path) != sha:
            raise InveditError("the image does not match its record (rewritten by hand?); rerun the bench")
        item = by_id.get(item_id)
        if item is None:
            raise InveditError("the dataset has no such entry")
        with Image.open(image_path) as image:
            edit_size = image.size
        source, inputs = keys.sources.get(item_id), keys.inputs(item, edit_size)
        row = _reusable(dict(old.get((method, item_id), {})), sha, source, inputs, keys.networks)
        todo = [m for m in wanted if cell_value(row.get(m)) is None]
        toy = "target_image_path" in item.extra
        todo = [m for m in todo if m not in TOY_METRICS or toy]
        if todo:
            with Image.open(image_path) as image:
                edited = np.asarray(image.convert("RGB"))
            row.update(image_metrics(item, edited, record, todo, models, parity, data_dir))
            summary.evaluated += 1
        else:
            summary.reused += 1
    except (InveditError, OSError, ValueError, KeyError, StopIteration) as exc:
        message = f"{method} {item_id}: {exc if isinstance(exc, InveditError) else type(exc).__name__ + ' ' + str(exc)}"
        summary.failed.append(message)
        say(f"failed {message}")
        return None
    used = {NEEDS[m] for m in ALL_METRICS if m in NEEDS and cell_value(row.get(m)) is not None}
    row.update({"method": method, "id": item_id, "edit_type": item.edit_type, "image_sha256": sha,
                "source_sha256": source, "inputs_sha256": inputs,
                "networks": json.dumps({k: keys.networks[k] for k in sorted(used)}, sort_keys=True)})
    return row


def _mean(values: list[float | None]) -> tuple[float | None, int]:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return (float(np.mean(present)) if present else (None if all(v is None for v in values) else math.nan),
            len(present))


def aggregate(rows: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Mean of every metric per group of ``by`` columns (NaN excluded; ``None`` where nothing was computed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: tuple(int(x) if str(x).isdigit() else x for x in k)):
        members = groups[key]
        entry: dict[str, Any] = dict(zip(by, key))
        entry["n"] = len(members)
        for metric in ALL_METRICS:
            entry[metric], _ = _mean([cell_value(r.get(metric)) for r in members])
        out.append(entry)
    return out


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "nan"
    return f"{value:.0f}" if metric == "nfe" else f"{value:.2f}"


#: How every table, plot and gallery marks a method that reads the benchmark's ground-truth edit mask (KV-Edit):
#: its background metrics are not comparable with those of the text-only methods.
MASK_GIVEN = "mask given, not comparable"


def mask_given_methods(settings: dict[str, Any]) -> set[str]:
    """The run's methods whose editor reads the benchmark's edit mask (run.json's ``"mask_given": true``, or an
    editor that takes a mask)."""
    from ..editing import get_editor

    flagged = set()
    for name, spec in settings.get("methods", {}).items():
        try:
            takes = bool(getattr(get_editor(spec.get("editor", "")), "takes_mask", False))
        except InveditError:  # an editor this version does not know
            takes = False
        if takes or spec.get("mask_given") is True:
            flagged.add(name)
    return flagged


def method_label(method: str, flagged: set[str] | frozenset[str] = frozenset()) -> str:
    """The method's name as tables show it: with `MASK_GIVEN` when it read the edit mask."""
    return f"{method} ({MASK_GIVEN})" if method in flagged else method


def markdown_table(entries: list[dict[str, Any]], by: tuple[str, ...], metrics: list[str] | None = None,
                   flagged: set[str] | frozenset[str] = frozenset()) -> str:
    """Markdown table of `aggregate` entries: ``metrics`` (default: every metric some entry has a value of);
    methods in ``flagged`` marked `MASK_GIVEN`."""
    metrics = metrics or [m for m in ALL_METRICS if any(e[m] is not None for e in entries)]
    head = [*(("edit type",) if "edit_type" in by else ()), "method", "N", *(LABELS[m] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [f"{e['edit_type']} {EDIT_TYPES.get(e['edit_type'], '')}".strip()] if "edit_type" in by else []
        cells += [method_label(e["method"], flagged), str(e["n"]), *(format_value(m, e[m]) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(run_dir: Path, rows: list[dict[str, Any]], flagged: set[str] | frozenset[str] = frozenset()
                 ) -> None:
    """metrics.csv, summary.csv/.md and by_type.csv/.md, all as one atomic group (the .md tables mark the
    methods in ``flagged`` `MASK_GIVEN`)."""
    columns = [*KEY_COLUMNS, *ALL_METRICS]
    texts = {"metrics.csv": _csv_text(rows, columns)}
    for name, by in (("summary", ("method",)), ("by_type", ("edit_type", "method"))):
        entries = aggregate(rows, by)
        printable = [{k: ("" if v is None else v) for k, v in e.items()} for e in entries]
        texts[f"{name}.csv"] = _csv_text(printable, [*by, "n", *ALL_METRICS])
        texts[f"{name}.md"] = markdown_table(entries, by, flagged=flagged)
    write_atomically([(run_dir / name, lambda f, t=text: f.write(t.encode())) for name, text in texts.items()])

