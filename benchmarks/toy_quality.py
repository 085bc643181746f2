"""Quality of the embedded shapes model, and of editing with it, on held-out scenes and edits.

    python benchmarks/toy_quality.py                      # the embedded model, all parts
    python benchmarks/toy_quality.py --model DIR --edits-per-kind 20 --parts vae,generation

Parts (targets from the embedded-model issue in brackets):
  checks      the colour and shape classifiers on real scenes and on VAE reconstructions (they judge the rest)
  vae         VAE reconstruction PSNR                                                            [≥ 28 dB]
  generation  DDIM 50 steps, CFG 7.5, one-object prompts: requested colour / shape recognised     [≥ 95% / ≥ 70%]
  inversion   DDIM inversion + regeneration at guidance 1 vs the VAE reconstruction               [≥ 35 dB]
  identity    target prompt = source prompt: Direct (± correct_target) and DDIM edits vs reconstruction
  editing     Direct+P2P and DDIM+P2P on toy-bench edits (PIE-Bench protocol) vs the ground truth:
              colour edits reach the target colour in the mask [≥ 80%], background PSNR [≥ 25 dB],
              Direct − DDIM background PSNR [≥ 3 dB]; P2P with the model's recommended settings (invedit.json)
  editing_sd_p2p  the same with P2P's own SD-tuned defaults instead of the model's recommendations (not a default part)
  editing_options the same with ``--p2p-options`` over the model's recommendations (not a default part)
Results go to benchmarks/toy_quality.json and a table in benchmarks/toy_quality.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import invedit
from invedit.api import decode_latents, encode_image
from invedit.bench.data import load_benchmark
from invedit.editing.base import get_editor, reference_editor_options
from invedit.images import psnr
from invedit.models import model_editor_defaults
from invedit.toy.bench import write_toy_bench
from invedit.toy.generation import generate
from invedit.toy.metrics import (
    background_psnr,
    dominant_object,
    edit_succeeded,
)
from invedit.toy.scenes import BACKGROUNDS, COLORS, SHAPES, is_held_out, make_scene
from invedit.versions import versions

HERE = Path(__file__).parent
EVAL_SEED = 7_000_000  # scenes far from the training cache's seeds


def held_out_scenes(n: int, size: int) -> list:
    return [make_scene(EVAL_SEED + k, size=size) for k in range(n)]


def part_checks(pipe, n: int) -> dict:
    """Classifier accuracy on real one-object scenes and on their VAE reconstructions."""
    size = invedit.models.native_resolution(pipe)
    scenes = [make_scene(EVAL_SEED + 10_000 + k, size=size, n_objects=1) for k in range(n)]
    real = [dominant_object(s.image) for s in scenes]
    recon = [dominant_object(np.asarray(decode_latents(pipe, encode_image(pipe, Image.fromarray(s.image)))[0]))
             for s in scenes]
    truth = [(s.objects[0].color, s.objects[0].shape) for s in scenes]

    def acc(pred, k):
        return float(np.mean([p[k] == t[k] for p, t in zip(pred, truth)]))

    return {"n": n, "color_real": acc(real, 0), "shape_real": acc(real, 1), "color_vae": acc(recon, 0),
            "shape_vae": acc(recon, 1)}


def part_vae(pipe, n: int) -> dict:
    size = invedit.models.native_resolution(pipe)
    values = [psnr(decode_latents(pipe, encode_image(pipe, Image.fromarray(s.image)))[0], s.image)
              for s in held_out_scenes(n, size)]
    return {"n": n, "psnr_mean": float(np.mean(values)), "psnr_min": float(np.min(values))}


def part_generation(pipe, seed: int) -> dict:
    prompts, wanted = [], []
    for color in COLORS:
        for shape in SHAPES:
            for bg in BACKGROUNDS:
                prompts.append(f"a {color} {shape} on a {bg} background")
                wanted.append((color, shape, bg))
    images = generate(pipe, prompts, seed, batch=16)
    found = [dominant_object(im) for im in images]
    color_ok = [f[0] == w[0] for f, w in zip(found, wanted)]
    shape_ok = [f[1] == w[1] for f, w in zip(found, wanted)]
    from invedit.toy.scenes import SceneObject

    held = [is_held_out((SceneObject(w[1], w[0], 0, 0, 1),), w[2]) for w in wanted]
    grid = Image.new("RGB", (16 * 64, (len(images) + 15) // 16 * 64))
    for k, im in enumerate(images):
        grid.paste(Image.fromarray(im).resize((64, 64)), (k % 16 * 64, k // 16 * 64))
    grid.save(HERE / "toy_generation.png")
    return {"n": len(prompts), "color_accuracy": float(np.mean(color_ok)), "shape_accuracy": float(np.mean(shape_ok)),
            "held_out_n": int(np.sum(held)),
            "held_out_color_accuracy": float(np.mean([c for c, h in zip(color_ok, held) if h])),
            "held_out_shape_accuracy": float(np.mean([s for s, h in zip(shape_ok, held) if h])),
            "per_shape_accuracy": {s: float(np.mean([ok for ok, w in zip(shape_ok, wanted) if w[1] == s]))
                                   for s in SHAPES}}


def part_inversion(pipe, n: int) -> dict:
    size = invedit.models.native_resolution(pipe)
    values = []
    for scene in held_out_scenes(n, size):
        image = Image.fromarray(scene.image)
        result = invedit.edit(pipe, image, scene.caption, scene.caption, inversion="ddim", editor="none",
                              guidance_scale=1.0)
        round_trip = decode_latents(pipe, encode_image(pipe, image))[0]
        values.append(psnr(result.reconstruction, round_trip))
    return {"n": n, "psnr_mean": float(np.mean(values)), "psnr_min": float(np.min(values))}


def part_identity(pipe, n: int) -> dict:
    """Target prompt = source prompt with P2P: how far the edit is from the reconstruction and from the input.

    Direct Inversion as published corrects only the source branch, so its identity edit is not exactly the
    reconstruction; ``correct_target=True`` makes it so. DDIM's identity edit is its own (inexact) reconstruction.
    """
    size = invedit.models.native_resolution(pipe)
    rows: dict[str, dict[str, list]] = {}
    for scene in held_out_scenes(n, size):
        image = Image.fromarray(scene.image)
        round_trip = decode_latents(pipe, encode_image(pipe, image))[0]
        for name, method, options in (("direct", "direct", {}), ("direct+correct_target", "direct",
                                      {"correct_target": True}), ("ddim", "ddim", {})):
            result = invedit.edit(pipe, image, scene.caption, scene.caption, inversion=method,
                                  inversion_options=options)
            r = rows.setdefault(name, {"vs_reconstruction": [], "vs_vae_round_trip": []})
            r["vs_reconstruction"].append(psnr(result.image, result.reconstruction))
            r["vs_vae_round_trip"].append(psnr(result.image, round_trip))
    return {name: {"n": n, **{k: float(np.mean(v)) for k, v in r.items()}} for name, r in rows.items()}


def part_editing(pipe, per_kind: int, seed: int, kinds: set[str] | None = None, p2p_settings: str = "model",
                 options: dict | None = None, editors: tuple[str, ...] = ("p2p",), baseline: str = "ddim",
                 steps: int = 50, guidance: float = 7.5) -> dict:
    """Direct and ``baseline`` (the plain inversion: DDIM, or Euler on a flow model) with each of ``editors`` on
    toy-bench edits, PIE-Bench protocol (P2P: blend words where the item has them; the other editors take none;
    an editor that takes a mask, KV-Edit, is given the entry's true edit mask, as `invedit bench` gives it).

    ``p2p_settings``: "model" (its recommended settings), "editor" (P2P's SD-tuned defaults) or "options"
    (``options`` over the model's recommendations)."""
    overrides = {"editor": reference_editor_options(pipe, "p2p"), "options": options or {}}.get(p2p_settings, {})
    size = invedit.models.native_resolution(pipe)
    folder = Path(tempfile.mkdtemp()) / "toy-bench"
    try:
        write_toy_bench(folder, per_kind, seed=seed, size=size)
        mapping = json.loads((folder / "mapping_file.json").read_text())
        rows: dict[str, dict[str, list]] = {}
        for item in load_benchmark(folder):
            entry = mapping[item.id]
            kind = entry["toy_edit_kind"]
            if kinds and kind not in kinds:
                continue
            source = np.asarray(Image.open(item.image_path))
            truth = np.asarray(Image.open(folder / entry["target_image_path"]))
            mask = item.mask((size, size))
            for editor, method in ((e, m) for e in editors for m in ("direct", baseline)):
                extra = {**overrides, "blend_words": item.blend_words or None} if editor == "p2p" else {}
                if get_editor(editor).takes_mask:
                    extra["mask"] = mask
                result = invedit.edit(pipe, Image.fromarray(source), item.source_prompt, item.target_prompt,
                                      inversion=method, editor=editor, steps=steps, guidance_scale=guidance,
                                      **extra)
                edited = np.asarray(result.image)
                label = method if editors == ("p2p",) else f"{method}+{editor}"
                r = rows.setdefault(f"{label}/{kind}", {"bg": [], "gt": [], "ok": []})
                r["bg"].append(background_psnr(edited, source, mask) if (~mask).any() else float("nan"))
                r["gt"].append(psnr(edited, truth))
                ok = edit_succeeded(kind, item, edited, source, mask)
                if ok is not None:
                    r["ok"].append(ok)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)

    summary = {}
    for key, r in rows.items():
        bg = [v for v in r["bg"] if v == v]
        summary[key] = {"n": len(r["gt"]), "background_psnr": float(np.mean(bg)) if bg else float("nan"),
                        "psnr_vs_true_target": float(np.mean(r["gt"])),
                        "success": float(np.mean(r["ok"])) if r["ok"] else None}
    for key in [k for k in summary if k.startswith("direct")]:
        d, m = summary[key], summary[baseline + key[len("direct"):]]
        d[f"background_gain_over_{baseline}"] = d["background_psnr"] - m["background_psnr"]
    summary["p2p_settings"] = {"which": p2p_settings, "overrides": overrides,
                               "model_recommends": model_editor_defaults(pipe, "p2p")}
    return summary


def editing_table(editing: dict) -> list[str]:
    p = editing.get("p2p_settings", {})
    if any("+" in k for k in editing if "/" in k):
        which = "MasaCtrl, Plug-and-Play and Pix2Pix-Zero, each at its reference settings"
        return _editing_rows(editing, f"Editing ({which}")
    if p.get("which") == "editor":
        which = f"the editor's own SD-tuned defaults {json.dumps(p['overrides'])}"
    elif p.get("which") == "options":
        which = (f"the options {json.dumps(p['overrides'])} over the model's recommended settings "
                 f"{json.dumps(p.get('model_recommends', {}))}")
    else:
        which = f"the model's recommended settings {json.dumps(p.get('model_recommends', {}))}"
    return _editing_rows(editing, f"Editing (P2P with {which}")


def _editing_rows(editing: dict, title: str, baseline: str = "DDIM") -> list[str]:
    lines = ["", f"{title}; PIE-Bench protocol; background PSNR outside the edit mask vs the "
             "source; success: colour / shape = the target colour / shape recognised in the edit region, add = the "
             "new object's colour covers ≥ 40% of its area on the source's background (anywhere: prompts name no "
             "place), delete = the removed object's colour gone from its region):", "",
             f"| edit | method | n | background PSNR | PSNR vs true target | success | Direct − {baseline} bg |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted((k for k in editing if "/" in k), key=lambda k: (k.split("/")[1], k)):
        r = editing[key]
        method, kind = key.split("/")
        ok = "" if r["success"] is None else f"{r['success']:.0%}"
        gains = [v for k, v in r.items() if k.startswith("background_gain_over_")]
        gain = f"{gains[0]:+.2f} dB" if gains else ""
        lines.append(f"| {kind} | {method} | {r['n']} | {r['background_psnr']:.2f} | "
                     f"{r['psnr_vs_true_target']:.2f} | {ok} | {gain} |")
    return lines


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Embedded shapes model: quality", "", "Generated by `benchmarks/toy_quality.py` from `toy_quality.json` "
             f"({results['date']}, model `{results['model']}`, {results['seconds']:.0f} s).", ""]
    if "checks" in results:
        c = results["checks"]
        lines += [f"- Classifier checks on {c['n']} real one-object scenes: colour {c['color_real']:.0%}, shape "
                  f"{c['shape_real']:.0%}; on their VAE reconstructions: colour {c['color_vae']:.0%}, shape "
                  f"{c['shape_vae']:.0%}."]
    if "vae" in results:
        v = results["vae"]
        lines += [f"- VAE reconstruction: {v['psnr_mean']:.2f} dB mean (min {v['psnr_min']:.2f}) on {v['n']} "
                  "held-out scenes (target ≥ 28 dB)."]
    if "generation" in results:
        g = results["generation"]
        lines += [f"- Generation (DDIM 50, CFG 7.5, {g['n']} one-object prompts): colour {g['color_accuracy']:.1%} "
                  f"(target ≥ 95%), shape {g['shape_accuracy']:.1%} (target ≥ 70%); held-out combinations "
                  f"({g['held_out_n']}): colour {g['held_out_color_accuracy']:.0%}, shape "
                  f"{g['held_out_shape_accuracy']:.0%}; per shape "
                  + ", ".join(f"{k} {v:.0%}" for k, v in g["per_shape_accuracy"].items()) + "."]
    if "inversion" in results:
        i = results["inversion"]
        lines += [f"- DDIM inversion + regeneration at guidance 1 vs VAE reconstruction: {i['psnr_mean']:.2f} dB "
                  f"mean (min {i['psnr_min']:.2f}) on {i['n']} scenes (target ≥ 35 dB)."]
    if "identity" in results:
        lines += ["", "Identity edit (P2P, target prompt = source prompt), PSNR of the edit against:", "",
                  "| inversion | n | its reconstruction | the VAE round trip of the input |", "|---|---|---|---|"]
        for name, r in results["identity"].items():
            cells = [f"{v:.2f}" if np.isfinite(v) else "identical" for v in (r["vs_reconstruction"],
                                                                            r["vs_vae_round_trip"])]
            lines.append(f"| {name} | {r['n']} | {cells[0]} | {cells[1]} |")
    for part in ("editing", "editing_sd_p2p", "editing_options", "editing_editors"):
        if part in results:
            lines += editing_table(results[part])
    path.write_text("\n".join(lines) + "\n")


def merge_results(old: dict, new: dict) -> dict:
    """``old`` with ``new``'s parts; editing parts merge per method/kind (runs split by --kinds), seconds add up."""
    merged = {**old, **{k: v for k, v in new.items() if not k.startswith("editing") and k != "seconds"}}
    merged["seconds"] = old.get("seconds", 0.0) + new["seconds"]
    for part in (k for k in new if k.startswith("editing")):
        merged[part] = {**old.get(part, {}), **new[part]}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    parser.add_argument("--parts", default="checks,vae,generation,inversion,identity,editing")
    parser.add_argument("--n", type=int, default=64, help="scenes for checks/vae/inversion")
    parser.add_argument("--edits-per-kind", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=None, help="editing: comma list of edit kinds (default: all)")
    parser.add_argument("--p2p-options", default="{}", help="editing_options: P2P options as JSON, e.g. "
                        '\'{"self_replace_steps": 0.2, "cross_replace_steps": 0.2}\'')
    parser.add_argument("--out", type=Path, default=HERE / "toy_quality.json")
    parser.add_argument("--merge", action="store_true",
                        help="update the parts in an existing --out instead of replacing it (edit kinds merge too)")
    args = parser.parse_args()
    try:
        p2p_options = json.loads(args.p2p_options)
    except json.JSONDecodeError as e:
        parser.error(f"--p2p-options is not JSON: {e}")
    start = time.perf_counter()
    pipe = invedit.load(args.model, device="cpu", dtype="float32")
    parts = args.parts.split(",")
    results: dict = {"model": args.model or "embedded", "date": time.strftime("%Y-%m-%d"), "versions": versions()}
    kinds = set(args.kinds.split(",")) if args.kinds else None
    runners = {"checks": lambda: part_checks(pipe, args.n), "vae": lambda: part_vae(pipe, args.n),
               "generation": lambda: part_generation(pipe, args.seed),
               "inversion": lambda: part_inversion(pipe, args.n),
               "identity": lambda: part_identity(pipe, min(args.n, 32)),
               "editing": lambda: part_editing(pipe, args.edits_per_kind, args.seed, kinds),
               "editing_sd_p2p": lambda: part_editing(pipe, args.edits_per_kind, args.seed, kinds, "editor"),
               "editing_options": lambda: part_editing(pipe, args.edits_per_kind, args.seed, kinds, "options",
                                                       p2p_options),
               "editing_editors": lambda: part_editing(pipe, args.edits_per_kind, args.seed, kinds,
                                                       editors=("masactrl", "pnp", "pix2pix-zero"))}
    for part in parts:
        t = time.perf_counter()
        results[part] = runners[part]()
        print(part, f"{time.perf_counter() - t:.0f} s", json.dumps(results[part]), flush=True)
    results["seconds"] = time.perf_counter() - start
    if args.merge and args.out.exists():
        results = merge_results(json.loads(args.out.read_text()), results)
    args.out.write_text(json.dumps(results, indent=2))
    write_markdown(results, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
