"""Delta Lake tables: the one home of "committed" for every dataset biomine writes.

Every dataset (a job's ``documents``, ``entities``, ``relations``, ``summaries``, ``answers``, ``kb``
and ``runs``; the corpus of ``biomine ingest``) is a Delta Lake table written with the ``deltalake`` package
(delta-rs): a folder holding its ``_delta_log/`` and Parquet data files only. **The log is the one
truth of which files are live**; a commit is atomic (on object stores, delta-rs writes the next
log entry with a conditional PUT), and any Delta reader (deltalake, polars, DuckDB, Spark) reads
exactly the live rows. biomine keeps no manifest, commit record or deletion vector of its own.

Conventions (:class:`Table`):

- **Workers write, the driver commits.** Data files are written whole (one PUT, or temp + rename)
  by whoever computes them, under a name that ends in the first 16 hex digits of their sha256
  (``<base>.<sha16>.parquet``), so a retried write produces the same name and bytes and a file's
  content can be checked against its name. :meth:`Table.commit` then adds and removes files in one
  Delta transaction (copy-on-write: a file is never changed, only replaced; deletion vectors are
  never used, since delta-rs cannot write them and its readers refuse tables that need them).
- **Statistics for pruning**: each added file carries ``numRecords`` and the min/max of ``pmid``
  and ``version`` when it has them, so readers and biomine's own updates skip files by PMID range.
- **Exactly once**: a commit may carry Delta app transactions (``txn``: app id -> version), which
  are part of the table's state; a writer checks :meth:`Table.transaction_version` before it applies
  something again (e.g. an input file), so a commit retried after a crash applies once.
- **Verify before trusting**: :meth:`Table.verify` checks a file against the log (size) and its name
  (checksum) before anything depends on it.
- Table properties ``biomine.dataset`` and ``biomine.schema_version`` say what a table holds.

:raises TableError: a table that is missing, damaged or of another dataset; a data file that does
    not match the log.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import StorageError, StoreError
from pipeline.store.storage import Location, delta_location, error_line, location, parquet_bytes

log = logging.getLogger(__name__)

LOG_DIR = "_delta_log"
DATASET_PROPERTY = "biomine.dataset"
SCHEMA_VERSION_PROPERTY = "biomine.schema_version"
#: The app transaction every biomine commit carries: its sequence number in the table (exactly once).
COMMITS_APP = "biomine.commits"
_THREADS = 16  # object-store reads are latency bound: overlap them
_SHA16 = re.compile(r"^[0-9a-f]{16}$")
#: Columns whose min/max go into each file's statistics (when a file has them).
STATS_COLUMNS = ("pmid", "version")


class TableError(StoreError):
    """A Delta table is missing, damaged, or not what it should be; a data file does not match the log."""


@dataclass(frozen=True)
class DataFile:
    """One data file of a table: its path inside the table, bytes, rows and PMID range (None when
    the file has no ``pmid`` column or no rows)."""

    path: str
    size: int
    rows: int
    min_pmid: int | None = None
    max_pmid: int | None = None
    min_version: int | None = None
    max_version: int | None = None

    @property
    def stem(self) -> str:
        """The name without ``.parquet``."""
        return self.path[: -len(".parquet")] if self.path.endswith(".parquet") else self.path

    @property
    def base(self) -> str:
        """The name without its content hash and suffix: what a rewrite of the file keeps."""
        return split_name(self.path)[0]

    @property
    def sha16(self) -> str | None:
        return split_name(self.path)[1]

    def covers(self, pmids: list[int]) -> bool:
        """Whether the file's PMID range holds any of the sorted ``pmids`` (statistics-based pruning)."""
        import bisect

        if self.min_pmid is None or self.max_pmid is None:
            return True
        i = bisect.bisect_left(pmids, self.min_pmid)
        return i < len(pmids) and pmids[i] <= self.max_pmid

    def stats_json(self) -> str:
        stats: dict[str, Any] = {"numRecords": self.rows, "tightBounds": True}
        low = {k: v for k, v in (("pmid", self.min_pmid), ("version", self.min_version)) if v is not None}
        high = {k: v for k, v in (("pmid", self.max_pmid), ("version", self.max_version)) if v is not None}
        if low:
            stats.update(minValues=low, maxValues=high, nullCount={k: 0 for k in low})
        return json.dumps(stats, separators=(",", ":"))


