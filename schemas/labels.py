"""The label schema: one row per document-level class a classification model gives an article.

Contract:

- :data:`LABEL_SCHEMA` is the only layout of label datasets (``OUT/labels``, the ``classify`` task); its
  metadata carries ``biomine.schema = labels`` and ``biomine.schema_version = SCHEMA_VERSION``.
- :func:`cast_batch` builds a table from row dicts (as :class:`pipeline.tasks.classify.ClassifyTask`
  yields them) or casts a table / record batch, and checks the row invariants below;
  :func:`check_schema` checks a file's schema before reading.
- An article with no label (every sentence of it classified ``empty``, or no text) has no row; its
  documents file's output still records it as computed, as for the other tasks.
- Unparseable model output is never dropped: a generated line that is not a label sentence, or names
  something that is no class, is a row with ``parse_status = 'unparsed'``, a ``reason``, the
  ``raw_generation`` and the sentence as evidence; ``label`` is null.

Columns:

==================  ====================================================================================
pmid, version       PubMed id (int64) and record version (int32), required
label               the class (e.g. ``activating invasion and metastasis``); null for ``unparsed`` rows
score               the model's probability of the label (float64, 0..1): ``exp(logprob)`` for the
                    generative HoC checkpoint; null where no log-probability could be aligned
logprob             natural-log probability (float64) of the tokens that name the label in the best
                    sentence's generation (separators, final ``.`` and ``</s>`` excluded), from the
                    decoder's own per-token scores; null where the pieces could not be aligned
evidence_start/end  character offsets (int32) into ``title + " " + abstract`` (as entity offsets) of the
                    sentence that gives the label its best ``logprob`` (the first such sentence; for
                    ``unparsed`` rows the sentence whose generation did not parse)
evidence_text       that sentence's text
sentences           how many sentences the model gave this label (int32)
parse_status        ``ok`` | ``unparsed`` (required)
reason              why the generation did not parse; null for ``ok``
raw_generation      the generated text of the evidence sentence
model_id            the model that produced the row (required)
==================  ====================================================================================

Rows of a ``BioGptForSequenceClassification`` checkpoint (pipeline/tasks/classify.py): ``score`` is
the label's best window probability (softmax, or sigmoid for a multi-label head), ``logprob`` its
log, the evidence the best window's span when the text took several windows (else null), and
``sentences`` and ``raw_generation`` are null.

:raises SchemaMismatchError: from :func:`cast_batch` (names the column and PMID) and
    :func:`check_schema`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

from ._rows import SchemaMismatchError, cast_rows, schema_metadata
from ._rows import check_schema as _check_schema

SCHEMA_NAME = "labels"
# Bump on any change a reader could notice; readers accept files with a version <= theirs.
SCHEMA_VERSION = 1
PARSE_STATUSES = ("ok", "unparsed")

LABEL_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("logprob", pa.float64()),
        pa.field("evidence_start", pa.int32()),
        pa.field("evidence_end", pa.int32()),
        pa.field("evidence_text", pa.string()),
        pa.field("sentences", pa.int32()),
        pa.field("parse_status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("raw_generation", pa.string()),
        pa.field("model_id", pa.string(), nullable=False),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)

__all__ = ["LABEL_SCHEMA", "SCHEMA_VERSION", "SchemaMismatchError", "cast_batch", "check_schema"]


def _check(table: pa.Table) -> None:
    columns = ["pmid", "label", "score", "parse_status", "reason", "evidence_start", "evidence_end", "evidence_text"]
    for row in table.select(columns).to_pylist():
        where = f"label row for PMID {row['pmid']}"
        status = row["parse_status"]
        if status == "ok":
            if not row["label"]:
                raise SchemaMismatchError(f"{where}: an 'ok' row needs a label")
        elif status == "unparsed":
            if not row["reason"] or row["label"] is not None:
                raise SchemaMismatchError(f"{where}: an 'unparsed' row needs a reason and no label")
        else:
            raise SchemaMismatchError(f"{where}: parse_status {status!r} is not one of {list(PARSE_STATUSES)}")
        if row["score"] is not None and not 0.0 <= row["score"] <= 1.0:
            raise SchemaMismatchError(f"{where}: score {row['score']} is not a probability (0..1)")
        evidence = (row["evidence_start"], row["evidence_end"], row["evidence_text"])
        if any(v is None for v in evidence) and any(v is not None for v in evidence):
            raise SchemaMismatchError(f"{where}: evidence_start, evidence_end and evidence_text go together")
        if evidence[0] is not None and evidence[1] <= evidence[0]:
            raise SchemaMismatchError(f"{where}: evidence needs start < end")


def cast_batch(rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch) -> pa.Table:
    """A :data:`LABEL_SCHEMA` table from row dicts, a table or a record batch.

    :raises SchemaMismatchError: unknown or missing columns, wrong types, or a row breaking the
        invariants (``ok`` rows with a label, ``unparsed`` rows with a reason and no label, a score
        outside 0..1, evidence columns all set or all null with start < end).
    """
    return cast_rows(rows, LABEL_SCHEMA, _check)


def check_schema(schema: pa.Schema, where: str) -> int:
    """The label schema version ``where`` (a file name, for the message) was written with.

    :raises SchemaMismatchError: not a label dataset, or written by a newer biomine.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
