"""`invedit ui`: the Gradio page over an `EditSession` (layout and wiring only; the work is in `session.py`)."""

from __future__ import annotations

import tempfile
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
EXAMPLE_KINDS = (("color", 0), ("shape", 1), ("add", 2), ("delete", 3), ("background", 4))


def example_rows(folder: Path, size: int = 64) -> list[list[Any]]:
    """Shapes-world examples (image file, source, target, blend words), written into ``folder``."""
    from ..toy.scenes import make_edit_example

    rows = []
    for kind, seed in EXAMPLE_KINDS:
        edit = make_edit_example(100 + seed, kind, size=size)
        path = folder / f"example-{kind}.png"
        Image.fromarray(np.asarray(edit.source_image, dtype=np.uint8)).save(path)
        rows.append([str(path), edit.source_prompt, edit.target_prompt, edit.blend_words or ""])
    return rows


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
    shown = ", ".join(f"`{k}={v}`" for k, v in defaults.items() if k != "blend_words")
    return f"{editor} options and defaults: {shown or 'none'}"


def build_app(session: EditSession, default_steps: int = 50):
    """The Blocks app (not launched)."""
    import gradio as gr

    from ..methods import list_methods
    from ..models import model_name

    methods = list_methods()
    inversions = [m["name"] for m in methods["inversions"]]
    editors = [m["name"] for m in methods["editors"]]
    examples = example_rows(Path(tempfile.mkdtemp(prefix="invedit-examples-")))

    def run(image, source, target, inversion, editor, blend, steps, guidance, seed, editor_options,
            inversion_options, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's progress idiom)
        request = EditRequest(image=image, source_prompt=source or "", target_prompt=target or "",
                              inversion=inversion, editor=editor, blend_words=blend or "", steps=int(steps),
                              guidance=float(guidance), seed=int(seed), editor_options=editor_options or "",
                              inversion_options=inversion_options or "")
        try:
            outcome = session.edit(request)
        except InveditError as exc:
            return None, None, None, f"**error:** {exc}", None
        except Exception as exc:  # noqa: BLE001 (a bug: keep the server up, say it in one line)
            return None, None, None, f"**error:** unexpected {type(exc).__name__}: {str(exc)[:200]}", None
        r = outcome.result
        return (display_image(r.source), display_image(r.reconstruction), display_image(r.image), outcome.message(),
                [str(outcome.image_path), str(outcome.record_path)])

    with gr.Blocks(title="invedit", analytics_enabled=False) as app:
        gr.Markdown("# invedit\nEdit a real image with a text prompt: invert it, then denoise a source and a "
                    f"target branch together. Model: `{model_name(session.pipe)}`. {CONCURRENT_EDITS} edit runs "
                    "at a time; others wait in the queue.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", sources=["upload", "clipboard"], elem_id="input-image",
                                 format="png", height=IMAGE_HEIGHT)
                source = gr.Textbox(label="source prompt (describes the image)", elem_id="source")
                target = gr.Textbox(label="target prompt (the wanted image)", elem_id="target")
                blend = gr.Textbox(label='blend words "SOURCE_WORD TARGET_WORD" (P2P LocalBlend, optional)',
                                   elem_id="blend")
                with gr.Row():
                    inversion = gr.Dropdown(inversions, value="direct", label="inversion", elem_id="inversion")
                    editor = gr.Dropdown(editors, value="p2p", label="editor", elem_id="editor")
                with gr.Accordion("advanced", open=False):
                    steps = gr.Slider(1, 200, value=default_steps, step=1, label="DDIM steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="guidance scale", elem_id="guidance")
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                    defaults = gr.Markdown(_defaults_text("p2p", session.pipe))
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
                files = gr.File(label="result PNG and settings JSON", file_count="multiple", elem_id="files")
        gr.Examples(examples, inputs=[image, source, target, blend], label="shapes-world examples")
        editor.change(lambda name: _defaults_text(name, session.pipe), editor, defaults)
        button.click(run, [image, source, target, inversion, editor, blend, steps, guidance, seed, editor_options,
                           inversion_options], [source_out, recon_out, edit_out, status, files],
                     concurrency_limit=CONCURRENT_EDITS)
    app.queue(default_concurrency_limit=CONCURRENT_EDITS)
    return app
