"""The one exception type users see: a clear, one-line message about bad input or a missing resource."""


class InveditError(ValueError):
    """Bad input or a missing resource; the message is one line meant for the user."""


class ModelNotFoundError(InveditError, OSError):
    """The requested model is neither a local folder nor in the local Hugging Face cache, and the hub failed."""
