"""Image loading (centre crop + resize like the reference's load_512) and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import invedit
from invedit.images import load_image, tensor_to_uint8


def test_center_crop_then_resize(tmp_path):
    wide = np.zeros((40, 100, 3), dtype=np.uint8)
    wide[:, 30:70] = 255  # the central 40×40 square is white
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    out = np.asarray(load_image(path, 80))
    assert out.shape == (80, 80, 3) and out.min() >= 250
    tall = Image.fromarray(np.zeros((100, 40, 3), dtype=np.uint8))
    assert load_image(tall, 64).size == (64, 64)


def test_grey_and_opaque_rgba_convert(tmp_path):
    grey = Image.new("L", (50, 50), 128)
    assert load_image(grey, 64).mode == "RGB"
    rgba = Image.new("RGBA", (50, 50), (10, 20, 30, 255))
    assert np.asarray(load_image(rgba, 50))[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "none.png", "not found"),
    (lambda p: (p / "x.png").write_bytes(b"\x89PNG broken") and p / "x.png", "cannot read"),
    (lambda p: p, "is a folder"),
])
def test_file_errors(tmp_path, make, message):
    with pytest.raises(invedit.InveditError, match=message):
        load_image(make(tmp_path), 64)


def test_decode_convention_truncates():
    import torch

    x = torch.tensor([[-1.0, 0.0, 0.999, 2.0]]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = tensor_to_uint8(x)[0, ..., 0]
    assert out.tolist() == [[0, 127], [254, 255]]  # (x/2+0.5)·255, clamped, truncated
