"""The ``instruct`` editor: an instruction-trained model (FLUX.1 Kontext, Qwen-Image-Edit) edits the image from an
instruction with its own diffusers pipeline (`invedit.backbones.instruct`). Instruction-trained, not training-free:
a baseline to score the training-free methods against on the same images, not one of them.

It pairs with the ``none`` inversion (nothing is inverted) and takes the instruction in place of a target prompt
(``instruction=`` in `invedit.edit`, ``--instruction`` on the command line, the entry's ``editing_instruction`` in
`invedit bench`); a source prompt is optional and only recorded. Options:

- ``guidance``: the edit's guidance in the model's own sense, replacing the edit's guidance scale (whose default,
  7.5, is Stable Diffusion's): Kontext's embedded guidance (``guidance_scale``; default 2.5, its model card's),
  Qwen-Image-Edit's ``true_cfg_scale`` (default 4.0, its model card's);
- ``negative_prompt``: true CFG's negative prompt (default: Qwen-Image-Edit " ", its model card's; Kontext none,
  i.e. no true CFG).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image

from ..backbones import backbone
from ..errors import InveditError, check_number
from .base import Editor, register


@register
class InstructEditor(Editor):
    """The model's own pipeline edits from the instruction; the loop's two branches are not used."""

    name = "instruct"
    description = ("an instruction-trained model's own pipeline edits from the instruction (FLUX.1 Kontext, "
                   "Qwen-Image-Edit; inversion none; instruction-trained, not training-free)")
    defaults: ClassVar[dict[str, Any]] = {"guidance": None, "negative_prompt": None}
    schedule_kinds = ("instruction",)
    refusal = "it runs an instruction-trained model's own pipeline (FLUX.1 Kontext, Qwen-Image-Edit)"
    inversion_free = True
    takes_instruction = True

    def __init__(self, options: dict[str, Any]):
        super().__init__()
        self.options = options

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        if opts["guidance"] is not None:
            opts["guidance"] = check_number("guidance", opts["guidance"], 0, 50)
        if opts["negative_prompt"] is not None and not isinstance(opts["negative_prompt"], str):
            raise InveditError(f"negative_prompt must be text, got {opts['negative_prompt']!r}")
        return opts

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> InstructEditor:
        opts = cls.validate_options(options)
        model = backbone(pipe)
        if opts["guidance"] is None:
            opts["guidance"] = float(model.instruction_guidance)
        if opts["negative_prompt"] is None:
            opts["negative_prompt"] = model.default_negative_prompt
        return cls(opts)

    def run(self, model, image: Image.Image, instruction: str, steps: int, seed: int, stats) -> torch.Tensor:
        """The edited latent (1, C, h, w) of ``image`` under ``instruction`` (`InstructionBackbone.instruct`)."""
        return model.instruct(image, instruction, steps, self.options["guidance"], self.options["negative_prompt"],
                              seed, stats)

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}
