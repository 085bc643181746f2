"""KV-Edit: every background cell of the edited latent is the image's own latent (exactly, before decoding) on SD3 and
FLUX, in both layouts; the target's background keys/values are the source's in every attention layer while its
foreground keeps its own (layout="exact": the source rows beside it; "reference": the keys/values stored while
inverting, one level lower); only foreground tokens reach the target's foreground; over a pinned source (Direct) the
stored keys/values are the source rows'; the options act as the official code's; and the mask is read by one
documented rule, with one-line refusals. Parity with the official code: tests/test_flow_parity2.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import invedit
from invedit.api import loop_context
from invedit.backbones import backbone
from invedit.editing import get_editor
from invedit.editing.kv_edit import KVEdit, default_skip, token_mask
from invedit.errors import InveditError
from invedit.masks import EditMask, load_mask
from invedit.sampling import Branches
from invedit.testing import tiny_pipeline

from .conftest import scene_image

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
STEPS = 4
FLOW_KINDS = ("sd3", "flux", "flux-schnell")


def square_mask(size: int = 64, low: int = 16, high: int = 40) -> np.ndarray:
    """A white square (pixels [low, high)²) on black: latent cells [4, 10)² of the tiny models' 16×16 grid, so the
    2×2 tokens [2, 5)² are foreground and cells 4–5 / 8–9 are whole tokens' edges."""
    mask = np.zeros((size, size), dtype=bool)
    mask[low:high, low:high] = True
    return mask


@pytest.fixture(scope="module", params=FLOW_KINDS)
def flow_pipe(request):
    return tiny_pipeline(kind=request.param)


