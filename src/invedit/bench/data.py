"""PIE-Bench data: `mapping_file.json` entries, run-length masks, and the edit-type table (reference-settings §6).

Layout: ``ROOT/mapping_file.json`` (a dict keyed by image id) and ``ROOT/annotation_images/<type>/…/<id>.jpg``.
Each entry has ``image_path`` (relative to ``annotation_images``), ``original_prompt``, ``editing_prompt`` (the
changed span in ``[...]``), ``editing_instruction``, ``editing_type_id`` ("0"…"9"), ``blended_word`` ("src tgt"
or "") and ``mask``: run-length pairs [start, length, …] over the row-major flattened grid, 1 = edit region.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InveditError
from ..outputs import path_inside

EDIT_TYPES: dict[str, str] = {
    "0": "random", "1": "change object", "2": "add object", "3": "delete object", "4": "change content",
    "5": "change pose", "6": "change color", "7": "change material", "8": "change background", "9": "change style",
}
MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
#: An entry id names the run's files (``edits/METHOD/ID.png``), so it must be a plain file name: PIE-Bench's are
#: 12 digits; letters, digits, ``_``, ``.`` and ``-`` are accepted, starting with a letter or digit, no ``..``.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_id(item_id: str) -> str:
    """``item_id`` if it is a safe file name (`SAFE_ID`, no ``..``).

    Raises:
        InveditError: anything else (a path, a separator, a control character, too long).
    """
    if not isinstance(item_id, str) or not SAFE_ID.fullmatch(item_id) or ".." in item_id:
        raise InveditError(f"entry id {shown_id(item_id)} is not a plain name (letters, digits, '_', '.', '-'; at most "
                           "128 characters; no '..'): ids name the run's files")
    return item_id


def shown_id(item_id: Any) -> str:
    """An id as it may be printed on one line (escaped, shortened)."""
    text = ascii(str(item_id))
    return text if len(text) <= 60 else text[:57] + "..."


def rle_encode(mask: np.ndarray) -> list[int]:
    """Run-length pairs [start, length, …] of the true cells of ``mask`` in row-major order."""
    flat = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def rle_decode(pairs: list[int], shape: tuple[int, int] = (512, 512), force_border: bool = False) -> np.ndarray:
    """Bool mask of ``shape`` from run-length pairs; ``force_border`` sets the 1-pixel border (reference quirk)."""
    if len(pairs) % 2:
        raise InveditError("mask run-length list has an odd number of values")
    length = shape[0] * shape[1]
    flat = np.zeros(length, dtype=bool)
    for start, run in zip(pairs[0::2], pairs[1::2]):
        if start < 0 or run < 0:
            raise InveditError(f"mask run ({start}, {run}) is negative")
        flat[start:min(start + run, length)] = True
    mask = flat.reshape(shape)
    if force_border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def strip_brackets(prompt: str) -> str:
    """PIE-Bench marks the edited span with brackets; prompts are used without them."""
    return " ".join(prompt.replace("[", "").replace("]", "").split())


@dataclass
class BenchItem:
    """One PIE-Bench edit."""

    id: str
    image_path: Path
    source_prompt: str
    target_prompt: str
    instruction: str
    edit_type: str
    blend_words: str
    mask_rle: list[int] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)  # how a quirk of the entry was read (goes into the record)

    @property
    def edit_type_name(self) -> str:
        return EDIT_TYPES.get(self.edit_type, self.edit_type)

    def mask(self, shape: tuple[int, int], force_border: bool = False) -> np.ndarray:
        """The edit-region mask (1 = edited) at ``shape``."""
        return rle_decode(self.mask_rle, shape, force_border)


REQUIRED = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


def load_benchmark(root: str | Path, edit_types: list[str] | None = None) -> list[BenchItem]:
    """Read a PIE-Bench-format folder; entries sorted by id, optionally only some edit types.

    Raises:
        InveditError: missing mapping file or images folder, malformed entries, missing images.
    """
    items, problems = read_benchmark(root, edit_types)
    if problems:
        raise InveditError(f"{Path(root) / MAPPING_FILE}: {problems[0][1]}")
    return items


def read_benchmark(root: str | Path, edit_types: list[str] | None = None) -> tuple[list[BenchItem],
                                                                                   list[tuple[str, str]]]:
    """Like `load_benchmark`, but a bad entry does not stop the reading: ``(good items, [(id, problem), …])``.

    Raises:
        InveditError: only for a folder that is not a benchmark at all (no or unreadable mapping file).
    """
    root = Path(root)
    mapping_path = root / MAPPING_FILE
    if not mapping_path.is_file():
        raise InveditError(f"{root} is not a PIE-Bench folder: no {MAPPING_FILE}")
    try:
        mapping = json.loads(mapping_path.read_text(), object_pairs_hook=_KeyedObject)
    except json.JSONDecodeError as exc:
        raise InveditError(f"{mapping_path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InveditError(f"cannot read {mapping_path}: {exc}") from None
    if not isinstance(mapping, dict):
        raise InveditError(f"{mapping_path} must hold a JSON object keyed by image id")
    items, problems = [], []
    for key in sorted(mapping):
        try:
            check_id(key)
        except InveditError as exc:  # reported under its escaped form: the id is no name to print or write
            problems.append((shown_id(key), str(exc)))
            continue
        try:
            if key in mapping.duplicated:
                raise InveditError(f"appears {mapping.duplicated[key]} times in {MAPPING_FILE}; keep one")
            item = _item(root, key, mapping[key])
        except InveditError as exc:
            problems.append((key, f"entry {key}: {exc}"))
            continue
        if edit_types is None or item.edit_type in edit_types:
            items.append(item)
    return items, problems


class _KeyedObject(dict):
    """A JSON object that remembers which keys it held more than once (``json.loads`` keeps only the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.duplicated: dict[str, int] = {}
        if len(self) != len(pairs):
            counts: dict[str, int] = {}
            for key, _ in pairs:
                counts[key] = counts.get(key, 0) + 1
            self.duplicated = {k: n for k, n in counts.items() if n > 1}


def dataset_file(root: Path, folder: str, relative: str) -> Path:
    """``root/folder/relative``, refused when it leaves ``root/folder`` (``..``, absolute, a link pointing out).

    Raises:
        InveditError: the path escapes, or names no file.
    """
    if "\x00" in relative:
        raise InveditError(f"path {relative!r} holds a NUL character")
    path = path_inside(root / folder, relative)
    if not path.is_file():
        raise InveditError(f"image {path} not found")
    return path


def _check_mask_grid(mask: list[int], image_path: Path) -> None:
    """Refuse runs that leave the image's grid (the reference would clip them silently, or read no mask at all)."""
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 (an unreadable image fails its edits, with the reader's own message)
        return
    cells = width * height
    for start, run in zip(mask[0::2], mask[1::2]):
        if start >= cells or start + run > cells:
            raise InveditError(f"mask run ({start}, {run}) runs past the {height}×{width} image grid "
                               f"({cells} cells)")


def _blend_notes(blend: str, source: str, target: str) -> list[str]:
    """Blend words that match their prompt's word only when case (or punctuation) is ignored: said in the record."""
    notes = []
    for word, prompt in zip(blend.split(), (source, target)):
        words = prompt.split()
        if word in words:
            continue
        folded = [w for w in words if re.sub(r"[^\w]", "", w.lower()) == re.sub(r"[^\w]", "", word.lower())]
        if folded:
            notes.append(f"blended_word {word!r} matched the prompt's {folded[0]!r} ignoring case and punctuation")
    return notes


def _item(root: Path, key: str, entry: Any) -> BenchItem:
    """One checked entry (prompts are strings, the mask a flat list of non-negative integer pairs)."""
    if not isinstance(entry, dict):
        raise InveditError("is not a JSON object")
    duplicated = sorted(getattr(entry, "duplicated", {}))
    if duplicated:
        raise InveditError(f"has field {duplicated[0]} more than once")
    missing = [f for f in REQUIRED if f not in entry]
    if missing:
        raise InveditError(f"lacks {', '.join(missing)}")
    for name in ("image_path", "original_prompt", "editing_prompt"):
        if not isinstance(entry[name], str):
            raise InveditError(f"{name} must be a string")
    mask = entry["mask"]
    if not isinstance(mask, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in mask):
        raise InveditError("mask must be a list of integers (run-length pairs)")
    if len(mask) % 2 or any(v < 0 for v in mask):
        raise InveditError("mask must hold non-negative (start, length) pairs")
    edit_type = entry["editing_type_id"]
    if isinstance(edit_type, bool) or str(edit_type) not in EDIT_TYPES:
        raise InveditError(f"editing_type_id {edit_type!r} is not one of PIE-Bench's 0–9")
    image_path = dataset_file(root, IMAGES_DIR, entry["image_path"])
    _check_mask_grid(mask, image_path)
    blend = entry.get("blended_word", "") or ""
    if not isinstance(blend, str):
        raise InveditError("blended_word must be a string")
    known = set(REQUIRED) | {"editing_instruction", "blended_word"}
    source, target = strip_brackets(entry["original_prompt"]), strip_brackets(entry["editing_prompt"])
    return BenchItem(
        id=key, image_path=image_path, source_prompt=source, target_prompt=target,
        instruction=str(entry.get("editing_instruction", "")), edit_type=str(edit_type), blend_words=blend,
        mask_rle=list(mask), extra={k: v for k, v in entry.items() if k not in known},
        notes=_blend_notes(blend, source, target),
    )
