"""Every check of an edit, in one place, before any network call: `check_settings` (no model needed) and
`prepare_edit` (with the model: prompts, the model's recommended editor settings, the prompt the image is
inverted under, the editor's dry run).

`invedit edit`, the web page's session, `invedit bench` and `invedit.edit` all go through here, so they refuse
the same inputs with the same one-line messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backbones import backbone
from .editing import EDITORS, get_editor
from .errors import InveditError
from .inversion import INVERSIONS, get_inversion
from .prompts import blend_word_tokens, check_prompt

MAX_SEED = 2**63 - 1
DEFAULT_STEPS = 50
DEFAULT_INVERSION = "direct"


def check_steps(steps: Any, limit: int = 1000) -> int:
    """``steps`` as an int in [1, limit] (limit: the model's training timesteps)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
        raise InveditError(f"steps must be an integer from 1 to {limit}, got {steps!r}")
    return steps


def check_seed(seed: Any) -> int:
    """``seed`` as an int in [0, 2⁶³ − 1] (what `torch.Generator.manual_seed` takes)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InveditError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def check_guidance(guidance_scale: Any) -> float:
    """``guidance_scale`` as a float in [0, 50]."""
    try:
        g = float(guidance_scale)
    except (TypeError, ValueError):
        raise InveditError(f"guidance scale must be a number, got {guidance_scale!r}") from None
    if not 0 <= g <= 50 or g != g:
        raise InveditError(f"guidance scale must be in [0, 50], got {g}")
    return g


@dataclass(frozen=True)
class EditSettings:
    """An edit's method choice and numbers, checked: names known, numbers in range, option names and types
    known (inversion options complete with the method's defaults; editor options as given).

    ``editor``, ``steps`` and ``guidance_scale`` may be None: "the model's" (`settings_for_model` fills them in
    from the model's family and its folder's invedit.json, and ``defaulted`` says which were filled in and from
    where: "family", "model" (invedit.json) or "invedit"). ``blend``: the ``--blend`` words while the editor is
    not known yet."""

    inversion: str = DEFAULT_INVERSION
    editor: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    inversion_options: dict[str, Any] = field(default_factory=dict)
    editor_options: dict[str, Any] = field(default_factory=dict)
    blend: str | None = None
    defaulted: dict[str, str] = field(default_factory=dict)


def editor_options_with_blend(editor: str, options: dict[str, Any] | None, blend: str | None) -> dict[str, Any]:
    """The editor's options with ``blend`` ("SRC TGT", the CLI's ``--blend``) as its LocalBlend words (P2P's
    ``blend_words``, MM-DiT P2P's ``local_blend_words``: `Editor.blend_option`), validated by the editor."""
    from .editing.p2p import parse_blend_words

    editor_cls = get_editor(editor)
    options = dict(options or {})
    if blend:
        key = editor_cls.blend_option()
        if key is None:
            raise InveditError(f"--blend is Prompt-to-Prompt's LocalBlend; editor {editor_cls.name!r} has no blend "
                               "words")
        options[key] = parse_blend_words(blend)
    editor_cls.validate_options(options)
    return options


def check_options_dict(options: Any, what: str) -> dict[str, Any]:
    """``options`` (None or a mapping of option names) as a dict; anything else refused in one line."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise InveditError(f"{what} must be a dict of option names to values, e.g. {{'offset_scale': 0.8}}, got "
                           f"{type(options).__name__} {str(options)[:40]!r}")
    return dict(options)


def check_settings(inversion: str = DEFAULT_INVERSION, editor: str | None = None, steps: Any = None,
                   guidance_scale: Any = None, seed: Any = 0, inversion_options: dict[str, Any] | None = None,
                   editor_options: dict[str, Any] | None = None, blend: str | None = None,
                   steps_limit: int = 1000) -> EditSettings:
    """Check everything of an edit that needs no model (see `EditSettings`; None: the model's default, checked
    by `settings_for_model`).

    Raises:
        InveditError: the first problem, in one line.
    """
    steps = None if steps is None else check_steps(steps, steps_limit)
    guidance_scale = None if guidance_scale is None else check_guidance(guidance_scale)
    seed = check_seed(seed)
    inversion_options = get_inversion(inversion).validate_options(check_options_dict(inversion_options,
                                                                                     "inversion_options"))
    editor_options = check_options_dict(editor_options, "editor options")
    if editor is None:
        return EditSettings(inversion, None, steps, guidance_scale, seed, inversion_options, editor_options, blend)
    editor_options = editor_options_with_blend(editor, editor_options, blend)
    check_pairing(inversion, editor)
    return EditSettings(inversion, editor, steps, guidance_scale, seed, inversion_options, editor_options)


def model_numbers(model, steps: int | None = None, guidance_scale: float | None = None
                  ) -> tuple[int, float, dict[str, str]]:
    """``(steps, guidance, defaulted)``: the given ones, else the model's (`Backbone.default_guidance`: its
    folder's invedit.json, else its family's; steps: invedit.json, else `DEFAULT_STEPS`), checked against the
    model (its training timesteps; FLUX.1-schnell's guidance). ``defaulted`` names those filled in and whose."""
    defaulted: dict[str, str] = {}
    if steps is None:
        recommended = model.recommended_steps
        steps, defaulted["steps"] = (recommended, "model") if recommended else (DEFAULT_STEPS, "invedit")
    steps = check_steps(steps, int(model.pipe.scheduler.config.get("num_train_timesteps", 1000)))
    if guidance_scale is None:
        guidance_scale, defaulted["guidance_scale"] = model.default_guidance
    guidance_scale = check_guidance(guidance_scale)
    model.check_guidance_for_model(guidance_scale)
    return steps, guidance_scale, defaulted


def settings_for_model(settings: EditSettings, model) -> EditSettings:
    """``settings`` with what was left to the model filled in (`model_numbers`; the editor: the family's
    `Backbone.default_editor`) and checked against it (the editor's options, the pairing); ``model``: a
    `Backbone`."""
    steps, guidance, defaulted = model_numbers(model, settings.steps, settings.guidance_scale)
    defaulted = {**settings.defaulted, **defaulted}
    editor, options = settings.editor, settings.editor_options
    if editor is None:
        editor, defaulted["editor"] = model.default_editor, "family"
        options = editor_options_with_blend(editor, options, settings.blend)
        check_pairing(settings.inversion, editor)
    return EditSettings(settings.inversion, editor, steps, guidance, settings.seed, settings.inversion_options,
                        options, None, defaulted)


def check_pairing(inversion: str, editor: str) -> None:
    """Refuse a pairing that means nothing: an inversion-free editor (FlowEdit) with an inversion, or an editor that
    steps a trajectory with the "none" inversion, which keeps none.

    Raises:
        InveditError: naming what pairs with each.
    """
    inversion_free = get_inversion(inversion).inversion_free
    if get_editor(editor).inversion_free and not inversion_free:
        raise InveditError(f"editor {editor!r} needs no inversion; use it with inversion 'none', not {inversion!r}")
    if inversion_free and not get_editor(editor).inversion_free:
        free = sorted(n for n, cls in EDITORS.items() if cls.inversion_free)
        raise InveditError(f"inversion {inversion!r} keeps no trajectory for editor {editor!r}; pair it with an "
                           f"inversion-free editor ({', '.join(free)}) or choose an inversion")


def check_mask(editor: str, mask: Any) -> None:
    """Refuse a mask-taking editor (`Editor.takes_mask`: KV-Edit) without a mask, and a mask for any other editor
    (it would be ignored silently).

    Raises:
        InveditError: naming ``--mask`` (``mask=`` in Python) and the editors that take one.
    """
    editor_cls = get_editor(editor)
    if editor_cls.takes_mask and mask is None:
        raise InveditError(f"editor {editor!r} edits only inside a mask: give one with --mask FILE (mask= in Python; "
                           "white = the region to edit)")
    if mask is not None and not editor_cls.takes_mask:
        takers = sorted(n for n, cls in EDITORS.items() if cls.takes_mask)
        raise InveditError(f"editor {editor!r} takes no mask; drop --mask, or use an editor that takes one "
                           f"({', '.join(takers) or 'none'})")


def check_model_kind(model, inversion: str | None = None, editor: str | None = None) -> None:
    """Refuse an inversion or editor that does not run on the model's kind of schedule (`Backbone.schedule_kind`:
    DDIM on a UNet, or rectified flow on SD3/FLUX), and a model the inversion's own `Inverted.check_model` refuses
    (RF-Inversion: FLUX only).

    Raises:
        InveditError: saying why (the method's ``refusal``, when it has one) and naming the methods that do run.
    """
    kind = model.schedule_kind
    for what, name, registry, get in (("inversion", inversion, INVERSIONS, get_inversion),
                                      ("editor", editor, EDITORS, get_editor)):
        if name is not None and kind not in get(name).schedule_kinds:
            usable = sorted(n for n, cls in registry.items() if kind in cls.schedule_kinds)
            why = getattr(get(name), "refusal", "")
            raise InveditError(f"{what} {name!r} does not run on {model.family} models ({kind} schedule)"
                               f"{': ' + why if why else ''}; use one of: {', '.join(usable)}")
    if inversion is not None:
        get_inversion(inversion).check_model(model)


def check_prompts(tokenizer, source_prompt: str, target_prompt: str,
                  blend_words: tuple[str, str] | None = None) -> tuple[str, str]:
    """Both prompts checked against the model's tokenizer (non-empty, not too long, known words) and the blend
    words against the prompts; returns the normalised prompts."""
    source = check_prompt(source_prompt, tokenizer, "source prompt")
    target = check_prompt(target_prompt, tokenizer, "target prompt")
    if blend_words:
        blend_word_tokens(source, target, tuple(blend_words), tokenizer)
    return source, target


@dataclass(frozen=True)
class PreparedEdit:
    """An edit that passed every check: its settings, prompts, the prompt its source branch is denoised under, the
    prompt the image is inverted under (the same but for editors whose reference inverts under another one), the
    editor options the model recommends (under the given ones), and the edit mask of a mask-taking editor."""

    settings: EditSettings
    source_prompt: str
    branch_prompt: str
    target_prompt: str
    model_defaults: dict[str, Any]
    mask: Any = None  # invedit.masks.EditMask (mask-taking editors only)
    inversion_prompt: str = ""
    #: What the editor reads from the inversion (`invedit.features.FeatureRequest`), None: the source branch.
    feature_request: Any = None

    @property
    def editor_options(self) -> dict[str, Any]:
        """The editor's options: the model's recommendation, then what was given."""
        return {**self.model_defaults, **self.settings.editor_options}


def prepare_edit(pipe, source_prompt: str, target_prompt: str, settings: EditSettings,
                 inverted_prompt: str | None = None, mask: Any = None) -> PreparedEdit:
    """The model-side checks of an edit (``pipe``: a loaded pipeline, or the weightless one of
    `invedit.models.inspect`, so that they run before the load): what was left to the model
    (`settings_for_model`; the returned ``settings`` are complete), the family (`check_model_kind`), prompts, the
    model's editor defaults, the source branch's prompt and the prompt the image is inverted under (which a given
    inversion, made under ``inverted_prompt``, must match), the mask (`check_mask`; ``mask``: an
    `invedit.masks.EditMask`) and a dry run of the editor (`Editor.create` builds it without side effects; it also
    says what the editor reads from the inversion), so bad settings fail before any inversion.

    Raises:
        InveditError: the first problem, in one line.
    """
    model = backbone(pipe)
    settings = settings_for_model(settings, model)
    check_model_kind(model, settings.inversion, settings.editor)
    check_mask(settings.editor, mask)
    editor_cls = get_editor(settings.editor)
    instructed = editor_cls.takes_instruction  # the target is an instruction; a source prompt is optional
    if inverted_prompt is None:
        source = check_prompt(source_prompt or "", model.tokenizer, "source prompt", allow_empty=instructed)
    else:
        source = source_prompt
    target = check_prompt(target_prompt, model.tokenizer, "instruction" if instructed else "target prompt")
    model_defaults = model.model_editor_defaults(settings.editor)
    options = {**model_defaults, **settings.editor_options}
    branch_prompt = editor_cls.source_branch_prompt(source, options)
    inversion_prompt = editor_cls.inversion_prompt(source, options)
    if inverted_prompt is not None and inversion_prompt != inverted_prompt:
        raise InveditError(f"editor {editor_cls.name!r} inverts the image under {inversion_prompt!r}, but it was "
                           f"inverted under {inverted_prompt!r}; invert under {inversion_prompt!r}")
    editor = editor_cls.create(pipe, branch_prompt, target, settings.steps, **options,
                               **mask_argument(editor_cls, mask))
    inversion_cls = get_inversion(settings.inversion)
    pinned = inversion_cls.pins_source(inversion_cls.validate_options(dict(settings.inversion_options)))
    return PreparedEdit(settings, source, branch_prompt, target, model_defaults, mask, inversion_prompt,
                        editor.feature_request(pinned))


def mask_argument(editor_cls, mask: Any) -> dict[str, Any]:
    """``{"mask": mask}`` for a mask-taking editor's ``create``, else nothing."""
    return {"mask": mask} if editor_cls.takes_mask else {}
