"""Quality of the embedded flow model (`shapes-flow`), and of flow editing with it, on held-out scenes and edits.

    python benchmarks/flow_toy_quality.py                          # all parts, 100 colour edits
    python benchmarks/flow_toy_quality.py --edits-per-kind 20 --parts generation,inversion

Parts (targets from the embedded-flow-model issue in brackets):
  generation  Euler sampling, CFG, the 96 one-object prompts (6 colours × 4 shapes × 4 backgrounds): requested
              colour and shape recognised (the UNet model's measure, benchmarks/toy_quality.py)      [≥ 90%]
  inversion   Euler inversion + regeneration at guidance 1 vs the VAE round trip of the input     [≥ 30 dB]
  grounding   image→text attention of the joint blocks on one-object held-out scenes noised to σ = 0.5: the
              share of the colour / shape word's map (heads and blocks averaged) on its object, and how many
              times denser it is there than elsewhere (the maps an MM-DiT Prompt-to-Prompt reads)
  editing     colour edits of toy-bench (PIE-Bench protocol) with Direct and Euler inversion + shared attention
              and KV-Edit (given the true mask): target colour reached [≥ 85%], background PSNR [≥ 30 dB],
              Direct − Euler background PSNR [≥ 3 dB]
Parts run in parallel processes of one thread each (``--jobs``); the editors of the editing part are separate jobs.
Results go to benchmarks/flow_toy_quality.json and a table in benchmarks/flow_toy_quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from toy_quality import EVAL_SEED, _editing_rows, held_out_scenes, part_editing

import invedit
from invedit.api import decode_latents, encode_image
from invedit.backbones import backbone
from invedit.images import psnr
from invedit.toy.generation import generate
from invedit.toy.metrics import dominant_object
from invedit.toy.scenes import BACKGROUNDS, COLORS, SHAPES, make_scene
from invedit.versions import versions

HERE = Path(__file__).parent


def part_generation(pipe, seed: int, steps: int, guidance: float) -> dict:
    prompts, wanted = [], []
    for color in COLORS:
        for shape in SHAPES:
            for bg in BACKGROUNDS:
                prompts.append(f"a {color} {shape} on a {bg} background")
                wanted.append((color, shape))
    images = generate(pipe, prompts, seed, steps, guidance)
    found = [dominant_object(im) for im in images]
    color_ok = [f[0] == w[0] for f, w in zip(found, wanted)]
    shape_ok = [f[1] == w[1] for f, w in zip(found, wanted)]
    grid = Image.new("RGB", (16 * 64, (len(images) + 15) // 16 * 64))
    for k, im in enumerate(images):
        grid.paste(Image.fromarray(im).resize((64, 64)), (k % 16 * 64, k // 16 * 64))
    grid.save(HERE / "flow_generation.png")
    return {"n": len(prompts), "steps": steps, "guidance": guidance, "color_accuracy": float(np.mean(color_ok)),
            "shape_accuracy": float(np.mean(shape_ok)),
            "both_accuracy": float(np.mean([c and s for c, s in zip(color_ok, shape_ok)])),
            "per_shape_accuracy": {s: float(np.mean([ok for ok, w in zip(shape_ok, wanted) if w[1] == s]))
                                   for s in SHAPES}}


def part_inversion(pipe, n: int, steps: int) -> dict:
    size = invedit.models.native_resolution(pipe)
    values = []
    for scene in held_out_scenes(n, size):
        image = Image.fromarray(scene.image)
        result = invedit.edit(pipe, image, scene.caption, scene.caption, inversion="euler", editor="none",
                              guidance_scale=1.0, steps=steps)
        values.append(psnr(result.reconstruction, decode_latents(pipe, encode_image(pipe, image))[0]))
    return {"n": n, "steps": steps, "psnr_mean": float(np.mean(values)), "psnr_min": float(np.min(values))}


@torch.no_grad()
def part_grounding(pipe, n: int, seed: int, sigma: float = 0.5) -> dict:
    """Where the colour and shape words' image→text attention falls, on ``n`` one-object held-out scenes."""
    sys.path.insert(0, str(HERE.parent))  # the repository root: the trainer's attention recorder
    from invedit.backbones.mmdit import unpack_pooled
    from training.shapes_flow.finetune import record_joint_attention

    model = backbone(pipe)
    transformer = pipe.transformer
    saved = dict(transformer.attn_processors)
    store: list[torch.Tensor] = []
    record_joint_attention(transformer, store)
    gen = torch.Generator("cpu").manual_seed(seed)
    share: dict[str, list[float]] = {"color": [], "shape": []}
    density: dict[str, list[float]] = {"color": [], "shape": []}
    area = []
    try:
        for k in range(n):
            scene = make_scene(EVAL_SEED + 20_000 + k, size=model.resolution, n_objects=1)
            x0 = encode_image(pipe, Image.fromarray(scene.image))
            xt = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=gen)
            tokens, pooled = unpack_pooled(model.encode_prompts([scene.caption]),
                                           transformer.config.pooled_projection_dim)
            store.clear()
            transformer(hidden_states=xt, timestep=torch.tensor([sigma * 1000]), encoder_hidden_states=tokens,
                        pooled_projections=pooled)
            maps = torch.stack([p.mean(0) for p in store]).mean(0)  # (image tokens, prompt tokens)
            grid = int(round(maps.shape[0] ** 0.5))
            f = scene.size // grid
            inside = torch.from_numpy(scene.masks[0].reshape(grid, f, grid, f).mean(axis=(1, 3)).ravel()).float()
            area.append(float(inside.mean()))
            for word, token in (("color", 2), ("shape", 3)):  # "a C S on ...": BOS, a, C, S
                m = maps[:, token] / maps[:, token].sum()
                share[word].append(float((m * inside).sum()))
                density[word].append(float((m * inside).sum() / inside.sum() /
                                           ((m * (1 - inside)).sum() / (1 - inside).sum()).clamp_min(1e-12)))
    finally:
        transformer.set_attn_processor(saved)
    return {"n": n, "sigma": sigma, "object_area_share": float(np.mean(area)),
            **{f"{w}_share_on_object": float(np.mean(v)) for w, v in share.items()},
            **{f"{w}_density_ratio_median": float(np.median(v)) for w, v in density.items()}}


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Embedded flow model (shapes-flow): quality", "",
             "Generated by `benchmarks/flow_toy_quality.py` from `flow_toy_quality.json` "
             f"({results['date']}, {results['seconds']:.0f} s, {results['threads']} threads).", ""]
    if "note" in results:
        lines += [results["note"], ""]
    if "generation" in results:
        g = results["generation"]
        lines += [f"- Generation (Euler {g['steps']} steps, CFG {g['guidance']}, {g['n']} one-object prompts): colour "
                  f"{g['color_accuracy']:.1%}, shape {g['shape_accuracy']:.1%}, both {g['both_accuracy']:.1%} "
                  "(target ≥ 90%); per shape " + ", ".join(f"{k} {v:.0%}" for k, v in
                                                           g["per_shape_accuracy"].items()) + "."]
    if "inversion" in results:
        i = results["inversion"]
        lines += [f"- Euler inversion ({i['steps']} steps) + regeneration at guidance 1 vs the VAE round trip: "
                  f"{i['psnr_mean']:.2f} dB mean (min {i['psnr_min']:.2f}) on {i['n']} held-out scenes "
                  "(target ≥ 30 dB)."]
    if "grounding" in results:
        g = results["grounding"]
        lines += [f"- Word maps (image→text attention of the joint blocks, heads and blocks averaged; {g['n']} "
                  f"one-object held-out scenes noised to σ = {g['sigma']}): the colour word's map puts "
                  f"{g['color_share_on_object']:.0%} of its mass on its object (median "
                  f"{g['color_density_ratio_median']:.1f}× denser there than elsewhere), the shape word's "
                  f"{g['shape_share_on_object']:.0%} ({g['shape_density_ratio_median']:.1f}×); the object covers "
                  f"{g['object_area_share']:.0%} of the image."]
    if "editing" in results:
        editors = sorted({key.split("/")[0].split("+")[1] for key in results["editing"] if "/" in key})
        mask = ", KV-Edit given the true edit mask" if "kv-edit" in editors else ""
        lines += _editing_rows(results["editing"], f"Editing ({', '.join(editors)} with the model's recommended "
                               f"settings{mask}, {results['edit_steps']} steps, CFG {results['edit_guidance']}",
                               baseline="Euler")
    path.write_text("\n".join(lines) + "\n")


