"""`invedit bench`: method specs, the inversion store and cache, resuming, failures and sharding."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import invedit
from invedit.bench.cache import InversionCache
from invedit.bench.methods import parse_methods
from invedit.bench.runner import EDITS_DIR, VOLATILE_RECORD_KEYS, run_bench
from invedit.inversion.storage import load_inverted, save_inverted
from invedit.versions import versions

STEPS = 4


def bench(data, out, methods="direct+p2p,direct+pnp", model=None, cache=None, **kwargs):
    specs = parse_methods(methods, kwargs.pop("options", None), kwargs.pop("inversion_options", None),
                          kwargs.get("parity", False))
    return run_bench(data, out, specs, model=str(model), steps=STEPS, cache_dir=cache, progress=False,
                     say=lambda m: None, **kwargs)


def records(run_dir: Path) -> dict[str, dict]:
    return {str(p.relative_to(run_dir)): json.loads(p.read_text()) for p in sorted(run_dir.glob("edits/*/*.json"))}


# ---- method specs --------------------------------------------------------------------------------------------
def test_method_specs_take_labels_and_per_method_options():
    specs = parse_methods("direct+p2p,direct+p2p@half,ddim+masactrl",
                          ["direct+p2p@half:cross_replace_steps=0.5", "ddim+masactrl:start_step=2"],
                          ["direct+p2p:offset_scale=0.8"])
    by_name = {s.name: s for s in specs}
    assert by_name["direct+p2p@half"].editor_options == {"cross_replace_steps": 0.5}
    assert by_name["direct+p2p"].inversion_options["offset_scale"] == 0.8
    assert by_name["direct+p2p@half"].inversion_options["offset_scale"] == 1.0
    assert by_name["ddim+masactrl"].editor_options == {"start_step": 2}
    parity = {s.name: s for s in parse_methods("direct+p2p,ddim+masactrl", parity=True)}
    assert parity["direct+p2p"].inversion_options["layout"] == "reference"
    assert parity["ddim+masactrl"].editor_options == {"layers": "reference"}


@pytest.mark.parametrize("methods, options, message", [
    ("", None, "--methods is empty"),
    ("direct+p2p,direct+p2p", None, "names direct\\+p2p twice"),
    ("direct", None, "must look like INVERSION\\+EDITOR"),
    ("direct+nope", None, "unknown editor 'nope'"),
    ("nope+p2p", None, "unknown inversion"),
    ("direct+p2p", ["ddim+p2p:cross_replace_steps=0.5"], "not in --methods"),
    ("direct+p2p", ["direct+p2p:nonsense=1"], "method direct\\+p2p: .*nonsense"),
    ("direct+p2p,direct+masactrl", ["cross_replace_steps=0.5"], "method direct\\+masactrl"),
])
def test_bad_method_specs_are_refused_in_one_line(methods, options, message):
    with pytest.raises(invedit.InveditError, match=message):
        parse_methods(methods, options)


# ---- storing inversions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["direct", "null-text", "edict", "ddpm"])
def test_a_stored_inversion_edits_bit_identically(pipe, image, tmp_path, method):
    inverted = invedit.invert(pipe, image, "a red square on a striped background", method=method, steps=3)
    back = load_inverted(save_inverted(inverted, tmp_path / "inv.pt"))
    assert type(back) is type(inverted) and back.options == inverted.options and back.stats == inverted.stats
    a = invedit.edit(pipe, inverted, None, "a blue square on a striped background")
    b = invedit.edit(pipe, back, None, "a blue square on a striped background")
    assert torch.equal(a.latents, b.latents)


def test_foreign_or_broken_inversion_files_are_refused(tmp_path, pipe, image):
    torch.save({"format": 1, "inverted": {"__dataclass__": "os:path", "fields": {}}}, tmp_path / "foreign.pt")
    with pytest.raises(invedit.InveditError, match="outside invedit"):
        load_inverted(tmp_path / "foreign.pt")
    inverted = invedit.invert(pipe, image, "a red square", method="ddim", steps=2)
    data = save_inverted(inverted, tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(invedit.InveditError, match="cannot read inversion file"):
        load_inverted(tmp_path / "cut.pt")
    cache = InversionCache(tmp_path / "cache")
    cache.path("ab" * 20).parent.mkdir(parents=True)
    shutil.copy(tmp_path / "cut.pt", cache.path("ab" * 20))
    assert cache.get("ab" * 20, "cpu") is None and cache.unreadable  # a miss, recomputed by the runner


# ---- the runner ----------------------------------------------------------------------------------------------
def test_methods_sharing_an_inversion_invert_once_and_the_cache_serves_later_runs(model_dir, dataset, tmp_path):
    n = 5
    first = bench(dataset, tmp_path / "a", model=model_dir, cache=tmp_path / "cache")
    assert (first.done, first.failed) == (2 * n, 0)
    assert first.nfe_inversion == n * STEPS and first.nfe_saved_in_run == n * STEPS  # pnp reused p2p's inversion
    sources = {k.split("/")[1]: v["inversion_source"] for k, v in records(tmp_path / "a").items()
               if k.endswith(".json") and "110000000000" in k}
    assert sources == {"direct+p2p": "computed", "direct+pnp": "run"}
    # MasaCtrl inverts under its empty source prompt: not the same inversion.
    other = bench(dataset, tmp_path / "b", "direct+p2p,direct+masactrl", model=model_dir, cache=tmp_path / "cache",
                  options=["direct+masactrl:start_step=1"])
    assert other.nfe_inversion == n * STEPS and other.nfe_saved_from_cache == n * STEPS
    # An option of the trajectory, and a changed prompt, miss the cache; Direct's offsets act only while editing.
    offsets = bench(dataset, tmp_path / "c0", "direct+p2p", model=model_dir, cache=tmp_path / "cache",
                    inversion_options=["offset_scale=0.8"])
    assert offsets.nfe_inversion == 0 and offsets.nfe_saved_from_cache == n * STEPS
    changed = bench(dataset, tmp_path / "c", "direct+p2p", model=model_dir, cache=tmp_path / "cache",
                    inversion_options=["inversion_guidance=2"])
    assert changed.nfe_inversion == 2 * n * STEPS and changed.nfe_saved_from_cache == 0  # guided: 2 rows a step
    edited = tmp_path / "data2"
    shutil.copytree(dataset, edited)
    mapping = json.loads((edited / "mapping_file.json").read_text())
    first_id = sorted(mapping)[0]
    mapping[first_id]["original_prompt"] = mapping[first_id]["original_prompt"].replace("a ", "the ", 1)
    (edited / "mapping_file.json").write_text(json.dumps(mapping))
    again = bench(edited, tmp_path / "d", "direct+p2p", model=model_dir, cache=tmp_path / "cache")
    assert again.nfe_inversion == STEPS and again.nfe_saved_from_cache == (n - 1) * STEPS


def test_ddim_and_direct_with_any_offsets_share_one_inversion_and_edit_as_if_alone(model_dir, dataset, tmp_path):
    """DDIM and Direct Inversion run the same DDIM inversion (Direct's offsets act only while editing): one
    inversion per image serves all three methods, and each edit is byte for byte that of a run of its method
    alone."""
    n, methods = 5, "ddim+p2p,direct+p2p,direct+p2p@08"
    shared = bench(dataset, tmp_path / "shared", methods, model=model_dir,
                   inversion_options=["direct+p2p@08:offset_scale=0.8"])
    assert (shared.done, shared.failed) == (3 * n, 0)
    assert shared.nfe_inversion == n * STEPS and shared.nfe_saved_in_run == 2 * n * STEPS
    together = _comparable(tmp_path / "shared")
    for name in methods.split(","):
        alone = bench(dataset, tmp_path / name, name, model=model_dir,
                      inversion_options=["direct+p2p@08:offset_scale=0.8"] if name.endswith("@08") else None)
        assert alone.nfe_inversion == n * STEPS
        for path, value in _comparable(tmp_path / name).items():  # images and records (but for their timings)
            assert together[path] == value, path
    options = {json.loads(p.read_text())["bench"]["method"]: json.loads(p.read_text())["inversion_options"]
               for p in (tmp_path / "shared" / EDITS_DIR).rglob("*.json")}
    assert options["direct+p2p@08"]["offset_scale"] == 0.8 and options["direct+p2p"]["offset_scale"] == 1.0


def test_a_method_its_groups_inversion_cannot_serve_fails_alone(model_dir, dataset, tmp_path, monkeypatch):
    """A trajectory key that promises more than the method keeps (here null-text's, claiming DDIM's) groups it
    with DDIM, `Inverted.as_method` refuses it, and only that method fails; the run goes on."""
    from invedit.inversion.ddim import DDIMInverted
    from invedit.inversion.null_text import NullTextInverted

    ddim_key = DDIMInverted.trajectory_key(DDIMInverted.validate_options({}))
    monkeypatch.setattr(NullTextInverted, "trajectory_key", classmethod(lambda cls, options: ddim_key))
    summary = bench(dataset, tmp_path / "run", "ddim+p2p,null-text+p2p", model=model_dir)
    assert (summary.done, summary.failed) == (5, 5)
    assert {f["method"] for f in summary.failures} == {"null-text+p2p"}
    assert all("cannot serve null-text" in f["error"] for f in summary.failures), summary.failures


def test_a_rerun_skips_finished_pairs_and_refuses_other_settings(model_dir, dataset, tmp_path):
    bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    again = bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir)
    assert (again.done, again.skipped) == (0, 5)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    grown = bench(dataset, tmp_path / "run", "direct+p2p,ddim+p2p", model=model_dir)  # a new method is added
    assert (grown.done, grown.skipped) == (5, 5)
    with pytest.raises(invedit.InveditError, match="was run with guidance_scale=7.5, not 5.0"):
        bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, guidance=5.0)
    with pytest.raises(invedit.InveditError, match="ran direct\\+p2p with other settings .*cross_replace_steps"):
        bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, options=["cross_replace_steps=0.5"])
    # A finished pair whose image no longer matches its record is redone.
    image = next((tmp_path / "run" / EDITS_DIR / "direct+p2p").glob("*.png"))
    image.write_bytes(b"not the image")
    redo = bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir)
    assert (redo.done, redo.skipped) == (1, 4)


def test_bad_entries_are_logged_and_the_run_goes_on(model_dir, dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    mapping = json.loads((data / "mapping_file.json").read_text())
    ids = sorted(mapping)
    (data / "annotation_images" / mapping[ids[0]]["image_path"]).write_bytes(b"\x89PNG broken")
    del mapping[ids[1]]["mask"]
    mapping[ids[2]]["blended_word"] = "nowhere words"
    (data / "mapping_file.json").write_text(json.dumps(mapping))
    summary = bench(data, tmp_path / "run", "direct+p2p,direct+masactrl", model=model_dir,
                    options=["direct+masactrl:start_step=1"])
    failed = {(f["id"], f["method"]): f["error"] for f in summary.failures}
    assert set(failed) == {(ids[0], "direct+p2p"), (ids[0], "direct+masactrl"), (ids[1], "*"),
                           (ids[2], "direct+p2p")}
    assert "lacks mask" in failed[(ids[1], "*")]
    assert "nowhere" in failed[(ids[2], "direct+p2p")]
    assert summary.done == 2 * 5 - 2 - 2 - 1  # the others, MasaCtrl of the third entry included
    logged = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    assert {(e["id"], e["method"]) for e in logged} == set(failed)
    for entry in logged:
        assert "\n" not in entry["error"] and len(entry["error"]) < 300


def test_cli_bench_summary_and_exit_codes(model_dir, dataset, tmp_path):
    from typer.testing import CliRunner

    from invedit.cli import app

    args = ["bench", str(dataset), "--methods", "direct+p2p", "--out", str(tmp_path / "run"), "--model",
            str(model_dir), "--steps", str(STEPS), "--no-cache", "-q"]
    result = CliRunner().invoke(app, args + ["--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "2 done, 0 already done, 0 failed" in result.output
    for extra, message in ((["--limit", "0"], "--limit must be a positive integer"),
                           (["--types", "12"], "unknown edit type '12'"),
                           (["--steps", "0"], "steps")):
        bad = CliRunner().invoke(app, args + extra)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output
    missing = CliRunner().invoke(app, ["bench", str(tmp_path / "nowhere"), "--methods", "direct+p2p", "--out",
                                       str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no mapping_file.json" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def _bench_process(dataset, out, model_dir, cache) -> list[str]:
    return [sys.executable, "-m", "invedit", "bench", str(dataset), "--methods", "direct+p2p,ddim+p2p", "--out",
            str(out), "--model", str(model_dir), "--steps", "6", "--cache-dir", str(cache), "-q"]


def _comparable(run_dir: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted((run_dir / EDITS_DIR).rglob("*")):
        if path.suffix == ".json":
            out[str(path.relative_to(run_dir))] = {k: v for k, v in json.loads(path.read_text()).items()
                                                   if k not in VOLATILE_RECORD_KEYS}
        elif path.is_file():
            out[str(path.relative_to(run_dir))] = path.read_bytes()
    return out


def test_a_run_killed_with_sigkill_resumes_to_byte_identical_outputs(model_dir, dataset, tmp_path):
    env = {**os.environ, "INVEDIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(_bench_process(dataset, tmp_path / "whole", model_dir, tmp_path / "c1"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(_bench_process(dataset, tmp_path / "killed", model_dir, tmp_path / "c2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    edits = tmp_path / "killed" / EDITS_DIR
    deadline = time.monotonic() + 300
    while len(list(edits.glob("*/*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(edits.glob("*/*.json")))
    assert 3 <= done_at_kill < 10, f"the kill came at {done_at_kill} of 10 edits"
    resumed = subprocess.run(_bench_process(dataset, tmp_path / "killed", model_dir, tmp_path / "c2"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_at_kill} already done" in resumed.stdout
    assert _comparable(tmp_path / "killed") == _comparable(tmp_path / "whole")
    assert not list((tmp_path / "killed").rglob("*.part"))  # what the kill left half-written is gone


def test_accelerate_launch_splits_the_images_with_no_gaps_and_no_duplicates(model_dir, dataset, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "invedit", "bench", str(dataset), "--methods", "direct+p2p", "--out", str(tmp_path / "run"),
           "--model", str(model_dir), "--steps", str(STEPS), "--no-cache", "--device", "cpu", "-q"]
    proc = subprocess.run(cmd, env={**os.environ, "INVEDIT_THREADS": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("[process"))
    assert lines[0].startswith("[process 1/2] 3 done") and lines[1].startswith("[process 2/2] 2 done"), lines
    written = sorted(p.stem for p in (tmp_path / "run" / EDITS_DIR / "direct+p2p").glob("*.json"))
    ids = sorted(json.loads((dataset / "mapping_file.json").read_text()))
    assert written == ids  # 3 + 2 edits done and every id present: no gaps, no duplicates


def test_parity_mode_writes_quality_75_jpegs_and_the_reference_layout(model_dir, dataset, tmp_path):
    from PIL import Image

    summary = bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, parity=True, limit=1)
    assert summary.done == 1
    (image,) = (tmp_path / "run" / EDITS_DIR / "direct+p2p").glob("*.jpg")
    record = json.loads(image.with_suffix(".json").read_text())
    assert record["inversion_options"]["layout"] == "reference" and image.name in record["files"]
    reference = tmp_path / "q75.jpg"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(reference, quality=75)
    with Image.open(image) as ours, Image.open(reference) as q75:
        assert ours.format == "JPEG" and ours.quantization == q75.quantization
    with pytest.raises(invedit.InveditError, match="was run with parity=True, not False"):
        bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, limit=1)


# ---- concurrent processes, typos, environments ---------------------------------------------------------------
def test_path_lock_is_exclusive_and_leaves_no_file(tmp_path):
    from invedit.outputs import PathLock

    first, second = PathLock(tmp_path / "a.lock"), PathLock(tmp_path / "a.lock")
    assert first.acquire() and not second.acquire()
    first.release()
    assert not (tmp_path / "a.lock").exists()
    (tmp_path / "a.lock").write_text("")  # left by a process that died: free
    assert second.acquire()
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_two_processes_on_one_folder_compute_each_pair_once(model_dir, dataset, tmp_path):
    from invedit.outputs import PathLock

    ids = sorted(json.loads((dataset / "mapping_file.json").read_text()))
    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the processes below run
    try:
        assert bench(dataset, run_dir, "direct+p2p", model=model_dir, limit=1).done == 1  # the folder exists
    finally:
        torch.set_num_threads(threads)
    (run_dir / ".locks").mkdir()
    held = PathLock(run_dir / ".locks" / f"{ids[-1]}.lock")  # as if a third process were editing the last image
    assert held.acquire()
    cmd = [sys.executable, "-m", "invedit", "bench", str(dataset), "--methods", "direct+p2p", "--out", str(run_dir),
           "--model", str(model_dir), "--steps", str(STEPS), "--no-cache", "-q"]
    env = {**os.environ, "INVEDIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        others = [run_dir / EDITS_DIR / "direct+p2p" / f"{i}.json" for i in ids[1:-1]]
        while not all(p.exists() for p in others) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (run_dir / EDITS_DIR / "direct+p2p" / f"{ids[-1]}.json").exists()  # nobody took the held one
    finally:
        held.release()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    counts = [tuple(int(x) for x in re.match(r"(\d+) done, (\d+) already done, 0 failed", o[0]).groups())
              for o in outputs]
    assert sum(done for done, _ in counts) == len(ids) - 1  # every pending pair computed by exactly one process
    assert all(done + skipped == len(ids) for done, skipped in counts)
    assert sorted(p.stem for p in (run_dir / EDITS_DIR / "direct+p2p").glob("*.json")) == ids
    assert not (run_dir / ".locks").exists()


def test_a_method_without_a_finished_edit_may_change_its_settings(model_dir, dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    images = sorted((data / "annotation_images").rglob("*.png"))
    saved = {p: p.read_bytes() for p in images}
    for path in images:
        path.write_bytes(b"broken")  # every edit of the first run fails
    failed = bench(data, tmp_path / "run", "direct+p2p", model=model_dir, options=["cross_replace_steps=0.3"])
    assert (failed.done, failed.failed) == (0, 5)
    for path, content in saved.items():
        path.write_bytes(content)
    fixed = bench(data, tmp_path / "run", "direct+p2p", model=model_dir, options=["cross_replace_steps=0.5"], limit=1)
    assert fixed.done == 1
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["methods"]["direct+p2p"]["editor_options"] == {"cross_replace_steps": 0.5}
    with pytest.raises(invedit.InveditError,
                       match="ran direct\\+p2p with other settings .*0.5} → {'cross_replace_steps': 0.3}"):
        bench(data, tmp_path / "run", "direct+p2p", model=model_dir, options=["cross_replace_steps=0.3"], limit=1)


def test_a_resume_with_another_thread_count_is_refused_unless_mixing_is_allowed(model_dir, dataset, tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, limit=1)
        environment = json.loads((tmp_path / "run" / "run.json").read_text())["environment"]
        assert environment["threads"] == 1 and environment["torch"] == versions()["torch"]
        assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        torch.set_num_threads(2)
        with pytest.raises(invedit.InveditError, match="was made with threads 1, this process has 2: .*set "
                                                       "INVEDIT_THREADS=1 \\(or --allow-mixed"):
            bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, limit=2)
        mixed = bench(dataset, tmp_path / "run", "direct+p2p", model=model_dir, limit=2, allow_mixed=True)
        assert (mixed.done, mixed.skipped) == (1, 1)
        settings = json.loads((tmp_path / "run" / "run.json").read_text())
        assert settings["environment"]["threads"] == 1 and settings["mixed_environments"][0]["threads"] == 2
    finally:
        torch.set_num_threads(threads)
