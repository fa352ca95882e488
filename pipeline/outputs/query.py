"""SQL over an output's Delta tables with DuckDB: each table under OUT is a view named after it.

Views: ``documents``, ``entities``, ``relations``, ``summaries``, ``answers``, ``labels``, ``kb`` and ``runs``
(those the output has). Each is exactly the live rows of its Delta table at one version, the files its log
lists, read through pyarrow (no DuckDB extension to download, local or ``s3://``). The versions
are one consistent snapshot: the ones the last finished run recorded (:mod:`pipeline.store.output`),
or those of the run or time ``as_of`` names (time travel); a table no run recorded (an output of
``biomine ingest``) is read at its newest version. A table of an output given in its place
(``OUT/documents``) reads the output. ``relations`` also carries ``article_retracted``,
the retraction status of its article (from ``documents``).

Any Delta reader gives the same rows (``deltalake.DeltaTable(OUT/NAME).to_pandas()``,
``polars.read_delta``, DuckDB's ``delta_scan``, Spark's ``format("delta")``): this module only
adds the snapshot and the views. docs/analysts.md shows each.

:raises BioMineError: OUT holds no tables, an ``as_of`` that names no run, a damaged table, or SQL
    that fails (DuckDB's message is kept).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.errors import BioMineError
from pipeline.store.output import RUNS, JobOutput
from pipeline.store.storage import Location
from pipeline.store.tables import Table, TableError

log = logging.getLogger(__name__)


@dataclass
class TableSnapshot:
    """One table at one version: its live files and schema."""

    name: str
    loc: Location
    version: int
    files: list[str]
    schema: pa.Schema

    def dataset(self):
        """A pyarrow dataset of exactly these files (read with biomine's own file system)."""
        import pyarrow.dataset as pads

        paths = [(self.loc / f).path for f in self.files]
        try:
            return pads.dataset(paths, schema=self.schema, filesystem=self.loc.fs, format="parquet")
        except (FileNotFoundError, OSError) as exc:
            missing = str(exc).strip().splitlines()[0] if str(exc).strip() else "a data file"
            raise BioMineError(
                f"{self.name}: {missing} is named by the table's log (version {self.version}) but cannot be read: "
                "if `biomine compact` removed it (a version older than its retention), read a newer version; "
                "otherwise restore the file (e.g. an earlier version of the object) or run the job into a new output"
            ) from None


@dataclass
class Snapshot:
    """Every table of an output at the versions of one consistent snapshot."""

    tables: dict[str, TableSnapshot] = field(default_factory=dict)
    #: Which run recorded the versions (None: the tables' newest versions).
    run: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def parse_as_of(
    value: str, option: str = "as_of", number: str = "a run number (1 is the first finished run)"
) -> int | _dt.datetime:
    """An ``as_of``: a run number (1 is the first finished run) or a date/time (``2026-12-01``,
    ``2026-12-01T06:00``, UTC unless it says otherwise). ``option`` and ``number`` name the setting
    and what its number is in the message (a command passes its flag; ``kb diff --since``: a version).

    :raises BioMineError: neither.
    """
    if value.isdigit():
        return int(value)
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise BioMineError(
            f"{option} {value!r}: give {number} or a date/time such as 2026-12-01 or 2026-12-01T06:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def snapshot(out: str | os.PathLike | Location | JobOutput, as_of: int | _dt.datetime | None = None) -> Snapshot:
    """The tables of ``out`` at one consistent snapshot (see the module docstring).

    :raises BioMineError: no tables, an ``as_of`` that names no run, a damaged table.
    """
    output = _output_of(out if isinstance(out, JobOutput) else JobOutput(out))
    if output.is_legacy():
        raise BioMineError(f"{output.root} was written by an older biomine: run `biomine upgrade {output.root}`")
    tables = output.tables()
    if not tables:
        raise BioMineError(
            f"{output.root} holds no biomine tables (documents/, entities/, ...): give the output of a job, or "
            "a corpus that ingesting or fetching wrote"
        )
    finished = [e for e in output.run_events() if e["event"] == "finished"]
    run = None
    if as_of is not None:
        if isinstance(as_of, int):
            if not 1 <= as_of <= len(finished):
                raise BioMineError(f"run {as_of}: {output.root} has {len(finished)} finished run(s)", setting="as_of")
            run = finished[as_of - 1]
        else:
            before = [e for e in finished if e["event_time"] <= as_of]
            if finished and not before:
                raise BioMineError(
                    f"as of {as_of.isoformat()}: no run of {output.root} had finished by then", setting="as_of"
                )
            run = before[-1] if before else None
    elif finished:
        run = finished[-1]
    result = Snapshot(run=run)
    versions = run["versions"] if run else {}
    for name, loc in tables.items():
        try:
            if name == RUNS:
                table = Table(loc)
            elif name in versions:
                table = Table(loc, versions[name])
            elif isinstance(as_of, _dt.datetime) and not run:
                table = Table(loc, as_of)
            elif run is not None and as_of is not None:
                continue  # a table that run did not have
            else:
                table = Table(loc)
        except TableError as exc:
            raise BioMineError(str(exc)) from None
        result.tables[name] = TableSnapshot(name, loc, table.version, sorted(table.files()), table.schema)
        if as_of is None and name in versions and name != RUNS:
            newest = Table(loc).version
            if newest > table.version:
                result.warnings.append(
                    f"{name}: version {newest} is newer than the version {table.version} the last finished run "
                    f"left (a run is under way, or did not finish): the views show that run's snapshot"
                )
    return result


def _output_of(output: JobOutput) -> JobOutput:
    """The output to read when ``output`` is one of its tables (``OUT/documents``, the Delta table
    that ``biomine ingest --help`` and docs/analysts.md point Delta readers at): its output ``OUT``."""
    if output.tables() or not Table.exists(output.root):
        return output
    parent = JobOutput(output.root.parent)
    return parent if output.root.name in parent.tables() else output


def connect(out: str | os.PathLike | Location | JobOutput, as_of: int | _dt.datetime | None = None):
    """``(connection, view names, warnings)`` for the output ``out`` (at ``as_of``).

    :raises BioMineError: see :func:`snapshot`.
    """
    import duckdb

    snap = snapshot(out, as_of)
    con = duckdb.connect()
    for name, table in snap.tables.items():
        con.register(f"_{name}_arrow", table.dataset())
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_{name}_arrow"')
    if "relations" in snap.tables and "documents" in snap.tables:
        # Retraction status travels with the article, not the relation: in an ingested corpus a
        # retraction reaches PubMed as an update that revises the citation, so the live document row
        # says it without recomputing relations.
        con.execute("ALTER VIEW relations RENAME TO _relations_rows")
        con.execute(
            "CREATE VIEW relations AS SELECT r.*, d.retracted AS article_retracted FROM _relations_rows r "
            "LEFT JOIN (SELECT pmid, version, retracted FROM documents) d "
            "ON d.pmid = r.pmid AND d.version = r.version"
        )
    return con, list(snap.tables), snap.warnings


def read_dataset(out: str | os.PathLike | Location | JobOutput, name: str, as_of: Any = None) -> pa.Table:
    """One table of an output (``documents``, ``entities``, ...) as an Arrow table: what the view of
    that name shows (the same rows any Delta reader gives).

    :raises BioMineError: ``out`` is not an output, or has no table ``name``.
    """
    con, views, _ = connect(out, as_of)
    if name not in views:
        raise BioMineError(f"{out} has no table {name!r} (it has: {', '.join(views)})")
    return con.sql(f'SELECT * FROM "{name}"').to_arrow_table()


def query(
    out: str | os.PathLike | Location | JobOutput,
    sql: str,
    warn: Callable[[str], None] | None = None,
    as_of: int | _dt.datetime | None = None,
):
    """Run ``sql`` over the views of ``out``; returns a pandas DataFrame."""
    import duckdb

    con, views, warnings = connect(out, as_of)
    for warning in warnings:
        (warn or log.warning)(warning)
    try:
        return con.execute(sql).df()
    except duckdb.Error as exc:
        raise BioMineError(f"query failed: {exc} (views: {', '.join(views)})") from None


def query_table(
    out: str | os.PathLike | Location | JobOutput,
    sql: str,
    warn: Callable[[str], None] | None = None,
    as_of: int | _dt.datetime | None = None,
) -> pa.Table:
    """Run ``sql`` over the views of ``out``; returns an Arrow table (SQL types and NULLs as they are,
    which :func:`render` prints). A statement without a result gives an empty table.

    :raises BioMineError: see :func:`snapshot`; SQL that fails (DuckDB's message is kept).
    """
    import duckdb

    con, views, warnings = connect(out, as_of)
    for warning in warnings:
        (warn or log.warning)(warning)
    try:
        relation = con.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise BioMineError(f"query failed: {exc} (views: {', '.join(views)})") from None


#: How ``biomine query`` prints a result: an aligned ``table`` for people, ``csv`` (RFC 4180, a
#: header row, NULL as an empty field), ``json`` (one JSON array of objects, what ``json.load`` and
#: ``jq`` read) and ``jsonl`` (JSON Lines: an object per line, for streaming very large results).
FORMATS = ("table", "csv", "json", "jsonl")
#: The widest a ``table`` column gets; longer values end in an ellipsis.
TABLE_COLUMN_WIDTH = 60


def render(table: pa.Table, fmt: str, *, max_rows: int | None = None) -> Iterator[str]:
    """``table`` as text in ``fmt`` (:data:`FORMATS`), in chunks to write in order. NULL is one
    thing in each format: ``NULL`` in a table, an empty field in CSV, ``null`` in JSON, whatever the
    column's type. ``max_rows`` limits ``table`` only (it ends with a line saying how many rows there
    were); an empty result is its header and ``(0 rows)``.

    :raises ValueError: an unknown ``fmt``.
    """
    if fmt == "table":
        yield _table_text(table, max_rows)
    elif fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.column_names)
        for batch in table.to_batches():  # by column position: a result may repeat a name
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            writer.writerows([_text(v, null="") for v in row] for row in zip(*columns))
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()
    elif fmt == "jsonl":
        for batch in table.to_batches():
            for row in batch.to_pylist():
                yield _json(row) + "\n"
    elif fmt == "json":
        n = 0
        yield "["
        for batch in table.to_batches():
            for row in batch.to_pylist():
                yield ("," if n else "") + "\n" + _json(row)
                n += 1
        yield "\n]\n" if n else "]\n"
    else:
        raise ValueError(f"format {fmt}: use one of {', '.join(FORMATS)}")


def _text(value: Any, *, null: str, width: int | None = None) -> str:
    """One value as text: ``null`` for NULL, nested values as JSON, floats to 6 significant digits
    where a ``width`` (a table) asks for brevity, full precision otherwise."""
    if value is None:
        return null
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = format(value, ".6g") if width else repr(value)
    elif isinstance(value, (list, dict)):
        text = _json(value)
    elif isinstance(value, bytes):
        text = value.hex()
    else:
        text = str(value)
    if width is not None:
        text = " ".join(text.split()) if any(c in text for c in "\n\r\t") else text
        if len(text) > width:
            text = text[: width - 1] + "\u2026"
    return text


def _json_value(value: Any) -> Any:
    import decimal
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _json(value: Any) -> str:
    import json

    return json.dumps(_json_value(value), ensure_ascii=False, allow_nan=False)


def _table_text(table: pa.Table, max_rows: int | None) -> str:
    """An aligned text table: numbers right-aligned, text left-aligned, NULL as ``NULL``."""
    names = table.column_names
    shown = table if max_rows is None else table.slice(0, max_rows)
    columns = [
        [_text(v, null="NULL", width=TABLE_COLUMN_WIDTH) for v in shown.column(i).to_pylist()]
        for i in range(len(names))
    ]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) for t in table.schema.types]
    widths = [max([len(n), *map(len, col)]) for n, col in zip(names, columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, numeric)).rstrip()

    lines = [line(names)] + [line(list(row)) for row in zip(*columns)]
    if table.num_rows == 0:
        lines.append("(0 rows)")
    elif shown.num_rows < table.num_rows:
        lines.append(
            f"({table.num_rows} rows, the first {shown.num_rows} shown: --max-rows N shows more, --format csv all)"
        )
    return "\n".join(lines) + "\n"
