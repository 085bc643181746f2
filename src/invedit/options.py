"""``KEY=VALUE`` options as the command line, the web page and the benchmark take them: one parser for all three.

A value parses as JSON when it can (numbers, ``true``/``false``, ``null``, lists, objects) and is a string
otherwise; ``-`` in a key becomes ``_``. The benchmark's ``[METHOD:]KEY=VALUE`` form names the method an option
belongs to.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InveditError


def parse_value(text: str) -> Any:
    """A typed option value: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_value(item: str) -> tuple[str, Any] | None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip().replace("-", "_"), parse_value(value)


def parse_options(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["k=v", ...]`` → ``{k: v}``.

    Raises:
        InveditError: an item that is not ``KEY=VALUE`` (``what`` names the flag or field in the message).
    """
    out: dict[str, Any] = {}
    for item in items or []:
        pair = _key_value(item)
        if pair is None:
            raise InveditError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[pair[0]] = pair[1]
    return out


def split_items(text: str | None) -> list[str]:
    """``"a=1\\nb=2"`` or ``"a=1, b=2"`` → ``["a=1", "b=2"]`` (commas inside brackets or quotes stay)."""
    items, depth, quote, current = [], 0, "", ""
    for ch in text or "":
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch in ",\n" and depth == 0 and not quote:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def parse_method_options(items: list[str] | None, names: list[str], flag: str) -> dict[str | None, dict[str, Any]]:
    """``["NAME:k=v", "k=v"]`` → ``{NAME or None (every method): {k: v}}``.

    Raises:
        InveditError: a prefix naming no method of ``names``, or an item that is not ``[METHOD:]KEY=VALUE``.
    """
    out: dict[str | None, dict[str, Any]] = {}
    for item in items or []:
        target: str | None = None
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in names:
                raise InveditError(f"{flag} {item!r} names method {head!r}, which is not in --methods "
                                   f"({', '.join(names)})")
            target, item = head, rest
        pair = _key_value(item)
        if pair is None:
            raise InveditError(f"{flag} must look like [METHOD:]KEY=VALUE, got {item!r}")
        out.setdefault(target, {})[pair[0]] = pair[1]
    return out
