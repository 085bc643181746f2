"""Command line: ``invedit edit``, ``invedit methods`` and friends (typer)."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from .bench.cli import bench_command, evaluate_command, report_command
from .cli_errors import cli_errors, raise_terminated
from .cli_options import (
    DeviceOption,
    DtypeOption,
    GuidanceOption,
    LoraOption,
    MaxMemoryOption,
    ModelOption,
    OffloadOption,
    QuantizeOption,
    ResolutionOption,
    StepsOption,
)
from .errors import InveditError
from .runtime import setup_threads

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Text-guided editing of real images through diffusion inversion.")
# The benchmark's commands; the others are defined below.
app.command("bench")(bench_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)


@app.command("edit")
@cli_errors
def edit_command(
    image: Annotated[str | None, typer.Argument(help="image to edit (PNG/JPEG/...); none with --generate")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s", help="prompt describing the image")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="prompt describing the wanted image")] = None,
    instruction: Annotated[str | None, typer.Option(
        help='what to do to the image, for the instruction editor (instruct: FLUX.1 Kontext, Qwen-Image-Edit), '
             'e.g. "make the cat a dog"; in place of --target')] = None,
    inversion: Annotated[str, typer.Option(help="inversion method (see `invedit methods`)")] = "direct",
    editor: Annotated[str | None, typer.Option(
        help="editing method (see `invedit methods`; default: the model's: p2p on SD 1.x/2.x/SDXL, shared-attention "
             "on SD 3 / FLUX)")] = None,
    blend: Annotated[str | None, typer.Option(
        help='LocalBlend words "SRC_WORD TGT_WORD" (an added or removed object: its word twice, "star star")',
    )] = None,
    mask: Annotated[str | None, typer.Option(
        help="the region to edit, for editors that take one (kv-edit): an image of IMAGE's size, white = edit",
    )] = None,
    model: ModelOption = None,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    resolution: ResolutionOption = None,
    offload: OffloadOption = None,
    quantize: QuantizeOption = None,
    lora: LoraOption = None,
    max_memory: MaxMemoryOption = None,
    out: Annotated[Path | None, typer.Option(help="output PNG (a .json sidecar is written beside it)")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="editor option KEY=VALUE")] = None,
    inversion_option: Annotated[list[str] | None, typer.Option(
        "--inversion-option", "-i", help="inversion option KEY=VALUE (e.g. offset_scale=0.8)")] = None,
    offset_scale: Annotated[float | None, typer.Option(help="direct: scale of the offset (ablation 0.4/0.8)")] = None,
    offset_interval: Annotated[int | None, typer.Option(help="direct: correct every K steps (ablation)")] = None,
    correct_target: Annotated[bool, typer.Option(help="direct: also add the target's own offset (ablation)")] = False,
    inversion_guidance: Annotated[float | None, typer.Option(help="ddim/direct: CFG during inversion")] = None,
    save_reconstruction: Annotated[bool, typer.Option(help="also write the reconstruction")] = False,
    generate: Annotated[bool, typer.Option(
        "--generate", help="no IMAGE: edit a generated pair (SD3/FLUX): source and target from the seed's initial "
        "noise, as the pipeline draws it; writes OUT and the source image OUT.source.png")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Edit IMAGE (or, with --generate, a generated pair) from the source prompt to the target prompt (or by an
    instruction, with an instruction-trained model); writes a PNG and a JSON sidecar."""
    from . import api
    from .editing import get_editor
    from .images import load_image
    from .load_options import check_load_options
    from .masks import load_mask
    from .models import inspect, load, native_resolution, resolve_device
    from .options import parse_options
    from .outputs import prepare_output_dir, remove_created
    from .prepare import check_mask, check_settings, prepare_edit

    # Everything that can be checked without the model is checked before loading it.
    instructed = editor is not None and get_editor(editor).takes_instruction
    if not instructed:
        for text, flag, what in ((source, "'--source' / '-s'", "the prompt describing the image"),
                                 (target, "'--target' / '-t'", "the prompt describing the wanted image")):
            if text is None:
                raise InveditError(f"Missing option {flag}. It gives {what} (the instruction editors take "
                                   "--instruction instead)")
    if editor is not None:
        target = api.instruction_or_target(editor, target, instruction)
    elif instruction is not None:
        raise InveditError("--instruction is for the instruction editor: add --editor instruct")
    for text, what in ((source, "source prompt"), (target, "instruction" if instructed else "target prompt")):
        if text is not None and not text.strip() and not (instructed and what == "source prompt"):
            raise InveditError(f"the {what} is empty")
    flags = {"offset_scale": offset_scale, "offset_interval": offset_interval,
             "correct_target": correct_target or None, "inversion_guidance": inversion_guidance}
    inversion_options = parse_options(inversion_option, "--inversion-option")
    inversion_options.update({k: v for k, v in flags.items() if v is not None})
    if generate:
        if image is not None:
            raise InveditError("--generate edits a generated pair; give no IMAGE with it")
        if mask is not None or inversion_options:
            raise InveditError("--generate makes no inversion and takes no mask")
    elif image is None:
        raise InveditError("give the IMAGE to edit (or --generate to edit a generated pair)")
    settings = check_settings("euler" if generate else inversion, editor, steps, guidance, seed, inversion_options,
                              parse_options(option, "--option"), blend)
    edit_mask = None
    if not generate:
        load_image(image, 64)  # readable, RGB-convertible, not tiny
        edit_mask = None if mask is None else load_mask(mask, image)  # readable, the image's size, not empty
        if editor is not None:
            check_mask(editor, edit_mask)
    check_load_options(resolve_device(device), offload, quantize, lora)
    shown = "generate" if generate else inversion
    if out is not None:
        _output_path(out, image or "generated", shown, editor or "")
    # What the model's folder says, before any weight is read: components, tokenizers, the resolution and the
    # memory it needs; then every model-side check of the edit on the weightless model (family, prompts, options).
    model_record = inspect(model, device, dtype, resolution, offload, max_memory)
    chosen = prepare_edit(model_record.pipe, source, target, settings, mask=edit_mask).settings
    out = _output_path(out, image or "generated", shown, chosen.editor)
    created = prepare_output_dir(out.parent)  # fails now, not after the edit; undone if the edit fails

    try:
        setup_threads()
        pipe = load(model, device=device, dtype=dtype, resolution=resolution, offload=offload, quantize=quantize,
                    loras=lora, max_memory=max_memory)
        started = time.perf_counter()
        if generate:
            result = api.edit(pipe, None, source, target, editor=editor, steps=steps, guidance_scale=guidance,
                              seed=seed, progress=not quiet, **chosen.editor_options)
        else:
            result = api.edit(
                pipe, load_image(image, native_resolution(pipe)), source, None if instructed else target,
                inversion=inversion, editor=editor, steps=steps, guidance_scale=guidance, seed=seed,
                inversion_options=settings.inversion_options, progress=not quiet, mask=edit_mask,
                instruction=target if instructed else None, **chosen.editor_options,
            )
            result.settings["image"] = str(image)
            previous = api.saved_link(image)  # IMAGE is an earlier edit's output: its record links that edit
            if previous is not None:
                result.settings["previous"] = previous
        if mask is not None:
            result.settings["mask"]["file"] = str(mask)
        second = "source" if generate else "reconstruction"
        result.save(out, reconstruction=save_reconstruction or generate, reconstruction_name=second)
    except BaseException:
        remove_created(created)
        raise
    written = [out, out.with_suffix(".json")]
    if save_reconstruction or generate:
        written.append(out.with_name(f"{out.stem}.{second}.png"))
    typer.echo(f"wrote {', '.join(map(str, written))}: {result.settings['inversion']}+{chosen.editor}, "
               f"NFE {result.nfe}, {time.perf_counter() - started:.1f} s")


