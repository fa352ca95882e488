"""Shared machinery of the task output schemas (entities, relations, summaries).

- :func:`schema_metadata` is the metadata every schema carries: ``biomine.schema`` (its name) and
  ``biomine.schema_version``; Parquet keeps it in the file footer.
- :func:`cast_rows` builds a table of a schema from row dicts (absent nullable keys are null) or casts
  a table / record batch to it, naming the column - and for rows the PMID - that does not fit.
- :func:`check_schema` tells a reader whether a file's schema is one it reads.
- :data:`DECODING` is the struct of decoding settings shared by generated outputs.

:raises SchemaMismatchError: from :func:`cast_rows` and :func:`check_schema`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa

from biogpt.errors import BioMineError

#: How a generated output was decoded; every field nullable (null = not applicable / default).
DECODING = pa.struct(
    [
        ("strategy", pa.string()),  # "greedy" | "beam" | "sampling"
        ("num_beams", pa.int32()),
        ("max_new_tokens", pa.int32()),
        ("min_new_tokens", pa.int32()),
        ("length_penalty", pa.float32()),
        ("no_repeat_ngram_size", pa.int32()),
        ("temperature", pa.float32()),
        ("top_k", pa.int32()),
        ("top_p", pa.float32()),
        ("seed", pa.int64()),
    ]
)

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError)


class SchemaMismatchError(BioMineError):
    """Rows, a table or a file do not fit a task output schema."""


def schema_metadata(name: str, version: int) -> dict[bytes, bytes]:
    return {b"biomine.schema": name.encode(), b"biomine.schema_version": str(version).encode()}


def cast_rows(
    rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch,
    schema: pa.Schema,
    check: Callable[[pa.Table], None] | None = None,
) -> pa.Table:
    """A table of ``schema`` from row dicts or a table / record batch; ``check`` then validates it.

    :raises SchemaMismatchError: unknown columns, a null in a required column, or a value of the wrong
        type; the message names the column (and the row's PMID for row dicts).
    """
    name = schema.metadata[b"biomine.schema"].decode()
    if isinstance(rows, (pa.Table, pa.RecordBatch)):
        table = _cast_table(pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows, schema, name)
    else:
        table = _from_rows(list(rows), schema, name)
    if check is not None:
        check(table)
    return table


def _from_rows(rows: list[Mapping[str, Any]], schema: pa.Schema, name: str) -> pa.Table:
    for row in rows:
        unknown = sorted(set(row) - set(schema.names))
        if unknown:
            raise SchemaMismatchError(f"{name} row for PMID {row.get('pmid')} has keys {unknown} that are not columns")
    arrays = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        for row, value in zip(rows, values):
            problem = _value_problem(field, value)
            if problem:
                raise SchemaMismatchError(f"{name} row for PMID {row.get('pmid')}: column {field.name!r} {problem}")
        try:
            arrays.append(pa.array(values, type=field.type))
        except _ARROW_ERRORS as exc:
            # Arrow does not say which value failed; find the row so the message names it.
            for row, value in zip(rows, values):
                try:
                    pa.array([value], type=field.type)
                except _ARROW_ERRORS:
                    raise SchemaMismatchError(
                        f"{name} row for PMID {row.get('pmid')}: column {field.name!r} expects {field.type}, "
                        f"got {value!r}"
                    ) from exc
            raise SchemaMismatchError(f"{name} column {field.name!r} does not fit {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def _value_problem(field: pa.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field`` where Arrow would accept it silently, else None."""
    if value is None:
        return None if field.nullable else "is required but missing/null"
    kind = field.type
    # Arrow truncates 3.5 to 3 and takes True as 1 in integer columns; refuse both.
    if pa.types.is_integer(kind) and (isinstance(value, bool) or not isinstance(value, int)):
        return f"expects an integer ({kind}), got {value!r}"
    if pa.types.is_struct(kind) and isinstance(value, Mapping):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        unknown = sorted(set(value) - set(names))
        if unknown:  # Arrow would drop them without a word
            return f"has unknown keys {unknown}; allowed: {names}"
        for key, item in value.items():
            problem = _value_problem(kind.field(key), item)
            if problem:
                return f"field {key!r} {problem}"
    return None


def _cast_table(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    unknown = [c for c in table.column_names if c not in schema.names]
    if unknown:
        raise SchemaMismatchError(f"columns {unknown} are not part of the {name} schema")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaMismatchError(f"required column {field.name!r} is missing from a {name} table")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        try:
            column = table.column(field.name).cast(field.type)
        except _ARROW_ERRORS as exc:
            raise SchemaMismatchError(f"{name} column {field.name!r} does not cast to {field.type}: {exc}") from exc
        if not field.nullable and column.null_count:
            raise SchemaMismatchError(f"{name} column {field.name!r} is required but has {column.null_count} nulls")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def check_schema(schema: pa.Schema, where: str, name: str, version: int) -> int:
    """The schema version recorded in ``schema`` (a file's), checked against ``name``/``version``.

    :raises SchemaMismatchError: ``where`` was written with another schema or a newer version.
    """
    meta = schema.metadata or {}
    found = meta.get(b"biomine.schema", b"").decode()
    if found != name:
        raise SchemaMismatchError(f"{where} is not a {name} dataset (schema {found or 'unknown'!r})")
    written = int(meta.get(b"biomine.schema_version", b"0"))
    if written > version:
        raise SchemaMismatchError(
            f"{where} was written with {name} schema version {written}; this biomine reads up to {version}: upgrade biomine"
        )
    return written
