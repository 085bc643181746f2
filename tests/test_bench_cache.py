"""The inversion cache is an optimisation: a cache that cannot be used, a write that fails and a file that cannot be
read never fail an edit; each is said once."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import invedit
from invedit.bench import cache as cache_module
from invedit.bench.cache import InversionCache, open_cache
from invedit.bench.methods import parse_methods
from invedit.bench.runner import run_bench
from invedit.inversion.storage import load_inverted

STEPS = 2
N = 5  # entries of the toy dataset


def bench(dataset, out, model_dir, cache, said: list[str]):
    return run_bench(dataset, out, parse_methods("direct+p2p"), model=str(model_dir), steps=STEPS, cache_dir=cache,
                     progress=False, say=said.append)


def test_a_cache_folder_that_is_a_file_is_said_once_and_the_run_goes_on(model_dir, dataset, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    said: list[str] = []
    summary = bench(dataset, tmp_path / "run", model_dir, tmp_path / "cache", said)
    assert (summary.done, summary.failed) == (N, 0)
    assert said == [f"warning: cannot write the inversion cache to {tmp_path / 'cache'}: {tmp_path / 'cache'} is a "
                    "file, not a folder; running without the inversion cache"]
    assert (tmp_path / "cache").read_text() == "not a folder"


def test_an_unwritable_cache_folder_is_said_once_and_the_run_goes_on(model_dir, dataset, tmp_path, monkeypatch):
    import tempfile

    (tmp_path / "cache").mkdir(mode=0o500)
    real_mkstemp = tempfile.mkstemp

    def refusing(*args, dir=None, **kwargs):  # what a read-only folder does, for root too
        if dir is not None and Path(dir).is_relative_to(tmp_path / "cache"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    said: list[str] = []
    summary = bench(dataset, tmp_path / "run", model_dir, tmp_path / "cache", said)
    assert (summary.done, summary.failed) == (N, 0)
    assert said == [f"warning: cannot write the inversion cache to {tmp_path / 'cache'}: Permission denied; running "
                    "without the inversion cache"]
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_full_disk_loses_no_edit_and_is_said_once(model_dir, dataset, tmp_path, monkeypatch):
    def full(inverted, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_module, "save_inverted", full)
    said: list[str] = []
    summary = bench(dataset, tmp_path / "run", model_dir, tmp_path / "cache", said)
    assert (summary.done, summary.failed) == (N, 0)
    assert said == [f"warning: cannot write to the inversion cache {tmp_path / 'cache'} (No space left on device); "
                    "going on without storing inversions"]


def test_unreadable_cache_files_are_misses(model_dir, dataset, tmp_path):
    said: list[str] = []
    first = bench(dataset, tmp_path / "a", model_dir, tmp_path / "cache", said)
    files = sorted((tmp_path / "cache").rglob("*.pt"))
    assert first.done == N and len(files) == N
    files[0].write_bytes(b"")  # 0 bytes: torch raises with an empty message
    files[1].write_bytes(b"garbage")
    files[2].unlink()
    files[2].mkdir()  # a folder where the file should be
    with pytest.raises(invedit.InveditError, match="cannot read inversion file .*: "):
        load_inverted(files[0])
    said.clear()
    again = bench(dataset, tmp_path / "b", model_dir, tmp_path / "cache", said)
    assert (again.done, again.failed) == (N, 0)
    assert again.nfe_inversion == 3 * STEPS and again.nfe_saved_from_cache == 2 * STEPS
    notes = [s for s in said if s.startswith("note: recomputed an unreadable cached inversion")]
    assert len(notes) == 2 and "IndexError" not in " ".join(notes)
    # the folder in a file's place is a miss, and storing over it is the one write failure said
    assert [s for s in said if s not in notes] == [f"warning: cannot write to the inversion cache {tmp_path / 'cache'}"
                                                   " (Is a directory); going on without storing inversions"]
    sources = sorted(json.loads(p.read_text())["inversion_source"] for p in (tmp_path / "b").rglob("*.json")
                     if p.parent.name == "direct+p2p")
    assert sources == ["cache", "cache", "computed", "computed", "computed"]


def test_open_cache_without_a_folder_stores_nothing(tmp_path):
    said: list[str] = []
    cache = open_cache(None, said.append)
    assert isinstance(cache, InversionCache) and cache.folder is None and cache.get("ab" * 20, "cpu") is None
    assert said == []