def _output_path(out: Path | None, image: str, inversion: str, editor: str) -> Path:
    """``--out``, or IMAGE.INVERSION+EDITOR.png; an image file name, not a folder."""
    out = Path(out) if out else Path(f"{Path(image).stem}.{inversion}+{editor}.png")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InveditError(f"output must be .png, .jpg or .webp, got {out.name}")
    if out.is_dir():
        raise InveditError(f"output {out} is a folder; name the image file to write")
    return out


@app.command("methods")
@cli_errors
def methods_command(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """List the inversion methods and editors, with their options."""
    from .methods import list_methods

    methods = list_methods()
    if as_json:
        lines = [json.dumps(methods, indent=2)]
    else:
        lines = []
        for kind in ("inversions", "editors"):
            lines.append(f"{kind}:")
            for m in methods[kind]:
                lines.append(f"  {m['name']:<18} {m['description']}")
                if m["options"]:
                    opts = ", ".join(f"{k}={json.dumps(v)}" for k, v in m["options"].items())
                    lines.append(f"  {'':<18} options: {opts}")
    try:
        typer.echo("\n".join(lines))
    except BrokenPipeError:  # `invedit methods | head -1`: the reader has gone; nothing to say
        _stdout_to_devnull()
        raise typer.Exit(1) from None


@app.command("demo")
@cli_errors
def demo_command(
    seed: Annotated[int, typer.Option(help="shapes-world scene seed")] = 0,
    kind: Annotated[str, typer.Option(help="edit kind: color, shape, background, add, delete")] = "color",
    image: Annotated[str | None, typer.Option(help="your own image instead of a generated scene")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s", help="source prompt (with --image)")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="target prompt (with --image)")] = None,
    blend: Annotated[str | None, typer.Option(help='LocalBlend words "SRC TGT" (with --image)')] = None,
    model: Annotated[str | None, typer.Option(help="hub id, folder or embedded model (shapes-64, shapes-flow); "
                                                   "default: shapes-64")] = None,
    steps: Annotated[int | None, typer.Option(help="sampling steps (default: the model's recommendation, else "
                                                   "50)")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32/float16/bfloat16 (default: bf16 on capable CPUs)")] = None,
    quantize: QuantizeOption = None,
    lora: LoraOption = None,
    out: Annotated[Path, typer.Option(help="side-by-side PNG to write")] = Path("invedit-demo.png"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Edit a shapes-world scene (or --image) with the plain inversion and Direct Inversion under one editor
    (DDIM+P2P vs Direct+P2P; on a flow model Euler vs Direct with shared attention); write a side-by-side; print
    metrics."""
    from . import api
    from .backbones import backbone
    from .images import load_image
    from .load_options import check_load_options
    from .models import load, native_resolution, resolve_device
    from .toy.demo import run_demo
    from .toy.scenes import EDIT_KINDS, make_edit_example

    started = time.perf_counter()
    if steps is not None:
        api.check_steps(steps)
    if image is None:
        if kind not in EDIT_KINDS:
            raise InveditError(f"unknown edit kind {kind!r}; choose one of: {', '.join(EDIT_KINDS)}")
        if source or target or blend:
            raise InveditError("--source/--target/--blend go with --image; a generated scene has its own prompts")
    elif not (source and target):
        raise InveditError("--image needs --source and --target")
    check_load_options(resolve_device(None), None, quantize, lora)
    setup_threads()
    pipe = load(model, dtype=dtype or _default_demo_dtype(), quantize=quantize, loras=lora)
    size = native_resolution(pipe)
    p2p = backbone(pipe).schedule_kind == "ddim"  # the flow demo's editor (shared attention) takes no blend words
    if blend and not p2p:
        raise InveditError("--blend gives P2P's LocalBlend words; on a flow model the demo's editor (shared "
                           "attention) takes none")
    if image is None:
        edit = make_edit_example(seed, kind, size=size)
        from PIL import Image

        picture = Image.fromarray(edit.source_image)
        source, target = edit.source_prompt, edit.target_prompt
        blend = (edit.blend_words or None) if p2p else None
    else:
        edit, picture = None, load_image(image, size)
    path, metrics = run_demo(pipe, edit, picture, source, target, blend, steps, seed, out, progress=not quiet)
    typer.echo(f"{source!r} -> {target!r}" + (f"  (blend {blend})" if blend else ""))
    for name, values in metrics.items():
        typer.echo(f"  {name:<11} " + "  ".join(f"{k}={v}" for k, v in values.items()))
    typer.echo(f"wrote {path} in {time.perf_counter() - started:.1f} s")


def _default_demo_dtype() -> str:
    """float16 on CUDA; bfloat16 on CPUs with native bf16 (much faster there); float32 elsewhere."""
    import torch

    from .models import cpu_has_fast_bf16

    if torch.cuda.is_available():
        return "float16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


@app.command("toy-bench")
@cli_errors
def toy_bench_command(
    out_dir: Annotated[Path, typer.Argument(help="folder to create (PIE-Bench layout)")],
    n: Annotated[int, typer.Option("--n", help="edits per edit kind (5 kinds)")] = 20,
    seed: Annotated[int, typer.Option(help="dataset seed")] = 0,
    size: Annotated[int, typer.Option(help="image size in pixels")] = 64,
) -> None:
    """Write shapes-world edits with true targets as a PIE-Bench-format dataset."""
    from .toy.bench import write_toy_bench

    folder = write_toy_bench(out_dir, n, seed, size)
    typer.echo(f"wrote {5 * n} edits to {folder}")


@app.command("ui")
@cli_errors
def ui_command(
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="address to listen on; 0.0.0.0 exposes the page to your network")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="port (default 7860)")] = 7860,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    resolution: ResolutionOption = None,
    offload: OffloadOption = None,
    quantize: QuantizeOption = None,
    lora: LoraOption = None,
    max_memory: MaxMemoryOption = None,
    steps: Annotated[int, typer.Option(help="the page's default DDIM steps")] = 50,
    guidance: Annotated[float | None, typer.Option(
        help="the page's default guidance scale (default: the model's: its invedit.json, else 7.5; 1 on "
             "FLUX.1-schnell)")] = None,
) -> None:
    """Start the web UI (Gradio) on the embedded model or --model; Ctrl-C stops it."""
    import importlib.util

    from . import api
    from .load_options import check_load_options
    from .models import inspect, load, resolve_device
    from .prepare import model_numbers
    from .ui.app import check_listen_address, serve

    api.check_steps(steps)
    if guidance is not None:
        api.check_guidance(guidance)
    if not 1 <= port <= 65535:
        raise InveditError(f"--port must be from 1 to 65535, got {port}")
    check_load_options(resolve_device(device), offload, quantize, lora)
    check_listen_address(host, port)  # in use, not allowed, not this machine's: one line now, not after loading
    if importlib.util.find_spec("gradio") is None:  # found, not imported: serve() sets its temporary folder first
        raise InveditError("the web UI needs gradio: pip install 'invedit[ui]'")
    model_numbers(inspect(model, device, dtype, resolution, offload, max_memory, modules=False), steps, guidance)
    setup_threads()
    pipe = load(model, device=device, dtype=dtype, resolution=resolution, offload=offload, quantize=quantize,
                loras=lora, max_memory=max_memory)

    def announce() -> None:
        typer.echo(f"invedit ui on http://{host}:{port}" + ("  (reachable from your network)"
                                                              if host != "127.0.0.1" else ""))

    serve(pipe, host, port, default_steps=steps, on_ready=announce, default_guidance=guidance)


def _stdout_to_devnull() -> None:
    """After a BrokenPipeError on stdout: point it at /dev/null, so that Python's final flush stays quiet (the
    recipe of the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main() -> None:
    """Console entry point. Usage errors (a bad value, a missing option) are one `error: …` line and exit 2, like
    every other bad input; `--help` prints the help."""
    import signal

    signal.signal(signal.SIGTERM, raise_terminated)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line, as errors are
    # click's exceptions, or those of the copy of click that newer typer versions carry (typer._click)
    exceptions = sys.modules[typer.BadParameter.__module__]
    aborts = (typer.Abort, getattr(exceptions, "Abort", typer.Abort))
    no_args_help = getattr(exceptions, "NoArgsIsHelpError", ())  # `invedit` alone (click >= 8.2): the help
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit / --help, else the command's value
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        code = 1
    except exceptions.ClickException as exc:
        if no_args_help and isinstance(exc, no_args_help):
            exc.show()
        else:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        code = exc.exit_code
    except aborts:  # Ctrl-C outside a command (while parsing)
        typer.echo("error: interrupted", err=True)
        code = 130
    except SystemExit as exc:
        code = exc.code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
