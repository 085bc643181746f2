"""The web UI in a real browser (Debian's chromium driven by Playwright) on the embedded model."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import invedit
from invedit.errors import InveditError
from invedit.options import split_items as option_items
from invedit.toy.scenes import make_edit_example
from invedit.ui.session import EditRequest, EditSession

from .bounds import measured

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_browser = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                   reason="chromium is not installed (CI installs it: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def session():
    return EditSession(invedit.load(dtype="float32"))


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    edit = make_edit_example(7, "color", size=64)
    path = tmp_path_factory.mktemp("ui") / "scene.png"
    Image.fromarray(np.asarray(edit.source_image, dtype=np.uint8)).save(path)
    return path, edit


def test_option_text_splits_like_the_command_line():
    assert option_items("a=1\nb=2, c=[1, 2]\n d='x,y' ") == ["a=1", "b=2", "c=[1, 2]", "d='x,y'"]
    assert option_items("") == []


def test_session_reuses_the_inversion_for_a_new_target_and_refuses_bad_input(session, example):
    path, edit = example
    request = EditRequest(Image.open(path), edit.source_prompt, edit.target_prompt, blend_words=edit.blend_words,
                          steps=6)
    first = session.edit(request)
    assert not first.cached_inversion and first.result.nfe_inversion == 6
    other = edit.target_prompt.replace(edit.blend_words.split()[1], "green")
    second = session.edit(EditRequest(Image.open(path), edit.source_prompt, other,
                                      blend_words=f"{edit.blend_words.split()[0]} green", steps=6))
    assert second.cached_inversion and "reused from the cache" in second.message()
    direct = invedit.edit(session.pipe, Image.open(path), edit.source_prompt, other, steps=6,
                          blend_words=f"{edit.blend_words.split()[0]} green")
    assert np.array_equal(np.asarray(second.result.image), np.asarray(direct.image))  # same as a fresh edit
    assert second.record_path.exists() and '"inversion_cached": true' in second.record_path.read_text()
    for bad, message in ((dict(image=None), "upload an image"), (dict(target_prompt=""), "target prompt is empty"),
                         (dict(blend_words="nowhere words"), "blend word 'nowhere'"),
                         (dict(editor_options="cross_replace_steps=7"), "cross_replace_steps"),
                         (dict(inversion="edict", editor="pix2pix-zero"), "pix2pix-zero"),
                         (dict(steps=0), "steps")):
        fields = {**request.__dict__, **bad}
        with pytest.raises(InveditError, match=message):
            session.edit(EditRequest(**fields))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_session():
    return EditSession(invedit.load(dtype="float32"))  # its own cache: the browser's first edit inverts


@pytest.fixture(scope="module")
def server(page_session):
    from invedit.ui.app import build_app

    steps = 50 if os.environ.get("INVEDIT_UI_SCREENSHOT") else 6  # the README's picture at the real step count
    app = build_app(page_session, default_steps=steps)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    app.close()


def _status_contains(page, text: str, timeout: float = 180_000) -> None:
    page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                           timeout=timeout)


def _shown_image(page, element: str) -> np.ndarray:
    src = page.locator(f"#{element} img").first.get_attribute("src")
    body = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/")).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


@needs_browser
def test_edit_in_the_browser(server, page_session, example, tmp_path):
    from playwright.sync_api import sync_playwright

    from invedit.ui.app import display_image

    path, edit = example
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            page.locator("#input-image input[type=file]").set_input_files(str(path))
            page.locator("#source textarea").fill(edit.source_prompt)
            page.locator("#target textarea").fill(edit.target_prompt)
            page.locator("#blend textarea").fill(edit.blend_words)
            page.locator("#edit").click()
            _status_contains(page, "NFE")
            assert "inversion reused" not in page.locator("#status").inner_text()
            shown = _shown_image(page, "edit-out")
            newest = max(page_session.out_dir.glob("edit-*/edit.png"), key=lambda p: p.stat().st_mtime)
            saved = Image.open(newest).convert("RGB")
            assert np.array_equal(shown, np.asarray(display_image(saved)))  # the page shows the result, enlarged
            source = np.asarray(display_image(Image.open(path).convert("RGB")))
            assert np.abs(shown.astype(int) - source.astype(int)).mean() > 1.0  # an edit, not the input
            assert page.locator("#files a").count() == 2  # PNG and JSON to download

            # Another target prompt: the inversion comes from the cache.
            page.locator("#target textarea").fill(edit.target_prompt.replace(edit.blend_words.split()[1], "green"))
            page.locator("#blend textarea").fill(f"{edit.blend_words.split()[0]} green")
            page.locator("#edit").click()
            _status_contains(page, "reused from the cache")

            # Bad input: one readable message, and the page still works afterwards.
            page.locator("#blend textarea").fill("nowhere words")
            page.locator("#edit").click()
            _status_contains(page, "error:")
            assert "blend word 'nowhere'" in page.locator("#status").inner_text()
            page.locator("#blend textarea").fill(edit.blend_words)
            page.locator("#target textarea").fill(edit.target_prompt)
            page.locator("#edit").click()
            _status_contains(page, "NFE")
            if os.environ.get("INVEDIT_UI_SCREENSHOT"):  # the README's picture
                page.wait_for_timeout(1000)
                page.screenshot(path=os.environ["INVEDIT_UI_SCREENSHOT"], full_page=True)

            # "edit this result again": the result becomes the image, its target prompt the source prompt.
            first = max(page_session.out_dir.glob("edit-*/edit.png"), key=lambda p: p.stat().st_mtime)
            page.locator("#again").click()
            page.wait_for_function("t => document.querySelector('#source textarea').value === t",
                                   arg=edit.target_prompt, timeout=60_000)
            assert page.locator("#blend textarea").input_value() == ""
            page.wait_for_function("() => document.querySelector('#input-image img') !== null", timeout=60_000)
            assert np.array_equal(_shown_image(page, "input-image"), np.asarray(Image.open(first).convert("RGB")))
            second_target = edit.target_prompt.replace("blue square", "red square")
            page.locator("#target textarea").fill(second_target)
            page.locator("#blend textarea").fill("blue red")
            page.locator("#edit").click()
            _status_contains(page, "again (linked in the record)")
            record = json.loads(max(page_session.out_dir.glob("edit-*/edit.json"),
                                    key=lambda p: p.stat().st_mtime).read_text())
            assert record["source_prompt"] == edit.target_prompt and record["target_prompt"] == second_target
            assert record["previous"]["image_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
            assert record["previous"]["record"]["target_prompt"] == edit.target_prompt
        finally:
            browser.close()


def _sixteen_bit(path: Path) -> Path:
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def _transparent(path: Path) -> Path:
    Image.new("RGBA", (64, 64), (200, 30, 30, 0)).save(path)  # red pixels the preview does not show
    return path


def _not_an_image(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


@pytest.mark.parametrize("make, message", [
    (_sixteen_bit, "has unsupported mode 'I;16'"), (_transparent, "has transparent pixels"),
    (_not_an_image, "not an image"),
], ids=["16-bit", "transparent", "not-an-image"])
def test_the_page_checks_the_uploaded_file_like_the_cli(session, example, tmp_path, make, message):
    """The page hands the uploaded file itself (Gradio unprocessed) to the session, which runs the CLI's check
    and names the file by its upload name, not by the server's temporary path."""
    from invedit.images import load_image
    from invedit.ui.app import uploaded_image

    _, edit = example
    upload = make(tmp_path / "stored.png")
    with pytest.raises(InveditError) as cli:
        load_image(upload, 64)
    assert message in str(cli.value)
    path, name = uploaded_image({"path": str(upload), "orig_name": "my photo.png", "url": None})
    assert (path, name) == (str(upload), "my photo.png")
    request = EditRequest(path, edit.source_prompt, edit.target_prompt, blend_words=edit.blend_words, steps=2,
                          image_name=name)
    with pytest.raises(InveditError) as page:
        session.edit(request)
    assert str(page.value) == str(cli.value).replace(str(upload), "my photo.png")
    assert uploaded_image(None) == (None, None) and uploaded_image({"path": None}) == (None, None)


