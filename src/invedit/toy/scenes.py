"""Procedural "shapes world": seeded scenes of coloured shapes on grey patterned backgrounds.

A scene holds one or two non-overlapping objects (circle, square, triangle, star in six saturated colours)
on one of four achromatic backgrounds (gray, striped, dotted, checkered), rendered anti-aliased
(supersampled, then box-downsampled), with a plain-English caption and a boolean mask per object.
`make_edit` renders ground-truth edits (change colour, change shape, change background, add object,
delete object) with everything else fixed, PIE-Bench style: source/target prompt, blend words, edit mask,
source and true target image. Everything is a pure function of the seed (numpy + Pillow only).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 50, 195),
    "orange": (245, 130, 20),
}
BACKGROUNDS: tuple[str, ...] = ("gray", "striped", "dotted", "checkered")
EDIT_KINDS: tuple[str, ...] = ("color", "shape", "background", "add", "delete")
VOCABULARY: tuple[str, ...] = ("a", "and", "on", "background", *COLORS, *SHAPES, *BACKGROUNDS)

#: Combinations never shown in training (generalisation probes): any purple star, and an orange triangle
#: on a dotted background. Entries are (colour, shape, background); ``None`` matches anything.
HELD_OUT: tuple[tuple[str | None, str | None, str | None], ...] = (
    ("purple", "star", None),
    ("orange", "triangle", "dotted"),
)

SUPERSAMPLE = 4
EXTENT = 1.25  # every shape fits in a disc of radius EXTENT * r around its centre (placement uses this)
_SINGLE_R = (8.0, 15.0)  # object "radius" range on a 64-px canvas, one object
_PAIR_R = (6.5, 12.0)  # ... two objects
_GAP = 1.5  # minimum gap (px at 64) between the bounding discs of two objects


@dataclass(frozen=True)
class SceneObject:
    """One object; geometry in pixels of a 64-px canvas (scaled for other sizes)."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float
    angle: float = 0.0  # rotation in degrees

    @property
    def phrase(self) -> str:
        """``"red circle"``."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    """Background kind plus the seed of its pattern parameters (period, phase, grey levels)."""

    kind: str
    pattern_seed: int


@dataclass
class Scene:
    """A rendered scene: spec (objects, background), uint8 HxWx3 image, per-object masks, caption."""

    objects: tuple[SceneObject, ...]
    background: Background
    size: int
    image: np.ndarray = field(repr=False)
    masks: list[np.ndarray] = field(repr=False)
    caption: str = ""

    @property
    def words(self) -> list[str]:
        """Caption words."""
        return self.caption.split()

    @property
    def object_mask(self) -> np.ndarray:
        """Union of the object masks (bool HxW)."""
        out = np.zeros((self.size, self.size), dtype=bool)
        for m in self.masks:
            out |= m
        return out


@dataclass
class Edit:
    """A ground-truth edit: both scenes, prompts, blend words ``"SRC TGT"`` and edit mask."""

    kind: str
    source: Scene
    target: Scene
    source_prompt: str
    target_prompt: str
    blend_words: str
    mask: np.ndarray = field(repr=False)

    @property
    def source_image(self) -> np.ndarray:
        return self.source.image

    @property
    def target_image(self) -> np.ndarray:
        return self.target.image


def caption_for(objects: tuple[SceneObject, ...], background: str) -> str:
    """``"a red circle and a blue star on a striped background"``."""
    return " and ".join(f"a {o.phrase}" for o in objects) + f" on a {background} background"


def is_held_out(objects: tuple[SceneObject, ...], background: str) -> bool:
    """True when the scene shows a held-out (colour, shape, background) combination."""
    for o in objects:
        for color, shape, bg in HELD_OUT:
            if color in (None, o.color) and shape in (None, o.shape) and bg in (None, background):
                return True
    return False


# ----------------------------------------------------------------------------------------------- rendering


def _grid(n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (in 64-px-canvas units) of an n x n supersampled grid."""
    c = (np.arange(n, dtype=np.float64) + 0.5) / scale
    return np.meshgrid(c, c, indexing="ij")  # yy, xx


