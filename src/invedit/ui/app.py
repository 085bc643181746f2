"""`invedit ui`: the Gradio page over an `EditSession` (layout and wiring only; the work is in `session.py`)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InveditError
from .session import EditRequest, EditSession

#: One edit runs at a time (the UNet's attention hooks belong to the running edit); others wait in Gradio's
#: queue, each getting its own result.
CONCURRENT_EDITS = 1
IMAGE_HEIGHT = 240  # display height in px (the embedded model's 64-px images are shown enlarged)
PAINT_COLOR = ("#ff00ff", 0.6)  # the mask brush: magenta at 60% opacity (the image shows through; alpha 153 ≥ 128)
EXAMPLE_KINDS = (("color", 0), ("shape", 1), ("add", 2), ("delete", 3), ("background", 4))


def example_rows(folder: Path, size: int = 64, blend: bool = True) -> list[list[Any]]:
    """Shapes-world examples (image file, source, target, blend words — empty without ``blend``: for editors that take
    none), written into ``folder``."""
    from ..toy.scenes import make_edit_example

    rows = []
    for kind, seed in EXAMPLE_KINDS:
        edit = make_edit_example(100 + seed, kind, size=size)
        path = folder / f"example-{kind}.png"
        Image.fromarray(np.asarray(edit.source_image, dtype=np.uint8)).save(path)
        rows.append([str(path), edit.source_prompt, edit.target_prompt, (edit.blend_words or "") if blend else ""])
    return rows


def check_listen_address(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on: bind a socket there the way uvicorn will
    (same family rule, ``SO_REUSEADDR``), then let it go.

    Raises:
        InveditError: the port is in use, not allowed, or ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise InveditError(_bind_failure(host, port, exc)) from None


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    local = "use 127.0.0.1 (this machine only) or 0.0.0.0 (every network this machine is on)"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: not a known host name or address; {local}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (another invedit ui or another server); pass another --port"
    if exc.errno in (errno.EACCES, errno.EPERM):
        below = " (ports below 1024 need administrator rights; the default is 7860)" if port < 1024 else ""
        return f"no permission to listen on port {port}{below}; pass another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine; {local}"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


@contextmanager
def temporary_folder() -> Iterator[Path]:
    """One folder for everything a UI server writes (uploads and Gradio's cache, results, examples), removed when
    the server exits. Enter it before gradio is first imported: Gradio reads ``GRADIO_TEMP_DIR`` at import."""
    root = Path(tempfile.mkdtemp(prefix="invedit-ui-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    try:
        yield root
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(root, ignore_errors=True)


def serve(pipe, host: str, port: int, default_steps: int = 50, on_ready: Callable[[], None] | None = None,
          default_guidance: float | None = None) -> None:
    """Run the page on ``host:port`` until Ctrl-C (or SIGTERM); everything it wrote is removed at exit.

    Args:
        pipe: the loaded pipeline.
        host, port: where to listen (see `check_listen_address`).
        default_steps: the page's default DDIM steps.
        default_guidance: the page's default guidance scale (None: the model's, `Backbone.default_guidance`).
        on_ready: called once the server listens (the CLI prints the URL).
    """
    with temporary_folder() as root:
        (root / "results").mkdir()
        app = build_app(EditSession(pipe, out_dir=root / "results"), default_steps, work_dir=root,
                        default_guidance=default_guidance)
        try:
            app.launch(server_name=host, server_port=port, quiet=True, prevent_thread_lock=True)
        except OSError as exc:  # taken between the check and now
            check_listen_address(host, port)
            raise InveditError(f"cannot listen on {host}:{port}: {str(exc).splitlines()[0]}") from None
        try:
            if on_ready is not None:
                on_ready()
            app.block_thread()  # returns after Ctrl-C, having closed the server
        finally:
            app.close(verbose=False)


def uploaded_image(payload: dict | None) -> tuple[str | None, str | None]:
    """(path, file name) of the page's image input as Gradio hands it over unprocessed, (None, None) when empty.

    The page passes the uploaded file itself to the session, so the CLI's checks judge it (a 16-bit or transparent
    PNG, a file that is not an image), not a copy Gradio converted first.
    """
    if not payload or not payload.get("path"):
        return None, None
    return payload["path"], payload.get("orig_name") or Path(payload["path"]).name


def painted_layers(payload: dict | None) -> list[str]:
    """The paths of the layers painted in the page's mask painter (Gradio's image editor, unprocessed): each a
    transparent PNG of the image's size, the brush strokes opaque."""
    return [layer["path"] for layer in (payload or {}).get("layers") or [] if layer and layer.get("path")]


