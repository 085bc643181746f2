"""Write shapes-world edits as a PIE-Bench-format dataset (plus the true target images), for offline benchmarks."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..bench.data import EDIT_TYPES, IMAGES_DIR, MAPPING_FILE, rle_encode
from ..errors import InveditError
from .scenes import EDIT_KINDS, Edit, make_edit_example

#: Shapes-world edit kind → PIE-Bench editing_type_id.
KIND_TO_TYPE = {"shape": "1", "add": "2", "delete": "3", "color": "6", "background": "8"}
TARGETS_DIR = "target_images"


def bracketed_target(source: str, target: str) -> str:
    """Target prompt with the spans that differ from the source in ``[...]`` (PIE-Bench's editing_prompt)."""
    a, b = source.split(), target.split()
    out: list[str] = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        words = b[j1:j2]
        if not words:
            continue
        out.append(" ".join(words) if op == "equal" else "[" + " ".join(words) + "]")
    return " ".join(out)


def instruction(edit: Edit) -> str:
    """A plain-English editing instruction for ``edit``."""
    src, tgt = edit.source.objects, edit.target.objects
    if edit.kind == "color":
        changed = next(i for i, (a, b) in enumerate(zip(src, tgt)) if a != b)
        return f"Change the color of the {src[changed].shape} to {tgt[changed].color}"
    if edit.kind == "shape":
        changed = next(i for i, (a, b) in enumerate(zip(src, tgt)) if a != b)
        return f"Turn the {src[changed].phrase} into a {tgt[changed].shape}"
    if edit.kind == "background":
        return f"Change the background to {edit.target.background.kind}"
    if edit.kind == "add":
        return f"Add a {tgt[-1].phrase}"
    removed = next(o for o in src if o not in tgt)
    return f"Remove the {removed.phrase}"


def write_toy_bench(out_dir: str | Path, n_per_kind: int, seed: int = 0, size: int = 64) -> Path:
    """Write ``n_per_kind`` edits of each kind: images, true targets and ``mapping_file.json``.

    Ids are 12-digit; edit ``k`` of kind ``c`` uses seed ``seed·10⁶ + 10⁴·c + k`` so datasets are reproducible
    and extend without changing earlier items. Returns the folder.
    """
    if n_per_kind < 1:
        raise InveditError(f"--n must be at least 1, got {n_per_kind}")
    out = Path(out_dir)
    if (out / MAPPING_FILE).exists():
        raise InveditError(f"{out} already holds a dataset; choose an empty folder")
    mapping: dict[str, dict] = {}
    for c, kind in enumerate(EDIT_KINDS):
        type_id = KIND_TO_TYPE[kind]
        folder = f"{type_id}_{EDIT_TYPES[type_id].replace(' ', '_')}"
        for k in range(n_per_kind):
            item_seed = seed * 10**6 + 10**4 * c + k
            edit = make_edit_example(item_seed, kind, size=size)
            key = f"{int(type_id)}{c}{k:010d}"[-12:].rjust(12, "0")
            rel = f"{folder}/{key}.png"
            for sub, image in ((IMAGES_DIR, edit.source_image), (TARGETS_DIR, edit.target_image)):
                path = out / sub / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
            mapping[key] = {
                "image_path": rel, "original_prompt": edit.source_prompt,
                "editing_prompt": bracketed_target(edit.source_prompt, edit.target_prompt),
                "editing_instruction": instruction(edit), "editing_type_id": type_id,
                "blended_word": edit.blend_words, "mask": rle_encode(edit.mask),
                "target_image_path": f"{TARGETS_DIR}/{rel}", "toy_edit_kind": kind, "toy_seed": item_seed,
            }
    tmp = out / f".{MAPPING_FILE}.part"
    tmp.write_text(json.dumps(mapping, indent=1))
    os.replace(tmp, out / MAPPING_FILE)
    return out
