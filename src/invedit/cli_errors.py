"""How every command ends on bad input: one ``error:`` line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from functools import wraps

import typer

from .errors import InveditError


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (temporary files, folders made for outputs)."""


def raise_terminated(signum, frame) -> None:
    """SIGTERM handler: raise `Terminated`; when the signal interrupts a finalizer (a ``__del__``, e.g. of the
    tokenizers' compiled patterns while a model loads), where Python would print and swallow the exception, the
    signal is sent again a moment later instead."""
    if frame is not None and frame.f_code.co_name == "__del__":
        import threading

        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    raise Terminated()


def cli_errors(func: Callable) -> Callable:
    """Turn `InveditError` into one line on stderr + exit 2; unexpected errors into one line + exit 1."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InveditError as exc:
            fail(str(exc))
        except Terminated:
            fail("terminated", 143)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: keep it short unless asked
            if os.environ.get("INVEDIT_DEBUG"):
                traceback.print_exc()
            fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                 "(set INVEDIT_DEBUG=1 for the traceback)", 1)

    return wrapper
