"""Chained edits: "edit this result again" from Python (`EditResult.edit_again`, `invedit.edit(pipe, result, …)`) and
from the page's session re-invert the edited image, exactly as editing its saved PNG would; the record links the
previous edit; and on the embedded model the first edit's region survives the second."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import invedit
from invedit.toy.scenes import COLORS, make_scene
from invedit.ui.session import EditRequest, EditSession

from .bounds import measured

STEPS = 10
#: Scene seed 2: "a green square and a blue triangle on a checkered background"; edit 1 turns the square red (A),
#: edit 2 the triangle yellow (B).
SCENE = make_scene(2, n_objects=2)
A, B = SCENE.objects
FIRST = SCENE.caption.replace(f"{A.color} {A.shape}", f"red {A.shape}")
SECOND = FIRST.replace(f"{B.color} {B.shape}", f"yellow {B.shape}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Edit 1 through the page's session, then edit 2 twice: from Python (`edit_again`) and through the session
    from edit 1's saved PNG (what "edit this result again" puts in)."""
    session = EditSession(invedit.load(dtype="float32"), out_dir=tmp_path_factory.mktemp("chain"))
    first = session.edit(EditRequest(Image.fromarray(SCENE.image), SCENE.caption, FIRST, steps=STEPS,
                                     blend_words=f"{A.color} red"))
    again = first.follow_up()
    second_page = session.edit(EditRequest(again["image"], again["source_prompt"], SECOND, steps=STEPS,
                                           blend_words=f"{B.color} yellow"))
    second = first.result.edit_again(session.pipe, SECOND, blend_words=f"{B.color} yellow")
    return first, second, second_page


def mean_colour(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=float)[mask].mean(axis=0)


def test_the_first_edits_region_survives_the_second(chain):
    """A (the square) keeps edit 1's red through edit 2, which turns B (the triangle) yellow."""
    first, second, _ = chain
    a, b = SCENE.masks
    source = Image.fromarray(SCENE.image)
    red, yellow = np.array(COLORS["red"]), np.array(COLORS["yellow"])
    a1, a2 = mean_colour(first.result.image, a), mean_colour(second.image, a)
    # distances between mean RGB colours (0-255) of an object's region
    assert measured("chain: A after edit 1 vs red", np.linalg.norm(a1 - red)) < 30
    assert measured("chain: A after edit 1 vs source (must be large)",
                    np.linalg.norm(a1 - mean_colour(source, a))) > 150
    assert measured("chain: A after edit 2 vs after edit 1", np.linalg.norm(a2 - a1)) < 15
    b1, b2 = mean_colour(first.result.image, b), mean_colour(second.image, b)
    assert measured("chain: B after edit 2 vs yellow", np.linalg.norm(b2 - yellow)) < 100
    assert measured("chain: B after edit 2 vs after edit 1 (must be large)", np.linalg.norm(b2 - b1)) > 150
    background = ~(a | b)
    change = np.abs(np.asarray(second.image, float) - np.asarray(first.result.image, float))[background].mean()
    assert measured("chain: background, edit 2 vs edit 1, mean |Δ| of 0-255", change) < 6  # the VAE round trip


def test_a_re_edit_is_an_edit_of_the_saved_png_and_its_record_links_the_chain(chain):
    """`edit_again` == the page's "edit this result again" (the saved PNG edited by the session), pixel for pixel;
    it keeps the first edit's methods and settings, and its record holds the first's whole record and PNG hash."""
    first, second, second_page = chain
    assert np.array_equal(np.asarray(second.image), np.asarray(second_page.result.image))
    png = first.image_path.read_bytes()
    assert np.array_equal(np.asarray(Image.open(first.image_path)), np.asarray(first.result.image))
    link = second.settings["previous"]
    saved = json.loads(first.record_path.read_text())
    assert link["image_sha256"] == hashlib.sha256(png).hexdigest() == saved["files"]["edit.png"]
    assert link["record"] == first.result.record()
    assert second_page.result.settings["previous"]["image_sha256"] == link["image_sha256"]
    assert json.loads(second_page.record_path.read_text())["previous"]["record"]["target_prompt"] == FIRST
    assert "again (linked in the record)" in second_page.message()
    for key in ("inversion", "steps", "guidance_scale", "seed", "inversion_options"):
        assert second.settings[key] == first.result.settings[key]
    assert second.settings["editor"]["editor"] == "p2p" and second.settings["source_prompt"] == FIRST
    assert second.nfe_inversion == STEPS  # inverted afresh
    assert "previous" not in first.result.settings  # an image from outside the session starts a chain



def test_the_command_line_links_an_edit_of_an_earlier_output(chain, tmp_path):
    """`invedit edit first.png …` on a PNG that invedit wrote (its JSON lists the file's SHA-256) links that edit
    in the new record, and is the same edit as `edit_again`; a copy of the PNG that was changed since is not
    linked."""
    from typer.testing import CliRunner

    from invedit.api import saved_link
    from invedit.cli import app

    first, second, _ = chain
    out = tmp_path / "second.png"
    result = CliRunner().invoke(app, ["edit", str(first.image_path), "-s", FIRST, "-t", SECOND, "--blend",
                                      f"{B.color} yellow", "--steps", str(STEPS), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["previous"] == saved_link(first.image_path)
    assert record["previous"]["image_sha256"] == second.settings["previous"]["image_sha256"]
    assert record["previous"]["record"] == json.loads(json.dumps(first.result.record(), default=str))
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(second.image))
    changed = tmp_path / "edit.png"  # same name, beside the same record, other pixels
    Image.open(first.image_path).rotate(90).save(changed)
    (tmp_path / "edit.json").write_text(first.record_path.read_text())
    assert saved_link(changed) is None and saved_link(tmp_path / "missing.png") is None
