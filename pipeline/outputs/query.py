"""SQL over a job's outputs with DuckDB: each dataset under OUT is a view named after it.

Views: ``documents`` (committed article shards only, read through the shard manifest), ``entities``,
``relations``, ``summaries`` (committed task outputs only, read through their commit records:
:mod:`pipeline.store.datasets`) and, when present, ``kb`` (``OUT/kb.parquet``). A dataset that a job
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

from pipeline.errors import BioMineError
from pipeline.store.datasets import TaskDataset
from pipeline.store.storage import Location, location
from pipeline.tasks.registry import DATASETS as TASK_DATASETS

DATASETS = tuple(TASK_DATASETS.values())
log = logging.getLogger(__name__)


@dataclass
class JobOutputs:
    """The committed files of each dataset of a job's output, and what is missing."""

    files: dict[str, list[Location]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def job_outputs(out: str | os.PathLike | Location) -> JobOutputs:
    """The committed files of ``documents``, each task dataset and ``kb`` under ``out``."""
    from pipeline.store.shards import MANIFEST as DOCS_MANIFEST
    from pipeline.store.shards import committed_shards

    out = location(out)
    result = JobOutputs()
    docs = out / "documents"
    live: set[str] | None = None
    if (docs / DOCS_MANIFEST).exists():
        shards = committed_shards(docs)
        live = {s.name[: -len(".parquet")] for s in shards}
        if shards:
            result.files["documents"] = [docs / s.name for s in shards]
    for name in DATASETS:
        dataset = TaskDataset(out / name)
        records = dataset.records()
        if not records:
            continue
        shards = sorted(records if live is None else set(records) & live)
        if shards:
            result.files[name] = [dataset.loc / records[s]["file"]["name"] for s in shards]
        if live is not None and len(shards) < len(live):
            result.warnings.append(
                f"{name}: {len(live) - len(shards)} of {len(live)} document shards have no committed output "
                f"(the run is unfinished or failed: re-run the job to complete it)")
    if (out / "kb.parquet").is_file():
        result.files["kb"] = [out / "kb.parquet"]
    return result


def register(con, name: str, files: list[Location]) -> None:
    """A DuckDB view ``name`` over ``files`` (local: read_parquet; remote: a pyarrow dataset)."""
    if all(f.is_local for f in files):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({[f.path for f in files]!r})")
        return
    import pyarrow.dataset as pads

    arrow = pads.dataset([f.path for f in files], filesystem=files[0].fs, format="parquet")
    con.register(f"_{name}_arrow", arrow)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")


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
    for name, files in outputs.files.items():
        register(con, name, files)
    return con, list(outputs.files), outputs.warnings


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
