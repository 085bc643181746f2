"""One shapes-world edit by every editor with DDIM and with Direct Inversion, side by side (docs/images/editors.png).

    python benchmarks/editors_picture.py [--seed 3] [--kind color] [--out docs/images/editors.png]

Two rows (DDIM, Direct), one column per editor at its reference settings, plus the source, the true target and
each row's reconstruction; the embedded model, 50 steps, CFG 7.5. Prints background PSNR and PSNR against the
true target for each panel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import invedit
from invedit.images import psnr
from invedit.toy.metrics import background_psnr
from invedit.toy.scenes import make_edit_example

HERE = Path(__file__).parent
EDITORS = ("p2p", "masactrl", "pnp", "pix2pix-zero")
PANEL = 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--kind", default="color")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images" / "editors.png")
    args = parser.parse_args()
    pipe = invedit.load(None, device="cpu", dtype="float32")
    edit = make_edit_example(args.seed, args.kind)
    source = Image.fromarray(edit.source_image)
    columns = ["source", *EDITORS, "true target"]
    sheet = Image.new("RGB", (PANEL * len(columns) + 60, 2 * PANEL + 40), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"{edit.source_prompt}  ->  {edit.target_prompt}", fill="black")
    for c, name in enumerate(columns):
        draw.text((60 + c * PANEL + 4, 20), name, fill="black")
    for r, inversion in enumerate(("ddim", "direct")):
        y = 36 + r * PANEL
        draw.text((4, y + PANEL // 2), inversion, fill="black")
        for c, name in enumerate(columns):
            if name == "source":
                image = source
            elif name == "true target":
                image = Image.fromarray(edit.target_image)
            else:
                extra = {"blend_words": edit.blend_words} if name == "p2p" and edit.blend_words else {}
                result = invedit.edit(pipe, source, edit.source_prompt, edit.target_prompt, inversion=inversion,
                                      editor=name, **extra)
                image = result.image
                edited = np.asarray(image)
                print(f"{inversion}+{name}: background {background_psnr(edited, edit.source_image, edit.mask):.1f} dB,"
                      f" vs true target {psnr(edited, edit.target_image):.1f} dB, NFE {result.nfe}")
            sheet.paste(image.resize((PANEL, PANEL), Image.Resampling.NEAREST), (60 + c * PANEL, y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