def test_the_server_keeps_its_files_in_one_folder_and_removes_it_at_exit(example, tmp_path):
    """`invedit ui`: uploads, Gradio's cache, results and examples all go into one folder under the system's
    temporary folder, and Ctrl-C leaves nothing behind."""
    import signal
    import subprocess
    import sys
    import time

    path, edit = example
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(temp), "INVEDIT_THREADS": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    # Ctrl-C is SIGINT at its default: a suite started in the background (`make test &`) hands its children SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen([sys.executable, "-m", "invedit.cli", "ui", "--port", str(port), "--steps", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == f"invedit ui on http://127.0.0.1:{port}"  # once it listens
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        shown = client.predict(handle_file(str(path)), edit.source_prompt, edit.target_prompt, "direct", "p2p",
                               edit.blend_words, 2, 7.5, 0, "", "", api_name="/run")
        assert "NFE" in shown[3], shown[3]  # the status line of a finished edit
        for bad, message in ((_not_an_image(tmp_path / "notes.txt"), "cannot read image notes.txt: not an image"),
                             (_sixteen_bit(tmp_path / "deep.png"), "image deep.png has unsupported mode 'I;16'")):
            refused = client.predict(handle_file(str(bad)), edit.source_prompt, edit.target_prompt, "direct", "p2p",
                                     edit.blend_words, 2, 7.5, 0, "", "", api_name="/run")
            assert refused[3].startswith(f"**error:** {message}") and "\n" not in refused[3], refused[3]
        mask = tmp_path / "mask.png"  # the mask upload (the last input) reaches the session's checks
        Image.new("L", Image.open(path).size, 255).save(mask)
        refused = client.predict(handle_file(str(path)), edit.source_prompt, edit.target_prompt, "direct", "p2p",
                                 edit.blend_words, 2, 7.5, 0, "", "", handle_file(str(mask)), api_name="/run")
        assert refused[3] == ("**error:** editor 'p2p' takes no mask; drop --mask, or use an editor that takes one "
                              "(kv-edit)"), refused[3]
        (folder,) = _ours(temp)
        assert folder.name.startswith("invedit-ui-")
        assert {"gradio", "results"} <= {p.name for p in folder.iterdir()}
        written = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.name == "edit.png" for p in written) and len(written) > 5  # results, uploads, cache
    finally:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err  # bad uploads were refused in the page, not in the server log
    assert _ours(temp) == []


