"""Task output tables (``OUT/entities``, ``OUT/relations``, ``OUT/summaries``, ``OUT/answers``):
Delta tables whose data files each hold the rows computed from one data file of the documents table.

Naming is the record of provenance (every name is in the log, the one truth of what is live)::

    <document file stem>.<settings key>.<sha16>.parquet

- ``<document file stem>``: the documents data file the rows were computed from
  (``<base>.<sha16>``: a name that says its content, :mod:`pipeline.store.documents`);
- ``<settings key>``: the first 16 hex digits of the sha256 of everything the rows depend on
  besides the input (the task, its output schema version, its settings with the model's checksum:
  :func:`settings_key`), plus ``f`` when documents of that file failed (the next run redoes it);
- ``<sha16>``: the file's own content, checked before the file is trusted.

:meth:`TaskTable.plan` says, for every live document file, whether its output is **kept** (live,
current settings, complete, intact: size from the log and checksum from the name), **derived**
(its document file is a copy-on-write rewrite of one whose output is intact: the output is the old
one's rows of the articles still there; copied, never recomputed) or **computed** (and why: not
computed yet, settings changed, missing, damaged, failed documents). Outputs of document files that
are no longer live are removed in the same commits. The settings and the failed documents of each
commit are in its commit info (``biomine.settings``, ``biomine.failures``).

**Reuse by model input** (:meth:`TaskTable.reuse`): a document file with no output yet (an update
file, a new yearly baseline) may hold articles re-issued with the model input of an article an
earlier document file held (the same ``content_sha256``, :func:`schemas.articles.content_sha256`,
whatever the version). Their rows are copied from that earlier file's output (complete, of the
current settings, checked against its name), re-stamped with the new version; only the other
articles are computed. The earlier document file is read from the documents table's folder (it
left the log when the ingest replaced its articles, and ``biomine compact`` keeps it for the
retention period; a row without a fingerprint, written before schema version 3, gets it computed
from its title and abstract). An article whose earlier file is gone or damaged counts as changed and
is computed.

:raises TableError: the folder holds another dataset's table.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import StorageError
from pipeline.store.storage import Location, error_line, parquet_bytes
from pipeline.store.tables import DataFile, Table, describe, split_name
from schemas.articles import content_sha256

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{16}f?$")
_THREADS = 16


def settings_key(settings: Mapping[str, Any]) -> str:
    """The 16-hex-digit key of a stage's settings (see the module docstring)."""
    blob = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class OutputName:
    """A parsed output file name."""

    doc: str  # the document file's stem
    key: str  # settings key, with "f" when documents failed
    sha16: str

    @property
    def settings(self) -> str:
        return self.key[:16]

    @property
    def failed(self) -> bool:
        return self.key.endswith("f")

    @property
    def doc_base(self) -> str:
        return split_name(self.doc + ".parquet")[0]

    @staticmethod
    def parse(path: str) -> OutputName | None:
        stem = path[: -len(".parquet")] if path.endswith(".parquet") else path
        parts = stem.rsplit(".", 2)
        if len(parts) != 3 or not _KEY.match(parts[1]) or not re.match(r"^[0-9a-f]{16}$", parts[2]):
            return None
        return OutputName(parts[0], parts[1], parts[2])


def output_name(doc_stem: str, key: str, data: bytes, failed: bool) -> str:
    return f"{doc_stem}.{key}{'f' if failed else ''}.{hashlib.sha256(data).hexdigest()[:16]}.parquet"


def write_output(folder: Location, doc_stem: str, key: str, table: pa.Table, failed: bool = False) -> DataFile:
    """Write one document file's rows as its output file in table folder ``folder`` (a worker's write;
    visible once a commit adds it). The same rows give the same name and bytes."""
    data = parquet_bytes(table)
    name = output_name(doc_stem, key, data, failed)
    (folder / name).write_bytes(data)
    return describe(name, len(data), table)


