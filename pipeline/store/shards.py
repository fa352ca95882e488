"""Article shard directories: bounded Parquet shards, written atomically, with a manifest that makes runs resumable.

Contract:

- An output directory holds ``part-NNNNNN.parquet`` shards (schema :data:`schemas.articles.ARTICLE_SCHEMA`,
  at most ``shard_rows`` rows each) and ``_manifest.json``. **The manifest is the commit point**: a
  shard exists for readers only once the manifest lists it. Every file (shards and manifest) is
  written to a temporary name, fsynced and renamed, so a crash leaves either the old or the new
  state, never half a file.
- Shard names come from a counter kept in the manifest, so a crashed run that is repeated writes the
  same names with the same contents; files a crashed run left behind (shards it never committed,
  shards a commit superseded, temporary files) are removed when the directory is next opened.
- Every PMID appears in at most one committed shard. :class:`ShardStore` keeps that invariant for its
  callers: :meth:`ShardStore.append` (fetch: append-only, commit per shard) and :meth:`ShardStore.transaction`
  (ingest: new shards plus rewrites of older ones, committed together with the input file that caused them).
- The directory is a local path or a storage URI (:mod:`pipeline.store.storage`): ``s3://bucket/docs``
  works as a local folder does. Shard files are immutable, and on an object store every file is one
  PUT, so the manifest object written last is still the commit point.
- One process writes a directory at a time: on a local disk an ``fcntl`` lock on ``_lock``, on an
  object store a lease (:mod:`pipeline.store.lease`). Readers use :func:`read_articles`, which reads
  exactly the committed shards.
- The manifest records what produced the directory (``kind``: fetch or ingest, and its ``identity``,
  e.g. the query), the inputs already processed, and free-form ``notes``.

:raises ShardStateError: the directory belongs to another kind of run or another query, is locked by
    another process, holds shard files without a manifest, or its manifest is unreadable.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ShardStateError, StoreError
from pipeline.store.atomic import TMP_PREFIX
from pipeline.store.lease import Lease
from pipeline.store.storage import Location, location
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, check_schema, to_table

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
LOCK = "_lock"
FORMAT = "biomine-article-shards"
DEFAULT_SHARD_ROWS = 10_000
_SHARD_RE = re.compile(r"^part-(\d{6})\.parquet$")


@dataclass
class ShardInfo:
    """One committed shard as the manifest lists it."""

    name: str
    rows: int
    min_pmid: int
    max_pmid: int
    #: Bytes and sha256 of the file (None in manifests written before they were recorded).
    size: int | None = None
    sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """What task outputs computed from this shard depend on (their fingerprint's input part)."""
        return {"name": self.name, "rows": self.rows, "size": self.size, "sha256": self.sha256}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")




class ShardStore:
    """A locked, manifest-backed directory of article shards (use as a context manager).

    ``kind`` and ``identity`` say what the directory is for (``"fetch"`` and ``{"query": ...}``,
    say); opening an existing directory with a different kind or identity is refused, because mixing
    two queries' results in one directory would make "resume" meaningless.
    """

    def __init__(self, path: str | os.PathLike, kind: str, identity: Mapping[str, Any] | None = None,
                 *, shard_rows: int = DEFAULT_SHARD_ROWS, lock: bool = True):
        if shard_rows < 1:
            raise ValueError("shard_rows must be at least 1")
        self.loc = location(path)
        self.kind = kind
        self.identity = dict(identity or {})
        self.shard_rows = shard_rows
        self._buffer: list[dict[str, Any]] = []
        self._lock_fd: int | None = None
        self._lease: Lease | None = None
        self.loc.mkdir()
        if lock:  # False: the caller holds a lease that covers this store (a job run)
            self._lock()
        try:
            self.manifest = self._load_or_create()
            self._remove_leftovers()
        except BaseException:
            self.close()
            raise

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "ShardStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the directory lock. Rows still buffered by :meth:`append` are discarded (not committed)."""
        self._buffer.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _lock(self) -> None:
        if not self.loc.is_local:  # no flock on an object store: a lease (expires if we are killed)
            try:
                self._lease = Lease(self.loc, what=f"biomine {self.kind} into {self.loc}").acquire()
            except StoreError as exc:
                raise ShardStateError(str(exc)) from None
            return
        fd = os.open(os.path.join(self.loc.path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ShardStateError(
                f"{self.loc} is being written by another biomine process; wait for it to finish or use another --out"
            ) from None
        self._lock_fd = fd

    def _load_or_create(self) -> dict[str, Any]:
        manifest_path = self.loc / MANIFEST
        if not manifest_path.exists():
            strays = [n for n in self.loc.listdir() if _SHARD_RE.match(n)]
            if strays:
                raise ShardStateError(
                    f"{self.loc} holds shard files ({strays[0]}, ...) but no {MANIFEST}: it was not written by "
                    f"biomine or its manifest was lost; use an empty directory for --out"
                )
            manifest = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "kind": self.kind,
                "identity": self.identity,
                "next_seq": 0,
                "shards": [],
                "inputs": {},
                "notes": {},
                "created_at": _now(),
                "updated_at": _now(),
            }
            # Written at once, so that anything a crashed first run leaves behind is recognisably ours.
            self._write_manifest(manifest)
            return manifest
        try:
            manifest = manifest_path.read_json()
        except (OSError, ValueError) as exc:
            raise ShardStateError(f"{manifest_path} is unreadable ({exc}); use a new --out directory") from exc
        if manifest.get("format") != FORMAT:
            raise ShardStateError(f"{manifest_path} is not a biomine article-shard manifest")
        if manifest.get("schema_version", 0) > SCHEMA_VERSION:
            raise ShardStateError(
                f"{self.loc} was written with article schema version {manifest['schema_version']}; "
                f"this biomine writes {SCHEMA_VERSION}: upgrade biomine or use a new --out"
            )
        if manifest.get("kind") != self.kind or manifest.get("identity") != self.identity:
            raise ShardStateError(
                f"{self.loc} holds the output of `biomine {manifest.get('kind')}` with {manifest.get('identity')}, "
                f"not `biomine {self.kind}` with {self.identity}; use another --out directory"
            )
        return manifest

    def _remove_leftovers(self) -> None:
        committed = {s["name"] for s in self.manifest["shards"]}
        present = self.loc.listdir()
        for name in present:
            if name.startswith(TMP_PREFIX) or (_SHARD_RE.match(name) and name not in committed):
                log.info("removing %s, left by an interrupted run (never committed)", self.loc / name)
                (self.loc / name).delete()
        missing = sorted(committed - set(present))
        if missing:
            raise ShardStateError(
                f"{self.loc}: shards listed in {MANIFEST} are missing ({missing[:3]}); the directory was "
                f"modified by hand; use a new --out directory"
            )

    # --- reading ---------------------------------------------------------------------------------

    @property
    def shards(self) -> list[ShardInfo]:
        return [ShardInfo(**s) for s in self.manifest["shards"]]

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        """Inputs recorded as processed (ingest: file name -> size, counts, time)."""
        return self.manifest["inputs"]

    @property
    def notes(self) -> dict[str, Any]:
        return self.manifest["notes"]

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return (self.loc / name).read_table(columns)

    def pmids(self) -> set[int]:
        """PMIDs of every committed shard."""
        done: set[int] = set()
        for shard in self.manifest["shards"]:
            done.update(self.read_shard(shard["name"], ["pmid"]).column("pmid").to_pylist())
        return done

    def row_count(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    # --- writing: append-only (fetch) --------------------------------------------------------------

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        """Buffer rows; each time ``shard_rows`` are buffered, write and commit one shard.

        Returns the number of shards committed by this call. The caller guarantees PMIDs are new.
        """
        self._buffer.extend(rows)
        written = 0
        while len(self._buffer) >= self.shard_rows:
            chunk, self._buffer = self._buffer[: self.shard_rows], self._buffer[self.shard_rows :]
            with self.transaction() as txn:
                txn.write(chunk)
                txn.commit()
            written += 1
        return written

    def flush(self, notes: Mapping[str, Any] | None = None) -> None:
        """Write and commit whatever :meth:`append` buffered (and ``notes``, if given)."""
        chunk, self._buffer = self._buffer, []
        with self.transaction() as txn:
            if chunk:
                txn.write(chunk)
            txn.commit(notes=notes)

    # --- writing: transactions (ingest) ----------------------------------------------------------

    def transaction(self) -> "Transaction":
        return Transaction(self)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = _now()
        data = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
        (self.loc / MANIFEST).write_bytes(data)


class Transaction:
    """Shards written and replaced together, made visible by one manifest update.

    Use as a context manager: leaving the block without :meth:`commit` (an exception, say) deletes
    the files this transaction wrote, so the directory is as it was.
    """

    def __init__(self, store: ShardStore):
        self.store = store
        self._next_seq = store.manifest["next_seq"]
        self._written: list[ShardInfo] = []
        self._dropped: set[str] = set()
        self._done = False

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    @property
    def written(self) -> list[ShardInfo]:
        """Shards written so far by this transaction (not yet committed)."""
        return list(self._written)

    def write(self, rows: list[dict[str, Any]] | pa.Table) -> ShardInfo | None:
        """Write one shard (rows or a table in the article schema); returns None for no rows."""
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        if table.num_rows == 0:
            return None
        if table.num_rows > self.store.shard_rows:
            raise ValueError(f"a shard holds at most {self.store.shard_rows} rows, got {table.num_rows}")
        name = f"part-{self._next_seq:06d}.parquet"
        self._next_seq += 1
        written = (self.store.loc / name).write_parquet(table)
        pmids = table.column("pmid")
        info = ShardInfo(name, table.num_rows, pc.min(pmids).as_py(), pc.max(pmids).as_py(), written.size,
                         written.sha256)
        self._written.append(info)
        return info

    def drop(self, name: str) -> None:
        """Remove a shard (committed or written by this transaction) at commit."""
        self._dropped.add(name)

    def replace(self, name: str, keep: pa.Array | list[bool]) -> ShardInfo | None:
        """Replace shard ``name`` by its rows where ``keep`` is true (a new shard; None if none are kept)."""
        self.drop(name)
        table = (self.store.loc / name).read_table()
        mask = keep if isinstance(keep, pa.Array) else pa.array(keep, pa.bool_())
        return self.write(table.filter(mask))

    def commit(self, *, inputs: Mapping[str, Any] | None = None, notes: Mapping[str, Any] | None = None) -> None:
        """Make this transaction's shards visible, record ``inputs`` as processed, merge ``notes``."""
        store = self.store
        manifest = dict(store.manifest)
        kept = [s for s in manifest["shards"] if s["name"] not in self._dropped]
        kept += [asdict(s) for s in self._written if s.name not in self._dropped]
        manifest["shards"] = kept
        manifest["next_seq"] = self._next_seq
        manifest["inputs"] = {**manifest["inputs"], **(inputs or {})}
        manifest["notes"] = {**manifest["notes"], **(notes or {})}
        store._write_manifest(manifest)
        store.manifest = manifest
        self._done = True
        for name in self._dropped:
            # After the commit these are garbage; a crash here is harmless (next open removes them).
            (store.loc / name).delete()

    def abort(self) -> None:
        self._done = True
        for info in self._written:
            (self.store.loc / info.name).delete()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an output directory (no lock taken).

    :raises ShardStateError: there is none.
    """
    try:
        return (location(path) / MANIFEST).read_json()
    except FileNotFoundError:
        raise ShardStateError(f"{path} has no {MANIFEST}: not a biomine fetch/ingest output") from None


def committed_shards(path: str | os.PathLike | Location) -> list[ShardInfo]:
    """The committed shards of an output directory, in commit order.

    :raises ShardStateError: it has no manifest.
    """
    return [ShardInfo(**s) for s in read_manifest(path)["shards"]]


def iter_shard_locations(path: str | os.PathLike | Location) -> Iterator[Location]:
    """Locations of the committed shards of an output directory, in commit order."""
    loc = location(path)
    for shard in committed_shards(loc):
        yield loc / shard.name


def iter_shard_paths(path: str | os.PathLike) -> Iterator[Path]:
    """Local paths of the committed shards of a local output directory, in commit order."""
    for loc in iter_shard_locations(path):
        yield loc.local_path()


def read_articles(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """All committed articles of an output directory as one table (for tests, small outputs, DuckDB/pandas).

    :raises SchemaMismatchError: a shard was written with a newer schema version.
    """
    tables = []
    for shard in iter_shard_locations(path):
        check_schema(shard.parquet_metadata().schema.to_arrow_schema(), str(shard))
        tables.append(shard.read_table(columns))
    if not tables:
        schema = ARTICLE_SCHEMA if columns is None else pa.schema([ARTICLE_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)
