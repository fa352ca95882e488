"""SQL over a job's outputs with DuckDB: each dataset under OUT is a view named after it.

Views: ``documents`` (committed article shards only, read through the shard manifest), ``entities``,
``relations``, ``summaries`` (committed task outputs only, read through their commit records:
:mod:`pipeline.store.datasets`) and, when present, ``kb`` (``OUT/kb.parquet``). The dataset views
mask tombstoned articles (revised or deleted by a later update: the documents' deletion vectors,
:mod:`pipeline.store.shards`) and the task rows computed from them, so each row's PMID and version
is live in ``documents``. ``relations`` also carries ``article_retracted``, the retraction status of
its article (from ``documents``: null for shards written before schema version 2). ``kb`` is the table as ``kb build`` last wrote it (it masks them too, as of
then: rebuild it after an update). A dataset that a job
did not produce is simply absent. OUT may be a local path or a storage URI (``s3://...``): remote
files are scanned through pyarrow (no DuckDB extension to download). A dataset that covers fewer
document shards than ``documents`` (the run is unfinished or failed) is reported in the warnings.

:raises BioMineError: OUT is not a job output, or the SQL fails (DuckDB's message is kept).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from pipeline.errors import BioMineError
from pipeline.store.output import JobOutput
from pipeline.store.storage import Location, location
from pipeline.tasks.registry import DATASETS as TASK_DATASETS

DATASETS = tuple(TASK_DATASETS.values())
SHARD_COLUMN = "_biomine_shard"
log = logging.getLogger(__name__)


@dataclass
class JobOutputs:
    """The committed files of each dataset of a job's output (with the document shard each was
    computed from), the tombstoned ``(shard, pmid)`` pairs that mask them, and what is missing."""

    files: dict[str, list[Location]] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    tombstones: "pa.Table | None" = None
    warnings: list[str] = field(default_factory=list)


def job_outputs(out: str | os.PathLike | Location) -> JobOutputs:
    """The committed files of ``documents``, each task dataset and ``kb`` under ``out``."""
    from pipeline.store.shards import MANIFEST as DOCS_MANIFEST
    from pipeline.store.shards import committed_shards, tombstones

    job = JobOutput(out)
    result = JobOutputs()
    docs = job.documents
    live: set[str] | None = None
    if (docs / DOCS_MANIFEST).exists():
        shards = committed_shards(docs)
        live = {s.stem for s in shards}
        result.tombstones = tombstones(docs, shards)
        if shards:
            result.files["documents"] = [docs / s.name for s in shards]
            result.shards["documents"] = [s.stem for s in shards]
    for name in DATASETS:
        dataset = job.dataset(name)
        records = dataset.records()
        if not records:
            continue
        shards = sorted(records if live is None else set(records) & live)
        if shards:
            result.files[name] = [dataset.loc / records[s]["file"]["name"] for s in shards]
            result.shards[name] = shards
        if live is not None and len(shards) < len(live):
            result.warnings.append(
                f"{name}: {len(live) - len(shards)} of {len(live)} document shards have no committed output "
                f"(the run is unfinished or failed: re-run the job to complete it)"
            )
    if job.kb.is_file():
        result.files["kb"] = [job.kb]
    return result


def register(
    con,
    name: str,
    files: list[Location],
    shards: list[str] | None = None,
    tombstones: "pa.Table | None" = None,
    schema: pa.Schema | None = None,
) -> None:
    """A DuckDB view ``name`` over ``files`` (local: read_parquet; remote: a pyarrow dataset). With
    ``shards`` (the document shard of each file) and ``tombstones`` (``(shard, pmid)``), rows of
    tombstoned articles are left out. ``schema``: the view's columns, for files written with several
    versions of it (columns an older file lacks read as null)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    masked = shards is not None and tombstones is not None and tombstones.num_rows > 0
    if masked:
        wanted = pc.is_in(tombstones.column("shard"), value_set=pa.array(sorted(set(shards)), pa.string()))
        tombstones = tombstones.filter(wanted)
        masked = tombstones.num_rows > 0
    if not masked and schema is None and all(f.is_local for f in files):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({[f.path for f in files]!r})")
        return
    if not masked:
        arrow = pads.dataset([f.path for f in files], filesystem=files[0].fs, format="parquet", schema=schema)
        con.register(f"_{name}_arrow", arrow)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
        return
    # Each file tagged with its document shard (a constant column, as a partition value), then an
    # anti-join on (shard, pmid): the deletion vectors applied at read time, as Delta Lake's are.
    schema = schema or files[0].parquet_metadata().schema.to_arrow_schema()
    schema = schema.remove_metadata().append(pa.field(SHARD_COLUMN, pa.string()))
    arrow = pads.FileSystemDataset.from_paths(
        [f.path for f in files],
        schema=schema,
        format=pads.ParquetFileFormat(),
        filesystem=files[0].fs,
        partitions=[pc.field(SHARD_COLUMN) == pa.scalar(s, pa.string()) for s in shards],
    )
    con.register(f"_{name}_arrow", arrow)
    con.register(f"_{name}_tombstones", tombstones)
    con.execute(
        f"CREATE VIEW {name} AS SELECT t.* EXCLUDE ({SHARD_COLUMN}) FROM _{name}_arrow t "
        f"ANTI JOIN _{name}_tombstones d ON d.shard = t.{SHARD_COLUMN} AND d.pmid = t.pmid"
    )


