"""training.shapes_flow: the flow model's trainer. Its exported folder must load through the same code path as a real
SD 3 checkpoint, share the UNet model's VAE / tokenizer / text encoder bit for bit, condition the transformer exactly
as invedit (and diffusers' pipeline) will at inference, train on the scheduler's own sigmas, and be a function of
its seed."""

from __future__ import annotations

import json

import pytest
import torch

from training.shapes_flow import cli
from training.shapes_flow.config import SMOKE, UNET_MODEL_DIR, FlowTrainConfig
from training.shapes_flow.models import build_scheduler, shifted_sigma


@pytest.fixture(scope="module")
def smoke_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow-smoke")
    assert cli.main(["--smoke", "--out", str(root / "run"), "--export", "--export-dir", str(root / "export")]) == 0
    return root


def test_export_loads_as_an_sd3_pipeline_sharing_the_unet_models_parts(smoke_export):
    import invedit
    from invedit.backbones import backbone

    pipe = invedit.load(str(smoke_export / "export"), device="cpu", dtype="float32")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    record = backbone(pipe)
    assert (record.family, record.resolution, record.t5_tokens) == ("sd3", 64, 0)
    unet_model = invedit.load(None, device="cpu", dtype="float32")
    shared_vae = unet_model.vae.state_dict()
    assert all(torch.equal(v, shared_vae[k]) for k, v in pipe.vae.state_dict().items())
    plain = unet_model.text_encoder.state_dict()
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        assert all(torch.equal(v, plain[k]) for k, v in encoder.text_model.state_dict().items())
        assert torch.equal(encoder.text_projection.weight, torch.eye(128))
    assert pipe.tokenizer.get_vocab() == unet_model.tokenizer.get_vocab()
    run = torch.load(smoke_export / "run" / "flow.ckpt.pt", weights_only=False)
    assert pipe.vae.config.shift_factor == pytest.approx(run["latent_shift"])
    assert pipe.vae.config.scaling_factor == pytest.approx(run["latent_scale"])
    settings = json.loads((smoke_export / "export" / "invedit.json").read_text())
    assert settings["call_options"] == {"max_sequence_length": 0}
    assert (settings["guidance"], settings["steps"]) == (2.0, 28)  # what its edits are measured at


def test_training_conditioning_is_what_invedit_and_diffusers_feed_the_transformer(smoke_export):
    import invedit
    from invedit.backbones import backbone
    from invedit.backbones.mmdit import unpack_pooled
    from training.shapes_flow.models import encode_captions, load_shared

    cfg = FlowTrainConfig(**SMOKE)
    _, tokenizer, text = load_shared(UNET_MODEL_DIR, cfg)
    prompts = ["a red circle and a blue star on a striped background", ""]
    hidden, pooled = encode_captions(tokenizer, text, prompts, cfg)
    pipe = invedit.load(str(smoke_export / "export"), device="cpu", dtype="float32")
    ours = backbone(pipe).encode_prompts(prompts)
    tokens, pool = unpack_pooled(ours, pipe.transformer.config.pooled_projection_dim)
    assert torch.allclose(tokens, hidden, atol=1e-3) and torch.allclose(pool, pooled, atol=1e-3)  # fp16 weights
    embeds, _, pooled_embeds, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                                     max_sequence_length=0)
    assert torch.equal(embeds, tokens) and torch.equal(pooled_embeds, pool)


def test_training_sigmas_are_the_schedulers():
    cfg = FlowTrainConfig()
    sched = build_scheduler(cfg)
    sched.set_timesteps(10)
    # the scheduler spaces its unshifted sigmas between its (already shifted) σ_max and σ_min, then shifts them
    plain = torch.linspace(1.0, float(shifted_sigma(torch.tensor(1 / 1000), cfg.shift)), 10)
    assert torch.allclose(shifted_sigma(plain, cfg.shift), sched.sigmas[:-1], atol=1e-6)


