"""Write shapes-world edits as a PIE-Bench-format dataset (plus the true target images), for offline benchmarks."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..bench.data import EDIT_TYPES, IMAGES_DIR, MAPPING_FILE, rle_encode
from ..errors import InveditError
from ..outputs import prepare_output_dir, remove_created, umask
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


MIN_SIZE, MAX_SIZE = 32, 1024


def write_toy_bench(out_dir: str | Path, n_per_kind: int, seed: int = 0, size: int = 64) -> Path:
    """Write ``n_per_kind`` edits of each kind: images, true targets and ``mapping_file.json``.

    Ids are 12-digit; edit ``k`` of kind ``c`` uses seed ``seed·10⁶ + 10⁴·c + k`` so datasets are reproducible
    and extend without changing earlier items. The dataset is built in a temporary sibling folder and renamed
    into place at the end, so an error or interrupt leaves nothing behind. Returns the folder.
    """
    if isinstance(n_per_kind, bool) or not isinstance(n_per_kind, int) or n_per_kind < 1:
        raise InveditError(f"--n must be a positive integer, got {n_per_kind!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InveditError(f"--size must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InveditError(f"--seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InveditError(f"{out} is a file; toy-bench writes a folder")
    if out.is_dir() and any(out.iterdir()):
        what = "already holds a dataset" if (out / MAPPING_FILE).exists() else "is not empty"
        raise InveditError(f"{out} {what}; choose a new or empty folder")
    if out.is_dir():  # an empty folder of the user's: stage inside it, keep the folder itself
        return _write_into_empty_folder(out, n_per_kind, seed, size)
    created = prepare_output_dir(out.parent, "the dataset")
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        _write_items(staging, n_per_kind, seed, size)
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it 0700
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created(created)
        raise
    return out


def _write_into_empty_folder(out: Path, n_per_kind: int, seed: int, size: int) -> Path:
    """Build in a hidden folder inside ``out``, then move its entries up, ``mapping_file.json`` last (a dataset
    exists once its mapping file does); on any error or interrupt everything written is removed again."""
    prepare_output_dir(out, "the dataset")
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".toy-bench.", suffix=".part"))
    moved: list[Path] = []
    try:
        _write_items(staging, n_per_kind, seed, size)
        for name in sorted(os.listdir(staging), key=lambda n: n == MAPPING_FILE):
            os.replace(staging / name, out / name)
            moved.append(out / name)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in moved:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    return out


def _write_items(out: Path, n_per_kind: int, seed: int, size: int) -> None:
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
    (out / MAPPING_FILE).write_text(json.dumps(mapping, indent=1))
