"""The drug-drug interaction knowledge-base edge table written by ``biomine kb build``.

One row per (drug, drug, relation): drugs keyed by identifier when linked, else by name (Unicode
NFC, lower case, whitespace collapsed, surrounding punctuation removed), the pair ordered by key,
because DDI statements are symmetric ("the interaction between A and B" and "... between B and A"
are one edge).

==============  ===========================================================================
drug_a, drug_b  the drugs' normalised names (for a linked drug the alphabetically first of its names)
relation        DDI type: mechanism | effect | advise | int
n_abstracts     number of distinct PMIDs stating the edge
pmids           those PMIDs, ascending
evidence        up to 5 distinct evidence sentences (sorted), from the relation rows
first_seen      earliest publication date of a supporting abstract (null when unknown)
last_seen       latest publication date of a supporting abstract
retracted_pmids the supporting PMIDs whose article is retracted (schemas/articles.py ``retracted``)
retracted       true when every supporting abstract is retracted: the edge rests on retracted work
                only (false when unknown: documents written before article schema version 2)
score           how sure the evidence makes the edge, 0..1: ``1 - prod over supporting abstracts
                (1 - p)``, ``p`` the highest ``exp(logprob)`` among the abstract's relation rows
                stating it (``logprob``: the model's log-probability of the statement's tokens,
                schemas/relations.py). The noisy-OR of independent evidence, as INDRA's belief
                combines its sources: one confident abstract or several hesitant ones score high.
                Null when no supporting row has a logprob (relations before their schema version 2)
drug_a_id,      the identifiers both drugs link to (MeSH, DrugBank: the relation rows' ``head_id`` /
drug_b_id       ``tail_id`` from the RE task's ``vocabulary``); null for a drug that did not link
drug_a_names,   every surface form the relation rows wrote for each drug, sorted
drug_b_names
==============  ===========================================================================

Edges are keyed by identifier where both drugs linked: "warfarin", "Coumadin" and "warfarin
sodium" are one drug (DB00682), their statements one edge, every surface form and PMID kept as
evidence; a drug that did not link is keyed by its normalised name. The pair is ordered by key,
so ``drug_a`` may sort after ``drug_b`` when their ids order the other way.

Version 2 added ``retracted_pmids`` and ``retracted``; version 3 ``score``, the ids and the names.
"""

from __future__ import annotations

import pyarrow as pa

from ._rows import cast_rows, schema_metadata

SCHEMA_NAME = "kb"
SCHEMA_VERSION = 3

KB_SCHEMA = pa.schema(
    [
        pa.field("drug_a", pa.string(), nullable=False),
        pa.field("drug_b", pa.string(), nullable=False),
        pa.field("relation", pa.string(), nullable=False),
        pa.field("n_abstracts", pa.int64(), nullable=False),
        pa.field("pmids", pa.list_(pa.int64()), nullable=False),
        pa.field("evidence", pa.list_(pa.string())),
        pa.field("first_seen", pa.date32()),
        pa.field("last_seen", pa.date32()),
        pa.field("retracted_pmids", pa.list_(pa.int64()), nullable=False),
        pa.field("retracted", pa.bool_(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("drug_a_id", pa.string()),
        pa.field("drug_b_id", pa.string()),
        pa.field("drug_a_names", pa.list_(pa.string()), nullable=False),
        pa.field("drug_b_names", pa.list_(pa.string()), nullable=False),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)


def cast_batch(table: pa.Table) -> pa.Table:
    return cast_rows(table, KB_SCHEMA)
