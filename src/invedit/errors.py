"""The one exception type users see: a clear, one-line message about bad input or a missing resource."""


class InveditError(ValueError):
    """Bad input or a missing resource; the message is one line meant for the user."""


class ModelNotFoundError(InveditError, OSError):
    """The requested model is neither a local folder nor in the local Hugging Face cache, and the hub failed."""


def merge_options(kind: str, name: str, defaults: dict, options: dict) -> dict:
    """``options`` over ``defaults``; an unknown option name raises one clear line naming the known ones.

    An unknown option set to None counts as not given (so generic callers may pass ``blend_words=None``). A value
    of another type than its default's (a string for a number, a number for a true/false) raises too.
    """
    options = {k: v for k, v in options.items() if k in defaults or v is not None}
    unknown = set(options) - set(defaults)
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise InveditError(f"{kind} {name!r} has no option {sorted(unknown)[0]!r} (options: {known})")
    for key, value in options.items():
        wanted = _wanted_type(defaults[key], value)
        if wanted:
            raise InveditError(f"{kind} {name!r} option {key!r} must be {wanted}, got {value!r}")
    return {**defaults, **options}


def _wanted_type(default, value) -> str | None:
    """What ``value`` must be, judged by its option's default (None when it fits): a typo like
    ``cross_replace_steps=abc`` fails here, before any model loads."""
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, (int, float)):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def check_number(name: str, value, low: float = float("-inf"), high: float = float("inf"),
                 integer: bool = False, low_open: bool = False) -> float | int:
    """``value`` as a float (an int with ``integer``) in [low, high] (``(low, high]`` with ``low_open``);
    anything else raises one clear line."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    ok = ok and not (low_open and value == low)
    if not ok or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise InveditError(f"{name} must be {kind} in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")
    return int(value) if integer else float(value)


class InveditWarning(UserWarning):
    """A setting that runs, but not as the model was made to run (the command line prints it as one
    ``warning: …`` line)."""
