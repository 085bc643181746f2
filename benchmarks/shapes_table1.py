"""The paper's Table 1 on the shapes world: `invedit bench` → `evaluate` → `report` on an embedded model.

    python benchmarks/shapes_table1.py --run /tmp/shapes-run            # 4 edits per kind (20 images), ~45 min
    python benchmarks/shapes_table1.py --run DIR --n 1 --steps 10       # a quick look
    python benchmarks/shapes_table1.py --model shapes-flow --run /tmp/flow-run --steps 28   # the flow methods

On ``shapes-flow`` (the SD3-shaped flow model) it runs every flow method and pairing that runs on SD 3 and writes,
besides the report, ``table.md``: the flow rows with the embedded UNet's rows (``benchmarks/shapes_table1``, the
same edits) beside them.

The run folder resumes: a second call skips every finished edit. The report, the summaries and the plot are
copied to ``benchmarks/shapes_table1/``. Metrics whose networks are not available offline (DINO, CLIP, LPIPS's
SqueezeNet) are reported as n/a; pass ``--dino-model/--clip-model/--lpips-weights`` where you have them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from invedit.bench.cache import default_cache_dir
from invedit.bench.evaluate import MetricModels, evaluate_run
from invedit.bench.methods import parse_methods
from invedit.bench.report import write_report
from invedit.bench.runner import run_bench
from invedit.toy.bench import write_toy_bench

#: Every inversion with P2P (StyleDiffusion needs a CLIP image encoder the embedded model does not ship), and
#: DDIM / Direct with each of the other editors.
METHODS = ("direct+p2p,null-text+p2p,negative-prompt+p2p,null-latent+p2p,ddpm+p2p,edict+p2p,ddim+p2p,"
           "direct+masactrl,ddim+masactrl,direct+pnp,ddim+pnp,direct+pix2pix-zero,ddim+pix2pix-zero")
#: Every flow inversion with the editors it pairs with on SD 3 (RF-Inversion, rf-solver-edit and Stable Flow are
#: FLUX-only), MM-DiT Prompt-to-Prompt, the inversion-free editors (FlowEdit, FlowAlign, DRFS, DNAEdit), KV-Edit
#: (the entry's mask given).
FLOW_METHODS = ("euler+none,direct+none,euler+shared-attention,direct+shared-attention,rf-solver+shared-attention,"
                "fireflow+shared-attention,euler+mmdit-p2p,direct+mmdit-p2p,uniedit+uniedit,direct+uniedit,"
                "euler+uniedit,none+flowedit,none+flowalign,none+drfs,none+dnaedit,direct+kv-edit,euler+kv-edit")
HERE = Path(__file__).parent
OUT = HERE / "shapes_table1"
FLOW_OUT = HERE / "shapes_flow_table1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder (resumes when it exists)")
    parser.add_argument("--n", type=int, default=4, help="edits per shapes-world kind (5 kinds)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (1: scenes the model was not tuned on)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5, help="CFG of the edits (the flow model: 2)")
    parser.add_argument("--model", default=None, help="embedded model or folder (default: shapes-64)")
    parser.add_argument("--methods", default=None, help="default: every method that runs on the model")
    parser.add_argument("--dino-model", default="facebook/dino-vitb8")
    parser.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    parser.add_argument("--lpips-weights", default=None)
    args = parser.parse_args()

    data = args.run.with_name(args.run.name + "-data")
    if not data.exists():
        write_toy_bench(data, args.n, seed=args.seed, size=64)
    flow = args.model not in (None, "shapes-64", "embedded")  # the flow model (or a folder of one)
    methods = args.methods or (FLOW_METHODS if flow else METHODS)
    summary = run_bench(data, args.run, parse_methods(methods), model=args.model, steps=args.steps,
                        guidance=args.guidance, cache_dir=default_cache_dir())
    print(summary.line())
    models = MetricModels(dino_model=args.dino_model, clip_model=args.clip_model, lpips_weights=args.lpips_weights)
    evaluation = evaluate_run(args.run, models=models)
    for metric, reason in evaluation.unavailable.items():
        print(f"{metric} unavailable: {reason}")
    write_report(args.run)
    out = FLOW_OUT if flow else OUT
    out.mkdir(exist_ok=True)
    for name in ("summary.csv", "summary.md", "by_type.md", "quality_vs_time.png"):
        shutil.copy(args.run / name, out / name)
    report = (args.run / "report.md").read_text()  # the gallery stays in the run folder (it links the edits)
    (out / "report.md").write_text(report.replace("Gallery: [gallery.html](gallery.html)",
                                                  f"Gallery: `{args.run}/gallery.html` of the run folder"))
    if flow:
        (out / "table.md").write_text(side_by_side(out / "summary.csv", OUT / "summary.csv", args))
    print(f"copied the report to {out}")
    return 1 if summary.failed or evaluation.failed else 0


#: Columns of the combined table: (summary.csv column, heading, format).
COLUMNS = (("psnr", "bg PSNR", ".2f"), ("mse", "bg MSE ×10⁴", ".2f"), ("ssim", "bg SSIM ×10²", ".2f"),
           ("target_psnr", "PSNR vs true target", ".2f"), ("edit_success", "success %", ".1f"), ("nfe", "NFE", ".0f"),
           ("seconds", "s/edit", ".2f"))


def side_by_side(flow_csv: Path, sd_csv: Path, args) -> str:
    """The flow run's rows and the embedded UNet's rows (same toy-bench edits) in one markdown table."""
    import csv

    def rows(path: Path, backbone: str) -> list[str]:
        if not path.exists():
            return []
        out = []
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                cells = [format(float(r[c]), k) if r.get(c) not in (None, "") else "n/a" for c, _, k in COLUMNS]
                out.append(f"| {backbone} | {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
        return out

    head = ("| backbone | method | N | " + " | ".join(h for _, h, _ in COLUMNS) + " |\n|"
            + "---|" * (3 + len(COLUMNS)))
    return "\n".join([
        "# Table 1 on the shapes world: flow methods (shapes-flow, SD3-shaped MM-DiT) and SD methods (shapes-64)",
        "", f"Written by `benchmarks/shapes_table1.py --model shapes-flow` ({args.n} edits per kind × 5 kinds, seed "
        f"{args.seed}, {args.steps} steps, CFG {args.guidance}; the UNet rows: `benchmarks/shapes_table1`, the same "
        "edits at 50 steps, CFG 7.5). "
        "Background metrics outside the edit mask vs the source; PSNR vs true target in the edit region; success by "
        "the shapes-world classifiers. Seconds are this machine's (2 CPU threads) and not comparable across rows "
        "run at other times; NFE are.", "", head, *rows(flow_csv, "flow"), *rows(sd_csv, "UNet"), ""])


if __name__ == "__main__":
    sys.exit(main())
