"""`invedit report`: a run's results as people read them, written into the run folder.

* ``report.md``: the paper's Table 1 layout (Ju et al., ICLR 2024, Table 1), each of our methods with the
  published row of the same inversion + editor beside it; on an SD 3 / FLUX run a flow table beside the flow
  papers' published PIE-Bench rows (`PUBLISHED_FLOW`, each naming its source; methods that read the benchmark's
  edit mask flagged "mask given"); the per-edit-type table and the failures.
* ``quality_vs_time.png``: background PSNR against seconds and against NFE per edit (matplotlib).
* ``gallery.html``: per image the source, the edit mask and every method's edit with its metrics (static; the
  images are the run's own files and small thumbnails in ``gallery/``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..backbones import FAMILIES
from ..errors import InveditError
from ..outputs import write_atomically
from .data import read_benchmark
from .evaluate import (
    ALL_METRICS,
    LABELS,
    MASK_GIVEN,
    PIE_METRICS,
    aggregate,
    cell_value,
    edit_mask,
    format_value,
    markdown_table,
    mask_given_methods,
    method_label,
    read_run,
)
from .runner import EDITS_DIR

#: Table 1 of the paper (PIE-Bench, SD 1.4; PnP rows SD 1.5), keyed by our inversion+editor names.
PUBLISHED: dict[str, dict[str, float]] = {
    name: dict(zip(PIE_METRICS, values)) for name, values in {
        "ddim+p2p": (69.43, 17.87, 208.80, 219.88, 71.14, 25.01, 22.44),
        "null-text+p2p": (13.44, 27.03, 60.67, 35.86, 84.11, 24.75, 21.86),
        "negative-prompt+p2p": (16.17, 26.21, 69.01, 39.73, 83.40, 24.61, 21.87),
        "style-diffusion+p2p": (11.65, 26.05, 66.10, 38.63, 83.42, 24.78, 21.72),
        "direct+p2p": (11.65, 27.22, 54.55, 32.86, 84.76, 25.02, 22.10),
        "ddim+masactrl": (28.38, 22.17, 106.62, 86.97, 79.67, 23.96, 21.16),
        "direct+masactrl": (24.70, 22.64, 87.94, 81.09, 81.33, 24.38, 21.35),
        "ddim+pix2pix-zero": (61.68, 20.44, 172.22, 144.12, 74.67, 22.80, 20.54),
        "direct+pix2pix-zero": (49.22, 21.53, 138.98, 127.32, 77.05, 23.31, 21.05),
        "ddim+pnp": (28.22, 22.28, 113.46, 83.64, 79.05, 25.41, 22.55),
        "direct+pnp": (24.29, 22.46, 106.06, 80.45, 79.68, 25.41, 22.62),
    }.items()
}
#: Seconds per edit the paper reports (A40, inversion + editing), for P2P.
PUBLISHED_SECONDS = {"ddim+p2p": 10.9 + 12.8, "null-text+p2p": 132 + 12.9, "negative-prompt+p2p": 4.1 + 12.8,
                     "style-diffusion+p2p": 810 + 28, "direct+p2p": 16.8 + 12.9}
THUMBNAIL = 128


@dataclass(frozen=True)
class PublishedFlowRow:
    """One published PIE-Bench row of a flow-era method: what it is, the setting it ran at, its numbers and where
    they were printed. ``inversion`` + ``editor`` are the invedit names of the same method (``inversion`` None:
    any); ``family`` the model family it ran on (``model_kind`` in the records)."""

    method: str
    inversion: str | None
    editor: str
    family: str
    setting: str
    nfe: int | None
    metrics: dict[str, float]
    source: str
    mask_given: bool = False

    def matches(self, method: str, family: str) -> bool:
        inversion, _, editor = _pair_name(method).partition("+")
        return (family == self.family and editor == self.editor
                and self.inversion in (None, inversion))


#: The flow-era methods' published PIE-Bench rows (700 images), as the papers print them (struct ×10³, PSNR,
#: LPIPS ×10³). Most are one paper's table reprinting another's method; re-runs of one method differ between
#: papers by several points (RF-Solver: 31.1 vs 21.79 struct), so each row names the table it comes from.
PUBLISHED_FLOW: tuple[PublishedFlowRow, ...] = (
    PublishedFlowRow("RF-Solver", "rf-solver", "rf-solver-edit", "flux", "FLUX.1-dev, 15 steps", 60,
                     {"structure_distance": 31.1, "psnr": 22.90},
                     "FireFlow's table (Deng et al., arXiv 2412.07517); RF-Solver: Wang et al., arXiv 2411.04746"),
    PublishedFlowRow("RF-Solver", "rf-solver", "rf-solver-edit", "flux", "FLUX.1-dev, 15 steps", 60,
                     {"structure_distance": 21.79, "psnr": 24.83},
                     "DNAEdit's re-run (Xie et al., arXiv 2506.01430)"),
    PublishedFlowRow("FireFlow", "fireflow", "rf-solver-edit", "flux", "FLUX.1-dev, 15 steps", 32,
                     {"structure_distance": 28.3, "psnr": 23.28}, "FireFlow (Deng et al., arXiv 2412.07517)"),
    PublishedFlowRow("FireFlow", "fireflow", "rf-solver-edit", "flux", "FLUX.1-dev, 8 steps", 18,
                     {"structure_distance": 27.1, "psnr": 23.03}, "FireFlow (Deng et al., arXiv 2412.07517)"),
    PublishedFlowRow("RF-Inversion", "rf-inversion", "none", "flux", "FLUX.1-dev, 28 steps", None,
                     {"structure_distance": 40.6, "psnr": 20.82},
                     "a later paper's reprint (which table not verified here); RF-Inversion: Rout et al., "
                     "arXiv 2410.10792"),
    PublishedFlowRow("FlowEdit", "none", "flowedit", "sd3", "SD 3", None,
                     {"structure_distance": 27.24, "psnr": 22.13},
                     "a later paper's reprint (which table not verified here); FlowEdit: Kulikov et al., "
                     "arXiv 2412.08629"),
    PublishedFlowRow("FlowEdit", "none", "flowedit", "flux", "FLUX.1-dev", None,
                     {"structure_distance": 27.82, "psnr": 21.96},
                     "a later paper's reprint (which table not verified here); FlowEdit: Kulikov et al., "
                     "arXiv 2412.08629"),
    PublishedFlowRow("UniEdit-Flow", "uniedit", "uniedit", "flux", "FLUX.1-dev, 15 steps", 28,
                     {"structure_distance": 10.14, "psnr": 29.54}, "UniEdit-Flow (Jiao et al., arXiv 2504.13109)"),
    PublishedFlowRow("KV-Edit", None, "kv-edit", "flux", "FLUX.1-dev", None,
                     {"structure_distance": 1.98, "psnr": 35.87, "lpips": 9.92},
                     "KV-Edit (Zhu et al., arXiv 2502.17363)", mask_given=True),
    # The FlowEdit family on SD 3.5 (issue 33): one table comparing them, printed in the DRFS paper.
    PublishedFlowRow("FlowEdit", "none", "flowedit", "sd3", "SD 3.5", None,
                     {"structure_distance": 12.73, "psnr": 26.59},
                     "DRFS's PIE-Bench comparison on SD 3.5 (Beaudouin et al., arXiv 2509.05342; which table not "
                     "verified here); FlowEdit: Kulikov et al., arXiv 2412.08629"),
    PublishedFlowRow("DNAEdit", "none", "dnaedit", "sd3", "SD 3.5", None,
                     {"structure_distance": 14.19, "psnr": 26.66},
                     "DRFS's PIE-Bench comparison on SD 3.5 (Beaudouin et al., arXiv 2509.05342; which table not "
                     "verified here); DNAEdit: Xie et al., arXiv 2506.01430"),
    PublishedFlowRow("DRFS", "none", "drfs", "sd3", "SD 3.5, 50 steps", None,
                     {"structure_distance": 12.00, "psnr": 26.97},
                     "DRFS (Beaudouin et al., CVPR 2026, arXiv 2509.05342; which table not verified here)"),
)
#: The metrics the flow table shows (the papers print these; CLIP scores are on other scales there).
FLOW_METRICS = ("structure_distance", "psnr", "lpips", "clip_whole", "clip_edited")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv``, checked: the columns `invedit evaluate` writes, numbers (or empty) in them.

    Raises:
        InveditError: no file, or one that is empty, not a table, of other columns or with a non-number cell.
    """
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise InveditError(f"{run_dir} has no metrics.csv; run `invedit evaluate {run_dir}` first")
    again = f"run `invedit evaluate {run_dir}` again"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InveditError(f"cannot read {path} ({exc}); {again}") from None
    if not columns:
        raise InveditError(f"{path} is empty; {again}")
    missing = [c for c in ("method", "id", "edit_type", *ALL_METRICS) if c not in columns]
    if missing:
        raise InveditError(f"{path} is not a metrics table of `invedit evaluate` (no column {missing[0]!r}); {again}")
    for line, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise InveditError(f"{path} line {line} has {'more' if None in row else 'fewer'} cells than columns; "
                               f"{again}")
        for metric in ALL_METRICS:
            try:
                cell_value(row[metric])
            except ValueError:
                raise InveditError(f"{path} line {line}: {metric} {row[metric][:40]!r} is not a number; {again}") \
                    from None
    return rows  # a header alone is a run without finished edits: the report lists its failures


