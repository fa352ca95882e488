"""The drug-drug interaction knowledge base: built from an output's relations, kept current by the job.

- :func:`edges` computes the edge table (:data:`schemas.kb.KB_SCHEMA`) from relation rows with
  ``parse_status = 'ok'`` of one task (``ddi`` by default), with the publication dates of the
  supporting abstracts (``first_seen``/``last_seen``) and their retraction status from ``documents``
  when given. The same inputs give the same rows in the same order.
- :func:`update_kb` writes it as the output's ``kb`` Delta table from one consistent snapshot of
  ``relations`` and ``documents``: a job does this at the end of every run, so the KB is never stale;
  a new table version appears only when the edges changed (earlier versions stay readable: time
  travel within the vacuum retention).
- :func:`diff` says what changed between two versions of the ``kb`` table: edges added, removed and
  rescored (``biomine kb diff OUT --since VERSION|DATE``).

:raises BioMineError: no relations, relations of another schema, a version that does not exist.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from typing import Any, TypedDict

import pyarrow as pa

from pipeline.errors import BioMineError
from pipeline.outputs.query import TableSnapshot
from pipeline.store.output import JobOutput
from pipeline.store.storage import location, parquet_bytes
from pipeline.store.tables import describe

log = logging.getLogger(__name__)
_NORM = "trim(regexp_replace(lower(nfc_normalize({col})), '\\s+', ' ', 'g'), ' .,;:\"''()[]')"


def edges(relations, documents=None, *, task: str = "ddi") -> pa.Table:
    """The KB edge table from ``relations`` (a pyarrow dataset or table of relation rows) and
    optionally ``documents`` (of articles: publication dates, retraction status).

    :raises BioMineError: the relation rows do not fit the relations schema.
    """
    import duckdb

    from schemas.kb import cast_batch

    con = duckdb.connect()
    con.register("rel", relations)
    live = ""
    if documents is not None:
        con.register("docs_all", documents)
        # only relations of articles in this documents snapshot (a relation row outlives nothing)
        live = "AND (pmid, version) IN (SELECT (pmid, version) FROM docs_all)"
        docs = (
            "SELECT pmid, try_strptime(printf('%04d-%02d-%02d', pub_year, coalesce(pub_month, 1), "
            "coalesce(pub_day, 1)), '%Y-%m-%d')::DATE AS pub_date, retracted FROM docs_all"
        )
    else:
        docs = "SELECT DISTINCT pmid, NULL::DATE AS pub_date, NULL::BOOLEAN AS retracted FROM e"
    # Relation rows before schema version 2 have no logprob: their edges get no score.
    columns = {c[0] for c in con.sql("SELECT * FROM rel LIMIT 0").description}
    logprob = "logprob" if "logprob" in columns else "NULL::DOUBLE"
    sql = f"""
    WITH r AS (
      SELECT pmid, relation, evidence_text, head, tail, {_NORM.format(col="head")} AS h, {_NORM.format(col="tail")} AS t,
             nullif(head_id, '-1') AS hid, nullif(tail_id, '-1') AS tid, {logprob} AS logprob
      FROM rel WHERE parse_status = 'ok' AND task = ? {live}
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
        raise BioMineError(f"cannot build the KB: {exc}") from None
    return cast_batch(table)


def update_kb(output: JobOutput, *, task: str = "ddi") -> dict[str, Any]:
    """Rebuild ``OUT/kb`` from the output's current ``relations`` and ``documents`` (the caller holds
    the output's lease); a new table version only when the edges changed. Returns what it did.

    :raises BioMineError: the output has no relations table.
    """
    from pipeline.outputs.query import snapshot
    from pipeline.store.tables import Table, data_file_name
    from schemas.kb import KB_SCHEMA
    from schemas.kb import SCHEMA_VERSION as KB_VERSION

    snap = snapshot(output)
    if "relations" not in snap.tables:
        raise BioMineError(f"{output.root} has no relations table: run a job with relation extraction (re) first")
    live = {}
    for name in ("relations", "documents"):
        if name in snap.tables:  # the newest versions: what the run just committed
            t = Table(snap.tables[name].loc)
            live[name] = TableSnapshot(name, t.loc, t.version, sorted(t.files()), t.schema).dataset()
    table = edges(live["relations"], live.get("documents"), task=task)
    kb = Table.open_or_create(output.kb, KB_SCHEMA, "kb", KB_VERSION)
    data = parquet_bytes(table)
    name = data_file_name(f"kb-{task}", data)
    current = kb.files()
    if list(current) == [name]:
        return {"edges": table.num_rows, "version": kb.version, "changed": False}
    (output.kb / name).write_bytes(data)
    version = kb.commit(
        [describe(name, len(data), table)],
        list(current.values()),
        metadata={"kb": {"task": task, "edges": table.num_rows}},
    )
    return {"edges": table.num_rows, "version": version, "changed": True}


def export_kb(output: JobOutput, dest: str | os.PathLike, *, task: str = "ddi") -> int:
    """The current KB of ``output`` (rebuilt from its snapshot) written to one Parquet file ``dest``.

    :raises BioMineError: ``dest`` is a folder (``setting`` ``"dest"``), or the output has no relations.
    """
    from pipeline.outputs.query import snapshot

    if location(dest).is_dir():
        raise BioMineError(
            f"{dest} is a folder: name the Parquet file to write, e.g. {location(dest) / 'kb.parquet'}",
            setting="dest",
        )
    snap = snapshot(output)
    if "relations" not in snap.tables:
        raise BioMineError(f"{output.root} has no relations table: point it at a job's output")
    docs = snap.tables["documents"].dataset() if "documents" in snap.tables else None
    table = edges(snap.tables["relations"].dataset(), docs, task=task)
    location(dest).write_parquet(table)
    return table.num_rows


EDGE_KEY = ("drug_a", "drug_b", "relation")


def _key(row: dict[str, Any]) -> tuple:
    a = row.get("drug_a_id") or f"name:{row['drug_a']}"
    b = row.get("drug_b_id") or f"name:{row['drug_b']}"
    return (a, b, row["relation"])


class KbDiff(TypedDict):
    """What :func:`diff` returns: the two versions compared, and the edges (kb rows) that changed."""

    from_version: int
    to_version: int
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    #: the new rows, with ``score_before`` and ``n_abstracts_before``
    rescored: list[dict[str, Any]]


def diff(output: JobOutput, since: int | _dt.datetime, until: int | None = None) -> KbDiff:
    """Edges added, removed and rescored (score, supporting abstracts or retraction status changed)
    in the ``kb`` table between version (or time) ``since`` and ``until`` (default: the newest
    version).

    :raises BioMineError: no kb table, or a version it does not have.
    """
    from pipeline.store.tables import Table, TableError

    try:
        old = Table(output.kb, since)
        new = Table(output.kb, until) if until is not None else Table(output.kb)
    except TableError as exc:
        raise BioMineError(
            f'{exc}; `biomine kb diff` reads {output.kb} (its versions: `biomine query OUT "SELECT versions FROM runs"`)'
        ) from None
    try:
        before = {_key(r): r for r in old.read(files=sorted(old.files())).to_pylist()}
        after = {_key(r): r for r in new.read(files=sorted(new.files())).to_pylist()}
    except (FileNotFoundError, OSError) as exc:
        raise BioMineError(
            f"{output.kb}: version {old.version} can no longer be read ({str(exc).splitlines()[0]}): `biomine "
            "compact` removes the files of versions older than its retention; diff against a newer one"
        ) from None
    # rescored: another score, other supporting abstracts, or another retraction status
    what = ("score", "pmids", "retracted", "retracted_pmids")
    rescored = [
        {
            **after[k],
            "score_before": before[k]["score"],
            "n_abstracts_before": before[k]["n_abstracts"],
            "retracted_before": before[k]["retracted"],
        }
        for k in sorted(set(before) & set(after), key=str)
        if tuple(before[k][c] for c in what) != tuple(after[k][c] for c in what)
    ]
    return {
        "from_version": old.version,
        "to_version": new.version,
        "added": [after[k] for k in sorted(set(after) - set(before), key=str)],
        "removed": [before[k] for k in sorted(set(before) - set(after), key=str)],
        "rescored": rescored,
    }
