"""Model families behind one contract (`Backbone`); `backbone(pipe)` is what invedit knows about a pipeline."""

from . import flux, instruct, sd3, unet  # noqa: F401  (registers SD 1.x/2.x, SDXL, SD3/3.5, FLUX.1, Kontext, Qwen-Image-Edit)
from .base import FAMILIES, Backbone, LayerInfo, attach, backbone, family_of_class, register_family

__all__ = ["FAMILIES", "Backbone", "LayerInfo", "attach", "backbone", "family_of_class", "register_family"]