def _render_background(bg: Background, n: int, scale: float) -> np.ndarray:
    """Grey-level float image (n x n, values 0..255) of the background pattern."""
    rng = np.random.default_rng(bg.pattern_seed)
    yy, xx = _grid(n, scale)
    if bg.kind == "gray":
        return np.full((n, n), rng.uniform(105, 150))
    if bg.kind == "striped":
        light, dark = rng.uniform(200, 235), rng.uniform(135, 165)
        width, phase = rng.uniform(2.5, 5.0), rng.uniform(0, 10)
        orient = int(rng.integers(3))
        coord = (yy, xx, (xx + yy) / math.sqrt(2))[orient]
        return np.where(np.floor((coord + phase) / width) % 2 == 0, light, dark)
    if bg.kind == "dotted":
        base, dot = rng.uniform(195, 235), rng.uniform(55, 95)
        spacing, radius = rng.uniform(5.0, 7.5), rng.uniform(1.0, 1.6)
        py, px = rng.uniform(0, spacing, size=2)
        dy = (yy + py) % spacing - spacing / 2
        dx = (xx + px) % spacing - spacing / 2
        return np.where(dy * dy + dx * dx <= radius * radius, dot, base)
    if bg.kind == "checkered":
        light, dark = rng.uniform(190, 230), rng.uniform(85, 125)
        cell = rng.uniform(4.0, 7.5)
        py, px = rng.uniform(0, cell, size=2)
        parity = (np.floor((yy + py) / cell) + np.floor((xx + px) / cell)) % 2
        return np.where(parity == 0, light, dark)
    raise ValueError(f"unknown background {bg.kind!r}")


def _polygon(obj: SceneObject, scale: float) -> list[tuple[float, float]] | None:
    """Vertices (supersampled pixel coords) of a polygonal shape; None for a circle."""
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        radii, start, count = [r * 0.9 * math.sqrt(2)], 45.0, 4
    elif obj.shape == "triangle":
        radii, start, count = [r * EXTENT], -90.0, 3
    elif obj.shape == "star":
        radii, start, count = [r * EXTENT, r * EXTENT * 0.45], -90.0, 10
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    pts = []
    for k in range(count):
        a = math.radians(start + obj.angle + 360.0 * k / count)
        rad = radii[k % len(radii)]
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _render_object_mask(obj: SceneObject, n: int, scale: float) -> np.ndarray:
    """Supersampled boolean mask (n x n) of one object."""
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    pts = _polygon(obj, scale)
    if pts is None:
        cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(pts, fill=255)
    return np.asarray(canvas) > 127


def render(objects: tuple[SceneObject, ...], background: Background, size: int = 64) -> Scene:
    """Render a scene spec at ``size`` x ``size`` (anti-aliased by 4x supersampling)."""
    n = size * SUPERSAMPLE
    scale = n / 64.0
    grey = _render_background(background, n, scale)
    img = np.repeat(grey[..., None], 3, axis=2)
    hi_masks = []
    for obj in objects:
        m = _render_object_mask(obj, n, scale)
        img[m] = COLORS[obj.color]
        hi_masks.append(m)
    s = SUPERSAMPLE
    low = img.reshape(size, s, size, s, 3).mean(axis=(1, 3))
    image = np.clip(np.rint(low), 0, 255).astype(np.uint8)
    masks = [m.reshape(size, s, size, s).mean(axis=(1, 3)) >= 0.5 for m in hi_masks]
    return Scene(tuple(objects), background, size, image, masks, caption_for(tuple(objects), background.kind))


# ----------------------------------------------------------------------------------------------- sampling


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _fits(cx: float, cy: float, r: float, others: list[SceneObject]) -> bool:
    """Inside the 64-px canvas and clear of ``others`` (bounding discs)."""
    ext = EXTENT * r
    if min(cx, cy) < ext + 0.5 or max(cx, cy) > 64 - ext - 0.5:
        return False
    return all(math.hypot(cx - o.cx, cy - o.cy) >= ext + EXTENT * o.r + _GAP for o in others)


def _place(rng: np.random.Generator, shape: str, color: str, r_range: tuple[float, float],
           others: list[SceneObject]) -> SceneObject:
    """Sample a position/size for a new object clear of ``others`` (shrinks the size if it must)."""
    lo, hi = r_range
    for attempt in range(2000):
        r = rng.uniform(lo, hi if attempt < 500 else lo + (hi - lo) * 0.25)
        ext = EXTENT * r + 0.5
        cx, cy = rng.uniform(ext, 64 - ext, size=2)
        if _fits(cx, cy, r, others):
            angle = float(rng.uniform(-12, 12)) if shape != "circle" else 0.0
            return SceneObject(shape, color, float(cx), float(cy), float(r), angle)
    raise RuntimeError("could not place object")  # pragma: no cover - geometry makes this unreachable


def _new_background(rng: np.random.Generator, kind: str | None = None) -> Background:
    kind = kind or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Background(kind, int(rng.integers(2**31)))


