"""Updates cost what they change, and every reader sees exactly the live rows (issues "PubMed-scale
ingest and updates", "Analyst-ready tables").

- parallel ingest (worker processes, or Ray tasks in a job) writes byte for byte the data files a
  serial one does, whatever order the workers finish in;
- an update that revises one article per data file rewrites those files without them
  (copy-on-write, in the same commit that adds the new versions); the job then copies the outputs of
  every unchanged article and computes only the new and revised ones (counted), with tables equal to
  a from-scratch run on the final corpus;
- plain Delta readers (deltalake, polars, DuckDB) get exactly the live rows of every table after the
  update: no row of a deleted article, one row per revised article;
- ``biomine compact`` vacuums what no retained version uses; time travel reads an earlier run.

Jobs run in this process (one local Ray for the module) with a tiny random NER checkpoint.
"""

from __future__ import annotations

import datetime as dt
import gzip
import html
import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import write_job
from fake_eutils import article_xml, pubmed_document

from pipeline.cli import main
from pipeline.outputs.query import query
from pipeline.pubmed.ingest import ingest_files
from pipeline.run.jobspec import load_job
from pipeline.run.runner import run_job
from pipeline.store.datasets import settings_key
from pipeline.store.documents import Documents, read_articles

FIXED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
DRUGS = ["warfarin", "aspirin", "ibuprofen", "digoxin", "amiodarone", "simvastatin"]
PER_FILE = 8
SHARD = 4


def article(pmid: int, revision: int = 0) -> str:
    drug, other = DRUGS[pmid % len(DRUGS)], DRUGS[(pmid + revision + 1) % len(DRUGS)]
    title = html.escape(
        f"Interaction of {drug} with {other} in study {pmid}" + (f", revised {revision}." if revision else ".")
    )
    abstract = html.escape(f"We report that {drug} increases the effect of {other} in {pmid} patients.")
    return article_xml(pmid, title=title, abstract=abstract)


def write(path: Path, articles: list[str], deletions: list[int] | None = None) -> Path:
    path.write_bytes(gzip.compress(pubmed_document(articles, deletions).encode(), mtime=0))
    return path


def baseline(src: Path, files: int = 3) -> list[int]:
    """``files`` baseline files of PER_FILE articles each (PMIDs 1..files*PER_FILE); their PMIDs."""
    src.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        write(
            src / f"pubmed26n{f + 1:04d}.xml.gz", [article(p) for p in range(f * PER_FILE + 1, (f + 1) * PER_FILE + 1)]
        )
    return list(range(1, files * PER_FILE + 1))


def data_files(out: Path) -> dict[str, bytes]:
    """Every data file of the documents table (the Delta log carries commit times: compared apart)."""
    docs = out / "documents"
    return {p.name: p.read_bytes() for p in sorted(docs.glob("*.parquet"))}


def live_files(out: Path) -> list[str]:
    """The data files the documents table's log says are live, by the log of deltalake itself."""
    from deltalake import DeltaTable

    return sorted(Path(u).name for u in DeltaTable(str(out / "documents")).file_uris())


def readers_agree(table: Path, sql_key: str) -> list[dict]:
    """The rows of one Delta table as deltalake, polars and DuckDB read it (they must agree), sorted."""
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    frame = DeltaTable(str(table)).to_pandas()
    by_deltalake = sorted(frame[sql_key.split(",")].itertuples(index=False, name=None))
    by_polars = sorted(pl.read_delta(str(table)).select(sql_key.split(",")).iter_rows())
    con = duckdb.connect()
    con.register("t", DeltaTable(str(table)).to_pyarrow_dataset())
    by_duckdb = sorted(con.sql(f"SELECT {sql_key} FROM t").fetchall())
    assert by_deltalake == by_polars == by_duckdb, table
    return by_duckdb


def test_parallel_ingest_writes_the_files_a_serial_one_does(tmp_path):
    src = tmp_path / "src"
    baseline(src, files=4)
    # Updates spread over the range: revisions (11 twice), a new article deleted again, deletions.
    write(src / "pubmed26n0005.xml.gz", [article(2, 1), article(11, 1), article(33)], deletions=[20, 999])
    write(src / "pubmed26n0006.xml.gz", [article(11, 2), article(30, 1), article(34)], deletions=[33])
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    s1 = ingest_files([src], serial, shard_rows=SHARD, workers=1, now=lambda: FIXED)
    s2 = ingest_files([src], parallel, shard_rows=SHARD, workers=2, now=lambda: FIXED, commit_seconds=0)
    assert live_files(parallel) == live_files(serial)
    live = set(live_files(serial))
    assert {k: v for k, v in data_files(parallel).items() if k in live} == {
        k: v for k, v in data_files(serial).items() if k in live
    }
    assert (s1.files, s1.records, s1.tombstoned) == (s2.files, s2.records, s2.tombstoned) == (6, 38, 6)
    live_rows = read_articles(serial).to_pydict()
    assert sorted(live_rows["pmid"]) == [p for p in range(1, 35) if p not in (20, 33)]
    titles = dict(zip(live_rows["pmid"], live_rows["title"]))
    assert [titles[p].rsplit(", ", 1)[-1] for p in (2, 11, 30)] == ["revised 1.", "revised 2.", "revised 1."]
    # Copy-on-write: the files that held revised or deleted rows were rewritten without them (same
    # base name, a new content hash); every reader of the table sees each PMID once.
    rows = readers_agree(serial / "documents", "pmid,version")
    assert [p for p, _ in rows] == sorted(set(p for p, _ in rows)) == sorted(live_rows["pmid"])
    docs = Documents(serial / "documents")
    assert all(f.rows for f in docs.files().values()) and s1.rewritten > 0
    # The table folder holds its log and data files only.
    assert {p.name for p in (serial / "documents").iterdir() if not p.name.endswith(".parquet")} == {"_delta_log"}


