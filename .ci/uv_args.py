"""Print uv's options for the indexes, find-links and constraint files pip is configured with.

uv does not read pip's configuration (pip.conf, PIP_* variables); the Makefile installs with uv, so it passes on
what `pip config list` says, and asks uv to pick the best version across every index, as pip does. Usage:
``uv pip install $(python .ci/uv_args.py) ...``
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys


def pip_config() -> dict[str, str]:
    """pip's effective settings, the later scopes (environment variables last) overriding the earlier ones."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return settings


def uv_args(settings: dict[str, str]) -> list[str]:
    args = ["--index-strategy", "unsafe-best-match"]
    if settings.get("index-url"):
        args += ["--index-url", settings["index-url"]]
    for url in settings.get("extra-index-url", "").split():
        args += ["--extra-index-url", url]
    for link in settings.get("find-links", "").split():
        args += ["--find-links", link]
    for path in settings.get("constraint", "").split():
        if os.path.isfile(path):
            args += ["-c", path]
    return args


if __name__ == "__main__":
    print(shlex.join(uv_args(pip_config())))
