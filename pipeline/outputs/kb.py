"""``biomine kb build``: a deduplicated drug-drug interaction edge table from relation outputs.

Input: relation Parquet files (``OUT/relations``, :mod:`schemas.relations`), rows with
``parse_status = 'ok'`` of one task (``ddi`` by default). When the job's ``documents`` store sits
beside them (or ``documents=`` is given) the publication dates of the supporting abstracts give
``first_seen``/``last_seen``, and their retraction status ``retracted_pmids``/``retracted``. Output: ``KB.parquet`` in :data:`schemas.kb.KB_SCHEMA`, written
atomically; rebuilding from the same inputs gives the same file contents.

:raises BioMineError: no relation files, or the relations are of another schema.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from pipeline.errors import BioMineError
from pipeline.store.output import JobOutput
from pipeline.store.storage import location

log = logging.getLogger(__name__)
_NORM = "trim(regexp_replace(lower(nfc_normalize({col})), '\\s+', ' ', 'g'), ' .,;:\"''()[]')"


def build_kb(
    relations: str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str = "ddi",
    documents: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
) -> int:
    """Build the edge table; returns the number of edges. ``warn`` gets a warning when the relations
    cover fewer document shards than ``documents`` holds (an unfinished run)."""
    import duckdb

    from pipeline.outputs.query import register
    from pipeline.store.datasets import TaskDataset
    from schemas.kb import cast_batch

    relations = location(relations)
    if location(out).is_dir():
        raise BioMineError(f"--out {out} is a folder: name the edge table's file, e.g. {location(out) / 'kb.parquet'}")
    docs_dir = location(documents) if documents else JobOutput(relations.parent).documents
    doc_shards = None
    tombstones = None
    if (docs_dir / "_manifest.json").exists():
        from pipeline.store.shards import committed_shards
        from pipeline.store.shards import tombstones as read_tombstones

        doc_shards = committed_shards(docs_dir)
        tombstones = read_tombstones(docs_dir, doc_shards)
    shards = None
    if relations.is_dir():
        # A job's dataset: its committed files only (never a killed run's leftovers); the commit
        # records carry the shard names, only shards still in `documents` count, and relations of
        # tombstoned (revised or deleted) articles are masked.
        live = None if doc_shards is None else [s.stem for s in doc_shards]
        records = TaskDataset(relations).records(live)
        shards = sorted(records)
        files = [relations / records[s]["file"]["name"] for s in shards]
        if live is not None and files and len(files) < len(live):
            (warn or log.warning)(
                f"relations: {len(live) - len(files)} of {len(live)} document shards have no "
                "committed output (the run is unfinished or failed: re-run the job to complete it)"
            )
    else:
        files = [relations] if relations.is_file() else []
    if not files:
        raise BioMineError(
            f"no relation files in {relations} (only committed outputs count): point --relations "
            "at a job's OUT/relations"
        )
    con = duckdb.connect()
    register(con, "rel", files, shards, tombstones)
    if doc_shards:
        from schemas.articles import ARTICLE_SCHEMA

        register(
            con,
            "docs_all",
            [docs_dir / s.name for s in doc_shards],
            [s.stem for s in doc_shards],
            tombstones,
            ARTICLE_SCHEMA,
        )
        docs = (
            "SELECT pmid, try_strptime(printf('%04d-%02d-%02d', pub_year, coalesce(pub_month, 1), "
            "coalesce(pub_day, 1)), '%Y-%m-%d')::DATE AS pub_date, retracted FROM docs_all"
        )
    else:
        docs = "SELECT DISTINCT pmid, NULL::DATE AS pub_date, NULL::BOOLEAN AS retracted FROM e"
    # Relation files before schema version 2 have no logprob: their edges get no score.
    columns = {c[0] for c in con.sql("SELECT * FROM rel LIMIT 0").description}
    logprob = "logprob" if "logprob" in columns else "NULL::DOUBLE"
    sql = f"""
    WITH r AS (
      SELECT pmid, relation, evidence_text, head, tail, {_NORM.format(col="head")} AS h, {_NORM.format(col="tail")} AS t,
             nullif(head_id, '-1') AS hid, nullif(tail_id, '-1') AS tid, {logprob} AS logprob
      FROM rel WHERE parse_status = 'ok' AND task = ?
    ), k AS (  -- an entity is its identifier when linked, else its normalised name
      SELECT *, coalesce(hid, 'name:' || h) AS hk, coalesce(tid, 'name:' || t) AS tk FROM r WHERE h <> '' AND t <> ''
    ), e AS (  -- DDI statements are symmetric: order the two entities by key
      SELECT CASE WHEN hk <= tk THEN hk ELSE tk END AS key_a, CASE WHEN hk <= tk THEN tk ELSE hk END AS key_b,
             CASE WHEN hk <= tk THEN h ELSE t END AS name_a, CASE WHEN hk <= tk THEN t ELSE h END AS name_b,
             CASE WHEN hk <= tk THEN head ELSE tail END AS surface_a, CASE WHEN hk <= tk THEN tail ELSE head END AS surface_b,
             lower(trim(relation)) AS relation, pmid, evidence_text, exp(logprob) AS p
      FROM k WHERE hk <> tk
    ), per_abstract AS (  -- an abstract's evidence: its most probable statement of the edge
      SELECT key_a, key_b, relation, pmid, max(p) AS p FROM e GROUP BY ALL
    ), scores AS (        -- noisy-OR over abstracts (schemas/kb.py); unscored rows add nothing
      SELECT key_a, key_b, relation, 1 - product(1 - p) AS score FROM per_abstract GROUP BY ALL
    ), d AS ({docs})
    SELECT min(name_a) AS drug_a, min(name_b) AS drug_b, relation,
           count(DISTINCT pmid) AS n_abstracts,
           list_sort(list(DISTINCT pmid)) AS pmids,
           coalesce(list_sort(list(DISTINCT evidence_text) FILTER (WHERE evidence_text IS NOT NULL))[1:5], []) AS evidence,
           min(pub_date) AS first_seen, max(pub_date) AS last_seen,
           coalesce(list_sort(list(DISTINCT pmid) FILTER (WHERE retracted)), []) AS retracted_pmids,
           count(DISTINCT pmid) FILTER (WHERE retracted) = count(DISTINCT pmid) AS retracted,
           any_value(score) AS score,
           CASE WHEN key_a LIKE 'name:%' THEN NULL ELSE key_a END AS drug_a_id,
           CASE WHEN key_b LIKE 'name:%' THEN NULL ELSE key_b END AS drug_b_id,
           list_sort(list(DISTINCT surface_a)) AS drug_a_names, list_sort(list(DISTINCT surface_b)) AS drug_b_names
    FROM e LEFT JOIN (SELECT DISTINCT pmid, pub_date, retracted FROM d) USING (pmid)
           LEFT JOIN scores USING (key_a, key_b, relation)
    GROUP BY key_a, key_b, relation
    ORDER BY n_abstracts DESC, drug_a, drug_b, relation
    """
    try:
        table = con.sql(sql, params=[task]).to_arrow_table()
    except duckdb.Error as exc:
        raise BioMineError(f"cannot build the KB from {relations}: {exc}") from None
    table = cast_batch(table)
    location(out).write_parquet(table)
    return table.num_rows