def cells_of(pipe, mask: np.ndarray) -> torch.Tensor:
    model = backbone(pipe)
    return torch.from_numpy(EditMask.from_pixels(mask).grid(model.resolution // model.vae_factor))


@pytest.mark.parametrize("inversion", ["direct", "euler"])
@pytest.mark.parametrize("options", [{}, {"re_init": True, "skip_step": 0},
                                     {"attn_mask": True, "attn_scale": 2.0, "layout": "exact"}],
                         ids=["defaults", "re_init", "attn_mask"])
def test_every_background_cell_of_the_latent_is_the_images_exactly(flow_pipe, inversion, options):
    """At the latent grid, before decoding: outside the mask the edited latent equals z₀ = the VAE's latent of the
    image bit for bit (and so does the source branch); inside it the edit moved the latent."""
    image, mask = scene_image(), square_mask()
    result = invedit.edit(flow_pipe, image, SOURCE, TARGET, inversion=inversion, editor="kv-edit", steps=STEPS,
                          guidance_scale=4.0, mask=mask, **options)
    z0 = backbone(flow_pipe).encode_image(image)[0]
    cells = cells_of(flow_pipe, mask)
    target, source = result.latents[1], result.latents[0]
    assert torch.equal(target[:, ~cells], z0[:, ~cells])
    assert torch.equal(source, z0)
    assert (target[:, cells] - z0[:, cells]).abs().amax(dim=0).min() > 1e-4  # every edited cell changed
    assert result.record()["mask"]["given"] is True


def test_the_foreground_follows_the_target_prompt_and_direct_equals_euler(flow_pipe):
    """Another target prompt gives another foreground and the same background; KV-Edit reads its source from the
    trajectory, so direct+kv-edit and euler+kv-edit are the same edit (the Euler inversion both run)."""
    mask, cells = square_mask(), cells_of(flow_pipe, square_mask())
    inverted = {m: invedit.invert(flow_pipe, scene_image(), SOURCE, m, steps=STEPS) for m in ("direct", "euler")}
    star = invedit.edit(flow_pipe, inverted["direct"], None, TARGET, editor="kv-edit", guidance_scale=4.0, mask=mask,
                        layout="exact")
    green = invedit.edit(flow_pipe, inverted["direct"], None, "a green square on a striped background",
                         editor="kv-edit", guidance_scale=4.0, mask=mask, layout="exact")
    assert (star.latents[1][:, cells] - green.latents[1][:, cells]).abs().max() > 1e-3
    assert torch.equal(star.latents[1][:, ~cells], green.latents[1][:, ~cells])
    euler = invedit.edit(flow_pipe, inverted["euler"], None, TARGET, editor="kv-edit", guidance_scale=4.0, mask=mask,
                         layout="exact")
    assert torch.allclose(euler.latents, star.latents, atol=1e-5)


def run_once(pipe, mask, latents: Branches, **options) -> dict:
    """One network call of the edit's first KV step (rows: the target's, plus the source rows KV-Edit reads), with
    the editor's hooks on; the raw outputs by row."""
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "direct", steps=STEPS)
    editor = get_editor("kv-edit").create(pipe, SOURCE, TARGET, STEPS, mask=EditMask.from_pixels(mask),
                                          skip_step=0, layout="exact", **options)
    ctx = loop_context(pipe, inverted, editor, SOURCE, TARGET, 4.0, 0)
    with editor.attach(ctx.denoiser.model, ctx.denoiser.values):
        return ctx.denoiser.raw(0, ctx.schedule.timesteps[0], latents, {"target"})


def test_only_the_foreground_tokens_of_the_target_reach_its_foreground(flow_pipe):
    """The target's background tokens are queries whose keys/values are the source's in every layer: changing the
    target's latent in whole background tokens leaves its foreground tokens' output bit for bit (the official
    foreground-only forward), while it changes them without KV-Edit; the source's background does reach them."""
    mask = square_mask()
    model = backbone(flow_pipe)
    side = model.resolution // model.vae_factor
    tokens = torch.from_numpy(token_mask(cells_of(flow_pipe, mask).numpy(), model.patch).reshape(side // 2, side // 2))
    token_cells = tokens.repeat_interleave(2, 0).repeat_interleave(2, 1)  # cells of foreground tokens
    generator = torch.Generator().manual_seed(0)
    z_source, z_target, noise = (torch.randn(1, 4, side, side, generator=generator) for _ in range(3))
    moved = torch.where(token_cells, z_target, z_target + noise)  # only whole background tokens change
    base = run_once(flow_pipe, mask, Branches(z_source, z_target))
    changed = run_once(flow_pipe, mask, Branches(z_source, moved))
    other_source = run_once(flow_pipe, mask, Branches(torch.where(token_cells, z_source, z_source + noise), z_target))
    target_rows = [row for row in base if row[0] == "target"]
    assert target_rows
    for row in target_rows:
        assert torch.equal(base[row][..., token_cells], changed[row][..., token_cells]), row
        assert not torch.equal(base[row][..., ~token_cells], changed[row][..., ~token_cells]), row
        assert (base[row][..., token_cells] - other_source[row][..., token_cells]).abs().max() > 1e-4, row
    plain = {}
    for name, z in (("base", z_target), ("changed", moved)):
        inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "direct", steps=STEPS)
        editor = get_editor("none").create(flow_pipe, SOURCE, TARGET, STEPS)
        ctx = loop_context(flow_pipe, inverted, editor, SOURCE, TARGET, 4.0, 0)
        plain[name] = ctx.denoiser.raw(0, ctx.schedule.timesteps[0], Branches(z_source, z), {"target"})
    row = ("target", "cond")
    assert not torch.equal(plain["base"][row][..., token_cells], plain["changed"][row][..., token_cells])


def record_attention(monkeypatch) -> list[tuple]:
    """Every to_k / to_v output (after the editor's hooks) and every attention mask KV-Edit builds, with the rows."""
    records: list[tuple] = []
    hooks, mask_of = KVEdit.forward_hooks, KVEdit.attention_mask

    def with_recorders(self, unet):
        installed = list(hooks(self, unet))
        for name in self.layers:
            attn = unet.get_submodule(name)
            for projection in ("to_k", "to_v"):
                def record(module, args, output, name=name, projection=projection, editor=self):
                    records.append(("projection", editor.step, name, projection, list(editor.rows), output.clone()))
                installed.append((getattr(attn, projection), record))
        return installed

    def recording_mask(self, info, query, key, value):
        bias = mask_of(self, info, query, key, value)
        records.append(("mask", self.step, info.name, list(self.rows), bias.clone(), value.clone()))
        return bias

    monkeypatch.setattr(KVEdit, "forward_hooks", with_recorders)
    monkeypatch.setattr(KVEdit, "attention_mask", recording_mask)
    return records


def test_background_keys_values_are_the_sources_in_every_layer_and_the_scale_falls_on_them(flow_pipe, monkeypatch):
    """In every attention layer of every KV step, each target row's background image tokens in to_k / to_v are the
    source's bit for bit and its foreground tokens its own; the additive mask holds attn_scale exactly at the keys
    whose values were copied (SD3 puts the image before the text, FLUX after it: found per layer), on target rows
    only, and no step before skip_step calls the network."""
    records = record_attention(monkeypatch)
    model = backbone(flow_pipe)
    mask = square_mask()
    result = invedit.edit(flow_pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit",
                          steps=STEPS, guidance_scale=4.0, mask=mask, skip_step=1, attn_scale=1.5, layout="exact")
    tokens = torch.from_numpy(token_mask(cells_of(flow_pipe, mask).numpy(), model.patch))
    n = tokens.numel()
    layers = {name for name, _, info in model.attention_layers()}
    projections = [r for r in records if r[0] == "projection"]
    masks = [r for r in records if r[0] == "mask"]
    assert {r[1] for r in projections} == {1, 2, 3} and {r[2] for r in projections} == layers
    for _, step, name, projection, rows, output in projections:
        image = output[:, -n:]
        pairs = [(t, rows.index(("source", "cond"))) for t, (branch, _) in enumerate(rows) if branch == "target"]
        assert pairs
        for t, s in pairs:
            assert torch.equal(image[t, ~tokens], image[s, ~tokens]), (step, name, projection)
            if rows[t][1] == "cond":
                assert not torch.equal(image[t, tokens], image[s, tokens]), (step, name, projection)
    assert {(r[1], r[2]) for r in masks} == {(step, name) for step in (1, 2, 3) for name in layers}
    for _, _step, name, rows, bias, value in masks:
        flagged = bias[:, 0, 0] != 0  # (rows, keys)
        for row, (branch, _) in enumerate(rows):
            if branch == "source":
                assert not flagged[row].any()
                continue
            s = rows.index(("source", "cond"))
            assert flagged[row].sum() == (~tokens).sum()
            assert torch.equal(bias[row, 0, 0, flagged[row]], torch.full((int((~tokens).sum()),), 1.5))
            assert torch.equal(value[row][:, flagged[row]], value[s][:, flagged[row]])
            image_first = "single" not in name and model.family == "sd3"
            offset = 0 if image_first else value.shape[2] - n
            assert torch.equal(flagged[row][offset:offset + n], ~tokens), name
    rows = 1 if model.guidance_mode == "embedded" else 2
    assert result.nfe_edit == (STEPS - 1) * (rows + 1)  # the target's rows and one source row (guidance 1)


def test_attn_mask_separates_the_sources_foreground_and_background(monkeypatch):
    """attn_mask: in the source rows foreground and background image tokens do not attend to each other (−inf),
    text attends to all and all attend to text; the target rows carry attn_scale only."""
    records = record_attention(monkeypatch)
    pipe = tiny_pipeline(kind="flux")
    mask = square_mask()
    invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="kv-edit", steps=STEPS,
                 mask=mask, attn_mask=True, skip_step=3, layout="exact")
    tokens = torch.from_numpy(token_mask(cells_of(pipe, mask).numpy(), 2))
    n = tokens.numel()
    _, _, name, rows, bias, _ = next(r for r in records if r[0] == "mask")
    total = bias.shape[-1]
    image = torch.zeros(total, dtype=torch.bool)
    image[total - n:] = True
    fg = torch.zeros(total, dtype=torch.bool)
    fg[total - n:] = tokens
    bg = image & ~fg
    source = rows.index(("source", "cond"))
    blocked = torch.isinf(bias[source, 0])
    assert torch.equal(blocked, (fg[:, None] & bg[None, :]) | (bg[:, None] & fg[None, :]))
    target = rows.index(("target", "cond"))
    assert torch.equal(bias[target, 0], bias[target, 0, :1].expand(total, total))
    assert torch.equal(bias[target, 0, 0] != 0, bg)


def test_skip_steps_cost_no_network_call_and_re_init_is_seeded():
    """skip_step k: the edit calls the network from step k on only (the official schedule after its skipped steps);
    its default is the official 4 of 28, scaled; re_init draws from the edit's seed."""
    pipe = tiny_pipeline(kind="flux")
    inverted = invedit.invert(pipe, scene_image(), SOURCE, "direct", steps=STEPS)
    mask = square_mask()
    nfe = {k: invedit.edit(pipe, inverted, None, TARGET, editor="kv-edit", mask=mask, skip_step=k,
                           layout="exact").nfe_edit for k in (0, 1, 3)}
    assert nfe == {0: 8, 1: 6, 3: 2}  # FLUX.1-dev, no store: one target and one source row per step
    assert [default_skip(n) for n in (28, 50, 4, 3, 7)] == [4, 7, 1, 0, 1]
    # the official demo's 28 steps, 4 skipped: the reference layout reads the stored keys/values (the official's
    # 28 + 24 = 52); the exact layout over Euler computes a source row beside each of the 24 target rows
    official = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit", steps=28,
                            mask=mask)
    assert (official.nfe_inversion, official.nfe_edit) == (28, 24)
    exact = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit", steps=28,
                         mask=mask, layout="exact")
    assert (exact.nfe_inversion, exact.nfe_edit) == (28, 48)
    assert invedit.edit(pipe, inverted, None, TARGET, editor="kv-edit", mask=mask,
                        layout="exact").record()["editor"]["skip_step"] == 1
    first, again, other = (invedit.edit(pipe, inverted, None, TARGET, editor="kv-edit", mask=mask, re_init=True,
                                        seed=seed, layout="exact").latents for seed in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    cells = cells_of(pipe, mask)
    assert torch.equal(first[1][:, ~cells], other[1][:, ~cells])


def test_the_source_rows_run_at_the_inversions_guidance():
    """The cache is computed at the inversion's guidance (the official caches during its inversion): on SD 3 at
    guidance 1 one conditional source row per step feeds both CFG halves of the target; ``source_guidance`` or
    another inversion guidance brings both source halves."""
    pipe = tiny_pipeline(kind="sd3")
    mask = square_mask()
    one = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit", steps=STEPS,
                       guidance_scale=4.0, mask=mask, skip_step=0, layout="exact")
    assert one.nfe_edit == STEPS * 3 and one.record()["editor"]["source_guidance"] == 1.0
    both = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit", steps=STEPS,
                        guidance_scale=4.0, mask=mask, skip_step=0, inversion_options={"inversion_guidance": 1.5},
                        layout="exact")
    assert both.nfe_edit == STEPS * 4 and both.record()["editor"]["source_guidance"] == 1.5
    given = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit", steps=STEPS,
                         guidance_scale=4.0, mask=mask, skip_step=0, source_guidance=4.0, layout="exact")
    assert given.nfe_edit == STEPS * 4
    assert not torch.equal(given.latents, one.latents)


