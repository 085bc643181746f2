"""Where the object words' image→text attention lands while the embedded flow model edits a two-object scene.

    python benchmarks/flow_binding_maps.py                 # the demo's edit and the next two-object colour edits
    python benchmarks/flow_binding_maps.py --seeds 0,2,3
    python benchmarks/flow_binding_maps.py --survey 32      # and a summary over 32 more two-object colour edits

For each colour edit (`invedit.toy.scenes.make_edit_example`, the seeds the demo uses), Direct inversion and an edit
with shared attention at the model's recommended settings (CFG 2, 28 steps): per branch (the source row under the
source prompt, the target row under the target prompt, both conditional), per object word (colours and shapes), the
share of the word's image→text attention (the joint blocks' image queries over the prompt's keys, heads and blocks
averaged; recorded with the fine-tune's `record_joint_attention`, tested to be the model's own attention) that
falls on each object's tokens, at a few steps. A word bound to the right object puts its mass on that
object. ``--survey N`` adds a summary over the first N two-object colour edits from seed 100 on: per branch, the
share of each object word's map on its own object and on the other object, averaged over the first third of the
steps (where the demo's edit binds its words to the wrong object), how many edits have every word of the target
prompt on its own object there, and how often the edit reaches its colour with and without that. Results go to
benchmarks/flow_binding_maps.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import invedit
from invedit.sampling import ROW_ORDER
from invedit.toy.metrics import region_color
from invedit.toy.scenes import COLORS, SHAPES, make_edit_example
from invedit.versions import versions

HERE = Path(__file__).parent
#: the conditional rows of the source and target branches in a step's batch, when all four rows are computed (shared
#: attention reads the source's rows at every step, so every step computes all four)
ROWS = {branch: ROW_ORDER.index((branch, "cond")) for branch in ("source", "target")}
SHOWN_STEPS = (0, 3, 7, 14, 27)


def token_shares(mask: np.ndarray, grid: int) -> torch.Tensor:
    """The share of each image token's pixels that ``mask`` covers, flattened (grid²,)."""
    cell = mask.shape[0] // grid
    return torch.from_numpy(mask.reshape(grid, cell, grid, cell).mean((1, 3)).ravel()).float()


def word_positions(tokenizer, prompt: str) -> dict[str, int]:
    ids = tokenizer(prompt).input_ids
    words = [tokenizer.convert_ids_to_tokens(i).removesuffix("</w>") for i in ids]
    return {w: k for k, w in enumerate(words) if w in COLORS or w in SHAPES}


