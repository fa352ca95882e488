"""The summary schema: one row per generated summary (or other free text) of an article.

Contract:

- :data:`SUMMARY_SCHEMA` is the only layout of summary datasets; its metadata carries
  ``biomine.schema = summaries`` and ``biomine.schema_version = SCHEMA_VERSION``.
- :func:`cast_batch` builds a table from row dicts or casts a table / record batch;
  :func:`check_schema` checks a file's schema before reading.
- Task requirement: summarisation needs a causal-LM checkpoint (the pre-trained BioGPT or a model
  fine-tuned for it), not a prompt-tuned RE/QA checkpoint nor a token-classification one.

Columns:

==============  ========================================================================================
pmid, version   PubMed id (int64) and record version (int32), required
prompt_id       which prompt template produced the input (string, required), e.g. ``tldr-v1``
summary         the generated text, decoded and detokenised (string, required; may be empty)
model_id        the model that produced the row (string, required)
decoding        decoding settings (struct: strategy, num_beams, max_new_tokens, min_new_tokens,
                length_penalty, no_repeat_ngram_size, temperature, top_k, top_p, seed)
input_truncated true when the prompt was cut to leave room for ``max_new_tokens`` in the model's
                positions (the abstract shortened from its end, see :mod:`pipeline.tasks.summarize`);
                required (schema version 2)
==============  ========================================================================================

:raises SchemaMismatchError: from :func:`cast_batch` (names the column and PMID) and :func:`check_schema`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

from ._rows import DECODING, SchemaMismatchError, cast_rows, schema_metadata
from ._rows import check_schema as _check_schema

SCHEMA_NAME = "summaries"
# Bump on any change a reader could notice; readers accept files with a version <= theirs.
SCHEMA_VERSION = 2  # 2: input_truncated

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("decoding", DECODING),
        pa.field("input_truncated", pa.bool_(), nullable=False),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)

__all__ = ["SUMMARY_SCHEMA", "SCHEMA_VERSION", "SchemaMismatchError", "cast_batch", "check_schema"]


def cast_batch(rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch) -> pa.Table:
    """A :data:`SUMMARY_SCHEMA` table from row dicts, a table or a record batch.

    :raises SchemaMismatchError: unknown or missing columns, or wrong types.
    """
    return cast_rows(rows, SUMMARY_SCHEMA)


def check_schema(schema: pa.Schema, where: str) -> int:
    """The summary schema version ``where`` (a file name, for the message) was written with.

    :raises SchemaMismatchError: not a summary dataset, or written by a newer biomine.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
