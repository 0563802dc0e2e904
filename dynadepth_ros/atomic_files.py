"""Atomic file writes: write a temporary file next to the target, then os.replace it into place, so a
reader (or a crash) never sees a half-written file. One implementation for the runtime and training.

A write that runs out of space raises DiskFullError naming the target; the target is left as it was
and the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (or quota) left while writing `filename`; str() is 'disk full while writing <file>'."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, 'disk full', str(path))

    def __str__(self) -> str:
        return f'disk full while writing {self.filename or "a file"}'

    @classmethod
    def find(cls, exc: BaseException | None) -> 'DiskFullError | None':
        """The out-of-space error `exc` is, or was raised from or while handling, as a DiskFullError
        (None when there is none). torch.save swallows the OSError of a failed write and raises a
        RuntimeError ('unexpected pos ...') whose __context__ is that OSError: the chain finds it."""
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, cls):
                return exc
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                return cls(exc.filename or '')
            exc = exc.__cause__ or exc.__context__
        return None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into: a temporary file in the same directory that
    replaces `path` when the block ends without an error (fsync'ed first when asked) and is removed
    when it raises. Parent directories are created."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f'.{path.name}.', suffix='.tmp')
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if not isinstance(exc, DiskFullError) and DiskFullError.find(exc) is not None:
            raise DiskFullError(path) from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (parent directories are created)."""
    with atomic_output(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode('utf-8'))
