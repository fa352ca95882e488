"""An output location: the one home of its layout, of who owns it and of its runs.

``OUT`` (a local path or a storage URI: a job's output, or the corpus that ingesting or fetching
writes) holds Delta Lake tables (:mod:`pipeline.store.tables`) and two small files:

====================  =========================================================================
``documents/``        the corpus: a Delta table of the article schema (:mod:`pipeline.store.documents`)
``<dataset>/``        one Delta table per task: ``entities``, ``relations``, ``summaries``, ``answers``,
                      ``labels``
                      (:mod:`pipeline.store.datasets`; the names come from the task classes)
``kb/``               the DDI knowledge base, a Delta table the job rebuilds after every run
``runs/``             a Delta table of run events (:mod:`schemas.runs`): when, what, the versions of
                      every table a finished run left (one consistent snapshot), failures
``_job.json``         which job owns the location (its name and source)
``_lease.json``       which run holds it now (:mod:`pipeline.store.lease`)
====================  =========================================================================

Every table folder holds its ``_delta_log/`` and data files only, so any Delta reader (deltalake,
polars, DuckDB, Spark) reads each table as exactly its live rows. Nothing else names these paths:
the runner, ``biomine query``, ``kb``, ``export``, ``compact``, ``status`` and ``upgrade`` all go
through :class:`JobOutput`, which pickles as its root's URI.

:raises StoreError: the location belongs to another job, its ownership record is unreadable, or a
    command was pointed at a table inside an output instead of the output (its ``setting`` is
    ``"output"`` where another output is the fix).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Mapping

import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.store.datasets import TaskTable
from pipeline.store.lease import Lease
from pipeline.store.storage import Location, location
from pipeline.store.tables import Table
from schemas.runs import RUN_SCHEMA
from schemas.runs import SCHEMA_VERSION as RUNS_SCHEMA_VERSION
from schemas.runs import cast_batch as cast_runs

DOCUMENTS = "documents"
KB = "kb"
RUNS = "runs"
JOB_FILE = "_job.json"
JOB_FORMAT = "biomine-job"
#: The old layout's files (biomine before its tables were Delta tables), which `biomine upgrade` converts.
LEGACY_MANIFEST = "_manifest.json"


def schema_version(schema: pa.Schema) -> int:
    return int((schema.metadata or {}).get(b"biomine.schema_version", b"1"))


class JobOutput:
    """The output location of one job (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | Location):
        self.root = location(root)
        self._datasets: dict[str, TaskTable] = {}

    def __reduce__(self):
        return (JobOutput, (self.root.uri,))

    def __repr__(self) -> str:
        return f"JobOutput({self.root.uri!r})"

    # --- the layout ------------------------------------------------------------------------------
    @property
    def documents(self) -> Location:
        return self.root / DOCUMENTS

    @property
    def kb(self) -> Location:
        return self.root / KB

    @property
    def runs(self) -> Location:
        return self.root / RUNS

    def dataset(self, name: str, schema: pa.Schema) -> TaskTable:
        """The one :class:`TaskTable` of dataset ``name`` (created on first write, of ``schema``)."""
        if name not in self._datasets:
            self._datasets[name] = TaskTable(self.root / name, name, schema, schema_version(schema))
        return self._datasets[name]

    def tables(self) -> dict[str, Location]:
        """Every Delta table under the root, by name (documents first)."""
        names = [n for n in self.root.listdir() if not n.startswith(("_", ".")) and Table.exists(self.root / n)]
        return {n: self.root / n for n in sorted(names, key=lambda n: (n != DOCUMENTS, n))}

    def is_legacy(self) -> bool:
        """Whether this is an output of biomine before Delta tables (``biomine upgrade`` converts it)."""
        return (self.documents / LEGACY_MANIFEST).exists()

    def refuse_table_path(self) -> None:
        """Refuse a root that is a file, itself a table of an output (``OUT/documents``), or a legacy output.

        :raises StoreError: naming the output to give instead (``setting`` ``"output"``).
        """
        if self.root.is_file():
            raise StoreError(
                f"{self.root} is a file, not a folder: name a folder for the output (it is created if needed)",
                setting="output",
            )
        parent = self.root.parent
        if Table.exists(self.root) or ((parent / JOB_FILE).exists() and self.root.name in (DOCUMENTS, KB, RUNS)):
            raise StoreError(
                f"{self.root} is a table inside the output {parent}: give the output itself ({parent}); every "
                "writer of an output takes its lease",
                setting="output",
            )
        if self.is_legacy():
            raise StoreError(f"{self.root} was written by an older biomine: run `biomine upgrade {self.root}` first")

    def lease(self, what: str) -> Lease:
        """The lease every writer of this output takes (one writer at a time)."""
        return Lease(self.root, what=what)

    # --- runs ------------------------------------------------------------------------------------
    def record_run(self, run_id: str, job: str, event: str, record: Mapping[str, Any], **fields: Any) -> int:
        """Append one run event to the ``runs`` table; returns its version."""
        from pipeline.store.tables import write_data_file

        table = Table.open_or_create(self.runs, RUN_SCHEMA, RUNS, RUNS_SCHEMA_VERSION)
        row = {
            "run_id": run_id,
            "job": job,
            "event": event,
            "event_time": _dt.datetime.now(_dt.timezone.utc),
            "record": json.dumps(dict(record), default=str, sort_keys=True),
            **fields,
        }
        info = write_data_file(self.runs, f"run-{run_id}-{event}", cast_runs([row]))
        return table.commit([info], apps={f"biomine.run.{run_id}.{event}": 1})

    def run_events(self) -> list[dict[str, Any]]:
        """Every run event, oldest first (record decoded)."""
        if not Table.exists(self.runs):
            return []
        table = Table(self.runs)
        rows = table.read(files=sorted(table.files())).sort_by([("event_time", "ascending")]).to_pylist()
        for row in rows:
            row["record"] = json.loads(row["record"]) if row.get("record") else {}
            row["versions"] = dict(row["versions"] or [])
        return rows

    def last_run(self, event: str = "finished") -> dict[str, Any] | None:
        """The newest run event of kind ``event`` (None when there is none)."""
        events = [e for e in self.run_events() if e["event"] == event]
        return events[-1] if events else None

    def versions(self) -> dict[str, int]:
        """The current version of every table."""
        return {name: Table(loc).version for name, loc in self.tables().items()}

    # --- ownership ---------------------------------------------------------------------------------
    def owner(self) -> dict[str, Any] | None:
        """The ``_job.json`` record (None when there is none).

        :raises StoreError: it exists but cannot be read.
        """
        path = self.root / JOB_FILE
        try:
            return path.read_json()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{path} is unreadable ({exc}): use another output, or delete it to give the output to this job",
                setting="output",
            ) from None

    def check_owner(self, identity: Mapping[str, Any], *, claim: bool = False) -> None:
        """Refuse when another job owns this location; with ``claim``, record ``identity`` (a job's
        ``{"name", "source"}``) as the owner when none is recorded yet. Without ``claim`` nothing is
        written.

        :raises StoreError: the location holds another job's output (both are named).
        """
        mine = dict(identity)
        theirs = self.owner()
        if theirs is None:
            if not claim:
                return
            if self.documents.exists():
                raise StoreError(
                    f"{self.root} holds documents but no {JOB_FILE}: it was not written by this job; use "
                    "another output for it",
                    setting="output",
                )
            (self.root / JOB_FILE).write_json({"format": JOB_FORMAT, **mine})
            return
        differs = _differences(mine, theirs)
        if differs:
            raise StoreError(
                f"{self.root} belongs to job {theirs.get('name')!r} ({_source(theirs)}), not to this job "
                f"{mine['name']!r} ({_source(mine)}): {' and '.join(differs)}; use another output for this job, "
                f"or delete {self.root / JOB_FILE} to give it to this job (the other job's outputs would be mixed in)",
                setting="output",
            )

    def unclaim(self) -> None:
        """Undo :meth:`check_owner`'s claim when nothing followed it: remove ``_job.json`` and the
        documents table if it holds no article (its log only); keep both once it holds one. The caller
        holds the lease (a failed first ``biomine fetch``: the output stays free for another query).
        """
        if self.documents.exists():
            if not Table.exists(self.documents) or Table(self.documents).files():
                return  # articles (or something that is not a table): the claim stands
            self.documents.fs.delete_dir(self.documents.path)
        (self.root / JOB_FILE).delete()


def _differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """How ``theirs`` (a ``_job.json``) differs from the job ``mine``, in words (none: the same job):
    the name and, of the source, what ``mine`` records. A files job's inputs are not part of it (older
    records listed its paths: they do not count), so adding an update file is the same job."""
    out = []
    if theirs.get("name") != mine.get("name"):
        out.append(f"the job name differs ({theirs.get('name')!r} there, {mine.get('name')!r} here)")
    source, recorded = mine.get("source") or {}, theirs.get("source") or {}
    for key, value in source.items():
        if recorded.get(key) != value:
            out.append(f"the source {key} differs ({_shown(recorded.get(key))} there, {_shown(value)} here)")
    return out


def _shown(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def _source(identity: Mapping[str, Any]) -> str:
    """A job's source in words: ``source files``, ``source entrez, query 'warfarin'``."""
    source = dict(identity.get("source") or {})
    kind = source.pop("kind", None)
    rest = [f"{key} {_shown(value)}" for key, value in source.items() if key != "paths"]
    return ", ".join([f"source {kind or 'unknown'}", *rest])