def _ours(temp: Path) -> list[Path]:
    """What is in the temporary folder besides PyTorch's own compile cache (torchinductor_USER, kept across runs)."""
    return [p for p in temp.iterdir() if not p.name.startswith("torchinductor_")]


@needs_browser
def test_bad_uploads_in_the_browser_are_one_line(server, example, tmp_path):
    """A .png that is not an image and a 16-bit PNG (which the browser shows fine): the page's one-line error, no
    red error toasts, and the server keeps running."""
    from playwright.sync_api import sync_playwright

    _, edit = example
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            page.locator("#source textarea").fill(edit.source_prompt)
            page.locator("#target textarea").fill(edit.target_prompt)
            # (the page's own file-type check refuses notes.txt before it is sent; a .png that is not one gets sent)
            for bad, message in ((_not_an_image(tmp_path / "photo.png"), "cannot read image photo.png: not an image"),
                                 (_sixteen_bit(tmp_path / "deep.png"), "image deep.png has unsupported mode 'I;16'")):
                if page.locator("#input-image button[aria-label='Clear']").count():
                    page.locator("#input-image button[aria-label='Clear']").first.click()
                page.locator("#input-image input[type=file]").set_input_files(str(bad))
                page.locator("#edit").click()
                page.wait_for_function("m => document.querySelector('#status').innerText.includes(m)", arg=message,
                                       timeout=60_000)
                assert page.locator("#status").inner_text().strip().startswith("error:")
                assert page.locator(".toast-body.error").count() == 0  # Gradio's red error toasts
        finally:
            browser.close()


def test_a_flow_model_page_starts_with_an_editor_that_runs_on_it(tmp_path):
    """P2P needs a UNet: on an SD 3 / FLUX model the page starts with shared attention, lists only the methods the
    family runs, starts at the model's guidance, and its shapes-world examples carry no LocalBlend words (which only
    P2P takes)."""
    from invedit.testing import tiny_pipeline
    from invedit.ui.app import build_app

    def page(pipe):
        config = build_app(EditSession(pipe, out_dir=tmp_path / "out"), work_dir=tmp_path).config
        props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
        samples = next(c["props"]["samples"] for c in config["components"] if c["type"] == "dataset")
        page.choices = {key: [c[0] if isinstance(c, (list, tuple)) else c for c in props[key]["choices"]]
                        for key in ("inversion", "editor")}
        page.guidance = props["guidance"]["value"]
        return props["editor"]["value"], [row[3] for row in samples]

    editor, blends = page(tiny_pipeline(kind="sd3"))
    assert editor == "shared-attention" and blends and all(b == "" for b in blends)
    # issue 29: only what the family runs is offered (no UNet editor, no DDIM-arithmetic inversion)
    assert "p2p" not in page.choices["editor"] and "shared-attention" in page.choices["editor"]
    assert "ddim" not in page.choices["inversion"] and "direct" in page.choices["inversion"]
    assert "rf-inversion" not in page.choices["inversion"]  # FLUX only
    editor, blends = page(invedit.load(dtype="float32"))
    assert editor == "p2p" and any(b for b in blends) and page.guidance == 7.5
    assert "shared-attention" in page.choices["editor"] and "uniedit" not in page.choices["editor"]
    editor, _ = page(invedit.load("shapes-flow", dtype="float32"))
    assert editor == "shared-attention" and page.guidance == 2.0  # its invedit.json's guidance


