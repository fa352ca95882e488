"""The concept dictionary that entity linking reads: one row per (name, concept) pair.

``biomine vocab build`` writes it from public vocabulary files (MeSH descriptor and supplementary
concept XML, the CC0 DrugBank vocabulary CSV, annotated PubTator files); :mod:`pipeline.tasks.linking`
matches mentions against its ``key`` column.

==============  ===========================================================================
key             the name's matching key (:func:`pipeline.tasks.linking.normalise`), required
name            the name as the source writes it (an entry term, synonym or annotated mention)
concept_id      the identifier as its vocabulary writes it: MeSH ``D008094`` / ``C012345``,
                DrugBank ``DB00682``; a composite PubTator mention keeps ``D1|D2``; required
concept_name    the concept's preferred name (MeSH descriptor/supplementary name, DrugBank
                common name; for PubTator, the most frequent annotated name)
vocabulary      ``MeSH`` | ``DrugBank`` | ``PubTator`` (required)
type            ``Chemical`` | ``Disease`` | null: MeSH tree C and F03 are diseases, D chemicals;
                supplementary class 1 chemicals, 3 diseases; DrugBank chemicals; PubTator the
                annotated type
preferred       the name is the concept's preferred name (ties between concepts prefer it)
==============  ===========================================================================
"""

from __future__ import annotations

import pyarrow as pa

from ._rows import check_schema as _check_schema
from ._rows import schema_metadata

SCHEMA_NAME = "concepts"
SCHEMA_VERSION = 1
VOCABULARIES = ("MeSH", "DrugBank", "PubTator")
TYPES = ("Chemical", "Disease")

CONCEPT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("concept_id", pa.string(), nullable=False),
        pa.field("concept_name", pa.string()),
        pa.field("vocabulary", pa.string(), nullable=False),
        pa.field("type", pa.string()),
        pa.field("preferred", pa.bool_(), nullable=False),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)


def check_schema(schema: pa.Schema, where: str) -> int:
    """The dictionary schema version ``where`` was written with.

    :raises SchemaMismatchError: not a concept dictionary, or written by a newer biomine.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
