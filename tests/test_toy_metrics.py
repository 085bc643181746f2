"""The shapes-world measurements the quality benchmark judges edits with (invedit.toy.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from invedit.toy import scenes
from invedit.toy.metrics import color_pixels, majority_color, region_color
from invedit.toy.scenes import make_scene


def _grow(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_color_pixels_find_each_object_and_nothing_else(seed: int) -> None:
    scene = make_scene(seed)
    for obj, mask in zip(scene.objects, scene.masks, strict=True):
        found = color_pixels(scene.image, obj.color)
        assert (found & mask).sum() >= 0.9 * mask.sum()
        assert not (found & ~_grow(scene.object_mask)).any()  # nothing on the background
        assert (found & ~mask).sum() <= 0.1 * mask.sum()  # other objects: a few anti-aliased edge pixels at most
        assert region_color(scene.image, mask) == obj.color
    for absent in set(scenes.COLORS) - {o.color for o in scene.objects}:
        assert color_pixels(scene.image, absent).sum() <= 0.05 * scene.object_mask.sum()
    assert region_color(scene.image, ~_grow(scene.object_mask)) is None  # backgrounds are achromatic
    if len(scene.objects) == 1:
        assert majority_color(scene.image) == scene.objects[0].color
    assert majority_color(np.full_like(scene.image, 128)) is None


@pytest.mark.parametrize("seed", range(10))
def test_add_and_delete_success_holds_for_the_truth_and_fails_for_doing_nothing(seed: int) -> None:
    from invedit.toy.metrics import object_added, object_color, object_removed
    from invedit.toy.scenes import make_edit_example

    add = make_edit_example(seed, "add")
    color = object_color(add.target_prompt, add.blend_words.split()[1])
    assert color == add.target.objects[-1].color
    assert object_added(add.target.image, add.source.image, color, add.mask)
    assert not object_added(add.source.image, add.source.image, color, add.mask)

    delete = make_edit_example(seed, "delete")
    color = object_color(delete.source_prompt, delete.blend_words.split()[0])
    assert color not in {o.color for o in delete.target.objects}
    assert object_removed(delete.target.image, color, delete.mask)
    assert not object_removed(delete.source.image, color, delete.mask)