def open_failures(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The last failure of every pair that has no edit since (from every process's failure log)."""
    done = {(r["method"], r["id"]) for r in rows}
    last: dict[tuple[str, str], dict[str, str]] = {}
    for path in sorted(run_dir.glob("failures*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            last[(entry["method"], entry["id"])] = entry
    return [e for k, e in sorted(last.items()) if k not in done]


def _pair_name(method: str) -> str:
    return method.split("@")[0]


#: Table 1's order: editors, then inversions within each (methods the paper lacks after its own).
EDITOR_ORDER = ("p2p", "masactrl", "pix2pix-zero", "pnp")
INVERSION_ORDER = ("ddim", "null-text", "negative-prompt", "style-diffusion", "direct")


def paper_order(method: str) -> tuple:
    inversion, _, rest = _pair_name(method).partition("+")
    rank = lambda name, order: order.index(name) if name in order else len(order)  # noqa: E731
    return rank(rest, EDITOR_ORDER), rest, rank(inversion, INVERSION_ORDER), inversion, method


def table_one(summary: list[dict[str, Any]], flagged: set[str] | frozenset[str] = frozenset()) -> str:
    """Our rows in the paper's layout, each followed by the paper's row of the same pair where it has one; methods
    in ``flagged`` (they read the benchmark's edit mask) marked `MASK_GIVEN`."""
    head = ["method", "N", *(LABELS[m] for m in PIE_METRICS), "NFE", "s/edit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        name = f"**{e['method']}**" + (f" ({MASK_GIVEN})" if e["method"] in flagged else "")
        cells = [name, str(e["n"]), *(format_value(m, e[m]) for m in PIE_METRICS),
                 format_value("nfe", e["nfe"]), format_value("seconds", e["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
        published = PUBLISHED.get(_pair_name(e["method"]))
        if published:
            seconds = PUBLISHED_SECONDS.get(_pair_name(e["method"]))
            model = "SD 1.5" if e["method"].split("+")[1].split("@")[0] == "pnp" else "SD 1.4"
            cells = [f"↳ paper (PIE-Bench, {model})", "700", *(f"{published[m]:.2f}" for m in PIE_METRICS), "",
                     "" if seconds is None else f"{seconds:.1f} (A40)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def instruction_families() -> set[str]:
    """The instruction-trained model families (FLUX.1 Kontext, Qwen-Image-Edit: ``model_kind`` of their records)."""
    return {cls.family for cls in FAMILIES.values() if cls.schedule_kind == "instruction"}


def flow_families() -> set[str]:
    """The model families that run a rectified flow (``model_kind`` of SD 3 / FLUX records)."""
    return {cls.family for cls in FAMILIES.values() if cls.schedule_kind == "flow"}


def method_records(run_dir: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method with an edit: its model family (the first record's ``model_kind``), whether it was given
    the benchmark's edit mask (a record's ``"mask_given": true``, or its editor's ``takes_mask``) and the mode it ran
    in (its editor's `Editor.modes` options as recorded, e.g. ``features=inversion``)."""
    from ..editing import get_editor

    out = {}
    for method, spec in settings.get("methods", {}).items():
        record_path = next(iter(sorted((run_dir / EDITS_DIR / method).glob("*.json"))), None)
        if record_path is None:
            continue
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        try:
            editor = get_editor(spec.get("editor", ""))
        except InveditError:  # an editor this version does not know
            editor = None
        settings_ = record.get("editor") if isinstance(record.get("editor"), dict) else {}
        modes = [f"{key}={settings_[key]}" for key in getattr(editor, "modes", ()) if key in settings_]
        out[method] = {"family": record.get("model_kind"),
                       "mask_given": bool(getattr(editor, "takes_mask", False)) or record.get("mask_given") is True,
                       "mode": ", ".join(modes)}
    return out


def flow_table(summary: list[dict[str, Any]], records: dict[str, dict[str, Any]]) -> str:
    """The run's flow methods in bold, each followed by the published rows of the same method on the same family
    (↳, source named per row), then the published rows of methods the run does not have."""
    head = ["method", "N", *(LABELS[m] for m in FLOW_METRICS), "NFE", "s/edit", "setting · source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def published(row: PublishedFlowRow) -> str:
        note = f"{row.setting}; {row.source}" + (f"; **{MASK_GIVEN}**" if row.mask_given else "")
        cells = [f"↳ published: {row.method}", "700",
                 *(f"{row.metrics[m]:.2f}" if m in row.metrics else "" for m in FLOW_METRICS),
                 "" if row.nfe is None else str(row.nfe), "", note]
        return "| " + " | ".join(cells) + " |"

    shown: set[int] = set()
    for e in summary:
        info = records.get(e["method"], {})
        family = info.get("family") or "?"
        note = f"this run ({family})" + (f"; {info['mode']}" if info.get("mode") else "") + (
            f"; **{MASK_GIVEN}** (the benchmark's edit mask)" if info.get("mask_given") else "")
        cells = [f"**{e['method']}**", str(e["n"]), *(format_value(m, e[m]) for m in FLOW_METRICS),
                 format_value("nfe", e["nfe"]), format_value("seconds", e["seconds"]), note]
        lines.append("| " + " | ".join(cells) + " |")
        for k, row in enumerate(PUBLISHED_FLOW):
            if row.matches(e["method"], family):
                lines.append(published(row))
                shown.add(k)
    rest = [row for k, row in enumerate(PUBLISHED_FLOW) if k not in shown]
    if rest:
        lines.append("| *published, not in this run* |" + " |" * (len(head) - 1))
        lines += [published(row) for row in rest]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], flagged: set[str] | frozenset[str] = frozenset()) -> bytes:
    """PNG: background PSNR against seconds per edit and against NFE per edit, one point per method (methods in
    ``flagged``: a cross, labelled `MASK_GIVEN`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, cost, label in ((axes[0], "seconds", "seconds per edit (inversion + edit)"),
                            (axes[1], "nfe", "UNet evaluations (NFE) per edit")):
        points = [(e[cost], e["psnr"], e["method"]) for e in summary
                  if e[cost] is not None and e["psnr"] is not None and not math.isnan(e[cost] + e["psnr"])]
        for x, y, name in points:
            ax.scatter([x], [y], s=30, marker="x" if name in flagged else "o")
            ax.annotate(method_label(name, flagged), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("background PSNR (dB)")
        xs = [p[0] for p in points if p[0] > 0]
        if xs and max(xs) > 8 * min(xs):  # a log axis only where costs span an order of magnitude
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle("quality vs cost")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gallery(run_dir: Path, settings: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """``gallery.html`` and its thumbnails (source and mask per image); edits link to the run's own files; methods
    that read the benchmark's edit mask are marked `MASK_GIVEN`."""
    from ..images import load_image

    items = {item.id: item for item in read_benchmark(settings["data"])[0]}
    methods = sorted(settings["methods"])
    flagged = mask_given_methods(settings)
    by_pair = {(r["method"], r["id"]): r for r in rows}
    files: dict[str, bytes] = {}
    body = []
    for item_id in sorted({r["id"] for r in rows}):
        item = items.get(item_id)
        if item is None:
            continue
        files[f"gallery/{item_id}.source.png"] = _png(load_image(item.image_path, THUMBNAIL))
        mask = Image.fromarray(edit_mask(item, THUMBNAIL, force_border=False).astype(np.uint8) * 255)
        files[f"gallery/{item_id}.mask.png"] = _png(mask)
        cells = [f'<td><img src="gallery/{item_id}.source.png"><br>source</td>',
                 f'<td><img src="gallery/{item_id}.mask.png"><br>edit region</td>']
        for method in methods:
            row = by_pair.get((method, item_id))
            edit = next((p for p in (run_dir / EDITS_DIR / method).glob(f"{item_id}.*") if p.suffix != ".json"), None)
            if row is None or edit is None:
                cells.append(f"<td>{html.escape(method)}<br>—</td>")
                continue
            numbers = " · ".join(f"{LABELS[m].split()[0]} {format_value(m, cell_value(row.get(m)))}"
                                 for m in ("psnr", "clip_edited", "target_psnr") if row.get(m))
            if method in flagged:
                numbers += f"<br><i>{MASK_GIVEN}</i>"
            cells.append(f'<td><img src="{EDITS_DIR}/{html.escape(method)}/{edit.name}" width="{THUMBNAIL}" '
                         f'loading="lazy"><br><b>{html.escape(method)}</b><br><small>{numbers}</small></td>')
        caption = (f"{item_id} · {html.escape(item.edit_type_name)}: “{html.escape(item.source_prompt)}” → "
                   f"“{html.escape(item.target_prompt)}”")
        body.append(f"<h3>{caption}</h3><table><tr>{''.join(cells)}</tr></table>")
    page = ("<!doctype html><meta charset='utf-8'><title>invedit gallery</title><style>body{font-family:sans-serif}"
            "td{text-align:center;vertical-align:top;padding:4px;font-size:12px}img{width:128px;height:128px;"
            "image-rendering:pixelated}</style>"
            f"<h1>Gallery: {html.escape(settings['model'])}, {settings['steps']} steps</h1>" + "\n".join(body))
    files["gallery.html"] = page.encode()
    return files


def write_report(run_dir: str | Path) -> list[Path]:
    """Write report.md, quality_vs_time.png and gallery.html (+ thumbnails) into ``run_dir``; return the paths.

    Raises:
        InveditError: not a run folder, or not evaluated yet.
    """
    run_dir = Path(run_dir)
    settings = read_run(run_dir)
    rows = read_metrics(run_dir)
    summary = sorted(aggregate(rows, ("method",)), key=lambda e: paper_order(e["method"]))
    by_type = sorted(aggregate(rows, ("edit_type", "method")),
                     key=lambda e: (int(e["edit_type"]) if e["edit_type"].isdigit() else 99, paper_order(e["method"])))
    toy = [m for m in ("target_psnr", "edit_success") if any(e[m] is not None for e in summary)]
    failures = open_failures(run_dir, rows)
    records = method_records(run_dir, settings)
    flagged = mask_given_methods(settings) | {m for m, r in records.items() if r["mask_given"]}
    flow = {m: r for m, r in records.items() if r["family"] in flow_families()}
    instructed = {m: r for m, r in records.items() if r["family"] in instruction_families()}
    trained = [e for e in summary if e["method"] in instructed]
    summary = [e for e in summary if e["method"] not in instructed]
    lines = [
        f"# PIE-Bench report: {run_dir.name}", "",
        f"Model `{settings['model']}` (fingerprint {settings['model_fingerprint']}), {settings['steps']} "
        f"{'flow' if flow or instructed else 'DDIM'} steps, "
        f"guidance {settings['guidance_scale']}, seed {settings['seed']}, {settings['dtype']} on "
        f"{settings['device_type']}, parity mode {'on' if settings['parity'] else 'off'}, invedit "
        f"{settings['invedit']}. Dataset: `{settings['data']}`.", "",
        "## Table 1 layout", "",
        "Background metrics on the unedited region; struct = DINO structure distance; CLIP: similarity to the "
        "target prompt of the whole edit / the edit region. The paper's rows (Ju et al., ICLR 2024, Table 1: the "
        "700 PIE-Bench images on Stable Diffusion 1.4, PnP on 1.5) compare with ours only when this run is the "
        "same benchmark on the same model. n/a: the metric's network was not available to `invedit evaluate`.", "",
        table_one(summary, flagged),
    ]
    if flow:
        lines += ["## Flow methods (SD 3 / FLUX)", "",
                  "This run's methods (bold), each followed by the published PIE-Bench rows of the same method on the "
                  "same model family, then the published rows of the flow methods this run does not have. Published "
                  "rows are paper tables, often one paper's re-run of another's method: re-runs of one method differ "
                  "between papers by several points (RF-Solver: 31.1 vs 21.79 struct), so each row names its source, "
                  "and they compare with ours only at the same model, resolution and steps. NFE: network evaluations "
                  "per edit as each paper counts them (invedit counts the inversion and both branches: "
                  "`benchmarks/flow_speed.md`). Mask given: the method reads the benchmark's ground-truth edit mask, "
                  "so its background metrics are not comparable with the mask-free methods.", "",
                  flow_table([e for e in summary if e["method"] in flow], flow)]
    if trained:
        lines += ["## Instruction-trained, not training-free", "",
                  "Models trained to edit from an instruction (FLUX.1 Kontext, Qwen-Image-Edit), run by their own "
                  "pipelines on each entry's `editing_instruction` with no inversion: baselines for the training-free "
                  "methods above, on the same images and metrics, not one of them. CLIP scores still compare the edit "
                  "with the entry's target prompt.", "",
                  markdown_table(trained, ("method",), [m for m in ALL_METRICS
                                                        if any(e[m] is not None for e in trained)])]
    summary = summary + trained  # the plot and per-type tables show every method
    if toy:
        lines += ["## Against the true targets (shapes world)", "",
                  "PSNR to the true target image inside the true edit region; success: the edit did what its kind "
                  "asks (colour / shape recognised, object added / removed; background edits have no criterion).",
                  "", markdown_table(summary, ("method",), toy, flagged)]
    lines += ["## Per edit type", "", markdown_table(by_type, ("edit_type", "method"),
                                                   [m for m in ALL_METRICS if any(e[m] is not None for e in by_type)],
                                                   flagged)]
    lines += ["## Failures", ""]
    lines += [f"- {f['method']} {f['id']}: {f['error']}" for f in failures] or ["None."]
    lines += ["", "![quality vs cost](quality_vs_time.png)", "", "Gallery: [gallery.html](gallery.html)", ""]
    files = {"report.md": "\n".join(lines).encode(), "quality_vs_time.png": plot(summary, flagged),
             **gallery(run_dir, settings, rows)}
    write_atomically([(run_dir / name, lambda f, d=data: f.write(d)) for name, data in files.items()])
    return [run_dir / name for name in ("report.md", "quality_vs_time.png", "gallery.html")]
