"""The methods of a benchmark run: ``INVERSION+EDITOR[@LABEL]`` names with their own options.

``--methods direct+p2p,ddim+p2p,direct+p2p@half`` names three methods (a label tells two settings of one pair
apart). ``-o direct+p2p@half:cross_replace_steps=0.5`` sets an editor option of one method, ``-i
direct+p2p:offset_scale=0.8`` an inversion option; without the ``NAME:`` prefix an option applies to every
method. Everything is checked here, before any model loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InveditError
from ..options import parse_method_options

_NAME = re.compile(r"^([a-z0-9-]+)\+([a-z0-9-]+)(@[A-Za-z0-9_.-]+)?$")
#: Reference quirks `--parity` switches on where the user did not choose (docs/reference-settings.md; README
#: "PIE-Bench: run, evaluate, report", `--parity`).
PARITY_INVERSION_OPTIONS = {"direct": {"layout": "reference"}}
PARITY_EDITOR_OPTIONS = {"masactrl": {"layers": "reference"}}


@dataclass(frozen=True)
class MethodSpec:
    """One method of a run: its name, inversion and editor, and the options the user gave (validated)."""

    name: str
    inversion: str
    editor: str
    inversion_options: dict[str, Any] = field(default_factory=dict)  # complete: the method's defaults filled in
    editor_options: dict[str, Any] = field(default_factory=dict)  # only what was given (the model's defaults apply)

    def settings(self) -> dict[str, Any]:
        """What a run directory remembers of this method (``mask_given``: its editor reads each entry's ground-truth
        mask, KV-Edit; its numbers are not comparable with text-only methods)."""
        from ..editing import get_editor

        mask = {"mask_given": True} if get_editor(self.editor).takes_mask else {}
        return {"inversion": self.inversion, "editor": self.editor,
                "inversion_options": self.inversion_options, "editor_options": self.editor_options, **mask}


def parse_methods(methods: str, editor_options: list[str] | None = None,
                  inversion_options: list[str] | None = None, parity: bool = False) -> list[MethodSpec]:
    """The run's methods from ``--methods`` and the ``-o``/``-i`` lists (see the module docstring).

    Raises:
        InveditError: an empty or duplicated name, an unknown inversion or editor, an unknown or invalid option.
    """
    from ..editing import get_editor
    from ..inversion import get_inversion
    from ..prepare import check_settings

    names = [n.strip() for n in methods.split(",") if n.strip()]
    if not names:
        raise InveditError("--methods is empty; name at least one INVERSION+EDITOR, e.g. direct+p2p")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InveditError(f"--methods names {duplicated[0]} twice; tell settings apart with a label, e.g. "
                           f"{duplicated[0]}@b")
    editor_opts = parse_method_options(editor_options, names, "--option")
    inversion_opts = parse_method_options(inversion_options, names, "--inversion-option")
    specs = []
    for name in names:
        match = _NAME.match(name)
        if not match:
            raise InveditError(f"method {name!r} must look like INVERSION+EDITOR[@LABEL], e.g. direct+p2p")
        inversion, editor = match.group(1), match.group(2)
        get_inversion(inversion), get_editor(editor)  # unknown names: the registries' own messages
        inv = {**(PARITY_INVERSION_OPTIONS.get(inversion, {}) if parity else {}),
               **inversion_opts.get(None, {}), **inversion_opts.get(name, {})}
        ed = {**(PARITY_EDITOR_OPTIONS.get(editor, {}) if parity else {}),
              **editor_opts.get(None, {}), **editor_opts.get(name, {})}
        try:
            inv = check_settings(inversion, editor, inversion_options=inv, editor_options=ed).inversion_options
        except InveditError as exc:
            raise InveditError(f"method {name}: {exc}") from None
        specs.append(MethodSpec(name, inversion, editor, inv, ed))
    return specs