def split_name(path: str) -> tuple[str, str | None]:
    """``(base, sha16)`` of a data file name ``<base>.<sha16>.parquet`` (``sha16`` None for a name
    without one: a file that was not written by biomine)."""
    stem = path[: -len(".parquet")] if path.endswith(".parquet") else path
    base, _, last = stem.rpartition(".")
    if base and _SHA16.match(last):
        return base, last
    return stem, None


def data_file_name(base: str, data: bytes) -> str:
    """``<base>.<sha16>.parquet`` for the bytes ``data``."""
    return f"{base}.{hashlib.sha256(data).hexdigest()[:16]}.parquet"


def write_data_file(folder: Location, base: str, table: pa.Table) -> DataFile:
    """Write ``table`` (zstd Parquet) into table folder ``folder`` as ``<base>.<sha16>.parquet``, whole,
    and describe it for a commit (not visible to readers until one adds it). A retried write of the
    same rows writes the same name and bytes."""
    data = parquet_bytes(table)
    name = data_file_name(base, data)
    (folder / name).write_bytes(data)
    return describe(name, len(data), table)


def describe(path: str, size: int, table: pa.Table) -> DataFile:
    """A :class:`DataFile` for ``table`` written as ``path`` of ``size`` bytes (statistics computed here)."""
    bounds: dict[str, Any] = {}
    for column in STATS_COLUMNS:
        if column in table.column_names and table.num_rows:
            lo, hi = pc.min_max(table.column(column)).values()
            bounds[f"min_{column}"], bounds[f"max_{column}"] = lo.as_py(), hi.as_py()
    return DataFile(path, size, table.num_rows, **bounds)


