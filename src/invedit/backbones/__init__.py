"""Model families behind one contract (`Backbone`); `backbone(pipe)` is what invedit knows about a pipeline."""

from . import unet  # noqa: F401  (registers Stable Diffusion 1.x/2.x and SDXL)
from .base import FAMILIES, Backbone, LayerInfo, attach, backbone, family_of_class, register_family

__all__ = ["FAMILIES", "Backbone", "LayerInfo", "attach", "backbone", "family_of_class", "register_family"]