def test_training_is_a_function_of_the_seed_and_a_checkpoint_is_not_overwritten(smoke_export, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(123)  # another global RNG state
    assert cli.main(["--smoke", "--out", str(tmp_path / "run"), "--export", "--export-dir",
                       str(tmp_path / "export")]) == 0
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(smoke_export / "export" / name), load_file(tmp_path / "export" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        cli.main(["--smoke", "--out", str(tmp_path / "run")])


def test_joint_attention_recorder_computes_the_models_attention_and_records_image_to_text_maps():
    from training.shapes_flow.finetune import record_joint_attention
    from training.shapes_flow.models import build_transformer

    cfg = FlowTrainConfig(**SMOKE)
    torch.manual_seed(0)
    model = build_transformer(cfg, 128).eval()
    inputs = dict(hidden_states=torch.randn(2, 4, 16, 16), timestep=torch.tensor([700.0, 100.0]),
                  encoder_hidden_states=torch.randn(2, cfg.text_tokens, 256), pooled_projections=torch.randn(2, 256))
    with torch.no_grad():
        plain = model(**inputs).sample
        store: list[torch.Tensor] = []
        assert record_joint_attention(model, store) == cfg.layers
        recorded = model(**inputs).sample
    assert torch.allclose(plain, recorded, atol=1e-5)
    image_tokens = (16 // cfg.patch_size) ** 2
    assert len(store) == cfg.layers
    assert all(p.shape == (2 * cfg.heads, image_tokens, cfg.text_tokens) for p in store)
    assert all(bool((p > 0).all() and (p.sum(-1) < 1).all()) for p in store)  # part of the joint softmax


def test_finetune_continues_an_export_as_a_function_of_the_seed(smoke_export, tmp_path):
    from safetensors.torch import load_file

    def finetune(name: str, *extra: str) -> dict:
        out = tmp_path / name
        assert cli.main(["--smoke", "--stage", "finetune", "--init", str(smoke_export / "export"), "--out",
                           str(out / "run"), "--export", "--export-dir", str(out / "export"), *extra]) == 0
        return load_file(out / "export" / "transformer/diffusion_pytorch_model.safetensors")

    torch.manual_seed(7)
    a = finetune("a")
    torch.manual_seed(8)  # another global RNG state
    b = finetune("b")
    init = load_file(smoke_export / "export" / "transformer/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() == init.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], init[k]) for k in a)  # it trained
    info = json.loads((tmp_path / "a" / "export" / "training.json").read_text())
    base = json.loads((smoke_export / "export" / "training.json").read_text())
    assert info["finetune_steps_done"] == SMOKE["ft_steps"] and info["steps_done"] == base["steps_done"]
    assert info["finetuned_from"]["training"] == base and len(info["finetuned_from"]["sha256"]) == 64
    log = [json.loads(line) for line in (tmp_path / "a" / "run" / "log_finetune.jsonl").read_text().splitlines()]
    assert all(0 < r["ground"] < 1 for r in log if "ground" in r)
    c = finetune("c", "--stop-at", "2")  # stopped early: the same schedule, fewer steps
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "c" / "export" / "training.json").read_text())["finetune_steps_done"] == 2
    with pytest.raises(SystemExit):  # the run's checkpoint is not overwritten
        cli.main(["--smoke", "--stage", "finetune", "--init", str(smoke_export / "export"), "--out",
                    str(tmp_path / "a" / "run")])


def test_a_second_finetune_with_overrides_records_both_stages_and_bad_overrides_are_refused(smoke_export, tmp_path,
                                                                                           capsys):
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["--smoke", "--stage", "finetune", "--init", str(smoke_export / "export"), "--out",
                     str(first / "run"), "--export", "--export-dir", str(first / "export")]) == 0
    assert cli.main(["--smoke", "--stage", "finetune", "--init", str(first / "export"), "--out", str(second / "run"),
                     "--set", "ft_steps=3", "--set", "ft_lr=2e-4", "--export", "--export-dir",
                     str(second / "export")]) == 0
    info = json.loads((second / "export" / "training.json").read_text())
    previous = json.loads((first / "export" / "training.json").read_text())
    assert info["finetune_steps_done"] == SMOKE["ft_steps"] + 3  # every fine-tune's steps
    assert info["config"]["ft_steps"] == 3 and info["config"]["ft_lr"] == 2e-4
    assert info["finetuned_from"]["training"] == previous
    run_config = json.loads((second / "run" / "config.json").read_text())
    assert (run_config["ft_steps"], run_config["layers"]) == (3, SMOKE["layers"])  # the smoke model, overridden
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(first / "export" / name), load_file(second / "export" / name)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    for bad, says in (("ft_stepz=3", "expected FIELD=VALUE"), ("ft_steps=many", "ft_steps takes an integer"),
                      ("ft_steps", "expected FIELD=VALUE"), ("ft_boost_shape=hexagon", "ft_boost_shape must be one of"),
                      ("ft_boost_keep=0", "ft_boost_keep must be in (0, 1]"),
                      ("ground_sigma_power=-1", "ground_sigma_power must be in [0, 8]"),
                      ("ft_edit_batch=0", "ft_edit_batch ≥ 1")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--smoke", "--out", str(tmp_path / "bad"), "--set", bad])
        assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_finetune_scenes_oversample_the_boosted_shape_and_keep_the_earlier_stream_at_keep_1():
    import numpy as np

    from invedit.toy import scenes
    from training.shapes_flow.finetune import draw_scene

    def objects(keep: float, n: int = 400) -> list[scenes.SceneObject]:  # small renders: the draw is the same
        rng = np.random.default_rng(3)
        return [o for _ in range(n) for o in draw_scene(rng, FlowTrainConfig(size=16, ft_boost_keep=keep)).objects]

    rng = np.random.default_rng(3)  # keep 1: the stream the first five fine-tunes drew, number for number
    plain = [o for _ in range(400) for o in scenes.make_scene(rng, size=16, include_held_out=False).objects]
    assert objects(1.0) == plain

    def star_share(objs: list[scenes.SceneObject]) -> float:
        return sum(o.shape == "star" for o in objs) / len(objs)

    assert star_share(plain) < 0.25 and star_share(objects(0.5)) > 0.3  # here 20% of the objects → 33%


def test_grounding_weights_move_the_loss_toward_high_noise_and_leave_it_unweighted_at_power_0():
    from training.shapes_flow.finetune import grounding_weights
    from training.shapes_unet.grounding import grounding_loss

    sigma = torch.tensor([0.1, 0.5, 0.9, 1.0])
    assert grounding_weights(sigma, 0.0) is None
    w = grounding_weights(sigma, 2.0)
    assert torch.allclose(w, sigma**2 / (sigma**2).mean()) and abs(w.mean().item() - 1) < 1e-6
    # one block's maps over 4 image tokens and 2 words: each sample puts a different share of its word's mass inside
    torch.manual_seed(0)
    probs = torch.rand(4 * 2, 4, 3)  # (batch·heads, image tokens, prompt tokens)
    token_ids = torch.tensor([[1, 2]] * 4)
    masks = {2: (torch.rand(4, 2, 4) > 0.5).float()}
    valid = torch.ones(4, 2)
    plain = grounding_loss([probs], 4, token_ids, masks, valid)
    per_sample = torch.stack([grounding_loss([probs.view(4, 2, 4, 3)[i]], 1, token_ids[i:i + 1],
                                             {2: masks[2][i:i + 1]}, valid[i:i + 1]) for i in range(4)])
    assert torch.allclose(plain, per_sample.mean())
    assert torch.allclose(grounding_loss([probs], 4, token_ids, masks, valid, w), (w * per_sample).mean())


def test_edit_binding_samples_are_invedits_euler_inversion_and_join_only_the_grounding_loss(smoke_export, tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    import invedit
    from training.shapes_flow.config import EDIT_STEPS
    from training.shapes_flow.finetune import EDIT_LEVELS, edit_binding_cache, edit_binding_scenes, init_from
    from training.shapes_flow.models import build_transformer, load_shared

    cfg = FlowTrainConfig(**{**SMOKE, "ft_edit_scenes": 3})
    export = smoke_export / "export"
    vae, tokenizer, text = load_shared(UNET_MODEL_DIR, cfg)
    weights, shift, scale, sha = init_from(export)
    model = build_transformer(cfg, text.config.hidden_size)
    model.load_state_dict(weights)
    cache = edit_binding_cache(cfg, tmp_path, vae, model, tokenizer, text, shift, scale, sha)
    edits = edit_binding_scenes(cfg)
    assert cache["latents"].shape[:2] == (EDIT_LEVELS, 3) == (EDIT_STEPS // 3, len(edits))
    pipe = invedit.load(str(export), device="cpu", dtype="float32")
    for k, edit in enumerate(edits):
        assert len(edit.source.objects) == 2 and cache["prompts"][k] == (edit.source_prompt, edit.target_prompt)
        assert edit.source_prompt.split() != edit.target_prompt.split()  # one colour word differs
        inverted = invedit.invert(pipe, Image.fromarray(edit.source_image), edit.source_prompt, "euler",
                                  steps=EDIT_STEPS)
        for level in range(EDIT_LEVELS):  # the latent the edit's step `level` starts from
            assert torch.allclose(cache["latents"][level, k], inverted.latents[EDIT_STEPS - level], atol=1e-4)
    again = edit_binding_cache(cfg, tmp_path, vae, None, tokenizer, text, shift, scale, sha)  # read back
    assert torch.equal(again["latents"], cache["latents"])

    def finetune(name: str, *extra: str) -> dict:
        out = tmp_path / name
        assert cli.main(["--smoke", "--stage", "finetune", "--init", str(export), "--out", str(out / "run"),
                         "--export", "--export-dir", str(out / "export"), "--set", "ft_edit_batch=2", *extra]) == 0
        return load_file(out / "export" / "transformer/diffusion_pytorch_model.safetensors")

    plain, with_edits = finetune("plain"), finetune("edits", "--set", "ft_edit_scenes=3")
    assert not all(torch.equal(plain[k], with_edits[k]) for k in plain)  # the samples take part in the loss ...
    plain, with_edits = (finetune(name, "--set", "ground_weight=0", *extra)
                         for name, extra in (("plain0", ()), ("edits0", ("--set", "ft_edit_scenes=3"))))
    # ... only in the grounding loss: without it the same weights (the scenes' stream unchanged; batched sums aside)
    assert all(torch.allclose(plain[k], with_edits[k], atol=1e-6) for k in plain)