BAD_OPTIONS = [
    ({"skip_step": 4}, r"^skip_step must be an integer in \[0, 3\], got 4$"),
    ({"skip_step": 1.5}, r"^skip_step must be an integer in \[0, 3\], got 1.5$"),
    ({"attn_scale": -1}, r"^attn_scale must be a number in \[0, inf\], got -1$"),
    ({"re_init": "yes"}, r"^editor 'kv-edit' option 're_init' must be true or false, got 'yes'$"),
    ({"source_guidance": 99}, r"^source_guidance must be a number in \[0, 50\], got 99$"),
    ({"layout": "same"}, r"^kv-edit layout must be 'reference' \(official\) or 'exact', got 'same'$"),
    ({"attn_mask": True}, r"^kv-edit attn_mask acts on the source rows, which layout='reference' does not compute "
                          r"\(it reads the inversion's keys/values\); use layout='exact'$"),
    ({"source_guidance": 2.0}, r"^kv-edit source_guidance acts on the source rows, which layout='reference' does not "
                               r"compute"),
    ({"mask": None}, r"^editor 'kv-edit' edits only inside a mask: give one with --mask FILE \(mask= in Python; "
                     r"white = the region to edit\)$"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_and_a_missing_mask_are_refused_before_inverting(options, message, monkeypatch):
    pipe = tiny_pipeline(kind="sd3")
    monkeypatch.setattr(backbone(pipe), "denoise", lambda *a, **k: pytest.fail("the model was called"))
    options = {"mask": square_mask(), **options}
    with pytest.raises(InveditError, match=message):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="kv-edit", steps=STEPS,
                     **options)


def test_unet_models_and_other_editors_refuse_in_one_line(pipe):
    with pytest.raises(InveditError, match=r"^editor 'kv-edit' does not run on sd models \(ddim schedule\): it "
                                           r"caches the image tokens' keys/values of a transformer's joint attention "
                                           r"\(SD3/FLUX\); .*; use one of: masactrl, none, p2p, pix2pix-zero, pnp, "
                                           r"shared-attention$"):
        invedit.edit(pipe, scene_image(), SOURCE, TARGET, editor="kv-edit", steps=STEPS, mask=square_mask())
    with pytest.raises(InveditError, match=r"^editor 'none' takes no mask; drop --mask, or use an editor that takes "
                                           r"one \(kv-edit\)$"):
        invedit.edit(tiny_pipeline(kind="flux"), scene_image(), SOURCE, TARGET, editor="none", steps=STEPS,
                     mask=square_mask())


# ---- the mask: one rule, whatever form it comes in ------------------------------------------------------------
def test_a_latent_cell_is_edited_when_any_pixel_it_covers_is():
    pixels = np.zeros((64, 64), dtype=bool)
    pixels[5, 9] = True  # one pixel: cell (1, 2) of a 16×16 grid (4-pixel cells)
    grid = EditMask.from_pixels(pixels).grid(16)
    assert grid.sum() == 1 and grid[1, 2]
    assert EditMask.from_pixels(square_mask()).grid(16)[4:10, 4:10].all()
    assert EditMask.from_pixels(square_mask()).grid(16).sum() == 36
    odd = np.zeros((100, 100), dtype=bool)
    odd[99, 99] = True  # boxes ⌊k·100/16⌋: the last pixel is in the last cell
    assert EditMask.from_pixels(odd).grid(16)[15, 15] and EditMask.from_pixels(odd).grid(16).sum() == 1


def test_the_mask_is_cropped_like_the_image_and_read_from_any_form(tmp_path):
    """A 96×64 mask of a 96×64 image loses its left and right 16 columns, as the image does; PNG files, grey or
    RGB images, 0–255 / 0–1 / boolean arrays and painted layers (alpha) give the same mask."""
    wide = np.zeros((64, 96), dtype=bool)
    wide[:, 20:40] = True
    mask = load_mask(wide, (96, 64))
    assert mask.pixels.shape == (64, 64) and np.array_equal(mask.pixels, wide[:, 16:80])
    grey = (square_mask() * 200).astype(np.uint8)  # 200 ≥ 128: edit
    forms = {"bool": square_mask(), "uint8": grey, "float": square_mask().astype(np.float32) * 0.6,
             "L": Image.fromarray(grey), "RGB": Image.fromarray(grey).convert("RGB"),
             "tensor": torch.from_numpy(square_mask())}
    layer = np.zeros((64, 64, 4), dtype=np.uint8)
    layer[..., 3] = grey  # a painted layer: transparent but where painted
    forms["RGBA layer"] = Image.fromarray(layer, "RGBA")
    Image.fromarray(grey).save(tmp_path / "m.png")
    forms["file"] = tmp_path / "m.png"
    for name, form in forms.items():
        assert np.array_equal(load_mask(form, (64, 64)).pixels, square_mask()), name
    below = (square_mask() * 127).astype(np.uint8) + (~square_mask()) * 0  # 127 < 128: not edited
    with pytest.raises(InveditError, match="is empty"):
        load_mask(below, (64, 64))


BAD_MASKS = [
    ("missing file", lambda d: d / "nope.png", (64, 64), r"^mask not found: .*nope.png$"),
    ("not an image", lambda d: d / "notes.png", (64, 64), r"^cannot read mask .*notes.png: not an image"),
    ("other size", lambda d: np.ones((32, 64), bool), (64, 64), r"^mask is 64x32 pixels but the image is 64x64: "
                                                               r"give a mask of the image's size$"),
    ("not square with an inversion", lambda d: np.ones((32, 64), bool), None, r"^mask is 64x32 pixels; the inverted "
                                                                               r"image is square"),
    ("empty", lambda d: np.zeros((64, 64), bool), (64, 64), r"^mask is empty: no pixel is white \(white marks the "
                                                             r"region to edit\)$"),
    ("empty in the crop", lambda d: np.pad(np.zeros((64, 64), bool), ((0, 0), (16, 16)), constant_values=True),
     (96, 64), r"^mask is empty inside the centre square the image is cropped to"),
    ("3-D", lambda d: np.ones((64, 64, 3), bool), (64, 64), r"^mask array must be 2-D \(height × width\), got "
                                                             r"shape \(64, 64, 3\)$"),
    ("out of range", lambda d: np.full((64, 64), 300), (64, 64), r"^mask array of integers must hold grey levels "
                                                                  r"0–255$"),
    ("float range", lambda d: np.full((64, 64), 2.0), (64, 64), r"^mask array of floats must hold values in \[0, 1\]$"),
    ("16-bit", lambda d: Image.fromarray(np.full((64, 64), 40000, np.uint16)), (64, 64), r"^mask has unsupported "
                                                                                          r"mode"),
]


@pytest.mark.parametrize("case, make, size, message", BAD_MASKS, ids=[b[0] for b in BAD_MASKS])
def test_bad_masks_are_one_line(tmp_path, case, make, size, message):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InveditError, match=message):
        load_mask(make(tmp_path), size)