@dataclass
class StagePlan:
    """What a stage does for each live document file (see :meth:`TaskTable.plan`)."""

    keep: dict[str, DataFile] = field(default_factory=dict)  # doc path -> its output
    #: doc path -> the output (of an earlier version of that document file) to copy rows from
    derive: dict[str, DataFile] = field(default_factory=dict)
    #: doc path -> (kind, why)
    compute: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: outputs that no live document file (or current settings) uses any more
    retire: list[DataFile] = field(default_factory=list)


#: What a document file takes from earlier outputs (:meth:`TaskTable.reuse`): one row per article
#: whose rows are copied, not computed: the output file holding them and the article's current version.
REUSE_SCHEMA = pa.schema(
    [pa.field("source", pa.string()), pa.field("pmid", pa.int64()), pa.field("version", pa.int32())]
)


def reused_rows(loc: Location, schema: pa.Schema, reuse: pa.Table) -> pa.Table:
    """The rows ``reuse`` (:data:`REUSE_SCHEMA`) names, read from the output files of the table at
    ``loc`` and re-stamped with the articles' current versions, in ``schema`` (a worker's read).

    :raises TableError: a source output is missing or does not match its name (it was verified when
        the stage planned: restore it, or run the stage again, which then computes those articles).
    """
    from pipeline.store.tables import TableError

    parts = []
    for source in sorted(set(reuse.column("source").to_pylist())):
        rows = _read_checked(loc / source, None)
        if rows is None:
            raise TableError(
                f"{loc / source} is missing or damaged since the stage planned to copy rows from it: "
                "restore it, or run the job again (it then computes those articles)"
            )
        mine = reuse.filter(pc.equal(reuse.column("source"), source))
        versions = dict(zip(mine.column("pmid").to_pylist(), mine.column("version").to_pylist()))
        parts.append(_restamp(rows, versions).cast(schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


class TaskTable:
    """One task's output table (see the module docstring)."""

    def __init__(self, loc: Location, dataset: str, schema: pa.Schema, schema_version: int):
        self.loc = loc
        self.dataset = dataset
        self.schema = schema
        self.schema_version = schema_version
        self._table: Table | None = None

    @property
    def table(self) -> Table:
        if self._table is None:
            self._table = Table.open_or_create(self.loc, self.schema, self.dataset, self.schema_version)
        return self._table

    def exists(self) -> bool:
        return Table.exists(self.loc)

    def outputs(self) -> dict[str, tuple[OutputName, DataFile]]:
        """Live output files by path, with their parsed names (files biomine did not name are left out)."""
        out = {}
        for path, info in self.table.files().items():
            name = OutputName.parse(path)
            if name is None:
                log.warning("%s: %s is not a biomine output name; it is left as it is", self.loc, path)
                continue
            out[path] = (name, info)
        return out

    # --- planning --------------------------------------------------------------------------------
    def plan(self, docs: Mapping[str, DataFile], settings: Mapping[str, Any]) -> StagePlan:
        """What to do for each of the live document files ``docs`` (path -> file) under ``settings``."""
        key = settings_key(settings)
        plan = StagePlan()
        outputs = self.outputs()
        current = {name.doc: (name, info) for name, info in outputs.values() if name.settings == key}
        damaged = self.table.verify([info for _, info in current.values()])
        # complete, intact outputs of the current settings, by the base of the document file they came from
        by_base = {
            name.doc_base: info for name, info in current.values() if not name.failed and info.path not in damaged
        }
        stale = {name.doc for name, _ in outputs.values() if name.settings != key}
        previous: dict[str, Any] | None = None
        used: set[str] = set()
        for path, doc in docs.items():
            found = current.get(doc.stem)
            if found is not None:
                name, info = found
                if info.path in damaged:
                    problem = damaged[info.path]
                    plan.compute[path] = ("missing" if problem.endswith("is missing") else "damaged", problem)
                elif name.failed:
                    plan.compute[path] = ("failed documents", "some of its documents failed last time")
                else:
                    plan.keep[path] = info
                    used.add(info.path)
            elif doc.stem in stale:
                previous = self.previous_settings() if previous is None else previous
                plan.compute[path] = ("settings changed", _changed(previous, settings))
            elif doc.base in by_base:
                plan.derive[path] = by_base[doc.base]
            else:
                plan.compute[path] = ("not computed", "not computed yet")
        plan.retire = [info for _, info in outputs.values() if info.path not in used]
        return plan

    def previous_settings(self) -> dict[str, Any]:
        """The settings of the newest commit that recorded them."""
        for entry in self.table.commit_metadata(limit=20):
            if isinstance(entry.get("settings"), dict):
                return entry["settings"]
        return {}

    # --- deriving ---------------------------------------------------------------------------------
    def derive(self, source: DataFile, doc_stem: str, articles: pa.Table, key: str) -> DataFile:
        """The output of document file ``doc_stem`` copied from ``source`` (an output of an earlier
        version of it): the rows of the articles (``pmid``, ``version``) still in it."""
        rows = (self.loc / source.path).read_table()
        keys = pa.array(
            [f"{p}:{v}" for p, v in zip(articles.column("pmid").to_pylist(), articles.column("version").to_pylist())]
        )
        have = pc.binary_join_element_wise(
            pc.cast(rows.column("pmid"), pa.string()), pc.cast(rows.column("version"), pa.string()), ":"
        )
        kept = rows.filter(pc.is_in(have, value_set=keys))
        return write_output(self.loc, doc_stem, key, kept.cast(self.schema))

    # --- reusing by model input ------------------------------------------------------------------------
    def reuse(
        self,
        plan: StagePlan,
        docs: Mapping[str, DataFile],
        documents: Location,
        new: Iterable[str],
        settings: Mapping[str, Any],
    ) -> dict[str, pa.Table]:
        """For the live document files ``new`` (not computed yet), what each takes from outputs of
        document files that are no longer live (see the module docstring), as :data:`REUSE_SCHEMA`
        rows; files with nothing to take are left out. ``docs``: the live document files;
        ``documents``: the documents table's folder. Each file is matched on its own, against the
        earlier outputs whose PMID range covers it, so the driver holds a few files at a time (and
        the answer: 16 bytes per reused article), never the corpus."""
        key = settings_key(settings)
        live = {d.stem for d in docs.values()}
        candidates = [
            (name, info)
            for info in [*plan.retire, *plan.derive.values()]
            if (name := OutputName.parse(info.path)) is not None
            and name.settings == key
            and not name.failed
            and name.doc not in live
        ]
        damaged = self.table.verify([info for _, info in candidates], checksums=False) if candidates else {}
        sources = [(name, info) for name, info in candidates if info.path not in damaged]
        if not sources:
            return {}

        def one(path: str) -> tuple[str, pa.Table | None]:
            mine = _fingerprints(documents / path, ["pmid", "version"])
            if mine is None:  # not readable: all computed
                return path, None
            pmids = sorted(mine.column("pmid").to_pylist())
            earlier: dict[int, tuple[str, str]] = {}  # pmid -> (its fingerprint, the output with its rows)
            for name, info in sources:
                if not info.covers(pmids):
                    continue
                found = _fingerprints(documents / f"{name.doc}.parquet", ["pmid"])
                if found is None:
                    continue
                found = found.filter(pc.is_in(found.column("pmid"), value_set=mine.column("pmid")))
                for pmid, sha in zip(found.column("pmid").to_pylist(), found.column("content_sha256").to_pylist()):
                    if sha is not None:
                        earlier[pmid] = (sha, info.path)
            columns = (mine.column(c).to_pylist() for c in ("pmid", "version", "content_sha256"))
            taken = [
                (earlier[p][1], p, v)
                for p, v, sha in zip(*columns)
                if sha is not None and earlier.get(p, ("",))[0] == sha
            ]
            if not taken:
                return path, None
            source, pmid, version = zip(*taken)
            return path, pa.table([list(source), list(pmid), list(version)], schema=REUSE_SCHEMA)

        with ThreadPoolExecutor(_THREADS) as pool:
            return {path: table for path, table in pool.map(one, sorted(new)) if table is not None}

    # --- committing -------------------------------------------------------------------------------
    def commit(
        self,
        add: Iterable[DataFile],
        remove: Iterable[DataFile],
        *,
        settings: Mapping[str, Any],
        failures: Mapping[str, list[dict[str, Any]]] | None = None,
        run: str | None = None,
    ) -> int:
        """Add outputs and remove superseded ones in one commit (their settings and failures in its
        commit info)."""
        meta: dict[str, Any] = {"settings": dict(settings), "task_schema_version": self.schema_version}
        if failures:
            meta["failures"] = {k: v for k, v in failures.items() if v}
        if run:
            meta["run_id"] = run
        return self.table.commit(list(add), list(remove), metadata=meta)

    def failures(self, outputs: Iterable[str]) -> list[dict[str, Any]]:
        """The failed documents recorded for the (partial) outputs ``outputs``, from the commit infos."""
        wanted = set(outputs)
        found: dict[str, list[dict[str, Any]]] = {}
        if not wanted:
            return []
        for entry in self.table.commit_metadata():
            for name, rows in (entry.get("failures") or {}).items():
                if name in wanted and name not in found:
                    found[name] = rows
            if len(found) == len(wanted):
                break
        return [f for name in sorted(found) for f in found[name]]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        paths = sorted(self.table.files()) if self.exists() else []
        if not paths:
            return self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
        with ThreadPoolExecutor(_THREADS) as pool:
            tables = list(pool.map(lambda p: (self.loc / p).read_table(columns), paths))
        return pa.concat_tables(tables, promote_options="permissive")


def _restamp(rows: pa.Table, versions: Mapping[int, int]) -> pa.Table:
    """The rows of the PMIDs ``versions`` (pmid -> version) of ``rows``, their ``version`` set to it."""
    kept = rows.filter(pc.is_in(rows.column("pmid"), value_set=pa.array(sorted(versions), pa.int64())))
    stamped = pa.array([versions[int(p)] for p in kept.column("pmid").to_pylist()], pa.int32())
    return kept.set_column(kept.schema.get_field_index("version"), kept.schema.field("version"), stamped)


def _fingerprints(loc: Location, columns: list[str]) -> pa.Table | None:
    """``columns`` + ``content_sha256`` of the document file ``loc`` (None when it cannot be trusted:
    :func:`_read_checked`). A file written before article schema 3, or a row of one carried over by a
    copy-on-write rewrite, has no fingerprint: it is computed here from the row's title and abstract
    (the fingerprint's definition), so that outputs made before schema 3 are reused like any others."""
    table = _read_checked(loc, None)
    if table is None:
        return None
    want = [*columns, "content_sha256"]
    if "content_sha256" in table.column_names and table.column("content_sha256").null_count == 0:
        return table.select(want)
    have = table.column("content_sha256").to_pylist() if "content_sha256" in table.column_names else None
    titles, abstracts = table.column("title").to_pylist(), table.column("abstract").to_pylist()
    shas = [
        (have[i] if have is not None and have[i] is not None else content_sha256(titles[i], abstracts[i]))
        for i in range(table.num_rows)
    ]
    return table.select(columns).append_column("content_sha256", pa.array(shas, pa.string()))


def _read_checked(loc: Location, columns: list[str] | None) -> pa.Table | None:
    """The ``columns`` of the data file ``loc`` when its content matches the checksum in its name and
    it has them; None otherwise (missing, damaged, or written before the columns existed)."""
    try:
        data = loc.read_bytes()
    except (OSError, StorageError) as exc:
        log.info("%s: not read (%s); its articles are computed", loc, error_line(exc))
        return None
    _, sha16 = split_name(loc.name)
    if sha16 is None or hashlib.sha256(data).hexdigest()[:16] != sha16:
        log.warning("%s does not match its name; its articles are computed", loc)
        return None
    table = pq.read_table(io.BytesIO(data))
    if columns is not None:
        if not set(columns) <= set(table.column_names):
            return None
        table = table.select(columns)
    return table


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "settings changed (" + ", ".join(keys) + ")" if keys and old else "settings changed"
