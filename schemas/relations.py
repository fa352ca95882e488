"""The relation schema: one row per relation stated by a generative RE model, or per unparsed output.

Contract:

- :data:`RELATION_SCHEMA` is the only layout of relation datasets; its metadata carries
  ``biomine.schema = relations`` and ``biomine.schema_version = SCHEMA_VERSION``.
- :func:`cast_batch` builds a table from row dicts (as :func:`pipeline.tasks.re_grammar.relation_rows`
  yields them) or casts a table / record batch, and checks the row invariants below;
  :func:`check_schema` checks a file's schema before reading.
- Unparseable model output is never dropped: it is a row with ``parse_status = 'unparsed'``, a
  ``reason`` and the ``raw_generation``, and null head/tail/relation.
- Task requirement: the RE tasks need a fine-tuned prompt checkpoint of the same task (its
  ``biomine_task.json``; :func:`pipeline.tasks.re_format.load_task_settings` refuses any other).

Columns:

==================  ====================================================================================
pmid, version       PubMed id (int64) and record version (int32), required
task                ``ddi`` | ``kd-dti`` | ``bc5cdr`` (required)
head, tail          entity strings as generated (lower-case): DDI drug/drug, KD-DTI drug/target,
                    BC5CDR chemical/disease
head_id, tail_id    with the task's ``vocabulary``: the identifiers head and tail link to
                    (pipeline/tasks/linking.py; null when unlinked). Without one, BC5CDR: MeSH ids
                    from the document's name maps (``"-1"`` when the name is not in them); null for
                    DDI/KD-DTI
head_match,         the dictionary names head and tail matched (null when unlinked or no
tail_match          vocabulary; schema version 2)
relation            DDI ``mechanism``/``effect``/``advise``/``int``, KD-DTI e.g. ``inhibitor``, BC5CDR ``CID``
evidence_start/end  character offsets (int32) into ``title + " " + abstract`` (as entity offsets) of the
                    smallest sentence window holding head and tail; null when neither string occurs
evidence_text       that window's text
evidence_match      ``both`` | ``head`` | ``tail``: which entity strings the window contains
parse_status        ``ok`` | ``unparsed`` (required)
reason              why the output (or the quoted piece of it) did not parse; null for ``ok``
raw_generation      the full generated text the row came from (required)
model_id            the model that produced the row (required)
decoding            decoding settings (struct: strategy, num_beams, max_new_tokens, min_new_tokens,
                    length_penalty, no_repeat_ngram_size, temperature, top_k, top_p, seed)
input_truncated     true when the model saw only the start of the article's source text: it was cut
                    to fit the checkpoint's source positions (``S-1`` ids + ``...``, as the original
                    fine-tuning data); null where nothing was decoded (schema version 2)
logprob             the model's log-probability (float64, natural log) of the tokens that state the
                    row: the generated piece between separators, ``;``, final ``.`` and ``</s>``
                    excluded, summed from the decoder's own per-token scores (no second pass); for a
                    whole-generation ``unparsed`` row the whole generation's. Null where nothing was
                    decoded or the pieces could not be aligned to tokens. ``exp(logprob)`` is the
                    probability the model gave that exact statement (schema version 2)
logprob_tokens      how many tokens ``logprob`` sums (int32)
==================  ====================================================================================

:raises SchemaMismatchError: from :func:`cast_batch` (names the column and PMID) and
    :func:`check_schema`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

from biogpt.task_spec import RE_TASKS

from ._rows import DECODING, SchemaMismatchError, cast_rows, schema_metadata
from ._rows import check_schema as _check_schema

SCHEMA_NAME = "relations"
# Bump on any change a reader could notice; readers accept files with a version <= theirs.
SCHEMA_VERSION = 2  # 2: input_truncated, logprob, logprob_tokens, head_match, tail_match
TASKS = RE_TASKS  # biogpt/task_spec.py is the one table of task names
PARSE_STATUSES = ("ok", "unparsed")
EVIDENCE_MATCHES = ("both", "head", "tail")

RELATION_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("head", pa.string()),
        pa.field("head_id", pa.string()),
        pa.field("tail", pa.string()),
        pa.field("tail_id", pa.string()),
        pa.field("head_match", pa.string()),
        pa.field("tail_match", pa.string()),
        pa.field("relation", pa.string()),
        pa.field("evidence_start", pa.int32()),
        pa.field("evidence_end", pa.int32()),
        pa.field("evidence_text", pa.string()),
        pa.field("evidence_match", pa.string()),
        pa.field("parse_status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("raw_generation", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("decoding", DECODING),
        pa.field("input_truncated", pa.bool_()),
        pa.field("logprob", pa.float64()),
        pa.field("logprob_tokens", pa.int32()),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)

__all__ = ["RELATION_SCHEMA", "SCHEMA_VERSION", "SchemaMismatchError", "cast_batch", "check_schema"]


def _check(table: pa.Table) -> None:
    columns = table.select(
        [
            "pmid",
            "task",
            "head",
            "tail",
            "relation",
            "parse_status",
            "reason",
            "evidence_start",
            "evidence_end",
            "evidence_match",
        ]
    ).to_pylist()
    for row in columns:
        where = f"relation row for PMID {row['pmid']}"
        if row["task"] not in TASKS:
            raise SchemaMismatchError(f"{where}: task {row['task']!r} is not one of {list(TASKS)}")
        status = row["parse_status"]
        if status == "ok":
            if not all(row[k] for k in ("head", "tail", "relation")):
                raise SchemaMismatchError(f"{where}: an 'ok' row needs head, tail and relation")
        elif status == "unparsed":
            if not row["reason"]:
                raise SchemaMismatchError(f"{where}: an 'unparsed' row needs a reason")
        else:
            raise SchemaMismatchError(f"{where}: parse_status {status!r} is not one of {list(PARSE_STATUSES)}")
        evidence = (row["evidence_start"], row["evidence_end"], row["evidence_match"])
        if any(v is None for v in evidence) and any(v is not None for v in evidence):
            raise SchemaMismatchError(f"{where}: evidence_start, evidence_end and evidence_match go together")
        if evidence[0] is not None and (evidence[1] <= evidence[0] or evidence[2] not in EVIDENCE_MATCHES):
            raise SchemaMismatchError(f"{where}: evidence needs start < end and a match in {list(EVIDENCE_MATCHES)}")


def cast_batch(rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch) -> pa.Table:
    """A :data:`RELATION_SCHEMA` table from row dicts, a table or a record batch.

    :raises SchemaMismatchError: unknown or missing columns, wrong types, or a row breaking the
        invariants (task name, ``ok`` rows with head/tail/relation, ``unparsed`` rows with a reason,
        evidence columns all set or all null).
    """
    return cast_rows(rows, RELATION_SCHEMA, _check)


def check_schema(schema: pa.Schema, where: str) -> int:
    """The relation schema version ``where`` (a file name, for the message) was written with.

    :raises SchemaMismatchError: not a relation dataset, or written by a newer biomine.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
