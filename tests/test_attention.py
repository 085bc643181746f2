"""invedit.editing.attention: layers in forward order, hooks installed for a run and always removed, an editor
that hooks nothing fails loudly."""

from __future__ import annotations

import pytest
import torch

import invedit
from invedit.backbones.unet import unet_attention_layers as attention_layers
from invedit.editing import EDITORS
from invedit.editing.pnp import PlugAndPlay

from .conftest import SOURCE, TARGET

ROWS = [("source", "uncond"), ("target", "uncond"), ("source", "cond"), ("target", "cond")]


def test_layers_are_numbered_in_forward_order(pipe):
    infos = [info for _, _, info in attention_layers(pipe.unet)]
    places = [i.place for i in infos]
    assert places == sorted(places, key=("down", "mid", "up").index)  # registration order puts up before mid
    orders = [i.order for i in infos]
    assert orders == sorted(orders) and set(orders) == set(range(infos[0].count))
    calls: list[str] = []  # the order the UNet actually calls them in
    handles = [m.register_forward_hook(lambda m, a, o, name=name: calls.append(name))
               for name, m, _ in attention_layers(pipe.unet)]
    try:
        with torch.no_grad():
            pipe.unet(torch.zeros(1, 4, 16, 16), 10, encoder_hidden_states=torch.zeros(1, 77, 32))
    finally:
        for h in handles:
            h.remove()
    assert calls == [name for name, _, _ in attention_layers(pipe.unet)]


def _hooks_state(unet):
    return ({k: type(v) for k, v in unet.attn_processors.items()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()))


@pytest.mark.parametrize("editor, options", [("masactrl", {"start_step": 1}), ("pnp", {}), ("pix2pix-zero", {}),
                                             ("p2p", {}), ("none", {})])
def test_hooks_are_removed_after_a_run_and_after_a_run_that_raised(pipe, image, editor, options, monkeypatch):
    before = _hooks_state(pipe.unet)
    invedit.edit(pipe, image, SOURCE, TARGET, editor=editor, steps=4, **options)
    assert _hooks_state(pipe.unet) == before
    cls = EDITORS[editor]
    original = cls.step_callback

    def fail_at_step_2(self, step, latents):
        if step == 2:
            assert _hooks_state(pipe.unet) != before or editor == "none"  # they were installed
            raise RuntimeError("boom")
        return original(self, step, latents)

    monkeypatch.setattr(cls, "step_callback", fail_at_step_2)
    with pytest.raises(RuntimeError, match="boom"):
        invedit.edit(pipe, image, SOURCE, TARGET, editor=editor, steps=4, **options)
    assert _hooks_state(pipe.unet) == before


def test_an_editor_that_hooks_nothing_fails_loudly(pipe, image, monkeypatch):
    monkeypatch.setattr(PlugAndPlay, "wants_layer", lambda self, info: False)
    monkeypatch.setattr(PlugAndPlay, "forward_hooks", lambda self, unet: [])
    with pytest.raises(invedit.InveditError, match="hooked 0 attention layers"):
        invedit.edit(pipe, image, SOURCE, TARGET, editor="pnp", steps=4)
