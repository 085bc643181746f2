"""Check that the installed version of every package pinned in a constraints file is the pinned one.

Usage: python .ci/check_versions.py constraints-min.txt  (exit 1 and one line per mismatch otherwise)
"""

from __future__ import annotations

import sys
from importlib import metadata


def main(path: str) -> int:
    wrong = []
    pins = []
    for line in open(path, encoding="utf-8"):
        name, sep, version = line.split("#")[0].strip().partition("==")
        if not sep:
            continue
        pins.append(name)
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            found = "missing"
        if found.split("+")[0] != version:
            wrong.append(f"{name}: {found}, not {version}")
    for message in wrong:
        print(f"error: {message}", file=sys.stderr)
    if not wrong:
        print(f"{len(pins)} pinned versions installed: " + ", ".join(f"{n}=={metadata.version(n)}" for n in pins))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
