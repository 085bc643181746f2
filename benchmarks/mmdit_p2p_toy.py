"""MM-DiT Prompt-to-Prompt (`mmdit-p2p`) against shared attention on the embedded flow model's colour edits.

    python benchmarks/mmdit_p2p_toy.py                      # 24 toy-bench colour edits, 28 steps, CFG 2
    python benchmarks/mmdit_p2p_toy.py --edits 100 --runs direct+shared,direct+default

toy-bench colour edits (PIE-Bench protocol, `invedit.toy.bench`), each edited with Direct and Euler inversion and
each editor configuration: background PSNR outside the edit mask against the source, PSNR against the true target
scene, success (the target colour recognised in the edit region, `invedit.toy.metrics.edit_succeeded`) and the edit's
NFE. shared-attention runs at the model's recommended settings (its invedit.json); mmdit-p2p with the item's blend
words and the configurations below. Results go to benchmarks/mmdit_p2p_toy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import invedit
from invedit.bench.data import load_benchmark
from invedit.images import psnr
from invedit.toy.bench import write_toy_bench
from invedit.toy.metrics import background_psnr, edit_succeeded
from invedit.versions import versions

HERE = Path(__file__).parent
#: Editor configurations: (editor, options; the item's blend words are added for mmdit-p2p).
CONFIGS = {
    "shared": ("shared-attention", {}),
    "default": ("mmdit-p2p", {}),
    "noblend": ("mmdit-p2p", {"local_blend_words": None}),
    "r05": ("mmdit-p2p", {"replace_steps": 0.5}),
    "lb05": ("mmdit-p2p", {"local_blend_threshold": 0.5}),
    "r05lb05": ("mmdit-p2p", {"replace_steps": 0.5, "local_blend_threshold": 0.5}),
    "lb1": ("mmdit-p2p", {"local_blend_steps": 1.0}),
    "r1": ("mmdit-p2p", {"replace_steps": 1.0}),
    "r1lb1": ("mmdit-p2p", {"replace_steps": 1.0, "local_blend_steps": 1.0}),
    "r05lb1": ("mmdit-p2p", {"replace_steps": 0.5, "local_blend_steps": 1.0}),
    "r1lb1t05": ("mmdit-p2p", {"replace_steps": 1.0, "local_blend_steps": 1.0, "local_blend_threshold": 0.5}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-flow")
    parser.add_argument("--edits", type=int, default=24, help="colour edits of toy-bench")
    parser.add_argument("--runs", default="direct+shared,direct+default,direct+noblend,direct+r05,direct+lb05,"
                        "euler+shared,euler+default",
                        help="INVERSION+CONFIG list (configs: " + ", ".join(CONFIGS) + ")")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=2.0, help="the model's demo CFG")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "mmdit_p2p_toy.json")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)  # the measurement's speed only; results do not depend on it
    pipe = invedit.load(args.model, device="cpu", dtype="float32")
    size = invedit.models.native_resolution(pipe)
    folder = Path(tempfile.mkdtemp()) / "toy-bench"
    rows: dict[str, dict[str, list]] = {}
    try:
        write_toy_bench(folder, args.edits, seed=args.seed, size=size)
        mapping = json.loads((folder / "mapping_file.json").read_text())
        items = [i for i in load_benchmark(folder) if mapping[i.id]["toy_edit_kind"] == "color"][: args.edits]
        for item in items:
            source = np.asarray(Image.open(item.image_path))
            truth = np.asarray(Image.open(folder / mapping[item.id]["target_image_path"]))
            mask = item.mask((size, size))
            runs = [r.split("+", 1) for r in args.runs.split(",")]
            for inversion in dict.fromkeys(inv for inv, _ in runs):
                inverted = invedit.invert(pipe, Image.fromarray(source), item.source_prompt, method=inversion,
                                          steps=args.steps, guidance_scale=args.guidance)
                for name in (n for inv, n in runs if inv == inversion):
                    editor, options = CONFIGS[name]
                    if editor == "mmdit-p2p":
                        options = {"local_blend_words": item.blend_words or None, **options}
                    result = invedit.edit(pipe, inverted, None, item.target_prompt, editor=editor,
                                          guidance_scale=args.guidance, **options)
                    edited = np.asarray(result.image)
                    r = rows.setdefault(f"{inversion}+{name}", {"bg": [], "gt": [], "ok": [], "nfe": []})
                    r["bg"].append(background_psnr(edited, source, mask))
                    r["gt"].append(psnr(edited, truth))
                    r["ok"].append(bool(edit_succeeded("color", item, edited, source, mask)))
                    r["nfe"].append(result.nfe_edit)
            print(f"{item.id}: " + ", ".join(f"{k} {np.mean(v['ok']):.0%} {np.mean(v['bg']):.2f} dB"
                                             for k, v in rows.items()), flush=True)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    summary = {key: {"n": len(r["gt"]), "background_psnr": float(np.mean(r["bg"])),
                     "psnr_vs_true_target": float(np.mean(r["gt"])), "success": float(np.mean(r["ok"])),
                     "nfe_edit": float(np.mean(r["nfe"]))} for key, r in rows.items()}
    results = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "versions": versions(),
               "threads": torch.get_num_threads(), "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
               "configs": CONFIGS, "results": summary,
               "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(results, indent=2))
    lines = ["# mmdit-p2p vs shared attention on shapes-flow colour edits", "",
             f"Generated by `benchmarks/mmdit_p2p_toy.py` ({results['date']}, model `{args.model}`, {args.steps} "
             f"steps, CFG {args.guidance}, {len(items)} toy-bench colour edits, seed {args.seed}, "
             f"{results['seconds']:.0f} s). Background PSNR outside the edit mask vs the source; success: the target "
             "colour recognised in the edit region; NFE of the edit (inversion not counted).", "",
             "| inversion+config | editor options | n | background PSNR | PSNR vs true target | success | NFE |",
             "|---|---|---|---|---|---|---|"]
    for key, r in summary.items():
        editor, options = CONFIGS[key.split("+", 1)[1]]
        shown = editor + (" " + json.dumps(options) if options else "")
        lines.append(f"| {key} | {shown} | {r['n']} | {r['background_psnr']:.2f} | {r['psnr_vs_true_target']:.2f} | "
                     f"{r['success']:.0%} | {r['nfe_edit']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