def paint_brush(size: tuple[int, int] | None = None):
    """The mask brush: `PAINT_COLOR`, its radius 1/32 of the image's shorter side (2 px on a 64-px image: a
    stroke one latent cell wide; 16 px at 512), at least 2 px."""
    import gradio as gr

    radius = max(2, round(min(size) / 32)) if size else "auto"
    return gr.Brush(default_size=radius, colors=[PAINT_COLOR], color_mode="fixed")


def painter_background(payload: dict | None) -> dict:
    """The mask painter's update when the image input changes: the image as its background, no layers (the
    previous painting belonged to the previous image) and a brush sized to the image; empty for no image or a file
    the browser cannot show (the Edit button then says what is wrong with it)."""
    import gradio as gr

    path, _ = uploaded_image(payload)
    if path is None:
        return gr.update(value=None)
    try:
        with Image.open(path) as im:
            background = im.convert("RGB")
    except Exception:  # noqa: BLE001 (any unreadable upload: the session's checks name the problem on Edit)
        return gr.update(value=None)
    return gr.update(value={"background": background, "layers": [], "composite": None},
                     brush=paint_brush(background.size))


def display_image(image: Image.Image, size: int = IMAGE_HEIGHT) -> Image.Image:
    """The image as the page shows it: small model outputs enlarged (nearest, so pixels stay pixels); the
    download is the original."""
    if image.height >= size:
        return image
    factor = -(-size // image.height)
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _defaults_text(editor: str, pipe) -> str:
    from ..editing import get_editor
    from ..models import model_editor_defaults

    defaults = {**get_editor(editor).defaults, **model_editor_defaults(pipe, editor)}
    shown = ", ".join(f"`{k}={v}`" for k, v in defaults.items() if k not in ("blend_words", "local_blend_words"))
    return f"{editor} options and defaults: {shown or 'none'}"


def usable_methods(model) -> tuple[list[str], list[str]]:
    """(inversions, editors) that run on ``model`` (a `Backbone`): those of its schedule kind that its family does
    not refuse (`invedit.prepare.check_model_kind`), as the page's dropdowns list them."""
    from ..methods import list_methods
    from ..prepare import check_model_kind

    methods = list_methods()
    usable: dict[str, list[str]] = {"inversion": [], "editor": []}
    for kind, key in (("inversions", "inversion"), ("editors", "editor")):
        for m in methods[kind]:
            try:
                check_model_kind(model, **{key: m["name"]})
            except InveditError:
                continue
            usable[key].append(m["name"])
    return usable["inversion"], usable["editor"]


def build_app(session: EditSession, default_steps: int = 50, work_dir: str | Path | None = None,
              default_guidance: float | None = None):
    """The Blocks app (not launched); the example images are written into a new folder in ``work_dir`` (default:
    the system's temporary folder). The dropdowns list the methods the model runs (`usable_methods`), starting at
    its family's editor and guidance (``default_guidance``: None: the model's)."""
    import gradio as gr

    from ..backbones import backbone
    from ..models import model_name

    model = backbone(session.pipe)
    inversions, editors = usable_methods(model)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    # the editor a page starts with: the family's (P2P on a UNet model, shared attention on a flow model)
    unet_model = model.schedule_kind == "ddim"
    first_editor = model.default_editor
    first_guidance = model.default_guidance[0] if default_guidance is None else default_guidance
    examples = example_rows(Path(tempfile.mkdtemp(prefix="invedit-examples-", dir=work_dir)), blend=unet_model)

    def run(image, source, target, inversion, editor, blend, steps, guidance, seed, editor_options,
            inversion_options, mask=None, painted=None,
            progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        image_path, image_name = uploaded_image(image)  # unprocessed inputs (preprocess=False below)
        mask_path, mask_name = uploaded_image(mask)
        request = EditRequest(image=image_path, image_name=image_name, mask=mask_path, mask_name=mask_name,
                              painted=painted_layers(painted), source_prompt=source or "",
                              target_prompt=target or "",
                              inversion=inversion, editor=editor, blend_words=blend or "", steps=int(steps),
                              guidance=float(guidance), seed=int(seed), editor_options=editor_options or "",
                              inversion_options=inversion_options or "")
        try:
            outcome = session.edit(request)
        except InveditError as exc:
            return None, None, None, f"**error:** {exc}", None, None
        except Exception as exc:  # noqa: BLE001 (a bug: keep the server up, say it in one line)
            return None, None, None, f"**error:** unexpected {type(exc).__name__}: {str(exc)[:200]}", None, None
        r = outcome.result
        return (display_image(r.source), display_image(r.reconstruction), display_image(r.image), outcome.message(),
                [str(outcome.image_path), str(outcome.record_path)], outcome.follow_up())

    def again(follow_up):
        if not follow_up:
            return (gr.update(),) * 5 + ("**error:** no result to edit again yet: press Edit first",)
        return (follow_up["image"], follow_up["source_prompt"], follow_up["target_prompt"], follow_up["blend_words"],
                follow_up["mask"], "The result is the new image and its target prompt the new source prompt: change "
                "the target prompt and press Edit (the record will link the previous edit).")

    with gr.Blocks(title="invedit", analytics_enabled=False) as app:
        gr.Markdown("# invedit\nEdit a real image with a text prompt: invert it, then denoise a source and a "
                    f"target branch together. Model: `{model_name(session.pipe)}`. {CONCURRENT_EDITS} edit runs "
                    "at a time; others wait in the queue.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, label="image", sources=["upload", "clipboard"],
                                 elem_id="input-image", format="png", height=IMAGE_HEIGHT)
                with gr.Accordion("mask (kv-edit only): paint the region to edit, or upload a mask", open=False,
                                  elem_id="mask-section"):
                    painter = gr.ImageMask(type="filepath", sources=[], transforms=(), elem_id="painter",
                                           label="paint over the image: painted = edit", format="png",
                                           height=IMAGE_HEIGHT, layers=gr.LayerOptions(allow_additional_layers=False),
                                           brush=paint_brush())
                    mask = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id="mask",
                                    label="or upload a mask: the image's size, white = the region to edit",
                                    format="png", height=IMAGE_HEIGHT // 2)
                source = gr.Textbox(label="source prompt (describes the image)", elem_id="source")
                target = gr.Textbox(label="target prompt (the wanted image; the instruction with the instruct editor)",
                                    elem_id="target")
                blend = gr.Textbox(label='blend words "SOURCE_WORD TARGET_WORD" (LocalBlend of p2p / mmdit-p2p, '
                                         'optional)',
                                   elem_id="blend")
                with gr.Row():
                    inversion = gr.Dropdown(inversions, value="direct", label="inversion", elem_id="inversion")
                    editor = gr.Dropdown(editors, value=first_editor, label="editor", elem_id="editor")
                with gr.Accordion("advanced", open=False):
                    steps = gr.Slider(1, 200, value=default_steps, step=1, label="steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=first_guidance, step=0.5, label="guidance scale",
                                         elem_id="guidance")
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                    defaults = gr.Markdown(_defaults_text(first_editor, session.pipe))
                    editor_options = gr.Textbox(label="editor options (KEY=VALUE, one per line)", lines=2,
                                                elem_id="editor-options")
                    inversion_options = gr.Textbox(label="inversion options (KEY=VALUE, one per line)", lines=2,
                                                   elem_id="inversion-options")
                button = gr.Button("Edit", variant="primary", elem_id="edit")
            with gr.Column():
                with gr.Row():
                    source_out = gr.Image(label="source", format="png", interactive=False, elem_id="source-out",
                                          height=IMAGE_HEIGHT)
                    recon_out = gr.Image(label="reconstruction", format="png", interactive=False,
                                         elem_id="reconstruction-out", height=IMAGE_HEIGHT)
                    edit_out = gr.Image(label="edit", format="png", interactive=False, elem_id="edit-out",
                                        height=IMAGE_HEIGHT)
                status = gr.Markdown("Upload an image or pick an example, then press Edit.", elem_id="status")
                again_button = gr.Button("edit this result again", elem_id="again")
                files = gr.File(label="result PNG and settings JSON", file_count="multiple", elem_id="files")
        follow_up = gr.State(None)  # the newest result's fields for "edit this result again"
        gr.Examples(examples, inputs=[image, source, target, blend], label="shapes-world examples")
        editor.change(lambda name: _defaults_text(name, session.pipe), editor, defaults)
        # the painter shows the image to paint over; unprocessed, so that a bad upload reaches the Edit checks
        image.change(painter_background, image, painter, preprocess=False, concurrency_limit=None)
        button.click(run, [image, source, target, inversion, editor, blend, steps, guidance, seed, editor_options,
                           inversion_options, mask, painter], [source_out, recon_out, edit_out, status, files,
                                                               follow_up],
                     concurrency_limit=CONCURRENT_EDITS, preprocess=False)  # the file itself: see uploaded_image
        again_button.click(again, follow_up, [image, source, target, blend, mask, status], concurrency_limit=None)
    app.queue(default_concurrency_limit=CONCURRENT_EDITS)
    return app