def test_a_mask_with_an_inversion_is_any_square_and_recorded(flow_pipe):
    """With an `Inverted` (its image already cropped), a square mask of any size is scaled to the latent grid; the
    record names the mask by its pixels' hash."""
    inverted = invedit.invert(flow_pipe, scene_image(), SOURCE, "direct", steps=STEPS)
    big = np.kron(square_mask(), np.ones((4, 4), dtype=bool))  # 256 px, the same region
    small = invedit.edit(flow_pipe, inverted, None, TARGET, editor="kv-edit", mask=square_mask(), layout="exact")
    large = invedit.edit(flow_pipe, inverted, None, TARGET, editor="kv-edit", mask=big, layout="exact")
    assert torch.equal(small.latents, large.latents)
    assert small.record()["mask"]["edited_fraction"] == large.record()["mask"]["edited_fraction"] == 0.140625
    assert small.record()["mask"]["sha256"] != large.record()["mask"]["sha256"]


def test_over_a_pinned_source_the_stored_keys_values_are_the_source_rows():
    """Direct Inversion's source branch is z*: in the exact layout direct+kv-edit reads each step's keys/values from
    the store at the step's own level, where the Euler inversion evaluated (z*ₖ, σₖ) at the source's guidance, so it
    is the edit euler+kv-edit makes with source rows beside the target (to float rounding: batch 1 against 2), for the
    target's rows alone: 4 + 3 against 4 + 6 NFE on FLUX.1-dev. The reference layout reads one level lower (another
    edit) and refuses an inversion that stored nothing."""
    pipe = tiny_pipeline(kind="flux")
    mask = square_mask()
    stored = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="kv-edit", steps=STEPS,
                          guidance_scale=4.0, mask=mask, layout="exact")
    rows = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="euler", editor="kv-edit", steps=STEPS,
                        guidance_scale=4.0, mask=mask, layout="exact")
    assert (stored.record()["editor"]["kv_from"], rows.record()["editor"]["kv_from"]) == ("inversion", "source rows")
    assert (stored.nfe_inversion, stored.nfe_edit, rows.nfe_edit) == (STEPS, STEPS - 1, 2 * (STEPS - 1))
    assert (stored.latents - rows.latents).abs().max() < 1e-5
    reference = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion="direct", editor="kv-edit", steps=STEPS,
                             guidance_scale=4.0, mask=mask)
    assert reference.nfe_edit == STEPS - 1 and (reference.latents - stored.latents).abs().max() > 1e-3
    bare = invedit.invert(pipe, scene_image(), SOURCE, "euler", steps=STEPS)
    with pytest.raises(InveditError, match=r"^kv-edit layout='reference' reads the keys/values stored while "
                                           r"inverting, and this inversion stored none: "):
        invedit.edit(pipe, bare, None, TARGET, editor="kv-edit", mask=mask)