def make_scene(seed: int | np.random.Generator, size: int = 64, n_objects: int | None = None,
               include_held_out: bool = True) -> Scene:
    """A random scene.

    Args:
        seed: int seed or a numpy Generator (advanced in place).
        size: output resolution (square).
        n_objects: 1 or 2; random (50/50) when None.
        include_held_out: when False, resample until the scene shows no `HELD_OUT` combination.
    Returns:
        The rendered `Scene`. Two objects always differ in both colour and shape and never overlap.
    """
    rng = _rng(seed)
    while True:
        n = int(n_objects or rng.integers(1, 3))
        if n not in (1, 2):
            raise ValueError("n_objects must be 1 or 2")
        shapes = rng.choice(len(SHAPES), size=n, replace=False)
        colors = rng.choice(len(COLORS), size=n, replace=False)
        names = list(COLORS)
        objs: list[SceneObject] = []
        for s, c in zip(shapes, colors):
            objs.append(_place(rng, SHAPES[s], names[c], _SINGLE_R if n == 1 else _PAIR_R, objs))
        bg = _new_background(rng)
        if include_held_out or not is_held_out(tuple(objs), bg.kind):
            return render(tuple(objs), bg, size)


# ----------------------------------------------------------------------------------------------- edits


def edit_kinds_for(scene: Scene) -> tuple[str, ...]:
    """Edit kinds applicable to ``scene`` (add needs one object, delete needs two)."""
    return tuple(k for k in EDIT_KINDS if not (k == "add" and len(scene.objects) > 1)
                 and not (k == "delete" and len(scene.objects) < 2))


def make_edit(scene: Scene, kind: str, seed: int | np.random.Generator,
              include_held_out: bool = True) -> Edit:
    """A ground-truth edit of ``scene``; everything not edited stays fixed.

    Blend words are ``"SRC TGT"`` (one word each, PIE-Bench style): ``"red blue"`` for colour,
    ``"circle star"`` for shape, ``"striped dotted"`` for background; for add/delete the added or removed
    object's shape word twice (``"star star"``: named in one prompt only, its map is read from that prompt;
    two objects never share a shape, so the word names that object alone). The edit mask is the union of the changed
    object's masks before and after; for a background change it is the background region.
    """
    rng = _rng(seed)
    objs = list(scene.objects)
    bg = scene.background
    if kind not in edit_kinds_for(scene):
        raise ValueError(f"edit {kind!r} does not apply to a scene with {len(objs)} object(s)")
    for _ in range(1000):
        new_objs, new_bg, blend = list(objs), bg, ""
        i = int(rng.integers(len(objs)))
        if kind == "color":
            used = {o.color for o in objs}
            color = str(rng.choice([c for c in COLORS if c not in used]))
            new_objs[i] = dataclasses.replace(objs[i], color=color)
            blend = f"{objs[i].color} {color}"
        elif kind == "shape":
            used = {o.shape for o in objs}
            shape = str(rng.choice([s for s in SHAPES if s not in used]))
            angle = float(rng.uniform(-12, 12)) if shape != "circle" else 0.0
            new_objs[i] = dataclasses.replace(objs[i], shape=shape, angle=angle)
            blend = f"{objs[i].shape} {shape}"
        elif kind == "background":
            new_bg = _new_background(rng, str(rng.choice([b for b in BACKGROUNDS if b != bg.kind])))
            blend = f"{bg.kind} {new_bg.kind}"
        elif kind == "add":
            shape = str(rng.choice([s for s in SHAPES if s != objs[0].shape]))
            color = str(rng.choice([c for c in COLORS if c != objs[0].color]))
            new_objs.append(_place(rng, shape, color, _PAIR_R, objs))
            blend = f"{shape} {shape}"
        elif kind == "delete":
            del new_objs[i]
            blend = f"{objs[i].shape} {objs[i].shape}"
        else:  # pragma: no cover - guarded above
            raise ValueError(kind)
        if include_held_out or not is_held_out(tuple(new_objs), new_bg.kind):
            break
    else:
        raise RuntimeError("no edit avoids the held-out combinations")
    target = render(tuple(new_objs), new_bg, scene.size)
    if kind == "background":
        mask = ~(scene.object_mask | target.object_mask)
    elif kind in ("color", "shape"):
        mask = scene.masks[i] | target.masks[i]
    elif kind == "add":
        mask = target.masks[-1].copy()
    else:
        mask = scene.masks[i].copy()
    return Edit(kind, scene, target, scene.caption, target.caption, blend, mask)


def make_edit_example(seed: int, kind: str | None = None, size: int = 64,
                      include_held_out: bool = True) -> Edit:
    """A scene and an edit of it from one seed; ``kind`` random when None (scene made compatible)."""
    rng = np.random.default_rng(seed)
    kind = kind or EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
    n_objects = {"add": 1, "delete": 2}.get(kind)
    scene = make_scene(rng, size=size, n_objects=n_objects, include_held_out=include_held_out)
    return make_edit(scene, kind, rng, include_held_out=include_held_out)
