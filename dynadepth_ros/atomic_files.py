"""Atomic file writes (and file hashes): write a temporary file next to the target, then os.replace it into place, so a
reader (or a crash) never sees a half-written file. One implementation for the runtime and training.

    write_bytes_atomic(path, data) / write_text_atomic(path, text) / write_json_atomic(path, obj)
    write_png_atomic(path, rgb)           # a uint8 RGB figure as a PNG
    with atomic_path(path) as tmp:        # for writers that want a file name (np.save, torch.save,
        cv2.imwrite(str(tmp), image)      # cv2.imwrite, onnx.save, fig.savefig, ...)

The temporary file is hidden (`.<name>.<unique>.tmp<suffix>`), lives in the target's directory (parent
directories are created) and keeps the target's suffix, so writers that choose the format by extension
work; it is created with the usual permissions (umask), like a plain write. It is removed when the writer
fails, and only renamed into place when the `with` block finishes without an exception.

A write that runs out of space (ENOSPC or EDQUOT anywhere in the exception's chain, e.g. the RuntimeError
torch.save raises after a failed write) raises DiskFullError naming the target — 'disk full while writing
<file>' —; the target is left as it was and the temporary file is removed.

CloseOrAbort is the context-manager side of writers that publish a whole directory that way (a dataset
sequence, a sequence's bag).

file_sha256(path) is the one content hash of written files (training manifests, the TensorRT engine cache
key, dynadepth-model-info).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; os.replace it onto `path` when the block succeeds.

    fsync: flush the written file to disk before the rename (for files that must survive a power cut,
    e.g. training checkpoints). A block that raises, or writes nothing, leaves `path` untouched; one that
    runs out of space raises DiskFullError(path) (from the original error).
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if not tmp.exists():
            raise OSError(f'nothing was written to {tmp} (for {path})')
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, DiskFullError) and DiskFullError.find(exc) is not None:
            raise DiskFullError(path) from exc
        raise


class CloseOrAbort:
    """For writers that publish what they wrote with close() and drop it with abort(): used as a context
    manager, the writer is closed when the block succeeds and aborted when it raises."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (parent directories are created)."""
    with atomic_path(path) as tmp, open(tmp, 'xb') as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode('utf-8'))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content (read in `chunk`-byte blocks): tells whether a file is still the one
    a manifest, an engine cache key or a report recorded."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int | None = 2, **dumps_kwargs) -> None:
    """Write `obj` as JSON (json.dumps with `indent`, default=str unless given, then a newline) atomically."""
    dumps_kwargs.setdefault('default', str)
    write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kwargs) + '\n')


def write_png_atomic(path: str | os.PathLike, rgb) -> None:
    """Write uint8 RGB [H,W,3] `rgb` as a PNG (maximum compression) to `path` atomically; OSError when
    OpenCV cannot encode it."""
    import cv2   # only the figure writers need OpenCV

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f'could not write {path}')
