"""The one exception type users see: a clear, one-line message about bad input or a missing resource."""


class InveditError(ValueError):
    """Bad input or a missing resource; the message is one line meant for the user."""


class ModelNotFoundError(InveditError, OSError):
    """The requested model is neither a local folder nor in the local Hugging Face cache, and the hub failed."""


def merge_options(kind: str, name: str, defaults: dict, options: dict) -> dict:
    """``options`` over ``defaults``; an unknown option name raises one clear line naming the known ones.

    An unknown option set to None counts as not given (so generic callers may pass ``blend_words=None``).
    """
    options = {k: v for k, v in options.items() if k in defaults or v is not None}
    unknown = set(options) - set(defaults)
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise InveditError(f"{kind} {name!r} has no option {sorted(unknown)[0]!r} (options: {known})")
    return {**defaults, **options}
