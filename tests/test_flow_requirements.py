"""SD 3 / FLUX ask for the library versions they are tested with, in one line, before anything loads (this file
also runs in the lowest-versions environment, where it is the refusal that is tested)."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from packaging.version import Version

from invedit.backbones.mmdit import FlowTransformerBackbone
from invedit.backbones.unet import StableDiffusion
from invedit.errors import InveditError


def installed_meets_the_flow_requirements() -> bool:
    return all(Version(version(p)) >= Version(v) for p, v in FlowTransformerBackbone.requires.items())


def test_flow_families_check_the_versions_they_are_tested_with(monkeypatch):
    if installed_meets_the_flow_requirements():
        FlowTransformerBackbone.check_requirements()  # passes
    else:
        with pytest.raises(InveditError, match=r"models need (diffusers|transformers) >= .* \(tested with it; found"):
            FlowTransformerBackbone.check_requirements()
    monkeypatch.setattr(FlowTransformerBackbone, "requires", {"transformers": "999.0"})
    with pytest.raises(InveditError, match=r"need transformers >= 999\.0 .*pip install -U 'transformers>=999\.0'"):
        FlowTransformerBackbone.check_requirements()
    StableDiffusion.check_requirements()  # the UNet families need only the package's own requirements


def test_loading_a_flow_folder_on_older_libraries_is_one_line(tmp_path, monkeypatch):
    import json

    import invedit

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["x", "y"]}))
    monkeypatch.setattr(FlowTransformerBackbone, "requires", {"diffusers": "999.0"})
    with pytest.raises(InveditError, match=r"^flux models need diffusers >= 999\.0"):
        invedit.load(str(tmp_path), device="cpu")