def test_the_log_grows_with_commits_and_files_not_with_records(tmp_path):
    """An update is one commit; the log entry names the files it adds and removes, never the PMIDs it
    changes, and only the files holding changed articles are rewritten."""
    src = tmp_path / "src"
    pmids = baseline(src, files=3)
    out = tmp_path / "out"
    ingest_files([src], out, shard_rows=SHARD, now=lambda: FIXED)
    before = Documents(out / "documents").files()
    # Revise the articles of the first baseline file only (PMIDs 1..8): two of its data files.
    write(src / "pubmed26n0004.xml.gz", [article(p, 1) for p in pmids[:PER_FILE]], deletions=[pmids[1]])
    summary = ingest_files([src], out, shard_rows=SHARD)
    assert summary.commits == 1 and summary.tombstoned == PER_FILE
    after = Documents(out / "documents").files()
    kept = set(before) & set(after)
    assert len(kept) == len(before) - PER_FILE // SHARD  # only the two files holding them changed
    assert summary.rewritten == 0  # every row of those two files changed: removed, not rewritten
    newest = sorted((out / "documents" / "_delta_log").glob("*.json"))[-1]
    entry = newest.read_text()
    assert entry.count('"add"') + entry.count('"remove"') <= 2 + 2 + 2 and len(entry) < 6000


# --- jobs ---------------------------------------------------------------------------------------


def job(path: Path, out: Path, src: Path, model: str, name: str = "updates") -> Path:
    return write_job(
        path,
        name=name,
        output=out,
        source={"kind": "files", "paths": [str(src)], "shard_size": SHARD},
        tasks={"ner": {"model": str(model)}},
    )


ENTITIES = 'SELECT * FROM entities ORDER BY pmid, start, "end", label'
DOCUMENTS = "SELECT * EXCLUDE (fetched_at) FROM documents ORDER BY pmid"


