"""Loading: folders, hub ids offline, clear errors; the offline tiny pipeline; the scheduler (reference-settings §1)."""

from __future__ import annotations

import pytest
import torch

import invedit
from invedit.backbones import backbone
from invedit.editing.base import reference_editor_options
from invedit.errors import InveditError
from invedit.models import load, make_ddim_scheduler, native_resolution
from invedit.testing import tiny_pipeline


def test_tiny_pipeline_is_deterministic_and_sd_shaped():
    a, b = tiny_pipeline(seed=3), tiny_pipeline(seed=3)
    for (name, p), (_, q) in zip(a.unet.named_parameters(), b.unet.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(next(tiny_pipeline(seed=4).unet.parameters()), next(a.unet.parameters()))
    assert type(a).__name__ == "StableDiffusionPipeline" and native_resolution(a) == 64
    assert a.tokenizer("a red circle").input_ids.__len__() == 5  # every vocabulary word is one token


def test_load_folder_round_trip(tmp_path):
    pipe = tiny_pipeline(seed=2)
    pipe.save_pretrained(tmp_path)
    loaded = load(tmp_path, device="cpu")
    for (name, p), (_, q) in zip(pipe.unet.named_parameters(), loaded.unet.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    config = loaded.scheduler.config
    assert (config.steps_offset, config.clip_sample, config.set_alpha_to_one) == (1, False, False)
    loaded.scheduler.set_timesteps(50)
    assert int(loaded.scheduler.timesteps[0]) == 981 and int(loaded.scheduler.timesteps[-1]) == 1
    half = load(tmp_path, device="cpu", dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16


def test_scheduler_keeps_the_checkpoint_betas_and_prediction_type():
    sched = make_ddim_scheduler({"beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "linear",
                                 "prediction_type": "v_prediction", "steps_offset": 0, "clip_sample": True})
    assert sched.config.prediction_type == "v_prediction" and sched.config.beta_end == 0.02
    assert sched.config.clip_sample is False and sched.config.steps_offset == 1


def test_missing_models_give_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(invedit.ModelNotFoundError, match="not found locally; the hub is unreachable"):
        load("nobody/no-such-model-anywhere", device="cpu")
    with pytest.raises(invedit.ModelNotFoundError, match="model folder not found"):
        load(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(invedit.InveditError, match="no model_index.json"):
        load(tmp_path, device="cpu")
    (tmp_path / "model.safetensors").write_bytes(b"0")
    with pytest.raises(invedit.InveditError, match="single file"):
        load(tmp_path / "model.safetensors", device="cpu")


def test_bad_device_and_dtype():
    with pytest.raises(invedit.InveditError, match="unknown dtype"):
        load(None, device="cpu", dtype="int8")
    with pytest.raises(invedit.InveditError, match="device"):
        load(None, device="tpu")


def test_fingerprint_identifies_weights_not_names(tmp_path):
    from invedit.models import model_fingerprint

    a, b, c = tiny_pipeline(seed=3), tiny_pipeline(seed=3), tiny_pipeline(seed=4)
    backbone(b).name = "another name"
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(c)


def test_a_model_folder_can_recommend_editor_settings(tmp_path, image):
    import json

    from .conftest import SOURCE, TARGET

    pipe = tiny_pipeline(seed=2)
    pipe.save_pretrained(tmp_path)
    plain = load(tmp_path, device="cpu")
    (tmp_path / "invedit.json").write_text(json.dumps({"editor_defaults": {"p2p": {"cross_replace_steps": 1.0}}}))
    tuned = load(tmp_path, device="cpu")
    assert invedit.edit(plain, image, SOURCE, TARGET, steps=5).settings["editor"]["cross_replace_until_step"] == 2
    result = invedit.edit(tuned, image, SOURCE, TARGET, steps=5)
    assert result.settings["editor"]["cross_replace_until_step"] == 6
    assert result.settings["editor_model_defaults"] == {"cross_replace_steps": 1.0}
    explicit = invedit.edit(tuned, image, SOURCE, TARGET, steps=5, cross_replace_steps=0.2)
    assert explicit.settings["editor"]["cross_replace_until_step"] == 1  # the caller wins
    assert reference_editor_options(tuned, "p2p") == {"cross_replace_steps": 0.4}  # back to the reference
    assert reference_editor_options(plain, "p2p") == {} and reference_editor_options(tuned, "none") == {}
    (tmp_path / "invedit.json").write_text('{"editor_defaults": {"p2p": 3}}')
    with pytest.raises(invedit.InveditError, match=r"cannot read .*invedit\.json"):
        load(tmp_path, device="cpu")


def test_offload_is_checked_before_the_model_loads():
    """CPU offload needs a GPU to offload to; an unknown mode is refused; both before any weights are read."""
    with pytest.raises(InveditError, match="offload must be 'model' or 'sequential', got 'disk'"):
        load("/nonexistent/model", device="cpu", offload="disk")
    with pytest.raises(InveditError, match="it needs a CUDA device, not cpu"):
        load("/nonexistent/model", device="cpu", offload="model")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b"[1, 2]"],
                         ids=["invalid-json", "not-utf8", "not-an-object"])
def test_a_broken_model_index_is_one_line(tmp_path, content):
    (tmp_path / "model_index.json").write_bytes(content)
    with pytest.raises(invedit.InveditError, match=r"^cannot load model folder .*model_index\.json") as info:
        load(tmp_path, device="cpu")
    assert "\n" not in str(info.value)


def test_the_embedded_model_loads_on_every_supported_transformers():
    """The shipped text encoder uses CLIP's standard ``text_model.`` key names (what transformers 4.x needs; 5.x
    reads them too) and the tokenizer ships vocab.json + merges.txt (4.x's CLIPTokenizer) beside tokenizer.json
    (5.x), holding the same vocabulary and merges."""
    import json

    from safetensors import safe_open

    from invedit.models import embedded_model_path

    folder = embedded_model_path()
    with safe_open(folder / "text_encoder" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)
    fast = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["model"]
    assert json.loads((folder / "tokenizer" / "vocab.json").read_text()) == fast["vocab"]
    merges = (folder / "tokenizer" / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and [m.split(" ") for m in merges[1:]] == fast["merges"]
