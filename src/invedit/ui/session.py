"""What one press of "Edit" does in the web UI, without any UI: check, invert (or reuse), edit, save.

`EditSession` holds the loaded pipeline and a small in-memory inversion cache keyed by (image pixels, the prompt
the source branch is inverted under, model fingerprint, steps, guidance, seed, method and options), so trying
another target prompt on the same image skips the inversion. It also remembers its recent results: an image that is
one of them, pixel for pixel ("edit this result again" puts the result's PNG in as the new image), is edited as a
continuation, and the new record's ``previous`` links that edit (`invedit.api.EditResult.link`), as
`EditResult.edit_again` does in Python. The edit region of a mask-taking editor is either an uploaded mask file or
painted layers (a brush over the image in the page's editor: painted = edit). Every bad input raises
`InveditError` with the same one-line message the CLI prints.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..backbones import backbone
from ..editing import get_editor
from ..errors import InveditError


@dataclass
class EditRequest:
    """The page's inputs for one edit."""

    image: Image.Image | str | Path | None  # a path is checked like the CLI's input (load_image)
    source_prompt: str
    target_prompt: str
    inversion: str = "direct"
    editor: str | None = None  # None: the model's default editor (`Backbone.default_editor`)
    blend_words: str = ""
    steps: int | None = 50  # None: the model's (its folder's invedit.json, else 50)
    guidance: float | None = None  # None: the model's (`Backbone.default_guidance`)
    seed: int = 0
    editor_options: str = ""  # "KEY=VALUE" per line (or comma-separated), as `-o` on the command line
    inversion_options: str = ""
    image_name: str | None = None  # how messages name an image given as a path (the upload's own file name)
    mask: Image.Image | str | Path | None = None  # the region to edit (mask-taking editors: kv-edit), white = edit
    mask_name: str | None = None  # how messages name a mask given as a path
    painted: list[Image.Image | str | Path] | None = None  # layers painted over the image: alpha ≥ 128 = edit


@dataclass
class EditOutcome:
    """One finished edit: the result, whether the inversion came from the cache, the files written."""

    result: Any  # an `invedit.api.EditResult`
    cached_inversion: bool
    image_path: Path
    record_path: Path
    seconds: float
    mask: Any = None  # the `invedit.masks.EditMask` the edit was made in (painted or uploaded), None without one

    def message(self) -> str:
        r = self.result
        inversion = (f"inversion reused from the cache ({r.nfe_inversion} NFE not spent again)"
                     if self.cached_inversion else f"{r.nfe_inversion} NFE inversion")
        mask = r.settings.get("mask")
        region = f", mask {mask['source']} ({100 * mask['edited_fraction']:.1f}% of the image)" if mask else ""
        previous = r.settings.get("previous")
        chain = (f"; edits the result {previous['image_sha256'][:12]} again (linked in the record)"
                 if previous else "")
        return (f"{r.settings['inversion']}+{r.settings['editor']['editor']}: NFE {r.nfe} ({inversion}, "
                f"{r.nfe_edit} edit), {self.seconds:.1f} s{region}{chain}")

    def follow_up(self) -> dict[str, Any]:
        """The page's fields for "edit this result again": the result's PNG as the image and its target prompt as
        the new source prompt (and as the target to change); blend words and masks cleared (they named this edit's
        words and region)."""
        target = self.result.settings["target_prompt"]
        if target is None:  # an instruction edit: the next instruction starts empty, as does the source prompt
            return {"image": str(self.image_path), "source_prompt": "", "target_prompt": "", "blend_words": "",
                    "mask": None}
        return {"image": str(self.image_path), "source_prompt": target, "target_prompt": target, "blend_words": "",
                "mask": None}


def request_mask(request: EditRequest) -> Any:
    """The edit region of a request (an `invedit.masks.EditMask`, or None): its painted layers (nothing painted
    counts as no mask, so that editors without one still run) or its uploaded mask, not both.

    Raises:
        InveditError: both given; a painting of another size than the image; an unreadable mask.
    """
    from ..masks import EditMask, image_size, load_mask, painted_pixels

    painted = painted_pixels(request.painted or [])
    if painted is None:
        return None if request.mask is None else load_mask(request.mask, request.image)
    if request.mask is not None:
        raise InveditError("give the mask one way: paint it over the image or upload a mask file, not both "
                           "(clear one of them)")
    size = image_size(request.image)
    if painted.shape != (size[1], size[0]):
        raise InveditError(f"the painted mask is {painted.shape[1]}x{painted.shape[0]} pixels but the image is "
                           f"{size[0]}x{size[1]}: paint over the image itself (the painter shows the image "
                           "once it is uploaded)")
    return EditMask.from_pixels(painted, "painted", "painted mask")


