"""SQL over a job's outputs with DuckDB: each dataset under OUT is a view named after it.

Views: ``documents`` (committed article shards only, read through the shard manifest), ``entities``,
``relations``, ``summaries`` and, when present, ``kb`` (``OUT/kb.parquet``). A dataset that a job
did not produce is simply absent.

:raises BioMineError: OUT is not a job output, or the SQL fails (DuckDB's message is kept).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import BioMineError
from pipeline.tasks.registry import DATASETS as TASK_DATASETS

DATASETS = tuple(TASK_DATASETS.values())


def connect(out: str | Path):
    import duckdb

    out = Path(out)
    if not out.is_dir():
        raise BioMineError(f"{out} is not a directory: pass a job's output directory (its [job] output)")
    con = duckdb.connect()
    views = []
    docs = out / "documents"
    if (docs / "_manifest.json").exists():
        from pipeline.store.shards import iter_shard_paths

        files = [str(p) for p in iter_shard_paths(docs)]
        if files:
            con.execute(f"CREATE VIEW documents AS SELECT * FROM read_parquet({files!r})")
            views.append("documents")
    for name in DATASETS:
        if any((out / name).glob("*.parquet")):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{out / name}/*.parquet')")
            views.append(name)
    if (out / "kb.parquet").exists():
        con.execute(f"CREATE VIEW kb AS SELECT * FROM read_parquet('{out / 'kb.parquet'}')")
        views.append("kb")
    if not views:
        raise BioMineError(f"{out} holds no biomine datasets (documents/, entities/, relations/, summaries/)")
    return con, views


def query(out: str | Path, sql: str):
    """Run ``sql`` over the views of ``out``; returns a pandas DataFrame."""
    import duckdb

    con, views = connect(out)
    try:
        return con.execute(sql).df()
    except duckdb.Error as exc:
        raise BioMineError(f"query failed: {exc}\n(views available: {', '.join(views)})") from None
