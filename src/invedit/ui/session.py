"""What one press of "Edit" does in the web UI, without any UI: check, invert (or reuse), edit, save.

`EditSession` holds the loaded pipeline and a small in-memory inversion cache keyed by (image pixels, the prompt
the source branch is inverted under, model fingerprint, steps, guidance, seed, method and options), so trying
another target prompt on the same image skips the inversion. Every bad input raises `InveditError` with the same
one-line message the CLI prints.
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
from ..errors import InveditError


@dataclass
class EditRequest:
    """The page's inputs for one edit."""

    image: Image.Image | str | Path | None  # a path is checked like the CLI's input (load_image)
    source_prompt: str
    target_prompt: str
    inversion: str = "direct"
    editor: str = "p2p"
    blend_words: str = ""
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    editor_options: str = ""  # "KEY=VALUE" per line (or comma-separated), as `-o` on the command line
    inversion_options: str = ""
    image_name: str | None = None  # how messages name an image given as a path (the upload's own file name)
    mask: Image.Image | str | Path | None = None  # the region to edit (mask-taking editors: kv-edit), white = edit
    mask_name: str | None = None  # how messages name a mask given as a path


@dataclass
class EditOutcome:
    """One finished edit: the result, whether the inversion came from the cache, the files written."""

    result: Any  # an `invedit.api.EditResult`
    cached_inversion: bool
    image_path: Path
    record_path: Path
    seconds: float

    def message(self) -> str:
        r = self.result
        inversion = (f"inversion reused from the cache ({r.nfe_inversion} NFE not spent again)"
                     if self.cached_inversion else f"{r.nfe_inversion} NFE inversion")
        return (f"{r.settings['inversion']}+{r.settings['editor']['editor']}: NFE {r.nfe} ({inversion}, "
                f"{r.nfe_edit} edit), {self.seconds:.1f} s")


class EditSession:
    """The loaded model and the inversions made so far (the ``cache_size`` most recent)."""

    def __init__(self, pipe, cache_size: int = 8, out_dir: str | Path | None = None):
        self.pipe = pipe
        self.cache_size = cache_size
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()  # the UNet's hooks are per edit: one edit at a time
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="invedit-ui-"))

    def _inversion_key(self, image: Image.Image, prompt: str, request: EditRequest, options: dict) -> str:
        h = hashlib.sha256(image.tobytes())
        h.update(json.dumps([image.size, prompt, backbone(self.pipe).fingerprint(), request.steps, request.guidance,
                             request.seed, request.inversion, options], sort_keys=True, default=str).encode())
        return h.hexdigest()

    def check(self, request: EditRequest) -> tuple[Image.Image, dict[str, Any], dict[str, Any], str, Any, Any]:
        """Everything that can be refused before any network call: (image, editor options, inversion options,
        the prompt the image is inverted under, the edit mask or None, the features the editor reads from the
        inversion or None)."""
        from ..images import load_image
        from ..masks import load_mask
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
            mask = None if request.mask is None else load_mask(request.mask, request.image)
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
        return (image, settings.editor_options, settings.inversion_options, prepared.inversion_prompt, mask,
                prepared.feature_request)

    def edit(self, request: EditRequest) -> EditOutcome:
        """Run one edit (see the module docstring); writes ``edit.png`` and ``edit.json`` in a fresh folder.

        Raises:
            InveditError: bad input (one line).
        """
        from .. import api

        with self.lock:
            started = time.perf_counter()
            image, editor_options, inversion_options, inversion_prompt, mask, record = self.check(request)
            key = self._inversion_key(image, inversion_prompt, request,
                                      {**inversion_options, "recorded_features": record and record.record()})
            inverted = self.cache.get(key)
            cached = inverted is not None
            if cached:
                self.cache.move_to_end(key)
            else:
                inverted = api.invert(self.pipe, image, inversion_prompt, request.inversion, request.steps,
                                      request.guidance, request.seed, progress=True, record=record,
                                      **inversion_options)
                self.cache[key] = inverted
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            result = api.edit(self.pipe, inverted, request.source_prompt, request.target_prompt,
                              editor=request.editor, guidance_scale=request.guidance, seed=request.seed,
                              progress=True, mask=mask, **editor_options)
            result.settings["source_prompt"] = " ".join(request.source_prompt.split())
            result.settings["inversion_cached"] = cached
            folder = Path(tempfile.mkdtemp(dir=self.out_dir, prefix="edit-"))
            image_path = result.save(folder / "edit.png")
            return EditOutcome(result, cached, image_path, image_path.with_suffix(".json"),
                               time.perf_counter() - started)
