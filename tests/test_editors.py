"""The editor contract (invedit.editing.base) across editors: an identity edit returns the reconstruction."""

from __future__ import annotations

import pytest

import invedit

from .conftest import SOURCE

ROWS = [("source", "uncond"), ("target", "uncond"), ("source", "cond"), ("target", "cond")]


@pytest.mark.parametrize("editor, options", [("masactrl", {"source_branch": "given", "start_step": 0}),
                                             ("pnp", {"negative_prompt": "", "feature_steps": 0,
                                                      "attention_steps": 0})])
def test_identity_edit_returns_the_reconstruction(pipe, image, editor, options):
    """Target = source prompt with Direct Inversion and the target's own offsets: the target follows z* too.

    MasaCtrl: the target's queries meet the source's own keys and values, so nothing changes. Plug-and-Play
    injects the empty prompt's features into the target's conditional row, which changes it by design (the
    reference does the same), so it returns the reconstruction only with its injection off and no negative prompt.
    """
    result = invedit.edit(pipe, image, SOURCE, SOURCE, inversion="direct", editor=editor, steps=6,
                          inversion_options={"correct_target": True}, **options)
    # worst 0 over CPU kernels: both rows go through identical arithmetic (5e-3 is the P2P identity bound)
    assert (result.latents[1] - result.latents[0]).abs().max() <= 5e-3
