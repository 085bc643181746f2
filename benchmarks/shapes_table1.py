"""The paper's Table 1 on the shapes world: `invedit bench` → `evaluate` → `report` on the embedded model.

    python benchmarks/shapes_table1.py --run /tmp/shapes-run            # 4 edits per kind (20 images), ~45 min
    python benchmarks/shapes_table1.py --run DIR --n 1 --steps 10       # a quick look

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
OUT = Path(__file__).parent / "shapes_table1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder (resumes when it exists)")
    parser.add_argument("--n", type=int, default=4, help="edits per shapes-world kind (5 kinds)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (1: scenes the model was not tuned on)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--dino-model", default="facebook/dino-vitb8")
    parser.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    parser.add_argument("--lpips-weights", default=None)
    args = parser.parse_args()

    data = args.run.with_name(args.run.name + "-data")
    if not data.exists():
        write_toy_bench(data, args.n, seed=args.seed, size=64)
    summary = run_bench(data, args.run, parse_methods(args.methods), steps=args.steps, cache_dir=default_cache_dir())
    print(summary.line())
    models = MetricModels(dino_model=args.dino_model, clip_model=args.clip_model, lpips_weights=args.lpips_weights)
    evaluation = evaluate_run(args.run, models=models)
    for metric, reason in evaluation.unavailable.items():
        print(f"{metric} unavailable: {reason}")
    write_report(args.run)
    OUT.mkdir(exist_ok=True)
    for name in ("summary.csv", "summary.md", "by_type.md", "quality_vs_time.png"):
        shutil.copy(args.run / name, OUT / name)
    report = (args.run / "report.md").read_text()  # the gallery stays in the run folder (it links the edits)
    (OUT / "report.md").write_text(report.replace("Gallery: [gallery.html](gallery.html)",
                                                  f"Gallery: `{args.run}/gallery.html` of the run folder"))
    print(f"copied the report to {OUT}")
    return 1 if summary.failed or evaluation.failed else 0


if __name__ == "__main__":
    sys.exit(main())
