"""invedit: text-guided editing of real images with diffusion models through inversion.

Direct Inversion (PnP Inversion, ICLR 2024) and its baselines, with Prompt-to-Prompt and other editors.

    >>> import invedit
    >>> pipe = invedit.load()                       # embedded shapes model; or a hub id / folder
    >>> result = invedit.edit(pipe, "cat.png", "a cat sitting", "a dog sitting", blend_words="cat dog")
    >>> result.image.save("dog.png")
    >>> invedit.backbone(pipe).family, invedit.backbone(pipe).resolution   # what invedit knows about the model

Comments cite "reference-settings §N": the sections of docs/reference-settings.md, the paper's and the reference
code's settings in this project's words.
"""

from .api import EditResult, edit, feature_request, invert
from .backbones import Backbone, backbone
from .errors import InveditError, ModelNotFoundError
from .images import load_image
from .inversion import Inverted
from .methods import list_methods
from .models import load

__version__ = "0.1.0"
__all__ = ["Backbone", "EditResult", "InveditError", "Inverted", "ModelNotFoundError", "backbone", "edit",
           "feature_request", "invert", "list_methods", "load", "load_image"]
