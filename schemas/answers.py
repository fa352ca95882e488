"""The answer schema: one row per (article, question) of a PubMedQA question-answering job task.

Contract:

- :data:`ANSWER_SCHEMA` is the only layout of answer datasets (``OUT/answers``, the ``[tasks.qa]``
  job task, :mod:`pipeline.tasks.qa`); its metadata carries ``biomine.schema = answers`` and
  ``biomine.schema_version = SCHEMA_VERSION``.
- :func:`cast_batch` builds a table from row dicts or casts a table / record batch, and checks the
  invariants below; :func:`check_schema` checks a file's schema before reading.
- Nothing is dropped: an article the task could not ask (no abstract; in title mode, a title that
  is not a question) is a ``skipped`` row with its reason, and an answer that does not parse is a row
  with the raw generation kept.

Columns:

================  =====================================================================================
pmid, version     PubMed id (int64) and record version (int32), required
question_id       which question of the job (``[tasks.qa] question_id``; ``title`` for title questions),
                  required
question          the question asked (the job's, or the article's title); null only for a ``skipped``
                  row of an article without a title
answer            ``yes`` | ``no`` | ``maybe``; null unless ``parse_status = 'ok'``
parse_status      ``ok`` (an answer of the grammar), ``unparsed`` (no answer sentence: the original
                  ``postprocess.py`` writes ``failed``), ``other_answer`` (the sentence ends in
                  something other than yes/no/maybe, which the original scores as wrong), ``skipped``
                  (nothing was generated: see ``reason``); required
reason            why there is no answer; null for ``ok``, required otherwise
raw_generation    the generated text (without the learned prompt tokens); null for ``skipped``
answer_logprob    the sum of the model's log-probabilities of the answer's tokens in the generation
                  (float64); null unless ``ok`` (and where the tokens cannot be told apart)
model_id          the model that produced the row (string, required)
decoding          decoding settings (struct: strategy, num_beams, max_new_tokens, ...); null for
                  ``skipped``
input_truncated   true when the input was cut to the checkpoint's ``max_source_positions`` (S-1 ids +
                  ``...``, as the fine-tuning data); null for ``skipped``
================  =====================================================================================

:raises SchemaMismatchError: from :func:`cast_batch` (names the column and PMID) and :func:`check_schema`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

from ._rows import DECODING, SchemaMismatchError, cast_rows, schema_metadata
from ._rows import check_schema as _check_schema

SCHEMA_NAME = "answers"
# Bump on any change a reader could notice; readers accept files with a version <= theirs.
SCHEMA_VERSION = 1

#: The answers of PubMedQA's ``final_decision`` (and of the released models' answer sentence).
ANSWERS = ("yes", "no", "maybe")
PARSE_STATUSES = ("ok", "unparsed", "other_answer", "skipped")

ANSWER_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("parse_status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("raw_generation", pa.string()),
        pa.field("answer_logprob", pa.float64()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("decoding", DECODING),
        pa.field("input_truncated", pa.bool_()),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)

__all__ = ["ANSWER_SCHEMA", "ANSWERS", "PARSE_STATUSES", "SCHEMA_VERSION", "SchemaMismatchError", "cast_batch"]


def _check(table: pa.Table) -> None:
    names = ["pmid", "question", "answer", "parse_status", "reason", "raw_generation", "answer_logprob"]
    for row in table.select(names).to_pylist():
        where = f"answer row for PMID {row['pmid']}"
        status = row["parse_status"]
        if status not in PARSE_STATUSES:
            raise SchemaMismatchError(f"{where}: parse_status {status!r} is not one of {list(PARSE_STATUSES)}")
        if status == "ok":
            if row["answer"] not in ANSWERS or row["reason"] is not None:
                raise SchemaMismatchError(f"{where}: an 'ok' row needs an answer in {list(ANSWERS)} and no reason")
        elif row["answer"] is not None or row["answer_logprob"] is not None or not row["reason"]:
            raise SchemaMismatchError(f"{where}: a {status!r} row has no answer nor answer_logprob, and a reason")
        if (status == "skipped") != (row["raw_generation"] is None):
            raise SchemaMismatchError(f"{where}: raw_generation is null exactly for 'skipped' rows")
        if status != "skipped" and row["question"] is None:
            raise SchemaMismatchError(f"{where}: a question that was asked is required")


def cast_batch(rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch) -> pa.Table:
    """An :data:`ANSWER_SCHEMA` table from row dicts, a table or a record batch.

    :raises SchemaMismatchError: unknown or missing columns, wrong types, or a row breaking the
        invariants (a known ``parse_status``; ``ok`` rows with a yes/no/maybe answer; other rows with
        a reason and no answer; ``raw_generation`` null exactly for ``skipped`` rows).
    """
    return cast_rows(rows, ANSWER_SCHEMA, _check)


def check_schema(schema: pa.Schema, where: str) -> int:
    """The answer schema version ``where`` (a file name, for the message) was written with.

    :raises SchemaMismatchError: not an answer dataset, or written by a newer biomine.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
