"""Where the object words' image→text attention lands while the embedded flow model edits a two-object scene.

    python benchmarks/flow_binding_maps.py                 # the demo's edit and the next two-object colour edits
    python benchmarks/flow_binding_maps.py --seeds 0,2,3

For each colour edit (`invedit.toy.scenes.make_edit_example`, the seeds the demo uses), Direct inversion and an edit
with shared attention at the model's recommended settings (CFG 2, 28 steps): per branch (the source row under the
source prompt, the target row under the target prompt, both conditional), per object word (colours and shapes), the
share of the word's image→text attention (the joint blocks' image queries over the prompt's keys, heads and blocks
averaged) that falls on each object's tokens, at a few steps. A word bound to the right object puts its mass on that
object. Results go to benchmarks/flow_binding_maps.md (and .json).
"""

from __future__ import annotations

import argparse
import json
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


class MapRecorder:
    """Image→text attention of one joint block, rebuilt from its projections (SD 3: no rotary embedding) with forward
    hooks, so it stays out of the way of the editor's own hooks and processors; appends (rows, image tokens, prompt
    tokens), heads averaged, to ``store`` after each call of the block's attention."""

    def __init__(self, attn, store: list[torch.Tensor]) -> None:
        self.attn, self.store, self.seen = attn, store, {}
        self.handles = [getattr(attn, name).register_forward_hook(self._keep(name))
                        for name in ("to_q", "to_k", "add_k_proj")]
        self.handles.append(attn.register_forward_hook(self._record))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _keep(self, name: str):
        def hook(module, args, output):
            self.seen[name] = output.detach()
        return hook

    def _record(self, module, args, output) -> None:
        a = self.attn
        q, k, text_k = self.seen["to_q"], self.seen["to_k"], self.seen["add_k_proj"]
        rows, n_img, width = q.shape
        heads = a.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(rows, -1, heads, width // heads).transpose(1, 2)

        q, k, text_k = split(q), split(k), split(text_k)
        if a.norm_q is not None:
            q, k = a.norm_q(q), a.norm_k(k)
        if a.norm_added_k is not None:
            text_k = a.norm_added_k(text_k)
        probs = (q @ torch.cat([k, text_k], 2).transpose(-1, -2) * a.scale).softmax(-1)
        self.store.append(probs[..., n_img:].mean(1))


def token_shares(mask: np.ndarray, grid: int) -> torch.Tensor:
    """The share of each image token's pixels that ``mask`` covers, flattened (grid²,)."""
    cell = mask.shape[0] // grid
    return torch.from_numpy(mask.reshape(grid, cell, grid, cell).mean((1, 3)).ravel()).float()


def word_positions(tokenizer, prompt: str) -> dict[str, int]:
    ids = tokenizer(prompt).input_ids
    words = [tokenizer.convert_ids_to_tokens(i).removesuffix("</w>") for i in ids]
    return {w: k for k, w in enumerate(words) if w in COLORS or w in SHAPES}


def one_edit(pipe, seed: int, steps: int, guidance: float) -> dict:
    edit = make_edit_example(seed, "color")
    store: list[torch.Tensor] = []
    blocks = pipe.transformer.transformer_blocks
    inverted = invedit.invert(pipe, Image.fromarray(edit.source_image), edit.source_prompt, "direct", steps=steps)
    recorders = [MapRecorder(block.attn, store) for block in blocks]
    try:
        result = invedit.edit(pipe, inverted, None, edit.target_prompt, editor="shared-attention",
                              guidance_scale=guidance)
    finally:
        for recorder in recorders:
            recorder.remove()
    maps = torch.stack(store)  # (steps · blocks, rows, image tokens, prompt tokens)
    maps = maps.view(-1, len(blocks), *maps.shape[1:]).mean(1)
    if maps.shape[0] != steps or maps.shape[1] != len(ROW_ORDER):
        raise SystemExit(f"error: expected {steps} steps of 4 rows, recorded {tuple(maps.shape[:2])}")
    grid = int(maps.shape[2] ** 0.5)
    objects = {o.shape: token_shares(m, grid) for o, m in zip(edit.source.objects, edit.source.masks)}
    out: dict = {"seed": seed, "source_prompt": edit.source_prompt, "target_prompt": edit.target_prompt,
                 "objects": [f"{o.color} {o.shape}" for o in edit.source.objects], "shares": {}}
    for branch, prompt in (("source", edit.source_prompt), ("target", edit.target_prompt)):
        for word, pos in word_positions(pipe.tokenizer, prompt).items():
            rows = {}
            for step in (s for s in SHOWN_STEPS if s < steps):
                m = maps[step, ROWS[branch], :, pos]
                m = m / m.sum()
                rows[step] = {shape: round(float((m * share).sum()), 2) for shape, share in objects.items()}
            out["shares"][f"{branch} {word}"] = rows
    wanted = edit.blend_words.split()[1]
    out["reached"] = region_color(np.asarray(result.image), edit.mask & edit.target.object_mask) == wanted
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
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-flow")
    parser.add_argument("--seeds", default="0,2,3", help="colour edits of make_edit_example (two objects each)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=HERE / "flow_binding_maps.json")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)  # the results do not depend on it
    pipe = invedit.load(args.model, device="cpu", dtype="float32")
    edits = [one_edit(pipe, int(s), args.steps, args.guidance) for s in args.seeds.split(",")]
    results = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "versions": versions(), "steps": args.steps,
               "guidance": args.guidance, "edits": edits, "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
