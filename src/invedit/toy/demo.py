"""`invedit demo`: one shapes-world edit with the model's plain inversion and Direct Inversion under the same editor
(DDIM+P2P and Direct+P2P on a UNet model, Euler+shared attention and Direct+shared attention on a flow model), a
labelled side-by-side and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..images import psnr
from .metrics import background_psnr, region_color
from .scenes import Edit

PANEL = 192  # pixels per panel in the side-by-side


@dataclass
class MethodOutcome:
    name: str
    image: Image.Image
    reconstruction: Image.Image
    nfe: int
    seconds: float


def side_by_side(panels: list[tuple[str, Image.Image]], path: Path, title: str = "") -> Path:
    """Labelled panels in one row (nearest-neighbour upscaled so small images stay crisp)."""
    label_h, title_h = 18, 18 if title else 0
    sheet = Image.new("RGB", (PANEL * len(panels), PANEL + label_h + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0))
    for k, (label, image) in enumerate(panels):
        sheet.paste(image.convert("RGB").resize((PANEL, PANEL), Image.Resampling.NEAREST), (k * PANEL,
                                                                                          title_h + label_h))
        draw.text((k * PANEL + 4, title_h + 3), label, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def edit_metrics(edit: Edit | None, outcome: MethodOutcome, source: np.ndarray) -> dict[str, object]:
    """Ground-truth metrics of one edited image (when the edit is a shapes-world edit with a true target)."""
    out: dict[str, object] = {"nfe": outcome.nfe, "seconds": round(outcome.seconds, 2),
                              "reconstruction_psnr": round(psnr(outcome.reconstruction, source), 2)}
    if edit is None:
        return out
    edited = np.asarray(outcome.image)
    out["psnr_vs_true_target"] = round(psnr(edited, edit.target_image), 2)
    out["background_psnr"] = round(background_psnr(edited, source, edit.mask), 2)
    if edit.kind == "color":
        wanted = edit.blend_words.split()[1]
        got = region_color(edited, edit.mask & edit.target.object_mask)
        out["color"] = f"{got} (wanted {wanted})"
    return out


#: What the demo compares, by the model's schedule kind: (label, inversion, editor), the plain inversion first.
DEMO_METHODS = {"ddim": (("DDIM+P2P", "ddim", "p2p"), ("Direct+P2P", "direct", "p2p")),
                "flow": (("Euler+SA", "euler", "shared-attention"), ("Direct+SA", "direct", "shared-attention"))}


def run_demo(pipe, edit: Edit | None, image: Image.Image, source_prompt: str, target_prompt: str,
             blend: str | None, steps: int | None, seed: int, out: Path,
             progress: bool) -> tuple[Path, dict[str, dict]]:
    """Run the model's `DEMO_METHODS` on one image (``blend``: P2P's LocalBlend words, ignored by other editors) at
    the model's recommended guidance and ``steps`` (None: its recommended steps too; the paper's 7.5 and 50 for a
    model that recommends none; the embedded flow model recommends 2 and 28, docs/embedded-model.md); write the
    side-by-side; return it and the metrics."""
    from ..api import edit as run_edit
    from ..backbones import backbone

    outcomes = []
    kind = backbone(pipe).schedule_kind
    methods = DEMO_METHODS[kind]
    for name, inversion, editor in methods:
        start = time.perf_counter()
        options = {"blend_words": blend} if editor == "p2p" else {}
        result = run_edit(pipe, image, source_prompt, target_prompt, inversion=inversion, editor=editor,
                          steps=steps, seed=seed, progress=progress, **options)
        outcomes.append(MethodOutcome(name, result.image, result.reconstruction, result.nfe,
                                      time.perf_counter() - start))
    source = np.asarray(image)
    panels = [("source", image), ("Direct recon.", outcomes[1].reconstruction), (methods[0][0], outcomes[0].image),
              (methods[1][0], outcomes[1].image)]
    if edit is not None:
        panels.append(("true target", Image.fromarray(edit.target_image)))
    title = f"{source_prompt}  ->  {target_prompt}"
    path = side_by_side(panels, out, title)
    return path, {o.name: edit_metrics(edit, o, source) for o in outcomes}