@pytest.fixture(scope="module")
def flow_server(tmp_path_factory):
    """A page on the embedded flow model (shapes-flow: an SD3-shaped MM-DiT with a trained VAE, so that pixels can
    be compared with the source's), where `kv-edit` runs."""
    from invedit.ui.app import build_app

    session = EditSession(invedit.load("shapes-flow", dtype="float32"), out_dir=tmp_path_factory.mktemp("flow-ui"))
    app = build_app(session, default_steps=6, work_dir=tmp_path_factory.mktemp("flow-page"))
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}", session
    app.close()


def _choose(page, element: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown."""
    page.locator(f"#{element} input").click()
    page.get_by_role("option", name=value, exact=True).click()


def _wait_for_painter(page, element: str) -> None:
    """Wait until the painter shows the uploaded image (its update from the server done; before it, it asks for a
    background: "select the draw tool to start")."""
    page.wait_for_function("e => { const p = document.querySelector('#' + e); "
                           "return p.querySelector('[data-testid=status-tracker]').classList.contains('hide') && "
                           "!p.innerText.includes('select the draw tool') }", arg=element, timeout=60_000)


def _paint_stroke(page, element: str, half_width: float) -> None:
    """Drag the brush horizontally through the centre of the painter's canvas (where the image is shown)."""
    box = page.locator(f"#{element} canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - half_width, y, steps=5)  # enter the canvas first, so the stroke starts here
    page.wait_for_timeout(100)
    page.mouse.down()
    page.mouse.move(x + half_width, y, steps=20)
    page.mouse.up()


@needs_browser
def test_paint_the_mask_in_the_browser_and_kv_edit_keeps_the_rest(flow_server):
    """Paint a stroke over the image, run direct+kv-edit: the painted region is the mask (its record says
    "painted"); outside it the edited latent is the image's own latent bit for bit, so outside the painted cells
    (grown by one latent cell) the pixels are the reconstruction's up to the decoder's spread and the source's up to
    the VAE's round trip (docs/test-bounds.md)."""
    from playwright.sync_api import sync_playwright

    from invedit.backbones import backbone

    url, session = flow_server
    edit = make_edit_example(100, "color", size=64)  # a green triangle and a red circle → an orange triangle
    source = Image.fromarray(np.asarray(edit.source_image, dtype=np.uint8))
    path = session.out_dir / "scene.png"
    source.save(path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#input-image input[type=file]").set_input_files(str(path))
            page.locator("#source textarea").fill(edit.source_prompt)
            page.locator("#target textarea").fill(edit.target_prompt)
            _choose(page, "editor", "kv-edit")
            page.locator("#mask-section").get_by_text("mask (kv-edit only)").click()
            _wait_for_painter(page, "painter")
            _paint_stroke(page, "painter", half_width=40)
            page.locator("#edit").click()
            _status_contains(page, "NFE")
            status = page.locator("#status").inner_text()
            assert "kv-edit" in status and "mask painted" in status, status
        finally:
            browser.close()
    outcome = next(reversed(session.results.values()))
    painted = outcome.mask.pixels
    rows, cols = np.flatnonzero(painted.any(axis=1)), np.flatnonzero(painted.any(axis=0))
    assert 0.01 < painted.mean() < 0.3 and rows.max() - rows.min() < 16 and cols.max() - cols.min() > 16  # a stroke
    assert outcome.result.settings["mask"]["source"] == "painted"
    model = backbone(session.pipe)
    cells = torch.from_numpy(outcome.mask.grid(model.resolution // model.vae_factor))
    z0 = model.encode_image(source)[0]
    target = outcome.result.latents[1]
    assert torch.equal(target[:, ~cells], z0[:, ~cells])  # outside the painted cells: the image's latent, exactly
    assert (target[:, cells] - z0[:, cells]).abs().amax(dim=0).min() > 1e-4  # inside: every cell edited
    cell_px = np.ones((model.vae_factor,) * 2, dtype=bool)  # the pixels of one latent cell
    grown = np.kron(_grow(cells.numpy()), cell_px)
    edited, recon = (np.asarray(im, dtype=float) for im in (outcome.result.image, outcome.result.reconstruction))
    src = np.asarray(source, dtype=float)
    outside = ~grown
    # the decoder's GroupNorm statistics are image-wide: the edit moves every pixel a little
    assert measured("painted kv-edit: edit vs reconstruction outside, max of 255",
                    np.abs(edited - recon)[outside].max()) <= 32
    assert measured("painted kv-edit: edit vs reconstruction outside, mean of 255",
                    np.abs(edited - recon)[outside].mean()) <= 1
    assert measured("painted kv-edit: (edit vs source) - (reconstruction vs source) outside, mean of 255",
                    np.abs(edited - src)[outside].mean() - np.abs(recon - src)[outside].mean()) <= 0.5
    # in the ring of cells next to the painted ones the decoder's receptive field mixes in the edit (the README's
    # "up to N of 255 next to the painted cells"; docs/test-bounds.md)
    ring = grown & ~np.kron(cells.numpy(), cell_px)
    assert measured("painted kv-edit: edit vs reconstruction in the cells next to the painted ones, max of 255",
                    np.abs(edited - recon)[ring].max()) <= 96


def _grow(cells: np.ndarray) -> np.ndarray:
    """``cells`` and their 8 neighbours."""
    padded = np.pad(cells, 1)
    h, w = cells.shape
    return np.any([padded[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def _layer(size: tuple[int, int], box: tuple[int, int, int, int] | None, alpha: int = 153) -> Image.Image:
    """A painter's layer: transparent, with an opaque-enough magenta rectangle (the brush) in ``box``."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    if box is not None:
        layer.paste((255, 0, 255, alpha), box)
    return layer


def test_the_painted_layers_are_the_mask_and_an_empty_painting_is_none(example, tmp_path):
    """Painted (alpha ≥ 128, over all layers) = edit; a painting with nothing on it is no mask, so the editors that
    take none run while the page's painter holds an empty layer; painting and an uploaded mask together, or a
    painting of another size than the image, are refused in one line."""
    from invedit.masks import painted_pixels
    from invedit.ui.session import request_mask

    path, edit = example
    request = EditRequest(path, edit.source_prompt, edit.target_prompt)
    stroke = _layer((64, 64), (10, 30, 50, 34))
    dot = _layer((64, 64), (2, 2, 4, 4))
    faint = _layer((64, 64), (40, 40, 60, 60), alpha=127)
    mask = request_mask(EditRequest(**{**request.__dict__, "painted": [stroke, dot, faint]}))
    expected = np.zeros((64, 64), dtype=bool)
    expected[30:34, 10:50] = expected[2:4, 2:4] = True
    assert np.array_equal(mask.pixels, expected) and mask.record()["source"] == "painted"
    assert request_mask(EditRequest(**{**request.__dict__, "painted": [_layer((64, 64), None), faint]})) is None
    assert request_mask(request) is None
    uploaded = tmp_path / "mask.png"
    Image.fromarray(expected).save(uploaded)
    assert np.array_equal(request_mask(EditRequest(**{**request.__dict__, "mask": uploaded})).pixels, expected)
    for fields, message in (({"painted": [stroke], "mask": uploaded}, "give the mask one way: paint it"),
                            ({"painted": [_layer((800, 800), (0, 0, 9, 9))]},
                             "the painted mask is 800x800 pixels but the image is 64x64")):
        with pytest.raises(InveditError, match=message):
            request_mask(EditRequest(**{**request.__dict__, **fields}))
    with pytest.raises(InveditError, match="layers differ in size"):
        painted_pixels([stroke, _layer((32, 32), None)])


def test_the_painter_follows_the_image_with_a_brush_of_its_size(example, tmp_path):
    """The page's painter gets the uploaded image as background, no layers, a brush 1/32 of the image's side (2 px
    at 64, one latent cell wide); an upload the browser cannot show empties it (Edit then names the problem)."""
    from invedit.ui.app import painted_layers, painter_background

    path, _ = example
    update = painter_background({"path": str(path), "orig_name": "scene.png"})
    assert update["value"]["layers"] == [] and update["value"]["background"].size == (64, 64)
    assert update["brush"].default_size == 2 and painter_background(None)["value"] is None
    assert painter_background({"path": str(_not_an_image(tmp_path / "x.png"))})["value"] is None
    assert painted_layers({"background": {"path": "b.png"}, "layers": [{"path": "l0.png"}, None]}) == ["l0.png"]
    assert painted_layers(None) == []
