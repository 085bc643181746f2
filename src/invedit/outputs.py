"""Writing results safely: check the output location up front, write files atomically and as one consistent group.

* `prepare_output_dir` runs before any work: it creates the missing folders of an output path and proves it can
  write there, so a bad ``--out`` fails in a second, not after a whole edit; `remove_created` undoes it when the
  run fails later, so nothing is left behind.
* `write_atomically` writes a group of files (an image and its JSON record) to temporary siblings, then renames
  them in order (the record last) while holding a lock on their folder: two invedit runs writing the same
  outputs leave one run's group, never a mix, and nothing is ever half-written. A reader that does not lock
  checks the pair through the image hashes the record names. Files get the mode the user's umask gives.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import InveditError


def umask() -> int:
    """The process umask: from /proc where it is shown (no change to the process), else set-and-restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def prepare_output_dir(folder: str | os.PathLike, what: str = "output") -> list[Path]:
    """Make sure files can be written in ``folder``: create what is missing and write a probe file there.

    Returns the folders it created (outermost first), for `remove_created` when the run fails later.
    Raises:
        InveditError: a part of the path is a file, the folder cannot be created, or it is not writable.
    """
    folder = Path(os.path.abspath(folder))  # "a/../b" → "b": mkdir of "a/.." would fail
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise InveditError(f"cannot write {what} to {folder}: {probe} is a broken link")
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise InveditError(f"cannot write {what} to {folder}: {probe} is a file, not a folder")
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".invedit-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        remove_created(created)
        reason = exc.strerror or type(exc).__name__
        raise InveditError(f"cannot write {what} to {folder}: {reason}") from None
    return created


def remove_created(folders: list[Path]) -> None:
    """Remove the folders `prepare_output_dir` created, innermost first, where they are still empty."""
    for path in reversed(folders):
        with contextlib.suppress(OSError):
            path.rmdir()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file is left behind); a no-op where unsupported."""
    try:
        import fcntl
    except ImportError:  # Windows: renames stay atomic one by one
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # an unreadable (write-only) folder: renames stay atomic one by one
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # e.g. NFS, where flock needs a writable descriptor: best effort
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomically(files: list[tuple[Path, Callable[[Any], None]]]) -> None:
    """Write every file to a temporary sibling, then rename them all under one lock per folder.

    ``files`` pairs each target path with a writer called on a binary file object. Nothing half-written is
    left (temporary files are removed on any error or interrupt), the group replaces an earlier group of the
    same names as a whole, and the files get mode ``0o666 & ~umask`` like any file the user creates.
    """
    staged: list[tuple[str, Path]] = []
    mode = 0o666 & ~umask()
    try:
        for target, writer in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.chmod(tmp, mode)
        folders = sorted({target.parent.resolve() for _, target in staged})
        with contextlib.ExitStack() as locks:
            for folder in folders:
                locks.enter_context(folder_lock(folder))
            for tmp, target in staged:
                os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def path_inside(base: str | os.PathLike, *parts: str) -> Path:
    """``base / parts…``, refused when it would leave ``base`` (``..``, an absolute part, a link pointing out).

    Names read from data (a dataset's ids, a record's file names) are joined through this, never directly.
    Raises:
        InveditError: the joined path resolves outside ``base``.
    """
    base = Path(base)
    path = base.joinpath(*parts)
    root = base.resolve()
    resolved = path.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        shown = "/".join(parts)
        raise InveditError(f"{shown!r} leaves {base}; refused")
    return path


class PathLock:
    """A non-blocking, per-name lock between processes: an ``flock`` on ``path``, removed again on release.

    `acquire` returns whether this process now holds it (``False``: a live process holds it; a lock held by a
    process that died is free, since the kernel releases ``flock`` locks with their process). Where ``flock``
    is unsupported the lock is always granted (each process then simply does the work).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        try:
            import fcntl
        except ImportError:  # Windows
            return True
        for _ in range(100):
            try:
                self.path.parent.mkdir(exist_ok=True)  # another process may have removed its empty folder
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
            except FileNotFoundError:  # the folder went between the two calls: again
                continue
            except OSError:
                return True  # cannot create a lock file (read-only folder?): no locking
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError:  # e.g. a filesystem without flock: best effort
                os.close(fd)
                return True
            try:  # the holder before us may have removed the file after we opened it: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)
        return True  # the file keeps vanishing: best effort, no locking

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before closing: whoever locks next re-checks the file is still there
        os.close(self._fd)
        self._fd = None