class Table:
    """A Delta table at a :class:`Location` (see the module docstring). ``version`` pins a snapshot."""

    def __init__(self, loc: Location | str | os.PathLike, version: int | str | _dt.datetime | None = None):
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        self.loc = loc = location(loc)
        uri, options = delta_location(loc)

        def load():
            dt = DeltaTable(uri, storage_options=options)
            if version is not None:
                dt.load_as_version(version)
            return dt

        try:
            self.dt = delta_call(load, str(loc))
        except TableNotFoundError:
            raise TableError(f"{loc} is not a Delta table (no {LOG_DIR}/)") from None
        except StoreError:
            raise
        except Exception as exc:  # a damaged log: one line naming the table
            raise TableError(f"{loc}: cannot read its Delta log ({error_line(exc)})") from None

    # --- opening and creating ------------------------------------------------------------------------
    @staticmethod
    def exists(loc: Location | str | os.PathLike) -> bool:
        loc = location(loc)
        return (loc / LOG_DIR).is_dir() and bool((loc / LOG_DIR).files(".json"))

    @classmethod
    def create(cls, loc: Location | str, schema: pa.Schema, dataset: str, schema_version: int) -> Table:
        """A new, empty table of ``schema``, its properties naming ``dataset`` and ``schema_version``.
        Two processes creating the same table at once: one creates it, the other opens it."""
        from deltalake import DeltaTable

        loc = location(loc)
        uri, options = delta_location(loc)
        loc.mkdir()
        # Which columns each file's statistics cover (the PMID range, for pruning): said in the table's
        # configuration, so that readers (deltalake's pyarrow dataset, DuckDB over it) prune on those and
        # read every file for a filter on any other column (unlisted columns would read as null bounds).
        indexed = [c for c in STATS_COLUMNS if c in schema.names]
        configuration = (
            {"delta.dataSkippingStatsColumns": ",".join(indexed)}
            if indexed
            else {"delta.dataSkippingNumIndexedCols": "0"}
        )
        try:
            # mode="ignore": a retry after a create whose answer was lost opens what it made
            delta_call(
                lambda: DeltaTable.create(
                    uri,
                    schema.remove_metadata(),
                    mode="ignore",
                    name=dataset,
                    configuration=configuration,
                    storage_options=options,
                ),
                f"{loc} (create)",
            )
        except StorageError:
            raise
        except Exception as exc:
            raise TableError(f"{loc}: cannot create the {dataset} table ({error_line(exc)})") from None
        table = cls(loc)
        if table.properties.get(DATASET_PROPERTY) is None:
            # delta-rs accepts properties of its own only at creation; biomine's are set right after
            # (setting them again is harmless, so a retry is safe)
            delta_call(
                lambda: table.dt.alter.set_table_properties(
                    {DATASET_PROPERTY: dataset, SCHEMA_VERSION_PROPERTY: str(schema_version)},
                    raise_if_not_exists=False,
                ),
                f"{loc} (properties)",
                refresh=table.dt.update_incremental,
            )
            table.refresh()
        return table

    @classmethod
    def open(cls, loc: Location | str, dataset: str | None = None) -> Table:
        """The table at ``loc``; with ``dataset``, it must be a table of that dataset.

        :raises TableError: no table there, a damaged log, or a table of another dataset.
        """
        table = cls(loc)
        found = table.properties.get(DATASET_PROPERTY)
        if dataset is not None and found not in (None, dataset):
            raise TableError(f"{loc} is the {found} table, not a {dataset} table")
        return table

    @classmethod
    def open_or_create(cls, loc: Location | str, schema: pa.Schema, dataset: str, schema_version: int) -> Table:
        loc = location(loc)
        if cls.exists(loc):
            table = cls.open(loc, dataset)
            have = int(table.properties.get(SCHEMA_VERSION_PROPERTY) or 0)
            if have > schema_version:
                raise TableError(
                    f"{loc} was written with {dataset} schema version {have}; this biomine writes "
                    f"{schema_version}: upgrade biomine"
                )
            if have < schema_version:

                def evolve() -> None:
                    # the fields still missing, from the table as it is now (a retry after a commit
                    # whose answer was lost finds them added)
                    missing = _missing_fields(pa.schema(table.dt.schema().to_arrow()), schema)
                    if missing:
                        table.dt.alter.add_columns(missing)
                    table.dt.alter.set_table_properties(
                        {SCHEMA_VERSION_PROPERTY: str(schema_version)}, raise_if_not_exists=False
                    )

                delta_call(evolve, f"{loc} (schema version {schema_version})", refresh=table.dt.update_incremental)
                table.refresh()
            return table
        return cls.create(loc, schema, dataset, schema_version)

    def refresh(self) -> Table:
        delta_call(self.dt.update_incremental, str(self.loc))
        return self

    # --- state ---------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.dt.version()

    @property
    def properties(self) -> dict[str, str]:
        return dict(self.dt.metadata().configuration)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(self.dt.schema().to_arrow())

    def files(self) -> dict[str, DataFile]:
        """The live data files (path -> :class:`DataFile`), from the log."""
        actions = pa.table(delta_call(lambda: self.dt.get_add_actions(flatten=True), str(self.loc)))
        cols = set(actions.column_names)

        def column(name: str) -> list[Any]:
            return actions.column(name).to_pylist() if name in cols else [None] * actions.num_rows

        out = {}
        for path, size, rows, lo, hi, vlo, vhi in zip(
            column("path"),
            column("size_bytes"),
            column("num_records"),
            column("min.pmid"),
            column("max.pmid"),
            column("min.version"),
            column("max.version"),
        ):
            out[path] = DataFile(path, int(size), int(rows or 0), lo, hi, vlo, vhi)
        return out

    def transaction_version(self, app_id: str) -> int | None:
        return delta_call(lambda: self.dt.transaction_version(app_id), str(self.loc))

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        return delta_call(lambda: self.dt.history(limit), str(self.loc))

    def commit_metadata(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The biomine metadata of the newest commits (newest first): each commit's ``biomine.*``
        entries, JSON-decoded, with its ``version`` and ``timestamp``."""
        out = []
        for entry in self.history(limit):
            meta = {k[len("biomine.") :]: _loads(v) for k, v in entry.items() if k.startswith("biomine.")}
            out.append({"version": entry.get("version"), "timestamp": entry.get("timestamp"), **meta})
        return out

    # --- reading -------------------------------------------------------------------------------------
    def read(self, columns: list[str] | None = None, files: Iterable[str] | None = None) -> pa.Table:
        """The live rows (of ``files`` only, when given), as any Delta reader sees them; read with
        biomine's own file system from the file list of the log (deltalake's ``to_pyarrow_table`` can
        abort the interpreter at exit: delta-io/delta-rs#2184)."""
        files = sorted(self.files()) if files is None else list(files)
        if not files:
            return self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
        return pa.concat_tables([(self.loc / f).read_table(columns) for f in files], promote_options="permissive").cast(
            self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        )

    def dataset(self):
        """A :class:`pyarrow.dataset.Dataset` of the live files (DuckDB reads it without any extension),
        on biomine's own file system."""
        import pyarrow.dataset as pads

        paths = [(self.loc / f).path for f in sorted(self.files())]
        return pads.dataset(paths, schema=self.schema, filesystem=self.loc.fs, format="parquet")

    # --- verifying -----------------------------------------------------------------------------------
    def verify(self, files: Iterable[DataFile], *, checksums: bool = True) -> dict[str, str]:
        """What is wrong with each of ``files`` (live files of this table) that is not intact: missing,
        another size than the log says, content that does not hash to the name's sha16 (path ->
        problem; empty when all are intact)."""

        def one(f: DataFile) -> str | None:
            loc = self.loc / f.path
            size = loc.size()
            if size is None:
                return f"{loc} is missing"
            if size != f.size:
                return f"{loc} is damaged ({size} bytes, the log says {f.size})"
            if checksums and f.sha16 and loc.sha256()[:16] != f.sha16:
                return f"{loc} is damaged or was replaced (its content does not match its name's checksum)"
            return None

        files = list(files)
        with ThreadPoolExecutor(_THREADS) as pool:
            return {f.path: p for f, p in zip(files, pool.map(one, files)) if p}

    # --- leftovers ----------------------------------------------------------------------------------
    def referenced(self) -> set[str]:
        """Every data file the log names: the live ones and those that retained versions removed
        (time travel reads them). Read from the log's own files: the commits since the last
        checkpoint, and the checkpoint's file and tombstone lists."""
        import pyarrow.parquet as pq

        names = set(self.files())
        logdir = self.loc / LOG_DIR
        entries = logdir.listdir()
        checkpoints = sorted(n for n in entries if n.endswith(".checkpoint.parquet"))
        if checkpoints:
            with logdir.fs.open_input_file((logdir / checkpoints[-1]).path) as f:
                table = pq.read_table(f)
            for column in ("add", "remove"):
                if column in table.column_names:
                    names |= {v["path"] for v in table.column(column).to_pylist() if v and v.get("path")}
        for name in sorted(n for n in entries if n.endswith(".json") and n[:20].isdigit()):
            for line in (logdir / name).read_bytes().decode("utf-8").splitlines():
                action = json.loads(line) if line.strip() else {}
                for kind in ("add", "remove"):
                    if kind in action:
                        names.add(action[kind]["path"])
        return names

    def remove_orphans(self) -> list[str]:
        """Delete the data files of this folder that no version of the log names: what a killed writer
        left between writing a file and committing it. Call only while holding the output's lease
        (no other writer can be between those two steps)."""
        referenced = self.referenced()
        orphans = [n for n in self.loc.files(".parquet") if n not in referenced]
        for name in orphans:
            log.info("removing %s: no version of the table names it (left by an interrupted run)", self.loc / name)
            (self.loc / name).delete()
        return orphans

    # --- writing -------------------------------------------------------------------------------------
    def commit(
        self,
        add: Iterable[DataFile] = (),
        remove: Iterable[DataFile] = (),
        *,
        apps: Mapping[str, int] | None = None,
        metadata: Mapping[str, Any] | None = None,
        retries: int | None = None,
    ) -> int:
        """Add and remove files in one atomic commit; returns the new version. ``apps``: Delta app
        transactions (exactly-once markers) to record; ``metadata``: commit info (``biomine.KEY``,
        JSON-encoded). ``retries=0`` refuses to commit over a concurrent commit (compare-and-swap on
        the table version).

        Exactly once, also when the store fails mid-commit: every commit carries the app transaction
        ``biomine.commits`` = the table's count of biomine commits + 1; a commit that failed for a
        reason that may pass is looked up by it (it may have landed although the answer was lost) and
        made again only when it did not land (:func:`pipeline.store.storage.retrying`'s bounds).

        :raises TableError: the commit failed (a concurrent writer with ``retries=0``).
        :raises StorageError: the store failed and kept failing.
        """
        from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction

        now = int(time.time() * 1000)
        adds, removes = list(add), list(remove)
        # A live file written again under its own name (a missing or damaged output recomputed: the
        # name is the content's checksum, so the same bytes) stays live as the log describes it;
        # delta-rs refuses to add and remove one path in one commit.
        same = {f.path for f in adds} & {f.path for f in removes}
        if same:
            adds = [f for f in adds if f.path not in same]
            removes = [f for f in removes if f.path not in same]
        actions: list[Any] = [RemoveAction(f.path, True, now, f.size, {}) for f in removes]
        actions += [AddAction(f.path, f.size, {}, now, True, f.stats_json()) for f in adds]
        sequence = (self.transaction_version(COMMITS_APP) or 0) + 1
        properties = CommitProperties(
            custom_metadata={f"biomine.{k}": json.dumps(v, default=str) for k, v in (metadata or {}).items()},
            app_transactions=[Transaction(app, int(v)) for app, v in {**(apps or {}), COMMITS_APP: sequence}.items()],
            max_commit_retries=retries,
        )
        schema = self.schema

        def attempt() -> None:
            if (self.transaction_version(COMMITS_APP) or 0) >= sequence:
                return  # an earlier attempt landed: its answer was lost
            self.dt.create_write_transaction(actions, "append", schema, commit_properties=properties)

        try:
            delta_call(attempt, f"{self.loc} (commit)", refresh=self.dt.update_incremental)
        except StoreError:
            raise
        except Exception as exc:
            raise TableError(f"{self.loc}: commit failed ({error_line(exc)})") from None
        self.refresh()
        return self.version


def delta_call(call, what: str, refresh=None):
    """``call()`` (a deltalake call), tried again while it fails for a reason that may pass (the
    store restarting, a dropped connection: :func:`pipeline.store.storage.is_transient`), with the
    bounds of :func:`pipeline.store.storage.retrying`. ``refresh`` runs before each retry.

    :raises StorageError: the store kept failing (naming ``what`` and the cause).
    """
    import random

    from pipeline.store.storage import RETRY_ATTEMPTS, RETRY_BASE, RETRY_MAX, is_transient

    for attempt in range(RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == RETRY_ATTEMPTS:
                raise StorageError(f"{what}: {error_line(exc)} (after {attempt + 1} attempts)") from None
            delay = min(RETRY_MAX, RETRY_BASE * 2**attempt) * (0.5 + random.random() / 2)
            log.warning("%s: %s; trying again in %.1f s", what, error_line(exc), delay)
            time.sleep(delay)
            if refresh is not None:
                try:
                    refresh()
                except Exception:  # the next attempt says whether the store is back
                    pass
    raise AssertionError("unreachable")


def _missing_fields(have: pa.Schema, want: pa.Schema) -> list[Any]:
    from deltalake.schema import Field

    names = set(have.names)
    return [Field.from_arrow(f) for f in want if f.name not in names]


def _loads(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value
