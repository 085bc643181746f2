"""The procedural shapes world: determinism, masks, ground-truth edits, vocabulary/tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from invedit.toy import scenes
from invedit.toy.scenes import EDIT_KINDS, VOCABULARY, make_edit, make_edit_example, make_scene

SEEDS = range(12)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square."""
    padded = np.pad(mask, r)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    return ~dilate(~mask, r)


def chroma(image: np.ndarray) -> np.ndarray:
    return image.max(axis=-1).astype(int) - image.min(axis=-1).astype(int)


def test_same_seed_same_pixels() -> None:
    a, b = make_scene(123), make_scene(123)
    assert np.array_equal(a.image, b.image)
    assert a.caption == b.caption
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(make_scene(g1).image, make_scene(g2).image)
    assert np.array_equal(make_scene(g1).image, make_scene(g2).image)  # generators advance identically
    e1, e2 = make_edit_example(9, "shape"), make_edit_example(9, "shape")
    assert np.array_equal(e1.target_image, e2.target_image) and e1.target_prompt == e2.target_prompt


def test_different_seeds_differ() -> None:
    images = [make_scene(s).image for s in SEEDS]
    assert len({im.tobytes() for im in images}) == len(images)


@pytest.mark.parametrize("size", [64, 48])
def test_image_format(size: int) -> None:
    s = make_scene(3, size=size)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert all(m.shape == (size, size) and m.dtype == bool for m in s.masks)


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_match_objects(seed: int) -> None:
    s = make_scene(seed)
    assert len(s.masks) == len(s.objects) in (1, 2)
    for obj, m in zip(s.objects, s.masks, strict=True):
        assert m.sum() > 20
        inner = erode(m, 1)
        assert inner.any()
        diff = np.abs(s.image[inner].astype(int) - np.array(scenes.COLORS[obj.color])).max()
        assert diff <= 2, f"{obj}: interior pixel differs from its colour by {diff}"
    if len(s.masks) == 2:
        assert not (dilate(s.masks[0], 1) & s.masks[1]).any()  # objects do not touch
    # The background is grey: next to an object only faint anti-aliasing tints (thin star tips), then none.
    assert chroma(s.image)[~dilate(s.object_mask, 1)].max() <= 40 < min(chroma(np.array(list(scenes.COLORS.values()))))
    assert chroma(s.image)[~dilate(s.object_mask, 2)].max() <= 2


def test_objects_are_distinct_in_colour_and_shape() -> None:
    for seed in range(40):
        s = make_scene(seed, n_objects=2)
        assert len({o.color for o in s.objects}) == 2 and len({o.shape for o in s.objects}) == 2


def test_held_out_combinations_can_be_excluded() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = make_scene(rng, include_held_out=False)
        assert not scenes.is_held_out(s.objects, s.background.kind)
    assert scenes.is_held_out((scenes.SceneObject("star", "purple", 30, 30, 10),), "gray")
    assert scenes.is_held_out((scenes.SceneObject("triangle", "orange", 30, 30, 10),), "dotted")
    assert not scenes.is_held_out((scenes.SceneObject("triangle", "orange", 30, 30, 10),), "gray")


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_edit_changes_only_inside_mask(kind: str, seed: int) -> None:
    e = make_edit_example(seed, kind)
    assert e.kind == kind and e.mask.dtype == bool and e.mask.any()
    src, tgt = e.source_image.astype(int), e.target_image.astype(int)
    changed = np.abs(src - tgt).max(axis=-1) > 2
    assert not (changed & ~dilate(e.mask, 2)).any(), "pixels changed outside the (dilated) edit mask"
    if kind in ("color", "add", "delete"):
        assert changed[erode(e.mask, 1)].mean() > 0.9  # the whole object changes
    else:
        assert changed[e.mask].any()  # same-colour overlap of the two shapes / grey levels may coincide
    assert e.source_prompt == e.source.caption and e.target_prompt == e.target.caption
    assert e.source_prompt != e.target_prompt


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_edit_prompts_and_blend_words(kind: str, seed: int) -> None:
    e = make_edit_example(seed, kind)
    src, tgt = e.source_prompt.split(), e.target_prompt.split()
    if kind in ("color", "shape", "background"):
        src_word, tgt_word = e.blend_words.split()
        assert src_word in src and tgt_word in tgt and src_word != tgt_word
        assert len(src) == len(tgt)
        assert [(a, b) for a, b in zip(src, tgt, strict=True) if a != b] == [(src_word, tgt_word)]
    else:
        longer, shorter = (tgt, src) if kind == "add" else (src, tgt)
        assert len(longer) == len(shorter) + 4  # "and a <colour> <shape>" inserted / removed
        obj = e.target.objects[-1] if kind == "add" else next(o for o in e.source.objects
                                                                if o not in e.target.objects)
        assert obj.color in longer and obj.shape in longer and obj.shape not in shorter
        assert e.blend_words == f"{obj.shape} {obj.shape}"  # named in one prompt only: its map comes from there
        assert longer.count(obj.shape) == 1  # and it names that object alone
    if kind == "color":
        assert tgt_word in scenes.COLORS
    elif kind == "shape":
        assert tgt_word in scenes.SHAPES
    elif kind == "background":
        assert tgt_word == e.target.background.kind


def test_edit_keeps_everything_else_fixed() -> None:
    e = make_edit_example(4, "color")
    (i,) = [k for k, (a, b) in enumerate(zip(e.source.objects, e.target.objects, strict=True)) if a != b]
    a, b = e.source.objects[i], e.target.objects[i]
    assert (a.shape, a.cx, a.cy, a.r, a.angle) == (b.shape, b.cx, b.cy, b.r, b.angle)
    assert e.source.background == e.target.background


def test_edit_kind_must_fit_scene() -> None:
    one, two = make_scene(1, n_objects=1), make_scene(1, n_objects=2)
    with pytest.raises(ValueError):
        make_edit(one, "delete", 0)
    with pytest.raises(ValueError):
        make_edit(two, "add", 0)
    assert "add" in scenes.edit_kinds_for(one) and "delete" in scenes.edit_kinds_for(two)


def test_captions_use_vocabulary_single_tokens(tmp_path) -> None:
    from invedit.word_tokenizer import build_word_tokenizer

    assert all(w.isascii() and w.isalpha() and w.islower() for w in VOCABULARY)
    tok = build_word_tokenizer(VOCABULARY, tmp_path)
    for w in VOCABULARY:
        assert len(tok(w).input_ids) == 3  # bos, word, eos
    prompts = []
    for seed in range(20):
        e = make_edit_example(seed)
        prompts += [e.source_prompt, e.target_prompt]
    for p in prompts:
        words = p.split()
        assert set(words) <= set(VOCABULARY)
        assert len(tok(p).input_ids) == len(words) + 2