class EditSession:
    """The loaded model and the inversions made so far (the ``cache_size`` most recent)."""

    def __init__(self, pipe, cache_size: int = 8, out_dir: str | Path | None = None):
        self.pipe = pipe
        self.cache_size = cache_size
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()  # the UNet's hooks are per edit: one edit at a time
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="invedit-ui-"))
        self.results: OrderedDict[str, EditOutcome] = OrderedDict()  # recent outcomes by their image's pixels

    def _inversion_key(self, image: Image.Image, prompt: str, settings, options: dict) -> str:
        h = hashlib.sha256(image.tobytes())
        h.update(json.dumps([image.size, prompt, backbone(self.pipe).fingerprint(), settings.steps,
                             settings.guidance_scale, settings.seed, settings.inversion, options], sort_keys=True,
                            default=str).encode())
        return h.hexdigest()

    @staticmethod
    def _pixels_key(image: Image.Image) -> str:
        return hashlib.sha256(image.tobytes() + repr((image.mode, image.size)).encode()).hexdigest()

    def check(self, request: EditRequest) -> tuple[Image.Image, Any, str, Any, Any]:
        """Everything that can be refused before any network call: (image, the edit's settings with the model's
        defaults filled in (`invedit.prepare.EditSettings`), the prompt the image is inverted under, the edit mask
        or None, the features the editor reads from the inversion or None)."""
        from ..images import load_image
        from ..options import parse_options, split_items
        from ..prepare import check_settings, prepare_edit

        if request.image is None:
            raise InveditError("upload an image (or pick an example) first")
        settings = check_settings(
            request.inversion, request.editor, request.steps, request.guidance, request.seed,
            parse_options(split_items(request.inversion_options), "inversion option"),
            parse_options(split_items(request.editor_options), "--option"), request.blend_words.strip() or None,
            steps_limit=self.pipe.scheduler.config.num_train_timesteps)
        try:  # messages name uploads by their own file names, not the server's upload paths
            mask = request_mask(request)
            prepared = prepare_edit(self.pipe, request.source_prompt, request.target_prompt, settings, mask=mask)
            image = load_image(request.image, backbone(self.pipe).resolution)
        except InveditError as exc:
            message = str(exc)
            for given, name in ((request.image, request.image_name), (request.mask, request.mask_name)):
                if name and isinstance(given, (str, Path)):
                    message = message.replace(str(given), name)
            if message != str(exc):
                raise InveditError(message) from None
            raise
        return image, prepared.settings, prepared.inversion_prompt, mask, prepared.feature_request

    def edit(self, request: EditRequest) -> EditOutcome:
        """Run one edit (see the module docstring); writes ``edit.png`` and ``edit.json`` in a fresh folder.

        Raises:
            InveditError: bad input (one line).
        """
        from .. import api

        with self.lock:
            started = time.perf_counter()
            image, settings, inversion_prompt, mask, record = self.check(request)
            key = self._inversion_key(image, inversion_prompt, settings,
                                      {**settings.inversion_options, "recorded_features": record and record.record()})
            inverted = self.cache.get(key)
            cached = inverted is not None
            if cached:
                self.cache.move_to_end(key)
            else:
                inverted = api.invert(self.pipe, image, inversion_prompt, settings.inversion, settings.steps,
                                      settings.guidance_scale, settings.seed, progress=True, record=record,
                                      **settings.inversion_options)
                self.cache[key] = inverted
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            # an instruction editor (FLUX.1 Kontext, Qwen-Image-Edit) reads the target box as its instruction
            instructed = get_editor(settings.editor).takes_instruction
            result = api.edit(self.pipe, inverted, request.source_prompt, None if instructed else request.target_prompt,
                              editor=request.editor, guidance_scale=request.guidance, seed=request.seed,
                              progress=True, mask=mask, instruction=request.target_prompt if instructed else None,
                              **settings.editor_options)
            result.settings["source_prompt"] = " ".join(request.source_prompt.split())
            result.settings["inversion_cached"] = cached
            previous = self.results.get(self._pixels_key(image))
            if previous is not None:  # the image is one of this session's results: a chained edit
                result.settings["previous"] = previous.result.link()
            folder = Path(tempfile.mkdtemp(dir=self.out_dir, prefix="edit-"))
            image_path = result.save(folder / "edit.png")
            outcome = EditOutcome(result, cached, image_path, image_path.with_suffix(".json"),
                                  time.perf_counter() - started, mask)
            self.results.pop(self._pixels_key(result.image), None)
            self.results[self._pixels_key(result.image)] = outcome
            while len(self.results) > self.cache_size:
                self.results.popitem(last=False)
            return outcome