def one_edit(pipe, seed: int, steps: int, guidance: float) -> dict:
    sys.path.insert(0, str(HERE.parent))  # the repository root: the trainer's attention recorder, as flow_toy_quality
    from training.shapes_flow.finetune import record_joint_attention

    edit = make_edit_example(seed, "color")
    transformer = pipe.transformer
    inverted = invedit.invert(pipe, Image.fromarray(edit.source_image), edit.source_prompt, "direct", steps=steps)
    saved = dict(transformer.attn_processors)
    store: list[torch.Tensor] = []
    blocks = record_joint_attention(transformer, store)  # shared attention's hooks sit on the projections it calls
    try:
        result = invedit.edit(pipe, inverted, None, edit.target_prompt, editor="shared-attention",
                              guidance_scale=guidance)
    finally:
        transformer.set_attn_processor(saved)
    heads = transformer.transformer_blocks[0].attn.heads
    maps = torch.stack([p.view(-1, heads, *p.shape[1:]).mean(1) for p in store])  # (calls, rows, image, prompt)
    maps = maps.view(-1, blocks, *maps.shape[1:]).mean(1)
    if maps.shape[0] != steps or maps.shape[1] != len(ROW_ORDER):
        raise SystemExit(f"error: expected {steps} steps of 4 rows, recorded {tuple(maps.shape[:2])}")
    grid = int(maps.shape[2] ** 0.5)
    # the objects' token coverage, (objects, image tokens): the same in both scenes (a colour edit moves nothing)
    coverage = torch.stack([token_shares(m, grid) for m in edit.source.masks])
    shapes = [o.shape for o in edit.source.objects]
    out: dict = {"seed": seed, "source_prompt": edit.source_prompt, "target_prompt": edit.target_prompt,
                 "objects": [f"{o.color} {o.shape}" for o in edit.source.objects], "shares": {}}
    early = max(1, steps // 3)
    for branch, scene in (("source", edit.source), ("target", edit.target)):
        own, other = [], []
        for word, pos in word_positions(pipe.tokenizer, getattr(edit, f"{branch}_prompt")).items():
            m = maps[:, ROWS[branch], :, pos]
            shares = (m / m.sum(-1, keepdim=True)) @ coverage.T  # (steps, objects): the word's map on each object
            out["shares"][f"{branch} {word}"] = {step: {shape: round(float(v), 2) for shape, v in
                                                        zip(shapes, shares[step])} for step in SHOWN_STEPS
                                                 if step < steps}
            owners = [k for k, o in enumerate(scene.objects) if word in (o.color, o.shape)]
            if len(owners) == 1:  # a colour both objects have belongs to neither alone
                per_object = shares[:early].mean(0)
                own.append(float(per_object[owners[0]]))
                other.append(float(per_object.sum() - per_object[owners[0]]))
        out[f"early_{branch}"] = {"own": own, "other": other}
    wanted = edit.blend_words.split()[1]
    out["reached"] = region_color(np.asarray(result.image), edit.mask & edit.target.object_mask) == wanted
    return out


def two_object_seeds(n: int, first: int = 100) -> list[int]:
    """The first ``n`` seeds from ``first`` on whose colour edit (`make_edit_example`) has two objects."""
    seeds, seed = [], first
    while len(seeds) < n:
        if len(make_edit_example(seed, "color").source.objects) == 2:
            seeds.append(seed)
        seed += 1
    return seeds


def survey_summary(edits: list[dict]) -> dict:
    """Averages of `one_edit`'s early shares over edits; an edit is bound when every unambiguous word of the target
    prompt has more of its early map on its own object than on the other."""
    out: dict = {"n": len(edits)}
    for branch in ("source", "target"):
        own = [v for e in edits for v in e[f"early_{branch}"]["own"]]
        other = [v for e in edits for v in e[f"early_{branch}"]["other"]]
        out[branch] = {"own": float(np.mean(own)), "other": float(np.mean(other))}
    bound = [all(a > b for a, b in zip(e["early_target"]["own"], e["early_target"]["other"])) for e in edits]
    reached = [e["reached"] for e in edits]
    out["bound"] = int(sum(bound))
    out["reached"] = int(sum(reached))
    out["reached_if_bound"] = int(sum(r for r, b in zip(reached, bound) if b))
    return out


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Where the object words' maps land during a two-object colour edit (shapes-flow)", "",
             f"Generated by `benchmarks/flow_binding_maps.py` ({results['date']}, model `{results['model']}`, Direct "
             f"inversion, shared attention at the model's settings, {results['steps']} steps, CFG "
             f"{results['guidance']}, {results['seconds']:.0f} s). Each cell: the share of the word's image→text "
             "attention (heads and joint blocks averaged, normalised over the image tokens) on each object's tokens "
             "at that step; the source row is the source prompt's, the target row the target prompt's.", ""]
    for r in results["edits"]:
        shapes = [o.split()[1] for o in r["objects"]]
        lines += [f"## seed {r['seed']}: {r['source_prompt']!r} → {r['target_prompt']!r}", "",
                  f"Objects: {', '.join(r['objects'])}. The edit reached the target colour: "
                  f"{'yes' if r['reached'] else 'no'}.", "",
                  "| branch, word | " + " | ".join(f"step {s}" for s in SHOWN_STEPS if s < results["steps"]) + " |",
                  "|---|" + "---|" * sum(s < results["steps"] for s in SHOWN_STEPS)]
        for key, rows in r["shares"].items():
            cells = [" / ".join(f"{shape} {v[shape]:.2f}" for shape in shapes) for v in rows.values()]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    if "survey" in results:
        v = results["survey"]
        lines += [f"## Summary over {v['n']} more two-object colour edits (seeds {v['seeds'][0]}–{v['seeds'][-1]})", "",
                  "Each object word's map, averaged over the first third of the steps and over the words whose "
                  "object is unambiguous (a colour both objects share is left out):", "",
                  "| branch | share on its own object | share on the other object |", "|---|---|---|"]
        lines += [f"| {b} | {v[b]['own']:.2f} | {v[b]['other']:.2f} |" for b in ("source", "target")]
        lines += ["", f"Every target word on its own object (more there than on the other): {v['bound']} of {v['n']} "
                  f"edits. The edit reached its colour in {v['reached']} of {v['n']}: {v['reached_if_bound']} of "
                  f"the {v['bound']} bound edits, {v['reached'] - v['reached_if_bound']} of the "
                  f"{v['n'] - v['bound']} others.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-flow")
    parser.add_argument("--seeds", default="0,2,3", help="colour edits of make_edit_example (two objects each)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--survey", type=int, default=0, help="also summarise this many two-object colour edits")
    parser.add_argument("--out", type=Path, default=HERE / "flow_binding_maps.json")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)  # the results do not depend on it
    pipe = invedit.load(args.model, device="cpu", dtype="float32")
    edits = [one_edit(pipe, int(s), args.steps, args.guidance) for s in args.seeds.split(",")]
    results = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "versions": versions(), "steps": args.steps,
               "guidance": args.guidance, "edits": edits}
    if args.survey:
        seeds = two_object_seeds(args.survey)
        results["survey"] = {"seeds": seeds, **survey_summary([one_edit(pipe, s, args.steps, args.guidance)
                                                                for s in seeds])}
    results["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