def test_an_update_computes_only_the_articles_it_revises(tmp_path, demo_models, ray_local):
    src, out = tmp_path / "src", tmp_path / "out"
    pmids = baseline(src)
    spec = job(tmp_path / "job.toml", out, src, demo_models["ner"])
    first = run_job(load_job(spec), progress=False, num_cpus=2)
    baseline_shards = len(pmids) // SHARD
    assert first["stages"]["ner"]["documents"] == len(pmids)
    assert first["stages"]["documents"]["workers"] == 2  # parsed in Ray tasks
    first_entities = query(out, ENTITIES)

    # The daily update: one revised article in every file, one deletion, one new article.
    revised = pmids[::SHARD]
    assert len(revised) == baseline_shards
    deleted, new = pmids[-1], pmids[-1] + 1
    write(src / "pubmed26n0004.xml.gz", [article(p, 1) for p in revised] + [article(new)], deletions=[deleted])
    second = run_job(load_job(spec), progress=False)
    docs = second["stages"]["documents"]
    assert (docs["files"], docs["files_skipped"], docs["replaced"], docs["added"], docs["deleted"]) == (
        1,
        3,
        len(revised),
        1,
        1,
    )
    assert docs["files_rewritten"] == baseline_shards  # each held one revised (or the deleted) article
    ner = second["stages"]["ner"]
    # Only the update's own articles are computed: the revised ones and the new one. The outputs of
    # the rewritten files are copied without their removed articles (no model time).
    assert ner["documents"] == len(revised) + 1
    assert ner["shards_derived"] == baseline_shards and ner["shards_skipped"] == 0
    assert ner["shards_done"] == -(-(len(revised) + 1) // SHARD)
    assert ner["rows_derived"] > 0

    # The same final corpus from scratch: the same documents and the same entities.
    fresh = tmp_path / "fresh"
    run_job(load_job(job(tmp_path / "fresh.toml", fresh, src, demo_models["ner"], name="fresh")), progress=False)
    assert query(out, DOCUMENTS).equals(query(fresh, DOCUMENTS))
    incremental = query(out, ENTITIES)
    assert len(incremental) > 0 and incremental.equals(query(fresh, ENTITIES))
    # Every output row's PMID and version is live in documents; the deleted article is gone everywhere.
    orphans = query(out, "SELECT count(*) AS n FROM entities e ANTI JOIN documents d USING (pmid, version)")
    assert orphans["n"][0] == 0
    assert query(out, f"SELECT count(*) AS n FROM entities WHERE pmid = {deleted}")["n"][0] == 0
    assert deleted not in read_articles(out, ["pmid"]).column("pmid").to_pylist()
    # ... and so do plain Delta readers of the tables, with no help from biomine: the live rows only.
    entity_keys = readers_agree(out / "entities", "pmid,version,start")
    assert entity_keys == sorted(incremental[["pmid", "version", "start"]].itertuples(index=False, name=None))
    documents = readers_agree(out / "documents", "pmid,version")
    assert len(documents) == len({p for p, _ in documents}) == len(pmids)  # one row per revised article
    assert all(v == 1 for p, v in documents)  # revisions of the same version: the new text, once

    # Time travel: the first run's snapshot is still readable, and `compact` keeps it within the retention.
    assert main(["compact", str(out)]) == 0
    assert query(out, ENTITIES, as_of=1).equals(first_entities)
    assert query(out, ENTITIES).equals(incremental)
    # ... while a zero retention drops the files of the old versions (and any file no version names).
    assert main(["compact", str(out), "--retention-hours", "0"]) == 0
    referenced = {Path(u).name for u in __import__("deltalake").DeltaTable(str(out / "entities")).file_uris()}
    assert {p.name for p in (out / "entities").glob("*.parquet")} == referenced
    assert query(out, ENTITIES).equals(incremental)


def reissued(pmid: int, changed: bool = False, version: int = 1) -> str:
    """An article of a corpus; ``changed``: its abstract as a new baseline revises it."""
    drug, other = DRUGS[pmid % len(DRUGS)], DRUGS[(pmid + 1) % len(DRUGS)]
    abstract = f"We report that {drug} increases the effect of {other} in {pmid} patients."
    if changed:
        abstract += f" {other.capitalize()} levels rose in {pmid + 7} cases."
    return article_xml(
        pmid, title=f"Interaction of {drug} with {other} in study {pmid}.", abstract=abstract, version=version
    )


@pytest.mark.slow  # three jobs (about 35 s on a loaded 2-core machine); the planning half is tested below
def test_a_new_baseline_computes_only_the_articles_whose_model_input_changed(tmp_path, demo_models, ray_local, capsys):
    """A new yearly baseline re-issues every article (some with a new version) but those NCBI no
    longer holds; those whose title and abstract are unchanged (the same ``content_sha256``) keep their
    outputs, copied and re-stamped with the new version; only the ~3% with a changed abstract are
    computed; the ~2% it no longer holds leave the corpus and every task table once the whole
    baseline is applied (``new_baseline = true``). The tables equal a from-scratch run over the new
    baseline."""
    src, out, n, per_file = tmp_path / "src", tmp_path / "out", 100, 25
    src.mkdir()
    for f in range(n // per_file):
        write(
            src / f"pubmed26n{f + 1:04d}.xml.gz", [reissued(p) for p in range(f * per_file + 1, (f + 1) * per_file + 1)]
        )

    def spec(out: Path, src: Path, name: str) -> Path:
        source = {"kind": "files", "paths": [str(src)], "shard_size": 25, "new_baseline": True}
        return write_job(
            tmp_path / f"{name}.toml",
            name=name,
            output=out,
            source=source,
            tasks={"ner": {"model": str(demo_models["ner"])}},
        )

    first = run_job(load_job(spec(out, src, "baseline")), progress=False, num_cpus=2)
    assert first["stages"]["ner"]["documents"] == n
    assert read_articles(out, ["content_sha256"]).column("content_sha256").null_count == 0
    dropped = {12, 77}  # articles the new baseline no longer holds
    assert query(out, f"SELECT count(*) AS n FROM entities WHERE pmid IN {tuple(dropped)}")["n"][0] > 0

    # The new baseline: every article again but the dropped ones, in files cut elsewhere; 3 abstracts
    # changed (one of them with a new version), 2 unchanged articles re-issued as version 2.
    changed, new_version = {7, 50, 93}, {50, 31, 64}
    new = tmp_path / "new"
    new.mkdir()
    for f, (lo, hi) in enumerate([(1, 41), (41, 101)]):
        arts = [reissued(p, p in changed, 2 if p in new_version else 1) for p in range(lo, hi) if p not in dropped]
        write(new / f"pubmed27n{f + 1:04d}.xml.gz", arts)
        (src / f"pubmed27n{f + 1:04d}.xml.gz").write_bytes((new / f"pubmed27n{f + 1:04d}.xml.gz").read_bytes())
    second = run_job(load_job(spec(out, src, "baseline")), progress=False)
    docs = second["stages"]["documents"]
    assert (docs["replaced"], docs["dropped"], docs["live"]) == (n - len(dropped), len(dropped), n - len(dropped))
    ner = second["stages"]["ner"]
    assert ner["documents"] == len(changed)  # the model saw the changed articles only
    assert ner["documents_reused"] == n - len(dropped) - len(changed)
    assert main(["status", str(tmp_path / "baseline.toml")]) == 0
    assert f"{len(dropped)} dropped (not in the new baseline)" in capsys.readouterr().out

    fresh = tmp_path / "fresh"
    run_job(load_job(spec(fresh, new, "fresh")), progress=False)
    assert query(out, DOCUMENTS).equals(query(fresh, DOCUMENTS))
    incremental = query(out, ENTITIES)
    assert len(incremental) > 0 and incremental.equals(query(fresh, ENTITIES))
    assert query(out, f"SELECT count(*) AS n FROM entities WHERE pmid IN {tuple(dropped)}")["n"][0] == 0
    versions = dict(query(out, "SELECT DISTINCT pmid, version FROM entities").itertuples(index=False, name=None))
    assert {p: v for p, v in versions.items() if p in new_version} == {p: 2 for p in new_version if p in versions}
    orphans = query(out, "SELECT count(*) AS n FROM entities e ANTI JOIN documents d USING (pmid, version)")
    assert orphans["n"][0] == 0


@pytest.mark.parametrize("old_fingerprints", ["written", "null"])
def test_reuse_finds_the_rows_of_articles_reissued_with_the_same_model_input(tmp_path, monkeypatch, old_fingerprints):
    """The planning half of the above without Ray: after a new baseline, the new document files take
    the rows of each article whose fingerprint equals the replaced one's (re-stamped with its new
    version) from the current settings' outputs, and nothing of a changed article or of other settings.
    ``null``: the earlier documents were written without fingerprints (before article schema 3, or
    rows such a file carried through a copy-on-write rewrite): reuse computes them from the title and
    abstract, so outputs made then are reused alike."""
    import pipeline.pubmed.ingest as ingest_module
    from pipeline.store.datasets import reused_rows, write_output
    from pipeline.store.output import JobOutput
    from schemas.entities import ENTITY_SCHEMA, cast_batch

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write(src / "pubmed26n0001.xml.gz", [reissued(p) for p in range(1, 7)])
    if old_fingerprints == "null":
        real = ingest_module.to_table

        def unfingerprinted(rows):
            table = real(rows)
            i = table.schema.get_field_index("content_sha256")
            return table.set_column(i, table.schema.field(i), pa.nulls(table.num_rows, pa.string()))

        monkeypatch.setattr(ingest_module, "to_table", unfingerprinted)
    ingest_files([src], out, shard_rows=3, now=lambda: FIXED)
    monkeypatch.undo()
    if old_fingerprints == "null":
        assert read_articles(out).column("content_sha256").null_count == 6
    output = JobOutput(out)
    entities = output.dataset("entities", ENTITY_SCHEMA)
    settings = {"task": "ner", "model": "m"}

    def rows(pmids: list[int]) -> list[dict]:
        return [
            {"pmid": p, "version": 1, "start": 0, "end": 4, "label": "Chemical", "text": f"e{p}", "model_id": "m"}
            for p in pmids
        ]

    old = Documents(output.documents)
    written = [
        write_output(
            entities.loc,
            doc.stem,
            settings_key(settings),
            cast_batch(rows(list(range(doc.min_pmid, doc.max_pmid + 1)))),
        )
        for doc in old.files().values()
    ]
    entities.commit(written, [], settings=settings)
    # The new baseline: PMID 2's abstract changed, PMID 4 re-issued unchanged as version 2.
    write(src / "pubmed27n0001.xml.gz", [reissued(p, p == 2, 2 if p == 4 else 1) for p in range(1, 7)])
    ingest_files([src], out, shard_rows=3, now=lambda: FIXED)
    docs = Documents(output.documents).files()
    assert not set(docs) & set(old.files())
    plan = entities.plan(docs, settings)
    assert set(plan.compute) == set(docs) and len(plan.retire) == len(written)
    reuse = entities.reuse(plan, docs, output.documents, docs, settings)
    assert sorted(p for r in reuse.values() for p in r.column("pmid").to_pylist()) == [1, 3, 4, 5, 6]
    taken = pa.concat_tables([reused_rows(entities.loc, ENTITY_SCHEMA, r) for r in reuse.values()])
    taken = taken.sort_by("pmid").to_pylist()
    assert [(r["pmid"], r["version"], r["text"]) for r in taken] == [
        (1, 1, "e1"),
        (3, 1, "e3"),
        (4, 2, "e4"),
        (5, 1, "e5"),
        (6, 1, "e6"),
    ]
    # Outputs of other settings carry nothing over: a changed model computes everything.
    assert (
        entities.reuse(
            entities.plan(docs, {**settings, "model": "n"}),
            docs,
            output.documents,
            docs,
            {**settings, "model": "n"},
        )
        == {}
    )


def test_the_kb_drops_an_edge_when_its_article_leaves_the_corpus(tmp_path):
    """The KB is built from one snapshot of relations and documents: relation rows of an article
    that is no longer live (deleted, or not in a whole new baseline; the relations table not yet
    updated) support no edge."""
    from pipeline.outputs.kb import update_kb
    from pipeline.store.datasets import write_output
    from pipeline.store.output import JobOutput
    from schemas.relations import RELATION_SCHEMA, cast_batch

    src, out = tmp_path / "src", tmp_path / "out"
    write(src.mkdir() or src / "pubmed26n0001.xml.gz", [article(1), article(2)])
    ingest_files([src], out, now=lambda: FIXED)
    output = JobOutput(out)
    (doc,) = Documents(output.documents).files().values()

    def row(pmid: int, head: str, tail: str) -> dict:
        return {
            "pmid": pmid,
            "version": 1,
            "task": "ddi",
            "head": head,
            "tail": tail,
            "relation": "effect",
            "parse_status": "ok",
            "model_id": "m",
            "raw_generation": "x",
        }

    relations = output.dataset("relations", RELATION_SCHEMA)
    table = cast_batch([row(1, "warfarin", "aspirin"), row(2, "digoxin", "amiodarone")])
    relations.commit([write_output(relations.loc, doc.stem, "0" * 16, table)], [], settings={})
    assert update_kb(output)["edges"] == 2
    write(src / "pubmed26n0002.xml.gz", [], deletions=[2])
    ingest_files([src], out)
    result = update_kb(output)
    assert result["edges"] == 1 and result["changed"]
    import polars as pl

    kb = pl.read_delta(str(out / "kb")).to_dict(as_series=False)
    assert (kb["drug_a"], kb["drug_b"], kb["pmids"]) == (["aspirin"], ["warfarin"], [[1]])
    assert update_kb(output)["changed"] is False  # nothing changed: no new version
    # ... and when a whole new baseline no longer holds the article, as when it is deleted
    write(src / "pubmed27n0001.xml.gz", [article(3)])
    assert ingest_files([src], out, new_baseline=True).dropped == 1
    assert update_kb(output)["edges"] == 0


@pytest.mark.slow
def test_bench_scale_smoke_run(tmp_path):
    """benchmarks/bench_scale.py end to end at a tiny size: each update computes its revised articles,
    and the new baseline its changed ones and drops the articles it no longer holds."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"),
            "--files",
            "3",
            "--articles",
            "60",
            "--updates",
            "2",
            "--revise",
            "0.05",
            "--delete",
            "0.02",
            "--overhead-docs",
            "60",
            "--shard-rows",
            "50",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert [r["workers"] for r in result["ingest"]] == [1, 2]
    assert all(r["records"] == 180 for r in result["ingest"])
    baseline, *updates = result["updates"]
    assert baseline["documents_computed"] == 180 and len(updates) == 2
    assert all(u["documents_computed"] == u["revised"] == 9 and u["removed"] == 9 + 3 for u in updates)
    assert result["overhead"]["overhead_ms_per_document"] > 0
    # the new yearly baseline re-issues 178 of the 180 articles, 5 (3%) with a changed abstract; the 2
    # (1%) it no longer holds are dropped, and so are their output rows
    new_baseline = result["new_baseline"]
    assert new_baseline["replaced"] == 178 and new_baseline["documents_computed"] == new_baseline["changed"] == 5
    assert new_baseline["documents_reused"] == 173 and new_baseline["articles"] == 178
    assert new_baseline["dropped"] == new_baseline["left_out"] == 2
    before, after = new_baseline["dropped_output_rows"]
    assert before > 0 and after == 0


def test_updates_on_s3_are_copy_on_write_and_parallel_workers_write_there(tmp_path, s3_server, monkeypatch):
    """On an object store: worker processes write the data files, the update rewrites the files that
    held its articles, plain Delta readers of the S3 table see the live rows, and a re-run is a no-op."""
    from deltalake import DeltaTable

    from pipeline.store.storage import delta_location, location

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    src = tmp_path / "src"
    pmids = baseline(src)
    write(src / "pubmed26n0004.xml.gz", [article(p, 1) for p in pmids[::5]], deletions=[pmids[1]])
    out = f"s3://{s3_server['BIOMINE_TEST_BUCKET']}/updates-docs"
    summary = ingest_files([src], out, shard_rows=SHARD, workers=2, now=lambda: FIXED)
    local = tmp_path / "local"
    ingest_files([src], local, shard_rows=SHARD, workers=1, now=lambda: FIXED)
    assert summary.tombstoned == len(pmids[::5]) + 1
    assert read_articles(out).equals(read_articles(local))
    uri, options = delta_location(location(out) / "documents")
    remote = DeltaTable(uri, storage_options=options)
    assert sorted(Path(u).name for u in remote.file_uris()) == live_files(local)
    frame = remote.to_pandas().sort_values("pmid")
    assert frame["pmid"].tolist() == sorted(set(pmids) - {pmids[1]}) and frame["pmid"].is_unique
    version = remote.version()
    again = ingest_files([src], out, shard_rows=SHARD, workers=2)
    assert (again.files, again.skipped) == (0, 4)
    assert DeltaTable(uri, storage_options=options).version() == version  # nothing committed


# --- a new yearly baseline replaces the previous one ----------------------------------------------------


def corpus_rows(out: Path) -> list[dict]:
    """The live articles without the time they were read, by PMID (what two ingests must agree on)."""
    return read_articles(out).drop_columns(["fetched_at"]).sort_by("pmid").to_pylist()


def last_year_and_new_baseline(src: Path, dropped: set[int]) -> tuple[Path, list[str]]:
    """``src``: a 2026 baseline (PMIDs 1..24 in three files), a 2026 update (2 revised, 25 new, 3
    deleted) and a user's own XML (PMID 100). Returns a folder holding the 2027 baseline: every live
    article again except ``dropped`` (in two files cut elsewhere, 9 with a changed abstract), and its
    file names."""
    baseline(src)
    write(src / "pubmed26n0004.xml.gz", [article(2, 1), article(25)], deletions=[3])
    write(src / "extra.xml.gz", [article(100)])  # not a PubMed file name: never dropped
    new = src.parent / "new"
    new.mkdir()
    live = [p for p in range(1, 26) if p != 3 and p not in dropped]
    names = []
    for f, part in enumerate((live[:10], live[10:])):
        names.append(f"pubmed27n{f + 1:04d}.xml.gz")
        write(new / names[-1], [article(p, 1 if p % 3 else 0) for p in part])
    return new, names


def test_files_apply_in_year_then_sequence_order(tmp_path):
    """A new year's baseline sorts after the previous year's updates (file-name order is (year,
    sequence) order), and each name says its baseline's year."""
    from pipeline.pubmed.ingest import baseline_year, discover_inputs

    for name in ("pubmed27n0001.xml.gz", "pubmed26n1400.xml.gz", "pubmed26n0002.xml.gz", "pubmed27n1275.xml.gz"):
        write(tmp_path / name, [])
    assert [p.name for p in discover_inputs([tmp_path])] == [
        "pubmed26n0002.xml.gz",
        "pubmed26n1400.xml.gz",
        "pubmed27n0001.xml.gz",
        "pubmed27n1275.xml.gz",
    ]
    assert [baseline_year(n) for n in ("pubmed27n0001.xml.gz", "pubmed26n1400.xml", "extra.xml", "pubmed26n1.xml")] == [
        27,
        26,
        None,
        None,
    ]


def test_a_whole_new_baseline_drops_what_it_no_longer_holds_and_never_a_partial_one(tmp_path, caplog, monkeypatch):
    """Only once every file of the 2027 baseline is applied do the 2026 articles it lacks leave; the
    corpus then equals one ingested from scratch from the new baseline (and the user's own XML); a
    2026 file that turns up late is superseded, not applied and not an error."""
    import pipeline.pubmed.ingest as ingest_module

    real_checksum = ingest_module.checksum
    caplog.set_level("INFO", logger="pipeline.pubmed.ingest")
    src, out = tmp_path / "src", tmp_path / "out"
    dropped = {5, 17, 25}
    new, names = last_year_and_new_baseline(src, dropped)
    ingest_files([src], out, shard_rows=SHARD, now=lambda: FIXED)
    # the mirror's listing names both files; the first one alone is a partial baseline: nothing dropped
    partial = ingest_files([new / names[0]], out, shard_rows=SHARD, now=lambda: FIXED, new_baseline=names)
    assert (partial.files, partial.dropped) == (1, 0)
    assert dropped <= set(read_articles(out, ["pmid"]).column("pmid").to_pylist())
    assert "the pubmed27n baseline: 1 of its 2 listed files applied" in caplog.text
    whole = ingest_files([new], out, shard_rows=SHARD, now=lambda: FIXED, new_baseline=names)
    assert (whole.files, whole.skipped, whole.dropped, whole.replaced_by) == (1, 1, len(dropped), "pubmed27n")
    assert whole.rows == 25 - 1 - len(dropped) + 1
    fresh = tmp_path / "fresh"
    ingest_files([src / "extra.xml.gz", new], fresh, shard_rows=SHARD, now=lambda: FIXED)
    assert corpus_rows(out) == corpus_rows(fresh)
    # every reader sees the live rows only; the commit says what it did
    assert [p for p, _ in readers_agree(out / "documents", "pmid,version")] == sorted(
        set(range(1, 26)) - {3} - dropped | {100}
    )
    meta = Documents(out / "documents").table.commit_metadata(limit=1)[0]
    assert meta["baseline"] == {"prefix": "pubmed27n", "dropped": len(dropped)}
    # a re-run is a no-op; a 2026 update published late is superseded (the 2027 baseline holds it)
    # (the newest commit applying inputs applied a user's own file only: the 2027 baseline still counts)
    (tmp_path / "own").mkdir()
    ingest_files([write(tmp_path / "own" / "zz-own.xml.gz", [article(200)])], out, shard_rows=SHARD)
    caplog.clear()
    version = Documents(out / "documents").table.version
    write(src / "pubmed26n0005.xml.gz", [article(5, 2)])
    hashed = []
    monkeypatch.setattr(ingest_module, "checksum", lambda loc: hashed.append(loc.name) or real_checksum(loc))
    again = ingest_files([src, new], out, shard_rows=SHARD, new_baseline=True)
    assert (again.files, again.superseded, again.dropped, again.commits) == (0, 1, 0, 0)
    # the older year's files are not even read: applied ones skipped, the late one superseded, by name
    assert sorted(hashed) == sorted(["extra.xml.gz", *names])
    assert Documents(out / "documents").table.version == version
    assert [r.levelname for r in caplog.records if "superseded" in r.getMessage()] == ["INFO"]


def synced_dest(dest: Path, held: dict[str, bytes], listed: dict[str, dict]) -> None:
    """A ``biomine sync`` DEST as a sync leaves it: ``held`` raw files (``folder/name``: bytes), their
    records and the mirror's ``listed`` entries in ``_sync.json``."""
    import hashlib

    files = {}
    for key, data in held.items():
        (dest / key).parent.mkdir(parents=True, exist_ok=True)
        (dest / key).write_bytes(data)
        files[key] = {
            "size": len(data),
            "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "verified": "2026-12-20T06:00:00+00:00",
        }
    state = {"version": 1, "mirror": "https://ftp.ncbi.nlm.nih.gov/pubmed/", "files": files, "listed": listed}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "_sync.json").write_text(json.dumps(state))


def test_the_baseline_listing_is_whole_only_with_an_update_of_its_year_listed_by_the_same_sync(tmp_path):
    """An update of the new year proves the baseline listing whole only when one sync listed both:
    a baseline listing left by an earlier sync (NCBI was still uploading; then `sync --only
    updatefiles`) proves nothing. A names list keeps the newest year's prefix."""
    from pipeline.pubmed.ingest import BaselineListing, _baseline_files, listed_baseline

    dest = tmp_path / "pubmed"
    base = {"newest": "pubmed27n0800.xml.gz", "files": 800, "waiting": [], "checked": "t1", "sync": "t1"}
    update = {"newest": "pubmed27n1275.xml.gz", "files": 1, "waiting": [], "checked": "t2", "sync": "t2"}
    synced_dest(dest, {}, {"baseline": base, "updatefiles": update})
    stale = listed_baseline(dest)
    assert stale is not None and len(stale.files) == 800
    assert stale.pending == "the baseline was not listed by the sync that listed its updates"
    synced_dest(dest, {}, {"baseline": {**base, "sync": "t2"}, "updatefiles": update})
    assert listed_baseline(dest) == BaselineListing("pubmed27n", stale.files)
    synced_dest(
        dest, {}, {"baseline": {**base, "sync": "t2"}, "updatefiles": {**update, "newest": "pubmed26n1400.xml.gz"}}
    )
    listing = listed_baseline(dest)
    assert listing is not None and listing.pending.startswith("the mirror lists no pubmed27n update yet")
    names = _baseline_files(Documents(tmp_path / "out" / "documents"), [], ["extra.xml", "pubmed27n0001.xml.gz"])
    assert names is not None and names.prefix == "pubmed27n"


def test_a_sync_dests_files_are_recognised_by_their_record_unless_replaced_since(tmp_path, monkeypatch):
    """Inputs in a sync DEST's folders are not read to be hashed: the sync's record says their sha256
    (the daily job would otherwise read the whole baseline every day). A file replaced by hand since
    (its size differs from the record) is hashed like any input and applied as re-issued."""
    import pipeline.pubmed.ingest as ingest_module

    real_checksum = ingest_module.checksum
    src, dest, out = tmp_path / "src", tmp_path / "pubmed", tmp_path / "out"
    src.mkdir()
    write(src / "b1.xml.gz", [article(1), article(2)])
    write(src / "u2.xml.gz", [article(2, 1)])
    held = {
        "baseline/pubmed26n0001.xml.gz": (src / "b1.xml.gz").read_bytes(),
        "updatefiles/pubmed26n0002.xml.gz": (src / "u2.xml.gz").read_bytes(),
    }
    synced_dest(dest, held, {})
    hashed: list[str] = []
    monkeypatch.setattr(ingest_module, "checksum", lambda loc: hashed.append(loc.name) or real_checksum(loc))
    inputs = [dest / "baseline", tmp_path / "link" / "updatefiles"]
    (tmp_path / "link").symlink_to(dest)  # the same DEST, spelled through a link
    first = ingest_files(inputs, out, shard_rows=SHARD, now=lambda: FIXED)
    assert (first.files, hashed) == (2, [])
    # replaced by hand (a restore from elsewhere): hashed, and applied again as re-issued content
    write(dest / "updatefiles" / "pubmed26n0002.xml.gz", [article(2, 1), article(3)])
    again = ingest_files(inputs, out, shard_rows=SHARD, now=lambda: FIXED)
    assert hashed == ["pubmed26n0002.xml.gz"] and (again.files, again.reissued) == (1, ["pubmed26n0002.xml.gz"])


def test_new_baseline_refuses_inputs_that_are_not_a_whole_baseline(tmp_path, capsys):
    """``--new-baseline`` is the user's word that the newest year's inputs are NCBI's whole baseline;
    a gap in their numbering (counting the files applied already) proves it wrong: one error line,
    nothing applied, nothing dropped. The files applied already fill the numbering on later runs."""
    src, out = tmp_path / "src", tmp_path / "out"
    new, names = last_year_and_new_baseline(src, {5})
    ingest_files([src], out, shard_rows=SHARD, now=lambda: FIXED)
    before = corpus_rows(out)
    assert main(["ingest", str(new / names[1]), "--out", str(out), "--new-baseline", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("biomine: error: the pubmed27n inputs are said to be")
    assert "pubmed27n0001.xml.gz is neither among them nor applied" in err[0] and err[0].endswith("(--new-baseline)")
    assert corpus_rows(out) == before
    # the first file applied (no option), then the second with it: 0001 counts as applied, the drop runs
    assert main(["ingest", str(new / names[0]), "--out", str(out), "--no-progress"]) == 0
    assert main(["ingest", str(new / names[1]), "--out", str(out), "--new-baseline", "--no-progress"]) == 0
    assert "1 dropped (not in the pubmed27n baseline)" in capsys.readouterr().out


def test_a_run_stopped_before_the_drop_is_finished_by_a_rerun_and_without_a_listing_it_warns(
    tmp_path, caplog, monkeypatch
):
    """The drop is decided on the table's state: the baseline applied by a run that died before the
    drop's commit (or by one that did not know the baseline was whole: one warning) is dropped by the
    next run, which has nothing new to apply."""
    from pipeline.store.documents import DocumentTransaction

    src, out = tmp_path / "src", tmp_path / "out"
    dropped = {1, 24}
    new, names = last_year_and_new_baseline(src, dropped)
    ingest_files([src], out, shard_rows=SHARD, now=lambda: FIXED)
    # nothing says the new baseline is whole: applied, nothing dropped, one warning saying so
    first = ingest_files([new], out, shard_rows=SHARD, now=lambda: FIXED)
    assert (first.files, first.dropped) == (2, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("pubmed27n0001.xml.gz starts a new baseline (pubmed27n)")
    assert "--new-baseline" in warnings[0]
    # now it is known, but the process dies just before the drop commits
    commit = DocumentTransaction.commit

    def dies(self, *, metadata=None):
        if metadata and "baseline" in metadata:
            raise KeyboardInterrupt
        return commit(self, metadata=metadata)

    monkeypatch.setattr(DocumentTransaction, "commit", dies)
    with pytest.raises(KeyboardInterrupt):
        ingest_files([new], out, shard_rows=SHARD, new_baseline=names)
    assert dropped <= set(read_articles(out, ["pmid"]).column("pmid").to_pylist())
    monkeypatch.setattr(DocumentTransaction, "commit", commit)
    rerun = ingest_files([new], out, shard_rows=SHARD, new_baseline=names)
    assert (rerun.files, rerun.skipped, rerun.dropped) == (0, 2, len(dropped))
    fresh = tmp_path / "fresh"
    ingest_files([src / "extra.xml.gz", new], fresh, shard_rows=SHARD, now=lambda: FIXED)
    assert corpus_rows(out) == corpus_rows(fresh)
    assert 100 in {r["pmid"] for r in corpus_rows(out)}  # the user's own XML stays


def test_a_sync_dests_listing_says_when_the_new_baseline_is_whole(tmp_path, monkeypatch, capsys):
    """``biomine ingest DEST/baseline DEST/updatefiles`` of a DEST synced from the loopback fake of
    NCBI: the 2027 baseline drops the 2026 articles it lacks once every file the mirror lists of it is
    held and applied and a 2027 update proves the listing whole, not before."""
    from fake_ncbi import FakeNcbi, pubmed_file

    from pipeline.errors import SyncError
    from pipeline.pubmed.ingest import BaselineListing, listed_baseline
    from pipeline.pubmed.sync import sync

    monkeypatch.delenv("BIOMINE_PUBMED_MIRROR", raising=False)
    dest, out = tmp_path / "pubmed", tmp_path / "out"
    ingest = ["ingest", str(dest / "baseline"), str(dest / "updatefiles"), "--out", str(out), "--workers", "1"]
    with FakeNcbi() as ncbi:
        ncbi.add("baseline", "pubmed26n0001.xml.gz", pubmed_file(list(range(1, 11))))
        ncbi.add("updatefiles", "pubmed26n0002.xml.gz", pubmed_file([11, 12]))
        sync(dest, ncbi.url, allow_http=True, progress=False)
        assert main([*ingest, "--no-progress"]) == 0
        # December: NCBI's baseline/ holds the 2027 files (PMIDs 4 and 11 are not in it), updatefiles/ is
        # empty; the second file fails its .md5 today, so DEST holds the first one only
        ncbi.files = {"baseline": {}, "updatefiles": {}}
        ncbi.add("baseline", "pubmed27n0001.xml.gz", pubmed_file([1, 2, 3, 5, 6]))
        ncbi.add("baseline", "pubmed27n0002.xml.gz", pubmed_file([7, 8, 9, 10, 12]))
        ncbi.corrupt["pubmed27n0002.xml.gz"] = 1_000
        with pytest.raises(SyncError):
            sync(dest, ncbi.url, allow_http=True, progress=False)
        listing = listed_baseline(dest)
        assert listing is not None and listing.files == {"pubmed27n0001.xml.gz", "pubmed27n0002.xml.gz"}
        capsys.readouterr()
        assert main([*ingest, "--no-progress"]) == 0
        assert "dropped" not in capsys.readouterr().out
        assert {4, 11} <= set(read_articles(out, ["pmid"]).column("pmid").to_pylist())
        # both files held and applied, but nothing proves yet that the listing is the whole baseline
        # (NCBI may still be uploading files it does not list): no drop until a 2027 update is listed
        ncbi.corrupt.clear()
        sync(dest, ncbi.url, allow_http=True, progress=False)
        listing = listed_baseline(dest)
        assert listing is not None and "no pubmed27n update yet" in listing.pending
        assert main([*ingest, "--no-progress"]) == 0
        assert "dropped" not in capsys.readouterr().out
        assert {4, 11} <= set(read_articles(out, ["pmid"]).column("pmid").to_pylist())
        ncbi.add("updatefiles", "pubmed27n0003.xml.gz", pubmed_file([13]))
        sync(dest, ncbi.url, allow_http=True, progress=False)
        assert listed_baseline(dest) == BaselineListing("pubmed27n", listing.files)
        # a sync DEST's files are recognised by the sha256 the sync recorded: none is read to be hashed
        import pipeline.pubmed.ingest as ingest_module

        monkeypatch.setattr(ingest_module, "checksum", lambda loc: pytest.fail(f"{loc.name} hashed again"))
        assert main([*ingest, "--no-progress"]) == 0
    assert "2 dropped (not in the pubmed27n baseline)" in capsys.readouterr().out
    assert sorted(read_articles(out, ["pmid"]).column("pmid").to_pylist()) == [1, 2, 3, 5, 6, 7, 8, 9, 10, 12, 13]
    # a listed file without its .md5 yet (NCBI still uploading): the listing is not the whole baseline,
    # whether the caller passes the sync's waiting list (a job) or reads the state alone (`biomine ingest`)
    pending = listed_baseline(dest, waiting=["baseline/pubmed27n0002.xml.gz"])
    assert pending is not None and pending.pending == "pubmed27n0002.xml.gz is listed without its .md5 yet"
    with FakeNcbi() as ncbi:
        ncbi.add("baseline", "pubmed27n0001.xml.gz", pubmed_file([1, 2, 3, 5, 6]))
        ncbi.add("baseline", "pubmed27n0002.xml.gz", pubmed_file([7, 8, 9, 10, 12]))
        ncbi.add("baseline", "pubmed27n0003.xml.gz", pubmed_file([14]), md5=False)
        ncbi.add("updatefiles", "pubmed27n0004.xml.gz", pubmed_file([15]))
        sync(dest, ncbi.url, allow_http=True, progress=False)
    pending = listed_baseline(dest)
    assert pending is not None and pending.pending == "pubmed27n0003.xml.gz is listed without its .md5 yet"
