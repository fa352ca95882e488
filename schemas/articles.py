"""The article schema: one row per PubMed citation, as written by ``biomine fetch`` and ``biomine ingest``.

Contract:

- :data:`ARTICLE_SCHEMA` is the only layout of article shards. Its metadata carries
  ``biomine.schema = articles`` and ``biomine.schema_version = SCHEMA_VERSION``; Parquet keeps schema
  metadata in the file footer, so every shard records the version it was written with.
- :func:`to_table` builds a table from parser rows (dicts keyed by column name; missing keys are
  null); :func:`cast` casts any table or record batch to the schema (adding null columns that are
  absent, ordering columns, refusing unknown ones) and is applied to every batch before it is written.
- :func:`check_schema` tells a reader whether a file was written with a schema version it understands.
- Version 2 added the columns from ``chemicals`` to ``publication_type_uis`` below (appended, none
  changed): version-1 shards still read, their new columns null (:func:`conform`). Version 3 added
  ``content_sha256`` (appended): older shards read with it null (reuse computes it from their title and abstract).
- ``content_sha256`` is the article's **model input** fingerprint (:func:`content_sha256`): the sha256
  of exactly what the tasks read of it, its title and abstract as they see them (a missing one is
  ``""``: :func:`pipeline.tasks.base.text_of`). :func:`to_table` fills it. A record re-issued with the
  same fingerprint (a new yearly baseline re-issues every article) keeps its model outputs
  (:mod:`pipeline.store.datasets`).

Columns (all text is Unicode, with the text of inline markup such as ``<i>``/``<sup>`` kept and the
tags dropped; ``null`` means "not in the record"):

========================  =====================================================================
pmid, version             PubMed id and ``<PMID Version>`` (1 except for versioned journals)
record_type               ``article`` (PubmedArticle) or ``book`` (PubmedBookArticle)
title                     ArticleTitle (BookTitle for a whole book)
abstract                  plain text; structured abstracts as ``LABEL: text`` lines joined by ``\\n``
has_abstract              false when the record has no abstract (such records are kept, not dropped)
abstract_sections         one struct per AbstractText: label, NlmCategory, text
journal, iso_abbreviation Journal/Title and Journal/ISOAbbreviation
pub_year/month/day        publication date where known; month 1-12
pub_season                e.g. ``Spring`` when the journal gives a season instead of a month
medline_date              ``MedlineDate`` verbatim (e.g. ``1998 Dec-1999 Jan``); pub_year is its first year
authors                   last/fore name, initials, suffix, collective (group) name, ORCID, affiliations
mesh_headings             descriptor, descriptor UI, major topic, qualifiers (name, UI, major topic)
keywords                  author/NLM keywords from every KeywordList
publication_types         e.g. ``Journal Article``, ``Review``
languages                 three-letter codes, e.g. ``eng``
doi, pmc_id               from PubmedData/ArticleIdList (DOI falls back to ELocationID)
chemicals                 ChemicalList: substance name, its MeSH UI, registry number (CAS/UNII/EC;
                          null where NLM gives ``0``, i.e. none)
grants                    GrantList: grant id, acronym, agency, country
reference_pmids           PMIDs of the reference list (PubmedData/ReferenceList)
comments_corrections      CommentsCorrections: ref_type (``RetractionIn``, ``ErratumIn``,
                          ``CommentOn``, ...), the cited source, its PMID
retracted                 true when the article is retracted (a ``RetractionIn`` correction, or the
                          publication type ``Retracted Publication``); null in version-1 shards
vernacular_title          VernacularTitle (the title in its original language)
volume, issue, pages      JournalIssue/Volume and Issue; Pagination/MedlinePgn (else StartPage-EndPage)
issn, issn_linking        Journal/ISSN and MedlineJournalInfo/ISSNLinking
country, medline_ta       MedlineJournalInfo/Country and MedlineTA (the journal's NLM title abbreviation)
nlm_unique_id             MedlineJournalInfo/NlmUniqueID
other_ids                 OtherID (source = its Source attribute) and the ArticleIdList ids other than
                          pubmed/doi/pmc (source = their IdType: pii, mid, ...)
publication_type_uis      the MeSH UI of each publication type, in the order of publication_types
content_sha256            hex sha256 of the model input (title, abstract): :func:`content_sha256`;
                          null in shards written before version 3
source                    the query (fetch) or input file name (ingest) the row came from
fetched_at                when the row was fetched or ingested (UTC)
========================  =====================================================================

:raises SchemaMismatchError: from :func:`cast` for unknown columns or uncastable values, and from
    :func:`check_schema` for files written with another schema or a newer version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import pyarrow as pa

from ._rows import SchemaMismatchError, cast_rows, schema_metadata
from ._rows import check_schema as _check_schema

SCHEMA_NAME = "articles"
# Bump on any change a reader could notice (new column, changed type or meaning); readers accept files
# with a version <= theirs.
SCHEMA_VERSION = 3

_QUALIFIER = pa.struct([("name", pa.string()), ("ui", pa.string()), ("major_topic", pa.bool_())])
_MESH = pa.struct(
    [
        ("descriptor", pa.string()),
        ("descriptor_ui", pa.string()),
        ("major_topic", pa.bool_()),
        ("qualifiers", pa.list_(_QUALIFIER)),
    ]
)
_AUTHOR = pa.struct(
    [
        ("last_name", pa.string()),
        ("fore_name", pa.string()),
        ("initials", pa.string()),
        ("suffix", pa.string()),
        ("collective_name", pa.string()),
        ("orcid", pa.string()),
        ("affiliations", pa.list_(pa.string())),
    ]
)
_SECTION = pa.struct([("label", pa.string()), ("category", pa.string()), ("text", pa.string())])
_CHEMICAL = pa.struct([("name", pa.string()), ("ui", pa.string()), ("registry_number", pa.string())])
_GRANT = pa.struct(
    [("grant_id", pa.string()), ("acronym", pa.string()), ("agency", pa.string()), ("country", pa.string())]
)
_CORRECTION = pa.struct([("ref_type", pa.string()), ("ref_source", pa.string()), ("pmid", pa.int64())])
_OTHER_ID = pa.struct([("source", pa.string()), ("id", pa.string())])

ARTICLE_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("record_type", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("abstract", pa.string()),
        pa.field("has_abstract", pa.bool_(), nullable=False),
        pa.field("abstract_sections", pa.list_(_SECTION)),
        pa.field("journal", pa.string()),
        pa.field("iso_abbreviation", pa.string()),
        pa.field("pub_year", pa.int16()),
        pa.field("pub_month", pa.int8()),
        pa.field("pub_day", pa.int8()),
        pa.field("pub_season", pa.string()),
        pa.field("medline_date", pa.string()),
        pa.field("authors", pa.list_(_AUTHOR)),
        pa.field("mesh_headings", pa.list_(_MESH)),
        pa.field("keywords", pa.list_(pa.string())),
        pa.field("publication_types", pa.list_(pa.string())),
        pa.field("languages", pa.list_(pa.string())),
        pa.field("doi", pa.string()),
        pa.field("pmc_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("fetched_at", pa.timestamp("ms", tz="UTC")),
        # --- version 2 ---
        pa.field("chemicals", pa.list_(_CHEMICAL)),
        pa.field("grants", pa.list_(_GRANT)),
        pa.field("reference_pmids", pa.list_(pa.int64())),
        pa.field("comments_corrections", pa.list_(_CORRECTION)),
        pa.field("retracted", pa.bool_()),
        pa.field("vernacular_title", pa.string()),
        pa.field("volume", pa.string()),
        pa.field("issue", pa.string()),
        pa.field("pages", pa.string()),
        pa.field("issn", pa.string()),
        pa.field("issn_linking", pa.string()),
        pa.field("country", pa.string()),
        pa.field("medline_ta", pa.string()),
        pa.field("nlm_unique_id", pa.string()),
        pa.field("other_ids", pa.list_(_OTHER_ID)),
        pa.field("publication_type_uis", pa.list_(pa.string())),
        # --- version 3 ---
        pa.field("content_sha256", pa.string()),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)

COLUMNS = tuple(ARTICLE_SCHEMA.names)
_REQUIRED = tuple(f.name for f in ARTICLE_SCHEMA if not f.nullable)


def content_sha256(title: str | None, abstract: str | None) -> str:
    """The hex sha256 of an article's model input: ``[title, abstract]`` as JSON, a missing one ``""``.

    Every task reads exactly these two fields (``pipeline.run.stages.COLUMNS`` besides pmid and
    version), each on its own (sentence splitting treats them apart), and sees a missing one as ``""``;
    so equal fingerprints mean equal model input, whatever the record's version or other fields.
    """
    blob = json.dumps([title or "", abstract or ""], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build an :data:`ARTICLE_SCHEMA` table from row dicts (as yielded by :mod:`pipeline.pubmed.parser`),
    with ``content_sha256`` computed from each row's title and abstract (:func:`content_sha256`).

    Articles take Arrow's bulk conversion (ingest's hot path) rather than the per-value checks of
    :func:`schemas._rows.cast_rows`; a failure is then narrowed down to the row that caused it.

    :raises SchemaMismatchError: a row has a key that is not a column, a value of the wrong type, or
        a null in a required column (the message names the row's PMID).
    """
    rows = [{**row, "content_sha256": content_sha256(row.get("title"), row.get("abstract"))} for row in rows]
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise SchemaMismatchError(
                f"article row for PMID {row.get('pmid')} has keys {sorted(unknown)} that are not columns of "
                f"schemas.articles (version {SCHEMA_VERSION})"
            )
        for field in _REQUIRED:
            if row.get(field) is None:
                raise SchemaMismatchError(f"article row for PMID {row.get('pmid')}: column {field!r} is required")
    try:
        return pa.Table.from_pylist(rows, schema=ARTICLE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        # Arrow does not say which row failed; find it so the message names a PMID.
        for row in rows:
            try:
                pa.Table.from_pylist([row], schema=ARTICLE_SCHEMA)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as row_exc:
                raise SchemaMismatchError(
                    f"article row for PMID {row.get('pmid')} does not fit the article schema: {row_exc}"
                ) from row_exc
        raise SchemaMismatchError(f"article rows do not fit the article schema: {exc}") from exc


def cast(data: pa.Table | pa.RecordBatch) -> pa.Table:
    """Cast a table or record batch to :data:`ARTICLE_SCHEMA` (column order, types and metadata).

    Absent nullable columns are added as nulls, so batches from older writers stay readable.

    :raises SchemaMismatchError: unknown columns, a missing non-null column, or values that do not cast.
    """
    return cast_rows(data, ARTICLE_SCHEMA)


def conform(table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """``table`` (read from a shard of any version <= :data:`SCHEMA_VERSION`) with the current
    schema's columns (``columns``: only those, in that order); columns an older version lacks are
    null. Shards of several versions then concatenate into one table."""
    names = list(columns) if columns is not None else list(COLUMNS)
    arrays = []
    for name in names:
        field = ARTICLE_SCHEMA.field(name)
        if name in table.column_names:
            arrays.append(table.column(name).cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    schema = pa.schema([ARTICLE_SCHEMA.field(n) for n in names], metadata=ARTICLE_SCHEMA.metadata)
    return pa.Table.from_arrays(arrays, schema=schema)


def check_schema(schema: pa.Schema, where: str) -> int:
    """Return the schema version recorded in ``schema``'s metadata (a file's, say).

    :raises SchemaMismatchError: ``where`` (a file name, for the message) was not written with the
        article schema, or with a newer version than this code reads.
    """
    return _check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION)