def connect(out: str | os.PathLike | Location):
    """``(connection, view names, warnings)`` for the job output ``out``.

    :raises BioMineError: ``out`` holds no biomine datasets.
    """
    import duckdb

    loc = location(out)
    if not loc.is_dir():
        raise BioMineError(f"{loc} is not a directory: pass a job's output directory (its [job] output)")
    outputs = job_outputs(loc)
    if not outputs.files:
        raise BioMineError(f"{loc} holds no biomine datasets (documents/, entities/, relations/, summaries/)")
    con = duckdb.connect()
    from schemas.articles import ARTICLE_SCHEMA

    for name, files in outputs.files.items():
        register(
            con,
            name,
            files,
            outputs.shards.get(name),
            outputs.tombstones,
            ARTICLE_SCHEMA if name == "documents" else None,
        )
    if "relations" in outputs.files and "documents" in outputs.files:
        # Retraction status travels with the article, not the relation: in an ingested corpus a
        # retraction reaches PubMed as an update that revises the citation, so the live document row
        # says it without recomputing relations (a fetch directory knows what it fetched).
        con.execute("ALTER VIEW relations RENAME TO _relations_rows")
        con.execute(
            "CREATE VIEW relations AS SELECT r.*, d.retracted AS article_retracted FROM _relations_rows r "
            "LEFT JOIN (SELECT pmid, version, retracted FROM documents) d "
            "ON d.pmid = r.pmid AND d.version = r.version"
        )
    return con, list(outputs.files), outputs.warnings


def read_dataset(out: str | os.PathLike | Location, name: str) -> pa.Table:
    """One dataset of a job's output (``documents``, ``entities``, ...) as an Arrow table: its
    committed files, tombstoned articles masked, i.e. what the view of that name shows. Use this (or
    :func:`query`) rather than reading the folder with a plain Parquet reader, which also returns
    the rows of articles that later updates revised or deleted.

    :raises BioMineError: ``out`` is not a job output, or has no dataset ``name``.
    """
    con, views, _ = connect(out)
    if name not in views:
        raise BioMineError(f"{out} has no dataset {name!r} (it has: {', '.join(views)})")
    return con.sql(f"SELECT * FROM {name}").to_arrow_table()


def query(out: str | os.PathLike | Location, sql: str, warn: Callable[[str], None] | None = None):
    """Run ``sql`` over the views of ``out``; returns a pandas DataFrame. ``warn`` gets each warning
    (datasets that miss document shards)."""
    import duckdb

    con, views, warnings = connect(out)
    for warning in warnings:
        (warn or log.warning)(warning)
    try:
        return con.execute(sql).df()
    except duckdb.Error as exc:
        raise BioMineError(f"query failed: {exc}\n(views available: {', '.join(views)})") from None