def run_part(part: str, editor: str | None, args: argparse.Namespace) -> tuple[dict, float]:
    """One part (the editing part: one editor) in a worker process of one thread."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = invedit.load(args.model, device="cpu", dtype="float32")
    if part == "generation":
        value = part_generation(pipe, args.seed, args.steps, args.guidance)
    elif part == "inversion":
        value = part_inversion(pipe, args.n, args.steps)
    elif part == "grounding":
        value = part_grounding(pipe, args.n, args.seed)
    else:
        value = part_editing(pipe, args.edits_per_kind, args.seed, set(args.kinds.split(",")), editors=(editor,),
                             baseline="euler", steps=args.steps, guidance=args.edit_guidance)
        value.pop("p2p_settings", None)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-flow")
    parser.add_argument("--parts", default="generation,inversion,grounding,editing")
    parser.add_argument("--n", type=int, default=64, help="scenes for the inversion and grounding parts")
    parser.add_argument("--edits-per-kind", type=int, default=100)
    parser.add_argument("--kinds", default="color", help="editing: comma list of edit kinds")
    parser.add_argument("--editors", default="shared-attention,kv-edit",
                        help="editing: comma list of editors (each with the model's recommended settings; KV-Edit "
                             "is given the true edit mask)")
    parser.add_argument("--steps", type=int, default=28, help="sampling / inversion steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="generation CFG")
    parser.add_argument("--edit-guidance", type=float, default=2.0, help="CFG of the edits (the model's demo setting)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes (one thread each)")
    parser.add_argument("--out", type=Path, default=HERE / "flow_toy_quality.json")
    args = parser.parse_args()
    start = time.perf_counter()
    results: dict = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "versions": versions(),
                     "threads": 1, "jobs": args.jobs, "edit_steps": args.steps, "edit_guidance": args.edit_guidance}
    jobs = [(part, None) for part in args.parts.split(",") if part != "editing"]
    if "editing" in args.parts.split(","):
        jobs += [("editing", editor) for editor in args.editors.split(",")]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_part, part, editor, args): part for part, editor in jobs}
        for future in as_completed(futures):  # each part reported as soon as it is done
            part = futures[future]
            value, seconds = future.result()
            if part == "editing":
                results.setdefault("editing", {}).update(value)
            else:
                results[part] = value
            print(part, f"{seconds:.0f} s", json.dumps(value), flush=True)
    results["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(results, indent=2))
    write_markdown(results, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
