"""Atomic writes on a local disk: readers see a whole file or none of it, and a crash leaves no half file.

:meth:`pipeline.store.storage.Location.write_bytes` (the one writer of every published file:
data files of the tables, leases, ownership records, exports) comes here for local
paths (on an object store one PUT is atomic already): the bytes go into a hidden temporary sibling
``.tmp-<name>.<pid>``, flushed and fsync'ed, then renamed over the target with :func:`os.replace`
(atomic on POSIX file systems), and the directory is fsync'ed so the rename itself survives a power cut. A failed write removes its
temporary file. Temporary names start with :data:`TMP_PREFIX`, so listings that look for ``*.parquet``
or ``*.json`` never see them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries (renames, new files) of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary sibling: ``write(fileobj)``, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """``data`` at ``path``, atomically."""
    write_atomic(path, lambda f: f.write(data))
