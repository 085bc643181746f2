"""`.ci/uv_args.py`: the Makefile's uv install gets the indexes, find-links and constraint files pip is configured
with (uv reads none of pip's configuration)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "uv_args.py"


def _module():
    spec = importlib.util.spec_from_file_location("uv_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_settings_become_uv_options(tmp_path):
    cap = tmp_path / "constraints.txt"
    cap.write_text("torch<=2.14.1\n")
    args = _module().uv_args({"index-url": "https://mirror/simple", "extra-index-url": "file:///a file:///b",
                              "find-links": "/wheels", "constraint": f"{cap} {tmp_path / 'missing.txt'}",
                              "cert": "/etc/ssl/cert.pem"})
    assert args == ["--index-strategy", "unsafe-best-match", "--index-url", "https://mirror/simple",
                    "--extra-index-url", "file:///a", "--extra-index-url", "file:///b", "--find-links", "/wheels",
                    "-c", str(cap)]  # one not on this machine is left out
    assert _module().uv_args({}) == ["--index-strategy", "unsafe-best-match"]


def test_pip_config_list_is_read_by_scope_and_key(monkeypatch):
    module = _module()

    class Done:
        stdout = ("global.find-links='/opt/wheels'\n:env:.find-links='/other'\n"
                  "global.extra-index-url='file:///x file:///y'\nnot a setting\n")

    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: Done)
    assert module.pip_config() == {"find-links": "/other", "extra-index-url": "file:///x file:///y"}
