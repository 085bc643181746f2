"""The command line end to end, from a tiny model saved to a folder (the real loading path), and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from invedit.cli import app

from .conftest import SOURCE, TARGET, scene_image


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "in.png"
    scene_image().save(path)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_edit_writes_png_and_sidecar(model_dir, image_path, tmp_path):
    out = tmp_path / "result" / "edited.png"
    code, stdout, stderr = run("edit", str(image_path), "--source", SOURCE, "--target", TARGET,
                               "--model", str(model_dir), "--steps", "4", "--seed", "7", "--out", str(out),
                               "--blend", "red blue", "-o", "cross_replace_steps=0.5", "--save-reconstruction", "-q")
    assert code == 0, stderr
    assert Image.open(out).size == (64, 64)
    assert (tmp_path / "result" / "edited.reconstruction.png").exists()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["seed"] == 7 and record["steps"] == 4 and record["inversion"] == "direct"
    assert record["editor"]["editor"] == "p2p" and record["editor"]["cross_replace_steps"] == 0.5
    assert record["blend_words"] == ["red", "blue"] and record["model"] == str(model_dir)
    assert record["nfe"] == record["nfe_inversion"] + record["nfe_edit"] > 0 and record["seconds"] > 0
    assert {"invedit", "torch", "diffusers", "transformers"} <= set(record["versions"])
    assert "NFE" in stdout
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == [
        "edited.json", "edited.png", "edited.reconstruction.png"]


def test_same_seed_same_pixels_and_inversion_option(model_dir, image_path, tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        code, _, stderr = run("edit", str(image_path), "-s", SOURCE, "-t", TARGET, "--model", str(model_dir),
                              "--steps", "3", "--out", str(tmp_path / name), "-i", "offset_interval=2", "-q")
        assert code == 0, stderr
        outs.append(np.asarray(Image.open(tmp_path / name)))
    assert np.array_equal(*outs)
    assert json.loads((tmp_path / "a.json").read_text())["inversion_options"]["offset_interval"] == 2


def test_console_script_runs_as_a_process(model_dir, image_path, tmp_path):
    out = tmp_path / "x.png"
    proc = subprocess.run([sys.executable, "-m", "invedit.cli", "edit", str(image_path), "-s", SOURCE, "-t", TARGET,
                           "--model", str(model_dir), "--steps", "2", "--inversion", "ddim", "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    bad = subprocess.run([sys.executable, "-m", "invedit.cli", "edit", str(tmp_path / "missing.png"), "-s", SOURCE,
                          "-t", TARGET], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "image not found" in bad.stderr


def test_methods_lists_inversions_and_editors():
    code, stdout, _ = run("methods", "--json")
    assert code == 0
    listed = json.loads(stdout)
    assert {"direct", "ddim"} <= {m["name"] for m in listed["inversions"]}
    assert {"p2p", "none"} <= {m["name"] for m in listed["editors"]}
    code, stdout, _ = run("methods")
    assert code == 0 and "direct" in stdout and "offset_scale" in stdout


def _bad_files(tmp_path):
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    tiny = tmp_path / "tiny.png"
    scene_image().resize((10, 10)).save(tiny)
    deep = tmp_path / "sixteen-bit.png"
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(deep)
    transparent = tmp_path / "transparent.png"
    rgba = scene_image().convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(transparent)
    return {"text": text, "tiny": tiny, "deep": deep, "transparent": transparent}


BAD = [
    ("missing image", lambda f: [str(f["dir"] / "nope.png")], "image not found"),
    ("unreadable", lambda f: [str(f["text"])], "cannot read image"),
    ("tiny", lambda f: [str(f["tiny"])], "too small"),
    ("16-bit", lambda f: [str(f["deep"])], "unsupported mode"),
    ("transparent", lambda f: [str(f["transparent"])], "transparent pixels"),
    ("empty source", lambda f: [str(f["ok"]), "-s", " "], "source prompt is empty"),
    ("empty target", lambda f: [str(f["ok"]), "-t", ""], "target prompt is empty"),
    ("blend not in prompt", lambda f: [str(f["ok"]), "--blend", "dog cat"], "not a word of the source prompt"),
    ("blend one word", lambda f: [str(f["ok"]), "--blend", "red"], "two words"),
    ("zero steps", lambda f: [str(f["ok"]), "--steps", "0"], "steps must be"),
    ("negative guidance", lambda f: [str(f["ok"]), "--guidance", "-1"], "guidance scale must be"),
    ("unknown inversion", lambda f: [str(f["ok"]), "--inversion", "magic"], "unknown inversion 'magic'"),
    ("unknown editor", lambda f: [str(f["ok"]), "--editor", "magic"], "unknown editor 'magic'"),
    ("missing model", lambda f: [str(f["ok"]), "--model", str(f["dir"] / "no-model")], "model folder not found"),
    ("not a model", lambda f: [str(f["ok"]), "--model", str(f["dir"])], "no model_index.json"),
    ("option format", lambda f: [str(f["ok"]), "-o", "cross_replace_steps"], "KEY=VALUE"),
    ("unknown option", lambda f: [str(f["ok"]), "-o", "bogus=1"], "has no option 'bogus'"),
    ("option range", lambda f: [str(f["ok"]), "-o", "cross_replace_steps=2"], "cross_replace_steps must be"),
    ("inversion option", lambda f: [str(f["ok"]), "-i", "offset_interval=0"], "offset_interval"),
    ("bad dtype", lambda f: [str(f["ok"]), "--dtype", "int8"], "unknown dtype"),
    ("bad output", lambda f: [str(f["ok"]), "--out", str(f["dir"] / "out" / "x.gif")], "output must be"),
]


@pytest.mark.parametrize("case, args, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_exit_2_no_output(model_dir, image_path, tmp_path, case, args, message):
    files = {**_bad_files(tmp_path), "ok": image_path, "dir": tmp_path}
    extra = args(files)
    base = {"-s": SOURCE, "-t": TARGET, "--model": str(model_dir), "--out": str(tmp_path / "out" / "x.png")}
    for i, token in enumerate(extra):  # the case's values override the defaults
        if token in base and i + 1 < len(extra):
            base.pop(token)
    argv = ["edit", *extra, "--steps", "2"] if "--steps" not in extra else ["edit", *extra]
    for key, value in base.items():
        argv += [key, value]
    code, stdout, stderr = run(*argv, "-q")
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("error: ") and stderr.strip().count("\n") == 0, stderr
    assert message in stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ablation_flags_reach_the_inversion(model_dir, image_path, tmp_path):
    out = tmp_path / "ab.png"
    code, _, stderr = run("edit", str(image_path), "-s", SOURCE, "-t", TARGET, "--model", str(model_dir), "--steps",
                          "3", "--out", str(out), "--offset-scale", "0.8", "--offset-interval", "2",
                          "--correct-target", "--inversion-guidance", "2.5", "-q")
    assert code == 0, stderr
    options = json.loads(out.with_suffix(".json").read_text())["inversion_options"]
    assert options == {"offset_scale": 0.8, "offset_interval": 2, "correct_target": True,
                       "inversion_guidance": 2.5, "layout": "fused"}
    code, _, stderr = run("edit", str(image_path), "-s", SOURCE, "-t", TARGET, "--model", str(model_dir),
                          "--inversion", "negative-prompt", "--offset-scale", "0.8", "-q")
    assert code == 2 and "has no option 'offset_scale'" in stderr


def test_toy_bench_and_demo_commands(model_dir, tmp_path):
    code, stdout, stderr = run("toy-bench", str(tmp_path / "tb"), "--n", "1")
    assert code == 0 and "wrote 5 edits" in stdout, stderr
    out = tmp_path / "demo.png"
    code, stdout, stderr = run("demo", "--model", str(model_dir), "--steps", "3", "--out", str(out), "--dtype",
                               "float32", "-q")
    assert code == 0, stderr
    sheet = Image.open(out)
    assert sheet.width == 5 * 192  # source | reconstruction | DDIM | Direct | true target
    assert "DDIM+P2P" in stdout and "Direct+P2P" in stdout and "background_psnr" in stdout
    code, _, stderr = run("demo", "--kind", "teleport")
    assert code == 2 and "unknown edit kind" in stderr
    code, _, stderr = run("demo", "--image", "x.png")
    assert code == 2 and "--image needs --source and --target" in stderr


# ---- bad inputs a new user hit: each refused in one line, exit 2, before the model loads, nothing left behind ----
def _truncated_png(tmp_path):
    path = tmp_path / "truncated.png"
    scene_image().save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _refuse_before_loading(monkeypatch):
    """Make loading the model an error, so a case that reaches it fails the test."""
    import invedit.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(invedit.models, "load", no_load)


EARLY = [
    ("seed overflow", ["--seed", "123456789012345678901234567890"], "seed must be an integer from 0 to"),
    ("negative seed", ["--seed", "-1"], "seed must be an integer from 0 to"),
    ("out parent is a file", ["--out", "{file}/x.png"], "is a file, not a folder"),
    ("out cannot be made", ["--out", "/proc/invedit-qa/x.png"], "cannot write output to /proc/invedit-qa"),
    ("out is a folder", ["--out", "{dir}"], "is a folder; name the image file to write"),
    ("prompt too long", ["-t", " ".join(["red"] * 557)], "the target prompt is too long (557 tokens"),
    ("unknown words", ["-s", "a cat sitting on a bench"], "the source prompt has words this model does not know: "
                                                             "'bench' (its vocabulary of"),
    ("non-English", ["-t", "ein roter Kreis"], "'ein', 'roter', 'kreis'"),
    ("blend word typo", ["--blend", "red bleu"], "blend word 'bleu' is not a word of the target prompt"),
    ("truncated image", ["{truncated}"], "the file is truncated or corrupt"),
    ("mask-taking editor without a mask", ["--editor", "kv-edit"],
     "error: editor 'kv-edit' edits only inside a mask: give one with --mask FILE"),
    ("mask for an editor that takes none", ["--mask", "{mask}"], "error: editor 'p2p' takes no mask; drop --mask, or "
                                                                 "use an editor that takes one (kv-edit)"),
    ("mask not found", ["--editor", "kv-edit", "--mask", "no-such-mask.png"], "error: mask not found: no-such-mask"),
    ("mask unreadable", ["--editor", "kv-edit", "--mask", "{file}"], "error: cannot read mask "),
    ("mask of another size", ["--editor", "kv-edit", "--mask", "{mask-small}"],
     "mask-small.png is 64x32 pixels but the image is 64x64: give a mask of the image's size"),
    ("empty mask", ["--editor", "kv-edit", "--mask", "{mask-empty}"],
     "mask-empty.png is empty: no pixel is white (white marks the region to edit)"),
]


@pytest.mark.parametrize("case, args, message", EARLY, ids=[c[0] for c in EARLY])
def test_bad_input_is_refused_before_the_model_loads(model_dir, image_path, tmp_path, monkeypatch, case, args,
                                                     message):
    _refuse_before_loading(monkeypatch)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "a-folder.png").mkdir()
    masks = {}
    for name, size, value in (("mask", (64, 64), 255), ("mask-small", (64, 32), 255), ("mask-empty", (64, 64), 0)):
        masks[f"{{{name}}}"] = str(tmp_path / f"{name}.png")
        Image.new("L", size, value).save(masks[f"{{{name}}}"])
    subst = {"{file}": str(a_file), "{dir}": str(tmp_path / "a-folder.png"),
             "{truncated}": str(_truncated_png(tmp_path)), **masks}
    args = [subst.get(a, a.replace("{file}", str(a_file))) for a in args]
    image = args.pop(0) if not args[0].startswith("-") else str(image_path)
    options = {"-s": SOURCE, "-t": TARGET, "--out": str(tmp_path / "out" / "x.png")}
    for key, value in zip(args[::2], args[1::2]):
        options[key] = value
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = run("edit", image, "--model", str(model_dir), "--steps", "2", "-q",
                               *[t for kv in options.items() for t in kv])
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("error: ") and stderr.strip().count("\n") == 0, stderr
    assert message in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder made, nothing written
    assert not any(a_file.parent.glob(".*.part"))


def test_outputs_follow_the_umask_and_name_their_images(model_dir, image_path, tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        code, _, stderr = run("edit", str(image_path), "-s", SOURCE, "-t", TARGET, "--model", str(model_dir),
                              "--steps", "2", "--out", str(tmp_path / "new" / "e.png"), "--save-reconstruction", "-q")
    finally:
        os.umask(old)
    assert code == 0, stderr
    for name in ("e.png", "e.json", "e.reconstruction.png"):
        assert stat.S_IMODE((tmp_path / "new" / name).stat().st_mode) == 0o640, name
    import hashlib

    record = json.loads((tmp_path / "new" / "e.json").read_text())
    assert record["files"] == {n: hashlib.sha256((tmp_path / "new" / n).read_bytes()).hexdigest()
                               for n in ("e.png", "e.reconstruction.png")}


def test_sigterm_cleans_up_like_ctrl_c(model_dir, image_path, tmp_path):
    import signal
    import time

    out_dir = tmp_path / "made-for-this-run"
    proc = subprocess.Popen([sys.executable, "-m", "invedit.cli", "edit", str(image_path), "-s", SOURCE, "-t", TARGET,
                             "--model", str(model_dir), "--steps", "1000", "--out", str(out_dir / "x.png"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out_dir.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # inside the model load or the edit
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "error: terminated"
    assert not out_dir.exists()  # the folder made for the outputs is removed again


def test_toy_bench_bad_input_leaves_nothing(tmp_path):
    a_file = tmp_path / "some_file"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "other.txt").write_text("x")
    cases = [
        ([str(a_file), "--n", "2"], "is a file; toy-bench writes a folder"),
        ([str(tmp_path / "d"), "--n", "1", "--size", "0"], "--size must be an integer from 32 to 1024"),
        ([str(tmp_path / "d"), "--n", "0"], "--n must be a positive integer"),
        ([str(full), "--n", "1"], "is not empty"),
        ([str(a_file / "sub"), "--n", "1"], "is a file, not a folder"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        code, _, stderr = run("toy-bench", *args)
        assert code == 2 and stderr.startswith("error: ") and stderr.strip().count("\n") == 0, (args, stderr)
        assert message in stderr, (args, stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args


def test_toy_bench_writes_with_the_umask_into_an_empty_folder(tmp_path):
    import os
    import stat

    (tmp_path / "empty").mkdir()
    old = os.umask(0o022)
    try:
        code, _, stderr = run("toy-bench", str(tmp_path / "empty"), "--n", "1")
    finally:
        os.umask(old)
    assert code == 0, stderr
    assert stat.S_IMODE((tmp_path / "empty").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "empty" / "mapping_file.json").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging folder left


def test_toy_bench_into_the_current_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run("toy-bench", ".", "--n", "1")
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotation_images", "mapping_file.json", "target_images"]


def test_output_paths_with_dot_dot_and_prompts_without_a_local_tokenizer(tmp_path, monkeypatch):
    from invedit.models import load_tokenizer
    from invedit.outputs import prepare_output_dir

    created = prepare_output_dir(tmp_path / "a" / ".." / "b")
    assert (tmp_path / "b").is_dir() and not (tmp_path / "a").exists() and created == [tmp_path / "b"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_tokenizer("nobody/not-cached-anywhere") is None  # checked later, when the model loads
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    assert load_tokenizer(folder) is None


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in this process: (exit code, stdout, stderr)."""
    from invedit.cli import main

    monkeypatch.setattr(sys, "argv", ["invedit", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("args, message", [
    (["edit", "img.png", "-s", "a", "-t", "b", "--steps", "abc"], "error: Invalid value for '--steps': "),
    (["edit", "img.png", "-t", "b"], "error: Missing option '--source' / '-s'."),
    (["edit", "img.png", "-s", "a", "-t", "b", "--stpes", "3"], "error: No such option: --stpes"),
    (["nosuch"], "error: No such command 'nosuch'."),
], ids=["bad-type", "missing-option", "unknown-option", "unknown-command"])
def test_usage_errors_are_one_line_exit_2(monkeypatch, capsys, args, message):
    code, out, err = _main(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert "Usage:" not in err


def test_help_still_works_through_the_entry_point(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "edit", "--help")
    assert code == 0 and "Usage:" in out and "--steps" in out and err == ""
    code, out, err = _main(monkeypatch, capsys)  # no command: the help (exit 2 on click >= 8.2, 0 before)
    assert code in (0, 2) and "Commands" in out + err and "error:" not in out + err


@pytest.mark.parametrize("args", [["methods"], ["methods", "--json"]])
def test_a_closed_pipe_ends_quietly(args):
    """`invedit methods | head -1`: the reader is gone before the output is written; no traceback, no message."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "invedit.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 1  # 1: the Python docs' recipe for SIGPIPE


def _listening_socket():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _ui_must_not_load(monkeypatch):
    import invedit.models

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the address was checked")

    monkeypatch.setattr(invedit.models, "load", load)


def test_ui_on_a_port_in_use_is_one_line_before_loading(monkeypatch):
    _ui_must_not_load(monkeypatch)
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        code, out, err = run("ui", "--port", str(port))
    assert code == 2 and out == ""
    assert err.strip() == (f"error: port {port} on 127.0.0.1 is in use (another invedit ui or another server); "
                           "pass another --port")


def test_ui_on_a_port_it_may_not_bind_blames_the_permission(monkeypatch):
    import errno
    import socket

    _ui_must_not_load(monkeypatch)

    def bind(self, address):  # what a non-root user gets for a port below 1024
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", bind)
    code, out, err = run("ui", "--port", "80")
    assert code == 2 and out == ""
    assert err.strip() == ("error: no permission to listen on port 80 (ports below 1024 need administrator rights; "
                           "the default is 7860); pass another --port")


@pytest.mark.parametrize("host, message", [
    ("192.0.2.1", "error: cannot listen on 192.0.2.1: it is not an address of this machine; "),  # TEST-NET-1
    ("no-such-host.invalid", "error: cannot listen on no-such-host.invalid: not a known host name or address; "),
])
def test_ui_on_a_host_that_is_not_this_machine_is_one_line(monkeypatch, host, message):
    _ui_must_not_load(monkeypatch)
    code, out, err = run("ui", "--host", host, "--port", "7860")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert err.strip().endswith("use 127.0.0.1 (this machine only) or 0.0.0.0 (every network this machine is on)")


def test_a_too_long_prompt_is_one_line_without_a_transformers_warning(monkeypatch, capfd, image_path, tmp_path):
    from invedit.cli import main

    long_prompt = " ".join(["a red circle"] * 40)  # 120 tokens on the embedded model
    monkeypatch.setattr(sys, "argv", ["invedit", "edit", str(image_path), "-s", long_prompt, "-t", "a blue circle",
                                      "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capfd.readouterr()
    assert info.value.code == 2 and out == ""
    assert err.splitlines() == ["error: the source prompt is too long (120 tokens; the model reads at most 75)"]
