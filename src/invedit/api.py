"""The public edit path: image → VAE encode → invert → two-branch edit → VAE decode → `EditResult`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .backbones import backbone
from .editing import EDITORS, get_editor
from .editing.attention import ValueTransforms
from .errors import InveditError
from .features import FeatureRequest
from .features import record as record_features
from .images import load_image
from .inversion import InversionInputs, Inverted, get_inversion
from .masks import load_mask
from .outputs import write_atomically
from .prepare import (
    DEFAULT_INVERSION,
    check_guidance,
    check_model_kind,
    check_seed,
    check_settings,
    check_steps,
    mask_argument,
    model_numbers,
    prepare_edit,
)
from .prompts import check_prompt
from .sampling import GuidedDenoiser, LoopContext, RunStats, denoise_two_branches
from .versions import versions

#: Quality of JPEG outputs: Pillow's default, which the reference scripts' outputs were saved with.
JPEG_QUALITY = 75


# ---- VAE ---------------------------------------------------------------------------------------------------
def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """Latent z₀ of an image, float32 (1, C, h, w) (the model family's `Backbone.encode_image`)."""
    return backbone(pipe).encode_image(image)


def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Decode latents (N, C, h, w) to PIL images (the model family's `Backbone.decode`)."""
    return backbone(pipe).decode(latents)


def _progress(total: int, enabled: bool, desc: str) -> tuple[Callable[[int], None] | None, Any]:
    if not enabled:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)
    return (lambda _i: bar.update(1)), bar


# ---- inversion -----------------------------------------------------------------------------------------------
def invert(pipe, image: str | os.PathLike | Image.Image, prompt: str, method: str = DEFAULT_INVERSION,
           steps: int | None = None, guidance_scale: float | None = None, seed: int = 0, progress: bool = False,
           record: FeatureRequest | None = None, **options: Any) -> Inverted:
    """Invert a real image under its source prompt, so that one inversion serves many edits.

    Args:
        pipe: a pipeline from `invedit.load` (or `invedit.testing.tiny_pipeline`).
        image: path or PIL image; centre-cropped and resized to the model's resolution.
        prompt: the source prompt describing the image ("" inverts unconditionally).
        method: inversion method name (see `invedit.list_methods()`).
        steps: DDIM steps (default: the model folder's recommendation, else 50 as in the paper).
        guidance_scale: the guidance the edits will use (methods that optimise against it need it; default: the
            model's, `invedit.prepare.model_numbers`).
        seed: seed for methods that draw noise.
        progress: show a progress bar.
        record: features to record while inverting, for editors that read them instead of the source branch
            (`feature_request`; `invedit.edit` asks for them itself when it inverts).
        **options: method options (e.g. ``offset_scale`` for ``direct``).
    Returns:
        An `Inverted` (the z* trajectory and method state, the recorded features, NFE and seconds).
    """
    cls = get_inversion(method)
    options = cls.validate_options(options)
    if steps is not None:
        check_steps(steps, pipe.scheduler.config.num_train_timesteps)
    if guidance_scale is not None:
        check_guidance(guidance_scale)
    seed = check_seed(seed)
    model = backbone(pipe)
    steps, guidance_scale, _ = model_numbers(model, steps, guidance_scale)
    check_model_kind(model, inversion=method)
    prompt = check_prompt(prompt, model.tokenizer, "source prompt", allow_empty=True)
    image = load_image(image, model.resolution)
    start = time.perf_counter()
    stats = RunStats()
    # an inversion-free method keeps z0 only and reads no prompt (instruction models encode none this way)
    cond, null = (None, None) if cls.inversion_free else model.encode_prompts([prompt, ""]).split(1)
    callback, bar = _progress(steps, progress, f"invert ({method})")
    inputs = InversionInputs(
        model=model, z0=model.encode_image(image), prompt=prompt, cond=cond, null=null,
        schedule=model.schedule(steps), guidance_scale=guidance_scale, stats=stats,
        generator=torch.Generator("cpu").manual_seed(seed), callback=callback, image=image,
    )
    try:
        inverted, features = record_features(lambda run_inputs: cls.run(run_inputs, **options), inputs, record)
    finally:
        if bar is not None:
            bar.close()
    return dataclasses.replace(inverted, image=image, model=model.name, seconds=time.perf_counter() - start,
                               features=features)


def feature_request(pipe, editor: str, steps: int, inversion: str = DEFAULT_INVERSION, source_prompt: str = "a",
                    target_prompt: str = "a", mask: Any = None, **editor_options: Any) -> FeatureRequest | None:
    """What ``editor`` with ``editor_options`` reads from an inversion of ``steps`` steps (pass it to `invert` as
    ``record``), or None when it reads the source branch instead; `invedit.edit` does this itself when it inverts."""
    settings = check_settings(inversion, editor, steps, 7.5, 0, None, editor_options,
                              steps_limit=pipe.scheduler.config.num_train_timesteps)
    if mask is not None:
        mask = load_mask(mask, None)
    return prepare_edit(pipe, source_prompt, target_prompt, settings, mask=mask).feature_request


# ---- editing -------------------------------------------------------------------------------------------------
@dataclass
class EditResult:
    """Outcome of one edit.

    Attributes:
        image: the edited image (target branch), PIL at the model's resolution.
        reconstruction: the decoded source branch (what the method reconstructs of the input).
        source: the input image as the model saw it (cropped, resized).
        latents: final latents (2, C, h, w): row 0 source, row 1 target.
        nfe: network evaluations of the method, inversion + edit (``nfe_inversion`` + ``nfe_edit``), also when
            the edit reused a given `Inverted` (``inversion_reused``): what the method costs per image, as the
            benchmark tables count it. What this call itself spent is ``nfe_spent`` (the edit's alone when reused).
        seconds: wall time, counted like ``nfe`` (``seconds_inversion`` + ``seconds_edit``; ``seconds_spent``).
        inversion_reused: the edit stepped a given `Inverted` (made earlier, its cost paid there) instead of
            inverting.
        settings: everything needed to reproduce the edit (prompts, methods, options, seed, model, versions).
    """

    image: Image.Image
    reconstruction: Image.Image
    source: Image.Image
    latents: torch.Tensor
    nfe_inversion: int
    nfe_edit: int
    seconds_inversion: float
    seconds_edit: float
    settings: dict[str, Any] = field(default_factory=dict)
    inversion_reused: bool = False

    @property
    def nfe(self) -> int:
        return self.nfe_inversion + self.nfe_edit

    @property
    def seconds(self) -> float:
        return self.seconds_inversion + self.seconds_edit

    @property
    def nfe_spent(self) -> int:
        """Network evaluations this call spent: the edit's, plus the inversion's unless it was reused."""
        return self.nfe_edit + (0 if self.inversion_reused else self.nfe_inversion)

    @property
    def seconds_spent(self) -> float:
        """Wall time this call spent, counted like `nfe_spent`."""
        return self.seconds_edit + (0.0 if self.inversion_reused else self.seconds_inversion)

    def record(self) -> dict[str, Any]:
        """JSON-friendly record: settings plus cost (``nfe``/``seconds``: inversion + edit; ``*_spent``: this
        call's; see the class)."""
        return {**self.settings, "nfe": self.nfe, "nfe_inversion": self.nfe_inversion, "nfe_edit": self.nfe_edit,
                "inversion_reused": self.inversion_reused, "nfe_spent": self.nfe_spent,
                "seconds_spent": round(self.seconds_spent, 4),
                "seconds": round(self.seconds, 4), "seconds_inversion": round(self.seconds_inversion, 4),
                "seconds_edit": round(self.seconds_edit, 4)}

    def link(self) -> dict[str, Any]:
        """What the record of an edit made from this result (`edit_again`) says about it: ``image_sha256``, the
        SHA-256 of this image as a PNG (the hash `save` lists under ``files`` for a ``.png``), and ``record``, this
        edit's whole record (which holds its own ``previous`` when it was itself a re-edit, so the chain back to
        the first image is complete). `saved_link` reads the same from a saved image and its JSON.
        """
        return {"image_sha256": hashlib.sha256(_png_bytes(self.image)).hexdigest(), "record": self.record()}

    def edit_again(self, pipe, target_prompt: str, source_prompt: str | None = None, **kwargs: Any) -> EditResult:
        """Edit this result's image again: ``invedit.edit(pipe, self, source_prompt, target_prompt, ...)`` with this
        edit's inversion, editor, steps, guidance, seed and inversion options unless given in ``kwargs``.

        The edited image is inverted afresh (under ``source_prompt``, default: this edit's target prompt), exactly
        as if it had been saved as a PNG and given to `invedit.edit`; the new record's ``previous`` links this
        edit (`link`). The editor's own options (blend words, a mask) are not carried over: they name this edit's
        words and region.

        Why not reuse this edit's target-branch trajectory as the new inversion: it would skip one VAE round trip,
        but it is an inversion only for Direct Inversion (whose source branch may be pinned to any trajectory);
        null-text's optimised embeddings, edit-friendly DDPM's noise maps, EDICT's coupled pair and the
        inversion-free editors have no counterpart on the target branch, and it exists only in this process,
        whereas re-inverting makes every chained edit a function of the saved PNG and its settings.
        """
        s = self.settings
        inherited = {"inversion": s.get("inversion"), "editor": (s.get("editor") or {}).get("editor"),
                     "steps": s.get("steps"), "guidance_scale": s.get("guidance_scale"), "seed": s.get("seed"),
                     "inversion_options": s.get("inversion_options")}
        if inherited["inversion"] == "generate":  # a generated pair's image is a real image to invert now
            inherited["inversion"] = None
        settings = {k: v for k, v in inherited.items() if v is not None}
        return edit(pipe, self, source_prompt, target_prompt, **{**settings, **kwargs})

    def save(self, path: str | os.PathLike, sidecar: bool = True, reconstruction: bool = False,
             reconstruction_name: str = "reconstruction") -> Path:
        """Write the edited image (format from the suffix, PNG by default), its JSON record and optionally the
        reconstruction (``NAME.reconstruction.png``; ``NAME.source.png`` with ``reconstruction_name="source"``,
        as the CLI names a generated pair's source) as one atomic group; the record names each image's SHA-256.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".png")
        images = [(path, self.image, Image.registered_extensions().get(path.suffix.lower(), "PNG"))]
        if reconstruction:
            images.append((path.with_name(f"{path.stem}.{reconstruction_name}.png"), self.reconstruction, "PNG"))
        encoded = [(target, _encoded(image, fmt)) for target, image, fmt in images]
        files = [(target, lambda f, data=data: f.write(data)) for target, data in encoded]
        if sidecar:
            record = {**self.record(), "files": {t.name: hashlib.sha256(d).hexdigest() for t, d in encoded}}
            text = json.dumps(record, indent=2, default=str)
            files.append((path.with_suffix(".json"), lambda f: f.write(text.encode())))
        write_atomically(files)
        return path


def saved_link(image: str | os.PathLike) -> dict[str, Any] | None:
    """The link to the edit that wrote the image file ``image`` (`EditResult.link`'s shape), read from the JSON
    `EditResult.save` wrote beside it; None unless that JSON exists and lists this very file's SHA-256 under
    ``files`` (an image edited since, or another file of the same name, is not linked)."""
    path = Path(image)
    sidecar = path.with_suffix(".json")
    if path.suffix.lower() == ".json" or not sidecar.is_file() or not path.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or files.get(path.name) != digest:
        return None
    return {"image_sha256": digest, "record": {k: v for k, v in record.items() if k != "files"}}


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    """The PNG file `EditResult.save` writes for ``image`` (Pillow's encoder is deterministic)."""
    return _encoded(image, "PNG")


def edit(pipe, image_or_inverted: str | os.PathLike | Image.Image | Inverted | EditResult | None,
         source_prompt: str | None,
         target_prompt: str, inversion: str | None = None, editor: str | None = None, steps: int | None = None,
         guidance_scale: float | None = None, seed: int = 0, inversion_options: dict[str, Any] | None = None,
         progress: bool = False, mask: Any = None, instruction: str | None = None,
         **editor_options: Any) -> EditResult:
    """Edit a real image: invert it under ``source_prompt``, then denoise source and target branches together.

    Args:
        pipe: a pipeline from `invedit.load`.
        image_or_inverted: a path, a PIL image, an `Inverted` from `invedit.invert` (reused as is), or an
            `EditResult` to edit again: its image is inverted afresh, as the PNG it saves would be, and the record's
            ``previous`` links it (`EditResult.link`; `EditResult.edit_again` also keeps its settings). An image
            file that `EditResult.save` wrote is linked the same way, through its JSON (`saved_link`). ``None``
            (SD3 / FLUX) edits a generated pair as the official code of MM-DiT editing does: source and target both
            start from the initial noise the model's diffusers pipeline draws for ``seed`` (so a seed gives the
            pipeline's own image for the source prompt); ``reconstruction`` (and ``source``) is then the generated
            source image.
        source_prompt: describes the input image (``None`` with an `Inverted`: its prompt; with an `EditResult`:
            its target prompt; optional with an instruction editor, which only records it).
        target_prompt: describes the wanted image (``None`` with an instruction editor).
        inversion: inversion method (default ``"direct"``; with an `Inverted`, its method).
        editor: editing method, e.g. ``"p2p"`` or ``"none"``; default: the model family's
            (`Backbone.default_editor`: ``p2p`` on SD 1.x/2.x/SDXL, ``shared-attention`` on SD 3 / FLUX).
        steps: DDIM steps (default: the model folder's recommendation, else 50; with an `Inverted`, its steps).
        guidance_scale: classifier-free guidance of the edit (default: the model folder's recommendation, else
            the family's: 7.5 as in the paper; 1 on FLUX.1-schnell). The record's ``defaulted`` says which
            settings were filled in and from where.
        seed: seed of every random choice.
        inversion_options: options of the inversion method when inverting here.
        progress: show progress bars.
        mask: the region a mask-taking editor (``kv-edit``) edits, white = edit: a file, a PIL image or a 2-D array
            (bool, 0/1 or 0–255 integers, 0–1 floats) of the image's size (with an `Inverted`: any square), or an
            `invedit.masks.EditMask`; refused for the other editors (`invedit.masks` says how it is read).
        instruction: what an instruction editor (``instruct``: FLUX.1 Kontext, Qwen-Image-Edit, with inversion
            ``"none"``) does to the image, e.g. "make the cat a dog", in place of the target prompt; refused for
            the other editors.
        **editor_options: editor options, e.g. ``cross_replace_steps=0.4`` or ``blend_words="cat dog"`` for P2P
            (LocalBlend and the ×2 equaliser; a word missing from its own prompt but in the other one — an added
            or removed object, ``"star star"`` — contributes no map from the prompt that lacks it).
    Returns:
        An `EditResult`.
    Raises:
        InveditError: bad input (prompts, blend words, steps, guidance, names, options, image).
    """
    previous = image_or_inverted if isinstance(image_or_inverted, EditResult) else None
    if previous is not None:  # re-invert the edited image (why, not its target trajectory: EditResult.edit_again)
        image_or_inverted = previous.image
        if source_prompt is None:
            source_prompt = previous.settings.get("target_prompt") or ""
    reused = isinstance(image_or_inverted, Inverted)
    target_prompt = instruction_or_target(editor, target_prompt, instruction)
    if mask is not None:
        mask = load_mask(mask, None if reused else image_or_inverted)
    if image_or_inverted is None:
        settings, prepared, inverted = _generated_start(pipe, source_prompt, target_prompt, inversion, editor, steps,
                                                        guidance_scale, seed, inversion_options, editor_options, mask)
    elif reused:
        inverted = image_or_inverted
        source_prompt = _check_reuse(pipe, inverted, source_prompt, inversion, steps, inversion_options, editor,
                                     editor_options)
        settings = check_settings(inverted.method, editor, inverted.steps, guidance_scale, seed,
                                  inverted.options, editor_options)
        prepared = prepare_edit(pipe, source_prompt, target_prompt, settings, inverted_prompt=inverted.prompt,
                                mask=mask)
        settings = prepared.settings
    else:
        settings = check_settings(inversion or DEFAULT_INVERSION, editor, steps, guidance_scale, seed,
                                  inversion_options, editor_options,
                                  steps_limit=pipe.scheduler.config.num_train_timesteps)
        prepared = prepare_edit(pipe, source_prompt, target_prompt, settings, mask=mask)
        settings = prepared.settings
        inverted = invert(pipe, image_or_inverted, prepared.inversion_prompt, settings.inversion, settings.steps,
                          settings.guidance_scale, settings.seed, progress, prepared.feature_request,
                          **settings.inversion_options)
    editor = settings.editor
    guidance_scale, seed, target_prompt = settings.guidance_scale, settings.seed, prepared.target_prompt
    branch_prompt, model_defaults = prepared.branch_prompt, prepared.model_defaults
    source_prompt = prepared.source_prompt
    editor_options = _resolve_editor_options(model_defaults, inverted, editor, editor_options)
    editor_cls = get_editor(editor)
    result_editor = editor_cls.create(pipe, branch_prompt, target_prompt, inverted.steps, **editor_options,
                                      **mask_argument(editor_cls, prepared.mask))
    inverted.check_edit(guidance_scale)

    start = time.perf_counter()
    if editor_cls.takes_instruction:  # the model's own pipeline edits; the source stays z0 (its VAE reconstruction)
        stats = RunStats()
        edited = result_editor.run(backbone(pipe), inverted.image, target_prompt, inverted.steps, seed, stats)
        final = torch.cat([inverted.z0.to(edited.device, edited.dtype), edited])
    else:
        final, stats = _run_edit(pipe, inverted, result_editor, branch_prompt, target_prompt, guidance_scale, seed,
                                 progress, f"edit ({inverted.method}+{editor})")
    reconstruction, image = decode_latents(pipe, final)
    seconds_edit = time.perf_counter() - start

    prompts = ({"instruction": target_prompt, "target_prompt": None} if editor_cls.takes_instruction
               else {"target_prompt": target_prompt})
    record = {"source_prompt": source_prompt, "source_branch_prompt": branch_prompt, **prompts,
              **_edit_record(pipe, inverted, result_editor, model_defaults, guidance_scale, seed, stats),
              "defaulted": {k: v for k, v in settings.defaulted.items() if not (reused and k == "steps")}}
    settings = record
    if prepared.mask is not None:
        settings["mask"] = prepared.mask.record()
    link = previous.link() if previous is not None else (
        saved_link(image_or_inverted) if isinstance(image_or_inverted, (str, os.PathLike)) else None)
    if link is not None:
        settings["previous"] = link
    source = reconstruction if inverted.image is None else inverted.image  # a generated pair: its source
    return EditResult(image=image, reconstruction=reconstruction, source=source, latents=final.cpu(),
                      nfe_inversion=inverted.stats.nfe, nfe_edit=stats.nfe,
                      seconds_inversion=inverted.seconds, seconds_edit=seconds_edit, settings=settings,
                      inversion_reused=reused)


def instruction_or_target(editor: str | None, target_prompt: str | None, instruction: str | None) -> str | None:
    """What the edit's target branch is conditioned on: an instruction editor's instruction, or the target prompt.

    Raises:
        InveditError: an instruction editor without an instruction or with a target prompt, or an instruction
            for an editor that takes a target prompt.
    """
    editor_cls = None if editor is None else get_editor(editor)  # None: the model's default (not an instruction one)
    if editor_cls is not None and editor_cls.takes_instruction:
        if target_prompt is not None:
            raise InveditError(f"editor {editor!r} edits from an instruction, not a target prompt: give "
                               "instruction= (--instruction) instead")
        if instruction is None:
            raise InveditError(f"editor {editor!r} needs an instruction (instruction= in Python, --instruction on "
                               "the command line), e.g. \"make the cat a dog\"")
        return instruction
    if instruction is not None:
        takers = sorted(n for n, cls in EDITORS.items() if cls.takes_instruction)
        raise InveditError(f"editor {editor!r} takes a target prompt, not an instruction; the instruction editors "
                           f"({', '.join(takers)}) run instruction-trained models")
    return target_prompt


def _generated_start(pipe, source_prompt, target_prompt, inversion, editor, steps, guidance_scale, seed,
                     inversion_options, editor_options, mask):
    """The checks of an edit of a generated pair (no input image) and its start, `Generated` (the seeded noise)."""
    from .inversion.generated import Generated

    model = backbone(pipe)
    if model.schedule_kind != "flow":
        raise InveditError(f"editing without an input image (a generated pair) runs on SD3 / FLUX models, not on "
                           f"{model.family} models; give an image")
    if inversion not in (None, Generated.method) or inversion_options:
        raise InveditError("a generated pair is not inverted: give no inversion (or an image to invert)")
    if mask is not None:
        raise InveditError("a generated pair takes no mask")
    if get_editor(editor).inversion_free:
        raise InveditError(f"editor {editor!r} edits an input image without inverting it; give an image")
    # Checked as an edit stepping a plain Euler trajectory: the generated pair is sampled exactly so.
    settings = check_settings("euler", editor, steps, guidance_scale, seed, None, editor_options,
                              steps_limit=pipe.scheduler.config.num_train_timesteps)
    prepared = prepare_edit(pipe, source_prompt, target_prompt, settings)
    settings = prepared.settings  # complete: what was left to the model filled in
    start = Generated.from_seed(model, prepared.branch_prompt, settings.steps, settings.seed, settings.guidance_scale)
    return settings, prepared, start


def _edit_record(pipe, inverted: Inverted, editor, model_defaults: dict[str, Any], guidance_scale: float,
                 seed: int, stats: RunStats) -> dict[str, Any]:
    """What an edit record holds besides its prompts: methods, settings, model, cost, versions."""
    record = editor.settings()
    blend = record.get("blend_words", record.get("local_blend_words"))
    model = backbone(pipe)
    return {
        "blend_words": list(blend) if blend else None,
        "inversion": inverted.method, "inversion_options": inverted.options, "editor": editor.settings(),
        "editor_model_defaults": model_defaults,
        **({"inversion_features": inverted.features.summary()} if inverted.features is not None else {}),
        "steps": inverted.steps, "guidance_scale": guidance_scale, "seed": seed, "model": model.name,
        "model_kind": model.family, "resolution": model.resolution, "model_fingerprint": model.fingerprint(),
        "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
        "quantize": model.quantize, "loras": [dict(r) for r in model.loras],
        "nfe_backward": inverted.stats.nfe_backward + stats.nfe_backward,
        "nfe_backward_inversion": inverted.stats.nfe_backward, "nfe_backward_edit": stats.nfe_backward,
        "versions": versions(),
    }


def _check_reuse(pipe, inverted: Inverted, source_prompt: str | None, inversion: str | None, steps: int | None,
                 inversion_options: dict[str, Any] | None, editor: str, editor_options: dict[str, Any]) -> str:
    """Refuse arguments that contradict a given inversion; return the edit's source prompt: the given one when the
    image was inverted under it, or under the prompt the editor inverts it under (`Editor.inversion_prompt`:
    UniEdit-Flow's empty prompt), else the inversion's."""
    if inversion not in (None, inverted.method):
        raise InveditError(f"the given inversion was made with {inverted.method!r}, not {inversion!r}")
    if steps not in (None, inverted.steps):
        raise InveditError(f"the given inversion has {inverted.steps} steps, not {steps}")
    if inversion_options:
        raise InveditError("inversion options apply when inverting; this inversion is already done")
    if source_prompt is None:
        return inverted.prompt
    source = check_prompt(source_prompt, pipe.tokenizer, allow_empty=True)
    if source != inverted.prompt and get_editor(editor).inversion_prompt(source, editor_options) != inverted.prompt:
        raise InveditError("source prompt differs from the prompt the image was inverted with")
    return source


def _resolve_editor_options(model_defaults: dict[str, Any], inverted: Inverted, editor: str,
                            options: dict[str, Any]) -> dict[str, Any]:
    """The editor's options by precedence: its own defaults < the model's recommendation (its folder's
    invedit.json) < the inversion's pairing (e.g. StyleDiffusion's τ) < what the caller passed."""
    return {**model_defaults, **inverted.editor_defaults(editor), **options}


def loop_context(pipe, inverted: Inverted, editor, source_prompt: str, target_prompt: str, guidance_scale: float,
                 seed: int) -> LoopContext:
    """Everything one edit's loop reads: the schedule, the denoiser (the branches' embeddings and CFG scales as
    the inversion and the editor set them, the inversion's value transforms) and a seeded generator."""
    model = backbone(pipe)
    editor.bind(inverted)

    def encode(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_prompts(prompts)

    cond = dict(zip(("source", "target"), encode([source_prompt, target_prompt]).split(1)))
    null = encode([""])
    cond, null = editor.embeddings(encode, cond, {"source": null, "target": null})
    values = ValueTransforms() if inverted.transforms_values else None
    guidance = editor.branch_guidance(inverted.branch_guidance(guidance_scale))
    denoiser = GuidedDenoiser(model, cond, null, guidance, editor, values=values,
                              embedded=model.guidance_mode == "embedded")
    return LoopContext(inverted.schedule, denoiser, torch.Generator("cpu").manual_seed(seed), editor.source_needed)


def _run_edit(pipe, inverted: Inverted, editor, source_prompt: str, target_prompt: str, guidance_scale: float,
              seed: int, progress: bool, desc: str) -> tuple[torch.Tensor, RunStats]:
    """The two-branch loop with ``editor`` attached: final latents (2, C, h, w) [source, target] and its cost."""
    ctx = loop_context(pipe, inverted, editor, source_prompt, target_prompt, guidance_scale, seed)
    callback, bar = _progress(inverted.steps, progress, desc)
    try:
        with editor.attach(ctx.denoiser.model, ctx.denoiser.values):
            latents = denoise_two_branches(editor.wrap_sampler(inverted.sampler(ctx)), ctx, editor, callback)
    finally:
        if bar is not None:
            bar.close()
    return torch.cat([latents.source, latents.target]), ctx.denoiser.stats
