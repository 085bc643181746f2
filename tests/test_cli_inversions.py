"""Every registered inversion runs with P2P end to end from the command line (tiny model saved to a folder)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from invedit.cli import app
from invedit.inversion import INVERSIONS
from invedit.testing import tiny_image_encoder

from .conftest import SOURCE, TARGET, scene_image


@pytest.fixture(scope="module")
def image_encoder_dir(tmp_path_factory):
    """StyleDiffusion's image encoder, offline."""
    return tiny_image_encoder(tmp_path_factory.mktemp("tiny-image-encoder"))


def extra_options(inversion: str, request) -> list[str]:
    """Options a method needs on the tiny model (local assets, fewer optimisation steps)."""
    if inversion == "style-diffusion":
        return ["-i", f"image_encoder={request.getfixturevalue('image_encoder_dir')}", "-i", "inner_steps=2"]
    return []


@pytest.mark.parametrize("inversion", sorted(n for n, c in INVERSIONS.items() if "ddim" in c.schedule_kinds))
def test_inversion_with_p2p_from_the_cli(model_dir, tmp_path, inversion, request):
    image = tmp_path / "in.png"
    scene_image().save(image)
    out = tmp_path / f"{inversion}.png"
    result = CliRunner().invoke(app, ["edit", str(image), "-s", SOURCE, "-t", TARGET, "--inversion", inversion,
                                      "--model", str(model_dir), "--steps", "4", "--blend", "red blue",
                                      "--out", str(out), "-q", *extra_options(inversion, request)])
    assert result.exit_code == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["inversion"] == inversion and record["editor"]["editor"] == "p2p"
    assert record["nfe_edit"] > 0 and record["steps"] == 4


@pytest.mark.parametrize("editor", ["masactrl", "pnp", "pix2pix-zero", "p2p", "none"])
@pytest.mark.parametrize("inversion", ["ddim", "direct"])
def test_every_editor_with_ddim_and_direct_from_the_cli(model_dir, tmp_path, inversion, editor):
    image = tmp_path / "in.png"
    scene_image().save(image)
    out = tmp_path / f"{inversion}+{editor}.png"
    options = ["-o", "start_step=1"] if editor == "masactrl" else []
    result = CliRunner().invoke(app, ["edit", str(image), "-s", SOURCE, "-t", TARGET, "--inversion", inversion,
                                      "--editor", editor, "--model", str(model_dir), "--steps", "4",
                                      "--out", str(out), "-q", *options])
    assert result.exit_code == 0, result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["inversion"] == inversion and record["editor"]["editor"] == editor
    rows = {"masactrl": 2 + 4 * 3, "pnp": 3 * 3 + 2, "pix2pix-zero": 4 * 5, "p2p": 3 * 2 + 2 * 2,
            "none": 2 * 4}[editor]  # Direct: rows
    # 4 steps with Direct: source rows read by MasaCtrl from step 1, by PnP for 3 steps, by P2P for 2
    if inversion == "direct":
        assert record["nfe_edit"] == rows
    else:
        # Pix2Pix-Zero's update reads the source row its guide computed: 5 rows a step, as with Direct
        assert record["nfe_edit"] == {"masactrl": 16, "pnp": 3 * 4 + 3, "pix2pix-zero": 4 * 5, "p2p": 16,
                                      "none": 16}[editor]
    assert record["nfe"] == record["nfe_inversion"] + record["nfe_edit"]
    assert record["nfe_backward"] == (4 * 2 if editor == "pix2pix-zero" else 0)  # its two target rows, backward
    if editor == "masactrl":
        assert record["source_branch_prompt"] == ""  # the reference's empty source prompt


def test_blend_is_p2p_only(model_dir, tmp_path):
    image = tmp_path / "in.png"
    scene_image().save(image)
    result = CliRunner().invoke(app, ["edit", str(image), "-s", SOURCE, "-t", TARGET, "--editor", "pnp",
                                      "--model", str(model_dir), "--blend", "red blue", "-q"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --blend is Prompt-to-Prompt's LocalBlend; editor 'pnp' has no blend words")
