"""The entity schema: one row per named-entity mention found by the NER task.

Contract:

- :data:`ENTITY_SCHEMA` is the only layout of entity datasets; its metadata carries
  ``biomine.schema = entities`` and ``biomine.schema_version = SCHEMA_VERSION``.
- :func:`cast_batch` builds a table from row dicts (as :func:`pipeline.tasks.ner_spans.entity_rows`
  yields them; absent nullable keys are null) or casts a table / record batch, and is applied to
  every batch before it is written; :func:`check_schema` checks a file's schema before reading.
- Task requirement: the NER task needs a token-classification checkpoint
  (``BioGptForTokenClassification``) whose ``id2label`` is a BIO or BIOES scheme
  (:func:`pipeline.tasks.ner_spans.parse_label_list` refuses anything else).

Columns:

==========  =========================================================================================
pmid        PubMed id (int64, required)
version     PubMed record version (int32, required; 1 for almost every article)
start, end  character offsets (int32, required) into ``title + " " + abstract`` of the article as
            ingested - NOT into the Moses-escaped text; ``text == (title + " " + abstract)[start:end]``
label       entity type (string, required), e.g. ``Chemical``, ``Disease``, ``Gene``
text        the mention text (string, required)
score       mean probability of the predicted tags over the mention's tokens (float32)
model_id    the model that produced the row (string, required), e.g. its directory name or hub id
concept_id  the identifier the mention links to (MeSH ``D008094``, DrugBank ``DB00682``) through the
            task's ``vocabulary`` (pipeline/tasks/linking.py); null when unlinked or no vocabulary
concept_name  that concept's preferred name
concept_vocabulary  ``MeSH`` | ``DrugBank`` | ``PubTator``
matched_by  the dictionary name the mention matched (e.g. "5-fluorouracil" for "5-FU")
link_rule   ``exact`` | ``abbreviation`` | ``salt`` | ``plural``: which matching rule linked it
==========  =========================================================================================

Version 2 added the five linking columns.

:raises SchemaMismatchError: from :func:`cast_batch` (the message names the column and PMID) and from
    :func:`check_schema`; also when ``end <= start``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from ._rows import SchemaMismatchError, cast_rows, schema_metadata
from ._rows import check_schema as _check_schema

SCHEMA_NAME = "entities"
# Bump on any change a reader could notice; readers accept files with a version <= theirs.
SCHEMA_VERSION = 2

ENTITY_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("start", pa.int32(), nullable=False),
        pa.field("end", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("concept_id", pa.string()),
        pa.field("concept_name", pa.string()),
        pa.field("concept_vocabulary", pa.string()),
        pa.field("matched_by", pa.string()),
        pa.field("link_rule", pa.string()),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)

__all__ = ["ENTITY_SCHEMA", "SCHEMA_VERSION", "SchemaMismatchError", "cast_batch", "check_schema"]


def _check(table: pa.Table) -> None:
    bad = pc.less_equal(table.column("end"), table.column("start"))
    if table.num_rows and pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise SchemaMismatchError(
            f"entity row for PMID {table.column('pmid')[row].as_py()}: end must be greater than start"
        )


def cast_batch(rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch) -> pa.Table:
    """An :data:`ENTITY_SCHEMA` table from row dicts, a table or a record batch.

    :raises SchemaMismatchError: unknown or missing columns, wrong types, ``end <= start``.
    """
    return cast_rows(rows, ENTITY_SCHEMA, _check)


def check_schema(schema: pa.Schema, where: str) -> int:
    """The entity schema version ``where`` (a file name, for the message) was written with.

    :raises SchemaMismatchError: not an entity dataset, or written by a newer biomine.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
