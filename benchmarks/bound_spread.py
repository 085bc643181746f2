"""Measure the spread of every numerical bound of the test suite across CPU kernels and thread counts.

Runs the tests that hold floating-point bounds once per configuration (this CPU's own kernels with 1 and 2
threads, PyTorch's AVX2 kernels as on an AVX2-only CPU, and its scalar "default" kernels) with
``INVEDIT_BOUNDS_LOG`` set, so that each `tests.bounds.measured` value is logged, then writes one table:
per bound, the worst value over its test's parameters in each configuration, the spread, and the bound.

    python benchmarks/bound_spread.py                     # all configurations (≈ 30 min on 2 cores)
    python benchmarks/bound_spread.py --configs avx2-2t   # one

Writes ``benchmarks/bound_spread.json`` (every logged value) and ``docs/test-bounds.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_sampling.py", "tests/test_direct_inversion.py", "tests/test_edict_ddpm.py",
              "tests/test_inversions.py", "tests/test_style_diffusion.py", "tests/test_parity.py",
              "tests/test_embedded_model.py"]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CONFIGS = {
    "native-2t": {"OMP_NUM_THREADS": "2"},
    "native-1t": {"OMP_NUM_THREADS": "1"},
    "avx2-2t": {**AVX2, "OMP_NUM_THREADS": "2"},
    "avx2-1t": {**AVX2, "OMP_NUM_THREADS": "1"},
    "default-2t": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                   "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2"},
}


def run_config(name: str, env_extra: dict[str, str]) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
        log = f.name
    env = {**os.environ, **env_extra, "INVEDIT_BOUNDS_LOG": log}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    print(f"{name}: {tail} ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = [dict(json.loads(line), config=name) for line in Path(log).read_text().splitlines()]
    os.unlink(log)
    return rows


def source_bounds() -> list[tuple[re.Pattern, str, float]]:
    """Every ``measured("name", …) <= 1e-4`` in the tests: (pattern of the logged name, comparison, bound)."""
    found = []
    for test_file in TEST_FILES:
        text = (ROOT / test_file).read_text()
        for match in re.finditer(r'measured\((f?)"([^"]*)"', text):
            depth, i = 1, match.end()
            while depth and i < len(text):  # to the closing parenthesis of measured(
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            cmp = re.match(r"\s*(<=|<|>=|>)\s*([0-9.e+-]+)", text[i:])
            if cmp:
                template = match.group(2)
                parts = re.split(r"\{[^}]*\}", template) if match.group(1) else [template]
                pattern = re.compile(".*".join(re.escape(p) for p in parts) + "$")
                found.append((pattern, cmp.group(1), float(cmp.group(2)), len(template) if not match.group(1) else 0))
    found.sort(key=lambda f: -f[3])  # literal names first, then f-string templates
    return [f[:3] for f in found]


def bound_of(name: str, bounds: list[tuple[re.Pattern, str, float]]) -> tuple[str, float] | None:
    for pattern, op, value in bounds:
        if pattern.match(name):
            return op, value
    return None


def table(rows: list[dict], configs: list[str]) -> str:
    by_name: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by_name.setdefault(r["name"], {}).setdefault(r["config"], []).append(r["value"])
    lines = ["| bound | " + " | ".join(configs) + " | bound | margin |",
             "|---|" + "---|" * (len(configs) + 2)]
    bounds = source_bounds()
    for name in sorted(by_name):
        found = bound_of(name, bounds)
        op = found[0] if found else "?"
        worst = max if op in ("<", "<=") else min
        cells, values = [], []
        for c in configs:
            v = by_name[name].get(c)
            cells.append(f"{worst(v):.3g}" if v else "—")
            if v:
                values.append(worst(v))
        if found and values:
            w = worst(values)
            margin = (found[1] / w if op in ("<", "<=") else w / found[1]) if w else float("inf")
            tail = f"{op} {found[1]:g} | {margin:.3g}× |"
        else:
            tail = "? | |"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tail}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--merge", action="store_true", help="keep the other configurations' values already recorded")
    ap.add_argument("--log", action="append", default=[], metavar="CONFIG=FILE",
                    help="take CONFIG's values from an INVEDIT_BOUNDS_LOG file (e.g. of a whole-suite run) instead")
    args = ap.parse_args()
    logs = dict(item.split("=", 1) for item in args.log)
    names = [n for n in args.configs.split(",") if n] if not logs else list(logs)
    out_json = ROOT / "benchmarks" / "bound_spread.json"
    rows = json.loads(out_json.read_text())["rows"] if args.merge and out_json.exists() else []
    rows = [r for r in rows if r["config"] not in names]
    for name in names:
        if name in logs:
            rows += [dict(json.loads(line), config=name) for line in Path(logs[name]).read_text().splitlines()]
        else:
            rows += run_config(name, CONFIGS[name])
    configs = [c for c in CONFIGS if any(r["config"] == c for r in rows)]
    out_json.write_text(json.dumps({"configs": {c: CONFIGS[c] for c in configs}, "rows": rows}, indent=0))
    doc = ROOT / "docs" / "test-bounds.md"
    intro = doc.read_text().split("<!-- table -->")[0] if doc.exists() else "# Test bounds\n\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(intro + "<!-- table -->\n" + table(rows, configs) + "\n")
    print(f"wrote {doc} and {out_json}")


if __name__ == "__main__":
    main()
