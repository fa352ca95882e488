"""The one atomic writer: readers see a whole file or none of it, and a crash leaves no half file.

Every file the pipeline publishes (document shards, task outputs, manifests, failure records, the
knowledge base) is written here: into a hidden temporary sibling ``.tmp-<name>.<pid>``, flushed and
fsync'ed, then renamed over the target with :func:`os.replace` (atomic on POSIX file systems), and
the directory is fsync'ed so the rename itself survives a power cut. A failed write removes its
temporary file. Temporary names start with :data:`TMP_PREFIX`, so listings that look for ``*.parquet``
or ``*.json`` never see them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries (renames, new files) of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, sync_dir: bool = True) -> None:
    """Write ``path`` through a temporary sibling: ``write(fileobj)``, fsync, rename, fsync the directory.

    ``sync_dir=False`` leaves the directory fsync to the caller (a transaction that renames several
    files fsyncs the directory once before it commits).
    """
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
    if sync_dir:
        fsync_dir(path.parent)


def write_parquet(table: pa.Table, path: str | os.PathLike, *, sync_dir: bool = True) -> None:
    """``table`` as a zstd-compressed Parquet file at ``path``, atomically."""
    write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"), sync_dir=sync_dir)


def write_json(data: Any, path: str | os.PathLike) -> None:
    """``data`` as indented, key-sorted JSON at ``path``, atomically (``default=str`` for dates, paths)."""
    payload = (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    write_atomic(path, lambda f: f.write(payload))


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """``data`` at ``path``, atomically."""
    write_atomic(path, lambda f: f.write(data))
