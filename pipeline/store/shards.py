"""Article shard directories: immutable Parquet shards, deletion vectors, and a manifest that is the commit point.

Contract:

- An output directory holds ``part-*.parquet`` shards (schema :data:`schemas.articles.ARTICLE_SCHEMA`,
  at most ``shard_rows`` rows each), ``_deleted/`` (deletion vectors) and ``_manifest.json``. **The
  manifest is the commit point**: a shard, or a deletion, exists for readers only once the manifest
  lists it. Every file is written to a temporary name, fsynced and renamed (on an object store: one
  PUT), so a crash leaves either the old or the new state, never half a file.
- **Shards are immutable.** A record that a later input revises or deletes is *tombstoned*: its PMID
  joins its shard's deletion vector (``_deleted/<shard>-<sha16>.parquet``, one int64 column ``pmid``,
  written whole when it grows, as Delta Lake's deletion vectors are) and the new version goes into a
  new shard. Readers apply the vectors (:func:`read_articles`, :func:`live_table`,
  :func:`tombstones`); the task outputs computed from a shard stay valid and are masked the same way,
  so an update costs what it changes. :func:`compact` rewrites heavily tombstoned shards, and only
  when asked. A plain Parquet reader of the folder sees every row ever committed and still present
  (tombstoned ones included), as a Delta table read without its log does.
- Within one shard a PMID appears at most once; across the live rows of a directory, at most once.
  :class:`ShardStore` keeps that invariant for its callers: :meth:`ShardStore.append` (fetch:
  append-only, commit per shard) and :meth:`ShardStore.transaction` (ingest: new shards, written here
  or by workers (:func:`write_shard`), and tombstones, committed together with the inputs that caused them).
- Shard names are chosen by the writer and never reused: fetch numbers them from a counter kept in
  the manifest (``part-NNNNNN``), ingest names them after their input file and its checksum
  (:mod:`pipeline.pubmed.ingest`). A repeated crashed run writes the same names with the same
  contents; files a crashed run left behind (shards and vectors it never committed, ones a commit
  superseded, temporary files) are removed when the directory is next opened.
- The directory is a local path or a storage URI (:mod:`pipeline.store.storage`): ``s3://bucket/docs``
  works as a local folder does.
- One process writes a directory at a time: on a local disk an ``fcntl`` lock on ``_lock``, on an
  object store a lease (:mod:`pipeline.store.lease`).
- The manifest records what produced the directory (``kind``: fetch or ingest, and its ``identity``,
  e.g. the query), the inputs already processed, and free-form ``notes``. Its size grows with the
  number of shards (about 300 bytes each), never with the number of records or deletions.

:raises ShardStateError: the directory belongs to another kind of run or another query, is locked by
    another process, holds shard files without a manifest, or its manifest is unreadable.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ShardStateError, StoreError
from pipeline.store.atomic import TMP_PREFIX
from pipeline.store.lease import Lease
from pipeline.store.storage import Location, location, parquet_bytes
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, check_schema, conform, to_table

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
LOCK = "_lock"
DELETED = "_deleted"
FORMAT = "biomine-article-shards"
DEFAULT_SHARD_ROWS = 10_000
SHARD_RE = re.compile(r"^part-[A-Za-z0-9._-]+\.parquet$")
_THREADS = 16  # object-store reads and writes are latency bound: overlap them
_DV_SCHEMA = pa.schema([pa.field("pmid", pa.int64(), nullable=False)])


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
    #: Rows tombstoned (revised or deleted by a later input) and the deletion vector that lists their
    #: PMIDs (a name under ``_deleted/``; None while nothing is tombstoned).
    deleted: int = 0
    deletions: str | None = None

    @property
    def stem(self) -> str:
        """``part-000003`` for ``part-000003.parquet``: the key of everything computed from it."""
        return self.name[: -len(".parquet")]

    @property
    def live(self) -> int:
        return self.rows - self.deleted

    def identity(self) -> dict[str, Any]:
        """What task outputs computed from this shard depend on (their fingerprint's input part).
        Tombstones are not part of it: they mask outputs, they never change them."""
        return {"name": self.name, "rows": self.rows, "size": self.size, "sha256": self.sha256}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_shard(folder: Location, name: str, rows: list[dict[str, Any]] | pa.Table) -> ShardInfo | None:
    """Write one shard file ``folder/name`` (rows or a table in the article schema); None for no rows.
    Not visible to readers until a transaction commits it (:meth:`Transaction.add`)."""
    table = rows if isinstance(rows, pa.Table) else to_table(rows)
    if table.num_rows == 0:
        return None
    written = (folder / name).write_parquet(table)
    pmids = table.column("pmid")
    return ShardInfo(name, table.num_rows, pc.min(pmids).as_py(), pc.max(pmids).as_py(), written.size, written.sha256)


def read_deletions(folder: Location, shard: ShardInfo) -> pa.Array:
    """The tombstoned PMIDs of ``shard`` (sorted int64; empty when none)."""
    if not shard.deletions:
        return pa.array([], pa.int64())
    return (folder / shard.deletions).read_table(["pmid"]).column("pmid").combine_chunks()


def live_mask(table: pa.Table, deleted: pa.Array) -> pa.Array | None:
    """Rows of ``table`` (it has ``pmid``) that ``deleted`` does not tombstone; None: all of them."""
    if len(deleted) == 0:
        return None
    return pc.invert(pc.is_in(table.column("pmid"), value_set=deleted))


class ShardStore:
    """A locked, manifest-backed directory of article shards (use as a context manager).

    ``kind`` and ``identity`` say what the directory is for (``"fetch"`` and ``{"query": ...}``,
    say); opening an existing directory with a different kind or identity is refused, because mixing
    two queries' results in one directory would make "resume" meaningless.
    """

    def __init__(
        self,
        path: str | os.PathLike | Location,
        kind: str,
        identity: Mapping[str, Any] | None = None,
        *,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        lock: bool = True,
    ):
        if shard_rows < 1:
            raise ValueError("shard_rows must be at least 1")
        self.loc = location(path)
        self.kind = kind
        self.identity = dict(identity or {})
        self.shard_rows = shard_rows
        self._buffer: list[dict[str, Any]] = []
        self._shards_of: list | None = None
        self._shards: list[ShardInfo] = []
        self._lock_fd: int | None = None
        self._lease: Lease | None = None
        if self.loc.is_file():
            raise ShardStateError(
                f"{self.loc} is a file, not a folder: name a folder for the output (it is created if needed)"
            )
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
                f"{self.loc} is being written by another biomine process; wait for it to finish or use another output folder (--out, or [job] output in a job)"
            ) from None
        self._lock_fd = fd

    def _load_or_create(self) -> dict[str, Any]:
        manifest_path = self.loc / MANIFEST
        if not manifest_path.exists():
            strays = [n for n in self.loc.listdir() if SHARD_RE.match(n)]
            if strays:
                raise ShardStateError(
                    f"{self.loc} holds shard files ({strays[0]}, ...) but no {MANIFEST}: it was not written by "
                    f"biomine or its manifest was lost; use an empty folder for the output (--out, or [job] output in a job)"
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
            raise ShardStateError(
                f"{manifest_path} is unreadable ({exc}); use a new output folder (--out, or [job] output in a job)"
            ) from exc
        if manifest.get("format") != FORMAT:
            raise ShardStateError(f"{manifest_path} is not a biomine article-shard manifest")
        if manifest.get("schema_version", 0) > SCHEMA_VERSION:
            raise ShardStateError(
                f"{self.loc} was written with article schema version {manifest['schema_version']}; "
                f"this biomine writes {SCHEMA_VERSION}: upgrade biomine or use a new output folder (--out, or [job] output in a job)"
            )
        if manifest.get("kind") != self.kind or manifest.get("identity") != self.identity:
            raise ShardStateError(
                f"{self.loc} holds the output of `biomine {manifest.get('kind')}` with {manifest.get('identity')}, "
                f"not `biomine {self.kind}` with {self.identity}; use another output folder (--out, or [job] output in a job)"
            )
        return manifest

    def _remove_leftovers(self) -> None:
        committed = {s["name"] for s in self.manifest["shards"]}
        vectors = {s["deletions"] for s in self.manifest["shards"] if s.get("deletions")}
        present = self.loc.listdir()
        for name in present:
            if name.startswith(TMP_PREFIX) or (SHARD_RE.match(name) and name not in committed):
                log.info("removing %s, left by an interrupted run (never committed)", self.loc / name)
                (self.loc / name).delete()
        for name in (self.loc / DELETED).listdir():
            if f"{DELETED}/{name}" not in vectors:
                (self.loc / DELETED / name).delete()
        missing = sorted(committed - set(present))
        if missing:
            raise ShardStateError(
                f"{self.loc}: shards listed in {MANIFEST} are missing ({missing[:3]}); the directory was "
                f"modified by hand; use a new output folder (--out, or [job] output in a job)"
            )

    # --- reading ---------------------------------------------------------------------------------

    @property
    def shards(self) -> list[ShardInfo]:
        """The committed shards (built once per manifest version: ingest asks for them per file)."""
        entries = self.manifest["shards"]
        if self._shards_of is not entries:
            self._shards_of, self._shards = entries, [ShardInfo(**s) for s in entries]
        return list(self._shards)

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        """Inputs recorded as processed (ingest: file name -> size, sha256, counts, time)."""
        return self.manifest["inputs"]

    @property
    def notes(self) -> dict[str, Any]:
        return self.manifest["notes"]

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return (self.loc / name).read_table(columns)

    def pmids(self) -> set[int]:
        """PMIDs of the live rows of every committed shard."""
        done: set[int] = set()
        for shard in self.shards:
            table = self.read_shard(shard.name, ["pmid"])
            mask = live_mask(table, read_deletions(self.loc, shard))
            done.update((table if mask is None else table.filter(mask)).column("pmid").to_pylist())
        return done

    def row_count(self) -> int:
        """Live rows (committed, not tombstoned)."""
        return sum(s.live for s in self.shards)

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
    """Shards added and rows tombstoned together, made visible by one manifest update.

    Use as a context manager: leaving the block with changes not committed (an exception, say)
    deletes the shard files this transaction wrote or added since its last commit, so the directory
    is as it was then. After a commit the same transaction may go on and commit again (ingest
    commits every few input files).
    """

    def __init__(self, store: ShardStore):
        self.store = store
        self._next_seq = store.manifest["next_seq"]
        self._written: list[ShardInfo] = []
        self._dropped: set[str] = set()
        self._tombstones: dict[str, set[int]] = {}

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()  # nothing to undo after a commit: only what came since

    @property
    def written(self) -> list[ShardInfo]:
        """Shards written or added so far by this transaction (not yet committed)."""
        return list(self._written)

    def shards(self) -> list[ShardInfo]:
        """The shards as they will be after :meth:`commit` (committed ones first, then this
        transaction's), with the rows tombstoned so far counted in ``deleted``."""
        kept = [s for s in self.store.shards if s.name not in self._dropped]
        kept += [s for s in self._written if s.name not in self._dropped]
        pending = self._tombstones
        return [replace(s, deleted=s.deleted + len(pending[s.name])) if s.name in pending else s for s in kept]

    def pending_tombstones(self, shard: str) -> set[int]:
        """PMIDs of ``shard`` tombstoned by this transaction so far (not yet committed)."""
        return self._tombstones.get(shard, set())

    def write(self, rows: list[dict[str, Any]] | pa.Table, name: str | None = None) -> ShardInfo | None:
        """Write one shard (rows or a table in the article schema); None for no rows. Without a
        ``name`` the shard is numbered from the manifest's counter (``part-NNNNNN.parquet``)."""
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        if table.num_rows > self.store.shard_rows:
            raise ValueError(f"a shard holds at most {self.store.shard_rows} rows, got {table.num_rows}")
        if table.num_rows == 0:
            return None
        if name is None:
            name = f"part-{self._next_seq:06d}.parquet"
            self._next_seq += 1
        info = write_shard(self.store.loc, name, table)
        self._written.append(info)
        return info

    def add(self, info: ShardInfo) -> None:
        """Commit with this transaction a shard file that a worker wrote (:func:`write_shard`).

        :raises StoreError: the file is not in the store as described (a worker on another machine
            wrote it to its own disk, or it was changed since).
        """
        if not SHARD_RE.match(info.name) or any(s["name"] == info.name for s in self.store.manifest["shards"]):
            raise ValueError(f"shard name {info.name!r} is not a new shard name")
        size = (self.store.loc / info.name).size()
        if size != info.size:
            where = (
                (
                    "on a cluster the output must be on storage every node reaches (s3://..., or a folder "
                    "mounted at the same path on every node)"
                )
                if self.store.loc.is_local
                else "it was changed"
            )
            raise StoreError(
                f"{self.store.loc / info.name} is {'missing' if size is None else f'{size} bytes'} "
                f"although a worker wrote {info.size} bytes: {where}"
            )
        self._written.append(info)

    def tombstone(self, shard: str, pmids: Iterable[int]) -> None:
        """Mark the rows of ``pmids`` in ``shard`` (committed, or written by this transaction) deleted."""
        self._tombstones.setdefault(shard, set()).update(int(p) for p in pmids)

    def drop(self, name: str) -> None:
        """Remove a shard (committed or written by this transaction) at commit."""
        self._dropped.add(name)

    def commit(self, *, inputs: Mapping[str, Any] | None = None, notes: Mapping[str, Any] | None = None) -> None:
        """Make this transaction's shards and tombstones visible, record ``inputs`` as processed,
        merge ``notes``. The new deletion vectors are written first (a crash before the manifest
        leaves them unreferenced: removed at the next open)."""
        store = self.store
        by_name = {s.name: s for s in self.shards()}

        def vector(shard: str) -> ShardInfo:
            info = by_name[shard]
            old = read_deletions(store.loc, info) if info.deletions else pa.array([], pa.int64())
            pmids = sorted(set(old.to_pylist()) | self._tombstones[shard])
            table = pa.table({"pmid": pa.array(pmids, pa.int64())}, schema=_DV_SCHEMA)
            data = parquet_bytes(table)
            digest = hashlib.sha256(data).hexdigest()
            name = f"{DELETED}/{info.stem}-{digest[:16]}.parquet"
            if name != info.deletions:
                (store.loc / name).write_bytes(data, digest)
            return replace(info, deleted=len(pmids), deletions=name)

        touched = [s for s in self._tombstones if s in by_name and s not in self._dropped]
        if touched:
            (store.loc / DELETED).mkdir()
            with ThreadPoolExecutor(_THREADS) as pool:
                for info in pool.map(vector, touched):
                    by_name[info.name] = info
        manifest = dict(store.manifest)
        manifest["shards"] = [asdict(by_name[s.name]) for s in self.shards()]
        manifest["next_seq"] = self._next_seq
        if self._written:  # the newest article schema version among the shards
            manifest["schema_version"] = max(manifest.get("schema_version", 1), SCHEMA_VERSION)
        manifest["inputs"] = {**manifest["inputs"], **(inputs or {})}
        manifest["notes"] = {**manifest["notes"], **(notes or {})}
        store._write_manifest(manifest)
        store.manifest = manifest
        dropped = self._dropped
        self._written, self._dropped, self._tombstones = [], set(), {}  # committed: nothing to undo
        for name in sorted(dropped):
            # Garbage after the commit: best effort (whatever is left is removed at the next open).
            try:
                (store.loc / name).delete()
            except (OSError, StoreError) as exc:
                log.warning(
                    "could not remove %s (%s); it is removed when the directory is next opened", store.loc / name, exc
                )
        # Superseded deletion vectors are NOT removed here: a reader that listed the previous
        # manifest may still be reading them. The next open of the store (the next ingest) removes
        # the ones no manifest entry names, as a Delta Lake VACUUM would.

    def abort(self) -> None:
        """Forget what came since the last commit, deleting the shard files written or added since."""
        for info in self._written:
            (self.store.loc / info.name).delete()
        self._written, self._dropped, self._tombstones = [], set(), {}


def compact(store: ShardStore, *, min_deleted: float = 0.5) -> list[tuple[str, str | None]]:
    """Rewrite every shard whose tombstoned share is at least ``min_deleted`` as a new shard of its
    live rows (``<stem>.cN.parquet``; none when no row is live) and drop it, in one commit. Returns
    ``(old, new)`` shard names. Task outputs of the old shards are retired and those of the new
    ones computed by the next run of the job (the only step that recomputes unchanged articles:
    which is why it runs only when asked).
    """
    if not 0 < min_deleted <= 1:
        raise ValueError("min_deleted must be in (0, 1]")
    done: list[tuple[str, str | None]] = []
    with store.transaction() as txn:
        for shard in store.shards:
            if not shard.rows or shard.deleted / shard.rows < min_deleted:
                continue
            table = store.read_shard(shard.name)
            mask = live_mask(table, read_deletions(store.loc, shard))
            live = table if mask is None else table.filter(mask)
            match = re.match(r"^(.*)\.c(\d+)$", shard.stem)
            base, gen = (match.group(1), int(match.group(2)) + 1) if match else (shard.stem, 1)
            txn.drop(shard.name)
            # In the current schema (a version-1 shard is rewritten as version 2), fewer rows than before.
            info = write_shard(store.loc, f"{base}.c{gen}.parquet", conform(live))
            if info is not None:
                txn.add(info)
            done.append((shard.name, info.name if info else None))
        txn.commit()
    return done


def read_manifest(path: str | os.PathLike | Location) -> dict[str, Any]:
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


def tombstones(path: str | os.PathLike | Location, shards: list[ShardInfo] | None = None) -> pa.Table:
    """Every tombstoned row of an output directory: a table ``(shard, pmid)`` where ``shard`` is the
    shard's stem (``part-000003``), the key task outputs are committed under."""
    loc = location(path)
    shards = [s for s in (committed_shards(loc) if shards is None else shards) if s.deletions]
    with ThreadPoolExecutor(_THREADS) as pool:
        vectors = list(pool.map(lambda s: read_deletions(loc, s), shards))
    names = [pa.array([s.stem] * len(v), pa.string()) for s, v in zip(shards, vectors)]
    if not shards:
        return pa.table({"shard": pa.array([], pa.string()), "pmid": pa.array([], pa.int64())})
    return pa.table({"shard": pa.concat_arrays(names), "pmid": pa.concat_arrays(vectors)})


def iter_shard_locations(path: str | os.PathLike | Location) -> Iterator[Location]:
    """Locations of the committed shards of an output directory, in commit order (their rows
    include tombstoned ones: :func:`live_table` reads one shard as readers should)."""
    loc = location(path)
    for shard in committed_shards(loc):
        yield loc / shard.name


def iter_shard_paths(path: str | os.PathLike) -> Iterator[Path]:
    """Local paths of the committed shards of a local output directory, in commit order."""
    for loc in iter_shard_locations(path):
        yield loc.local_path()


def live_table(
    folder: Location, shard: ShardInfo, columns: list[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """The live rows of one committed shard (its deletion vector applied), in the current article
    schema (``columns``: only those): columns an older schema version lacks are null. ``schema``:
    the file's, when the caller has read it already."""
    schema = schema or (folder / shard.name).parquet_metadata().schema.to_arrow_schema()
    wanted = list(columns) if columns is not None else list(ARTICLE_SCHEMA.names)
    read = [c for c in dict.fromkeys([*wanted, "pmid"]) if c in schema.names]
    table = (folder / shard.name).read_table(read)
    mask = live_mask(table, read_deletions(folder, shard))
    if mask is not None:
        table = table.filter(mask)
    return conform(table, wanted)


def read_articles(path: str | os.PathLike | Location, columns: list[str] | None = None) -> pa.Table:
    """All live articles of an output directory as one table (for tests, small outputs, DuckDB/pandas),
    in the current article schema whatever version each shard was written with.

    :raises SchemaMismatchError: a shard was written with a newer schema version.
    """
    loc = location(path)
    tables = []
    for shard in committed_shards(loc):
        schema = (loc / shard.name).parquet_metadata().schema.to_arrow_schema()
        check_schema(schema, str(loc / shard.name))
        tables.append(live_table(loc, shard, columns, schema))
    if not tables:
        schema = ARTICLE_SCHEMA if columns is None else pa.schema([ARTICLE_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)
