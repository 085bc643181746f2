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


def _png_header_only(path, width: int, height: int, bit_depth: int = 1, colour_type: int = 0):
    """A PNG whose header declares ``width``×``height`` (1-bit grey) with an empty image stream: Pillow reads the
    size at open, so this is what a decompression bomb looks like without building one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20000, 10000], ids=["bomb-error", "bomb-warning"])
def test_decompression_bombs_are_refused_in_one_line(tmp_path, side, recwarn):
    path = _png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(invedit.InveditError, match=rf"is too large \({side * side:,} pixels; .*downscale") as info:
        load_image(path, 64)
    assert "\n" not in str(info.value)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_real_1_bit_decompression_bomb_from_the_cli(tmp_path):
    """A 20000×20000 1-bit PNG (50 MB of pixels, a few kB on disk): one line, exit 2, before any model loads."""
    from typer.testing import CliRunner

    from invedit.cli import app

    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path, optimize=False)
    result = CliRunner().invoke(app, ["edit", str(path), "-s", "a red circle", "-t", "a blue circle"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: image {path} is too large (400,000,000 pixels; Pillow's limit against decompression bombs is "
        f"{Image.MAX_IMAGE_PIXELS:,}); downscale it first"]
