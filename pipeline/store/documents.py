"""The documents table: the current corpus of articles, a Delta Lake table of the article schema.

Contract:

- ``OUT/documents`` (a job's; or the corpus of ``biomine ingest``/``fetch`` ``--out OUT``) is a Delta
  table (:mod:`pipeline.store.tables`) of :data:`schemas.articles.ARTICLE_SCHEMA`. Every Delta reader
  sees the current corpus: each PMID live at most once, in its current version.
- **Data files** are written whole, sorted by PMID, named ``<base>.<sha16>.parquet``: ingest names the
  base after the input file and its checksum (``part-<file>-<sha16>-NNNN``), fetch numbers it
  (``part-NNNNNN``). The same inputs always give the same names and bytes.
- **Updates are copy-on-write** (:class:`DocumentTransaction`): an article that a later input revises
  or deletes is removed by rewriting the file that held it without it (the same base, a new
  checksum); its new version goes into a new file. A daily update rewrites only the files holding
  what it changes, found by the files' PMID statistics and their ``pmid`` column.
- **Inputs apply exactly once**: the commit that applies an input file records Delta app
  transactions ``biomine.input.<sha256>`` (that content is applied), ``biomine.input-name.<name>``
  (the position of the latest file of that name) and ``biomine.inputs`` (how many were applied);
  a re-run checks them before it applies anything.
- One writer at a time: the caller holds the output's lease (:mod:`pipeline.store.lease`).

:raises TableError: the folder holds something that is not a documents table, or a file does not
    match the log.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store.storage import Location, error_line, location
from pipeline.store.tables import DataFile, Table, TableError, write_data_file
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, conform, to_table

log = logging.getLogger(__name__)

DATASET = "documents"
DEFAULT_SHARD_ROWS = 10_000
INPUTS_APP = "biomine.inputs"
FETCH_APP = "biomine.fetch"
_THREADS = 16


def input_app(sha256: str) -> str:
    return f"biomine.input.{sha256}"


def input_name_app(name: str) -> str:
    return f"biomine.input-name.{name}"


def write_shard(folder: Location, base: str, rows: list[dict[str, Any]] | pa.Table) -> DataFile | None:
    """Write one data file of articles (rows or a table in the article schema), sorted by PMID, as
    ``<base>.<sha16>.parquet``; None for no rows. Not visible until a commit adds it."""
    table = rows if isinstance(rows, pa.Table) else to_table(rows)
    if table.num_rows == 0:
        return None
    table = table.sort_by([("pmid", "ascending")])
    return write_data_file(folder, base, table)


@dataclass(frozen=True)
class AppliedInput:
    """What applying one input file did (recorded in the commit that applied it)."""

    name: str
    size: int
    sha256: str
    records: int
    deletions: int
    added: int = 0
    replaced: int = 0
    deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Documents:
    """The documents table at ``loc`` (created empty when there is none)."""

    def __init__(self, loc: str | Location, *, create: bool = True):
        self.loc = location(loc)
        if create:
            self.table = Table.open_or_create(self.loc, ARTICLE_SCHEMA, DATASET, SCHEMA_VERSION)
        else:
            self.table = Table.open(self.loc, DATASET)

    # --- reading ---------------------------------------------------------------------------------
    def files(self) -> dict[str, DataFile]:
        return self.table.files()

    def count(self) -> int:
        """Live articles (from the log's statistics)."""
        return sum(f.rows for f in self.files().values())

    def read(self, columns: list[str] | None = None, files: Iterable[str] | None = None) -> pa.Table:
        """The live articles (of ``files``), in the current article schema."""
        wanted = list(columns) if columns is not None else list(ARTICLE_SCHEMA.names)
        paths = sorted(self.files()) if files is None else list(files)
        if not paths:
            return pa.schema([ARTICLE_SCHEMA.field(c) for c in wanted]).empty_table()
        with ThreadPoolExecutor(_THREADS) as pool:
            tables = list(pool.map(lambda p: _read_columns(self.loc / p, wanted), paths))
        return pa.concat_tables([conform(t, wanted) for t in tables])

    def pmids(self) -> set[int]:
        return set(self.read(["pmid"]).column("pmid").to_pylist())

    # --- what was applied --------------------------------------------------------------------------
    def applied(self, sha256: str) -> bool:
        return self.table.transaction_version(input_app(sha256)) is not None

    def position(self, name: str) -> int | None:
        """The position (1-based, in the order applied) of the latest input named ``name``."""
        return self.table.transaction_version(input_name_app(name))

    def inputs_applied(self) -> int:
        return self.table.transaction_version(INPUTS_APP) or 0

    def transaction(self) -> DocumentTransaction:
        return DocumentTransaction(self)


def read_articles(out: str | Location, columns: list[str] | None = None) -> pa.Table:
    """The live articles of an output (``out``: the output, or its ``documents`` table) as one table in
    the current article schema: what any Delta reader of the documents table returns.

    :raises TableError: no documents table there.
    """
    loc = location(out)
    if not Table.exists(loc) and Table.exists(loc / DATASET):
        loc = loc / DATASET
    return Documents(loc, create=False).read(columns)


def _read_columns(loc: Location, columns: list[str]) -> pa.Table:
    have = loc.parquet_metadata().schema.to_arrow_schema().names
    return loc.read_table([c for c in columns if c in have])


class DocumentTransaction:
    """Files added and articles removed together, made visible by one Delta commit (copy-on-write).

    Use as a context manager: leaving the block with changes not committed deletes the data files
    this transaction wrote since its last commit (none is referenced by the log). After a commit the
    same transaction may go on and commit again (ingest commits every few input files).
    """

    def __init__(self, docs: Documents):
        self.docs = docs
        self._committed = docs.files()
        self._added: dict[str, DataFile] = {}
        self._removals: dict[str, set[int]] = {}
        self._written: list[str] = []  # files this transaction wrote itself (deleted on abort)
        self._inputs: list[AppliedInput] = []
        self._seq = docs.table.transaction_version(FETCH_APP) or 0

    def __enter__(self) -> DocumentTransaction:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    # --- the view a transaction has ------------------------------------------------------------------
    def files(self) -> dict[str, DataFile]:
        """The files as they will be after :meth:`commit` (before its rewrites): committed ones and
        this transaction's additions."""
        return {**self._committed, **self._added}

    def pending_removals(self, path: str) -> set[int]:
        return self._removals.get(path, set())

    # --- changes -------------------------------------------------------------------------------------
    def add(self, info: DataFile) -> None:
        """Commit with this transaction a data file written for it (by a worker: :func:`write_shard`).

        :raises TableError: the file is not in the table's folder as described (a worker on another
            machine wrote it to its own disk, or it was changed since).
        """
        size = (self.docs.loc / info.path).size()
        if size != info.size:
            where = (
                "on a cluster the output must be on storage every node reaches (s3://..., or a folder "
                "mounted at the same path on every node)"
                if self.docs.loc.is_local
                else "it was changed"
            )
            raise TableError(
                f"{self.docs.loc / info.path} is {'missing' if size is None else f'{size} bytes'} although a "
                f"worker wrote {info.size} bytes: {where}"
            )
        self._added[info.path] = info

    def write(self, rows: list[dict[str, Any]] | pa.Table) -> DataFile | None:
        """Write and add one numbered file (``part-NNNNNN``: fetch's appends)."""
        info = write_shard(self.docs.loc, f"part-{self._seq:06d}", rows)
        if info is None:
            return None
        self._seq += 1
        self._written.append(info.path)
        self._added[info.path] = info
        return info

    def remove(self, path: str, pmids: Iterable[int]) -> None:
        """Remove the articles ``pmids`` from file ``path`` (committed, or added by this transaction)."""
        self._removals.setdefault(path, set()).update(int(p) for p in pmids)

    def applied(self, record: AppliedInput) -> None:
        """Record an input file as applied by this transaction (at its commit, exactly once)."""
        self._inputs.append(record)

    # --- committing ----------------------------------------------------------------------------------
    def commit(self, *, metadata: Mapping[str, Any] | None = None) -> int | None:
        """Make the additions, removals and applied inputs visible in one commit (None: nothing to do).
        Files holding removed articles are rewritten without them first (a crash before the commit
        leaves only unreferenced files, which the same work writes again, byte for byte)."""
        if not (self._added or self._removals or self._inputs or metadata):
            return None
        files = self.files()
        rewrites = [p for p, gone in self._removals.items() if gone and p in files]
        damaged = self.docs.table.verify([files[p] for p in rewrites if p in self._committed])
        if damaged:
            raise TableError(
                f"{next(iter(damaged.values()))}: it cannot be updated; restore the file (e.g. an earlier version of the "
                "object) or build the corpus again into a new output"
            )
        with ThreadPoolExecutor(_THREADS) as pool:
            results = dict(zip(rewrites, pool.map(lambda p: self._rewrite(files[p]), rewrites)))
        rewritten = {p: f for p, f in results.items() if f is None or f.path != p}  # the others lost nothing
        add = [f for p, f in self._added.items() if p not in rewritten]
        add += [f for f in rewritten.values() if f is not None]
        remove = [self._committed[p] for p in rewritten if p in self._committed]
        apps: dict[str, int] = {}
        position = self.docs.inputs_applied()
        for record in self._inputs:
            position += 1
            apps[input_app(record.sha256)] = 1
            apps[input_name_app(record.name)] = position
        if self._inputs:
            apps[INPUTS_APP] = position
        if self._seq:
            apps[FETCH_APP] = self._seq
        meta = dict(metadata or {})
        if self._inputs:
            meta["inputs"] = [r.as_dict() for r in self._inputs]
        version = self.docs.table.commit(add, remove, apps=apps, metadata=meta)
        unreferenced = [p for p in rewritten if p in self._added]
        self._committed = self.docs.files()
        self._added, self._removals, self._written, self._inputs = {}, {}, [], []
        # Uncommitted files that a later input of this transaction rewrote were never referenced. The
        # commit is done: failing to delete one loses nothing (it is never read; vacuum removes it).
        for path in unreferenced:
            try:
                (self.docs.loc / path).delete()
            except OSError as exc:
                log.warning(
                    "%s: could not delete this unreferenced file (%s); `biomine compact` removes it",
                    path,
                    error_line(exc),
                )
        return version

    def _rewrite(self, info: DataFile) -> DataFile | None:
        """``info``'s file without the articles removed from it (None when none is left)."""
        source = self.docs.loc / info.path
        table = source.read_table()
        gone = pa.array(sorted(self._removals[info.path]), pa.int64())
        keep = table.filter(pc.invert(pc.is_in(table.column("pmid"), value_set=gone)))
        if keep.num_rows == table.num_rows:
            return info  # none of them is in this file
        # in the current article schema: a file written under an older schema version comes out
        # with the columns that version lacks (null), as every other file of the table has them
        return write_shard(self.docs.loc, info.base, conform(keep)) if keep.num_rows else None

    def abort(self) -> None:
        """Forget what came since the last commit, deleting the files this transaction wrote since."""
        for path in list(self._written):
            (self.docs.loc / path).delete()
        self._added, self._removals, self._written, self._inputs = {}, {}, [], []
