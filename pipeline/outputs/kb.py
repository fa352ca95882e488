"""``biomine kb build``: a deduplicated drug-drug interaction edge table from relation outputs.

Input: relation Parquet files (``OUT/relations``, :mod:`schemas.relations`), rows with
``parse_status = 'ok'`` of one task (``ddi`` by default). When the job's ``documents`` store sits
beside them (or ``documents=`` is given) the publication dates of the supporting abstracts give
``first_seen``/``last_seen``. Output: ``KB.parquet`` in :data:`schemas.kb.KB_SCHEMA`, written
atomically; rebuilding from the same inputs gives the same file contents.

:raises BioMineError: no relation files, or the relations are of another schema.
"""

from __future__ import annotations

from pathlib import Path

from biogpt.errors import BioMineError

_NORM = "trim(regexp_replace(lower(nfc_normalize({col})), '\\s+', ' ', 'g'), ' .,;:\"''()[]')"


def build_kb(relations: str | Path, out: str | Path, *, task: str = "ddi",
             documents: str | Path | None = None) -> int:
    """Build the edge table; returns the number of edges."""
    import duckdb

    from pipeline.store.atomic import write_parquet
    from schemas.kb import cast_batch

    relations = Path(relations)
    files = sorted(relations.glob("*.parquet")) if relations.is_dir() else [relations]
    files = [f for f in files if f.exists()]
    if not files:
        raise BioMineError(f"no relation files in {relations}: point --relations at a job's OUT/relations")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW rel AS SELECT * FROM read_parquet({[str(f) for f in files]!r})")
    docs_dir = Path(documents) if documents else relations.parent / "documents"
    date_join = "NULL::DATE AS pub_date"
    if (docs_dir / "_manifest.json").exists():
        from pipeline.store.shards import iter_shard_paths

        doc_files = [str(p) for p in iter_shard_paths(docs_dir)]
        if doc_files:
            con.execute(f"CREATE VIEW docs AS SELECT pmid, pub_year, pub_month, pub_day "
                        f"FROM read_parquet({doc_files!r})")
            date_join = None
    sql = f"""
    WITH r AS (
      SELECT pmid, relation, evidence_text, {_NORM.format(col='head')} AS h, {_NORM.format(col='tail')} AS t
      FROM rel WHERE parse_status = 'ok' AND task = ?
    ), e AS (
      SELECT least(h, t) AS drug_a, greatest(h, t) AS drug_b, lower(trim(relation)) AS relation, pmid, evidence_text
      FROM r WHERE h <> '' AND t <> '' AND h <> t
    ), d AS (
      {"SELECT pmid, " + date_join + " FROM e" if date_join else
       "SELECT pmid, try_strptime(printf('%04d-%02d-%02d', pub_year, coalesce(pub_month, 1), coalesce(pub_day, 1)), '%Y-%m-%d')::DATE AS pub_date FROM docs WHERE pub_year IS NOT NULL"}
    )
    SELECT drug_a, drug_b, relation,
           count(DISTINCT pmid) AS n_abstracts,
           list_sort(list(DISTINCT pmid)) AS pmids,
           coalesce(list_sort(list(DISTINCT evidence_text) FILTER (WHERE evidence_text IS NOT NULL))[1:5], []) AS evidence,
           min(pub_date) AS first_seen, max(pub_date) AS last_seen
    FROM e LEFT JOIN (SELECT DISTINCT pmid, pub_date FROM d) USING (pmid)
    GROUP BY drug_a, drug_b, relation
    ORDER BY n_abstracts DESC, drug_a, drug_b, relation
    """
    try:
        table = con.sql(sql, params=[task]).to_arrow_table()
    except duckdb.Error as exc:
        raise BioMineError(f"cannot build the KB from {relations}: {exc}") from None
    table = cast_batch(table)
    write_parquet(table, Path(out))
    return table.num_rows
