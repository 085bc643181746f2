"""``invedit bench``, ``invedit evaluate`` and ``invedit report``: the commands' functions (`invedit.cli` registers
them on its app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_errors import cli_errors
from ..cli_options import DtypeOption, LoraOption, ModelOption, OffloadOption, QuantizeOption, ResolutionOption
from ..runtime import setup_threads


def _types(types: str | None) -> list[str] | None:
    return [t.strip() for t in types.split(",") if t.strip()] if types else None


@cli_errors
def bench_command(
    data_dir: Annotated[Path, typer.Argument(help="PIE-Bench-format folder (mapping_file.json, annotation_images/)")],
    methods: Annotated[str, typer.Option(help="comma-separated INVERSION+EDITOR[@LABEL], e.g. direct+p2p,ddim+p2p")],
    out: Annotated[Path, typer.Option(help="run folder (created; an existing run resumes)")],
    types: Annotated[str | None, typer.Option(help="edit types to run, e.g. 0,1,6 (default: all)")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N entries (by id)")] = None,
    model: ModelOption = None,
    steps: Annotated[int, typer.Option(help="DDIM steps")] = 50,
    guidance: Annotated[float, typer.Option(help="classifier-free guidance scale")] = 7.5,
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N, mps (default: best; per process "
                                                    "under accelerate)")] = None,
    dtype: DtypeOption = None,
    resolution: ResolutionOption = None,
    offload: OffloadOption = None,
    quantize: QuantizeOption = None,
    lora: LoraOption = None,
    parity: Annotated[bool, typer.Option(help="reference quirks: JPEG q75 outputs, Direct's reference batch layout, "
                                              "MasaCtrl's reference layer count")] = False,
    allow_mixed: Annotated[bool, typer.Option(
        "--allow-mixed", help="resume in another environment (threads, versions, device): its edits may differ in "
                              "their bits; recorded in run.json")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="editor option [METHOD:]KEY=VALUE (no METHOD: every method)")] = None,
    inversion_option: Annotated[list[str] | None, typer.Option(
        "--inversion-option", "-i", help="inversion option [METHOD:]KEY=VALUE")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="inversion cache (default: $INVEDIT_CACHE or "
                                                        "~/.cache/invedit/inversions)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="no on-disk inversion cache")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run methods over a PIE-Bench-format dataset; resumable; split across processes by `accelerate launch`."""
    from .cache import default_cache_dir
    from .methods import parse_methods
    from .runner import run_bench

    specs = parse_methods(methods, option, inversion_option, parity)
    setup_threads()
    summary = run_bench(data_dir, out, specs, model=model, steps=steps, guidance=guidance, seed=seed,
                        device=device, dtype=dtype, resolution=resolution, offload=offload, quantize=quantize,
                        loras=lora, parity=parity,
                        edit_types=_types(types), allow_mixed=allow_mixed,
                        limit=limit,
                        cache_dir=None if no_cache else (cache_dir or default_cache_dir()), progress=not quiet,
                        say=lambda m: typer.echo(m, err=True))
    typer.echo(summary.line())
    if summary.failed:
        raise typer.Exit(1)


@cli_errors
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="a folder written by `invedit bench`")],
    data: Annotated[Path | None, typer.Option(help="the dataset (default: the one the run used)")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated subset (default: all)")] = None,
    clip_model: Annotated[str, typer.Option(help="CLIP hub id or folder")] = "openai/clip-vit-large-patch14",
    dino_model: Annotated[str, typer.Option(help="DINO hub id or folder")] = "facebook/dino-vitb8",
    lpips_weights: Annotated[Path | None, typer.Option(
        help="torchvision's squeezenet1_1-b8a52dc0.pth (default: torchvision's cache or download)")] = None,
    device: Annotated[str | None, typer.Option(help="device of the metric networks (default: best)")] = None,
    parity: Annotated[bool | None, typer.Option(
        help="the reference's 0–255 DINO input (default: as the run's --parity)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    allow_other_data: Annotated[bool, typer.Option(
        "--allow-other-data", help="evaluate against a dataset whose images differ from those the run edited")] = False,
) -> None:
    """Compute PIE-Bench's metrics for every edit of a run; writes metrics.csv and summaries (incremental)."""
    from ..models import resolve_device
    from .evaluate import MetricModels, evaluate_run

    setup_threads()
    models = MetricModels(dino_model=dino_model, clip_model=clip_model,
                          lpips_weights=str(lpips_weights) if lpips_weights else None,
                          device=str(resolve_device(device)))
    summary = evaluate_run(run_dir, data, _types(metrics), models, parity, progress=not quiet,
                           say=lambda m: typer.echo(m, err=True), allow_other_data=allow_other_data)
    for metric, reason in summary.unavailable.items():
        typer.echo(f"{metric} unavailable: {reason}", err=True)
    typer.echo(f"evaluated {summary.evaluated} edits ({summary.reused} already evaluated, {len(summary.failed)} "
               f"failed); wrote {run_dir}/metrics.csv, summary.md, by_type.md")
    typer.echo((Path(run_dir) / "summary.md").read_text().rstrip())
    if summary.failed:
        raise typer.Exit(1)


@cli_errors
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="an evaluated `invedit bench` folder")],
) -> None:
    """Write report.md (the paper's Table 1 layout, published numbers beside), a plot and an HTML gallery."""
    from .report import write_report

    paths = write_report(run_dir)
    typer.echo(f"wrote {', '.join(map(str, paths))}")
