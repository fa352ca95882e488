"""Updates cost what they change (issue "PubMed-scale ingest and updates").

- parallel ingest (worker processes, or Ray tasks in a job) writes byte for byte the shards a serial
  one does, whatever order the workers finish in;
- an update file that revises one article per shard tombstones those rows, writes their new
  versions into new shards, and the job then computes only those (counted), with outputs equal to a
  from-scratch run on the final corpus;
- every reader (read_articles, the query views, kb build) masks tombstoned articles and their rows;
- compaction is explicit and keeps the corpus and the outputs the same.

Jobs run in this process (one local Ray for the module) with a tiny random NER checkpoint.
"""

from __future__ import annotations

import datetime as dt
import gzip
import html
from pathlib import Path

import pyarrow as pa
import pytest
from fake_eutils import article_xml, pubmed_document

from pipeline.cli import main
from pipeline.outputs.query import query
from pipeline.pubmed.ingest import ingest_files
from pipeline.run.jobspec import load_job
from pipeline.run.runner import run_job
from pipeline.store.shards import ShardStore, committed_shards, read_articles, read_manifest, tombstones

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


def files_of(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the lock and the manifest (which carries write times)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("_lock", "_manifest.json")
    }


def manifest_state(out: Path) -> dict:
    m = read_manifest(out)
    return {"shards": m["shards"], "inputs": m["inputs"]}


def test_parallel_ingest_writes_the_shards_a_serial_one_does(tmp_path):
    src = tmp_path / "src"
    baseline(src, files=4)
    # Updates spread over the range: revisions (11 twice), a new article deleted again, deletions.
    write(src / "pubmed26n0005.xml.gz", [article(2, 1), article(11, 1), article(33)], deletions=[20, 999])
    write(src / "pubmed26n0006.xml.gz", [article(11, 2), article(30, 1), article(34)], deletions=[33])
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    s1 = ingest_files([src], serial, shard_rows=SHARD, workers=1, now=lambda: FIXED)
    s2 = ingest_files([src], parallel, shard_rows=SHARD, workers=2, now=lambda: FIXED, commit_seconds=0)
    assert files_of(parallel) == files_of(serial)
    assert manifest_state(parallel) == manifest_state(serial)
    assert (s1.files, s1.records, s1.tombstoned) == (s2.files, s2.records, s2.tombstoned) == (6, 38, 6)
    live = read_articles(serial).to_pydict()
    assert sorted(live["pmid"]) == [p for p in range(1, 35) if p not in (20, 33)]
    titles = dict(zip(live["pmid"], live["title"]))
    assert [titles[p].rsplit(", ", 1)[-1] for p in (2, 11, 30)] == ["revised 1.", "revised 2.", "revised 1."]
    # Deletion vectors: the revised and deleted rows are tombstoned where they were; no shard rewritten.
    dead = tombstones(serial).to_pydict()
    assert sorted(dead["pmid"]) == [2, 11, 11, 20, 30, 33]
    assert all(n.startswith("part-pubmed26n") for n in (s["name"] for s in read_manifest(serial)["shards"]))


def test_driver_memory_is_bounded_by_what_changed(tmp_path):
    """The manifest grows with shards, not with records or tombstones; an update commits once."""
    src = tmp_path / "src"
    pmids = baseline(src, files=3)
    out = tmp_path / "out"
    ingest_files([src], out, shard_rows=SHARD, now=lambda: FIXED)
    write(src / "pubmed26n0004.xml.gz", [article(p, 1) for p in pmids[::2]], deletions=pmids[1::4])
    summary = ingest_files([src], out, shard_rows=SHARD)
    assert summary.commits == 1 and summary.tombstoned == len(pmids[::2]) + len(pmids[1::4])
    manifest = read_manifest(out)
    # Every old shard got tombstones, yet each manifest entry stays a fixed size: the PMIDs live in
    # the deletion vectors, not in the manifest.
    assert all(s["deleted"] > 0 for s in manifest["shards"][: len(pmids) // SHARD])
    assert (out / "_manifest.json").stat().st_size / len(manifest["shards"]) < 700


# --- jobs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    import ray

    yield
    ray.shutdown()


def job(path: Path, out: Path, src: Path, model: str, name: str = "updates") -> Path:
    path.write_text(f"""
[job]
name = "{name}"
output = "{out}"
[source]
kind = "files"
paths = ["{src}"]
shard_size = {SHARD}
[tasks.ner]
model = "{model}"
[resources]
actors = 1
""")
    return path


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

    # The daily update: one revised article in every shard, one deletion, one new article.
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
    ner = second["stages"]["ner"]
    # Only the update's own shards are computed: the revised articles and the new one, nothing else.
    assert ner["documents"] == len(revised) + 1
    assert ner["shards_skipped"] == baseline_shards and ner["shards_retired"] == 0
    assert ner["shards_done"] == -(-(len(revised) + 1) // SHARD)

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
    assert deleted not in read_articles(out / "documents", ["pmid"]).column("pmid").to_pylist()
    # ... while the immutable files still hold the tombstoned rows (masked on read, not rewritten).
    import pyarrow.dataset as pads

    raw = pads.dataset(out / "entities", format="parquet").to_table()
    assert raw.num_rows > len(incremental)

    # Compaction, when asked: shards at least 25% tombstoned are rewritten; the corpus is the same,
    # and the next run computes exactly the live articles of the compacted shards.
    before_docs = query(out, DOCUMENTS)
    assert main(["compact", str(out), "--min-deleted", "0.25"]) == 0
    compacted = [s for s in committed_shards(out / "documents") if ".c1" in s.name]
    assert len(compacted) == baseline_shards and all(s.deleted == 0 for s in compacted)
    assert query(out, DOCUMENTS).equals(before_docs)
    third = run_job(load_job(spec), progress=False)
    assert third["stages"]["ner"]["documents"] == sum(s.rows for s in compacted)
    assert third["stages"]["ner"]["shards_retired"] == baseline_shards
    assert query(out, ENTITIES).equals(query(fresh, ENTITIES))


def test_kb_masks_relations_of_tombstoned_articles(tmp_path):
    """kb build reads relations through the documents' deletion vectors: a deleted article's edge goes."""
    from pipeline.outputs.kb import build_kb
    from pipeline.run.stages import write_shard_output
    from pipeline.store.datasets import ShardOutput, TaskDataset
    from pipeline.store.storage import location
    from schemas.relations import cast_batch

    src, out = tmp_path / "src", tmp_path / "out"
    write(src.mkdir() or src / "pubmed26n0001.xml.gz", [article(1), article(2)])
    ingest_files([src], out / "documents", now=lambda: FIXED)
    relations = TaskDataset(location(out / "relations"))
    (shard,) = committed_shards(out / "documents")

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

    table = cast_batch([row(1, "warfarin", "aspirin"), row(2, "digoxin", "amiodarone")])
    relations.commit(
        ShardOutput(shard.stem, write_shard_output(relations.loc, shard.stem, table), 2),
        task="re",
        expected="x",
        input_shard=shard.identity(),
        settings={},
    )
    assert build_kb(out / "relations", out / "kb.parquet") == 2
    write(src / "pubmed26n0002.xml.gz", [], deletions=[2])
    ingest_files([src], out / "documents")
    assert build_kb(out / "relations", out / "kb.parquet") == 1
    import pyarrow.parquet as pq

    kb = pq.read_table(out / "kb.parquet").to_pydict()
    assert (kb["drug_a"], kb["drug_b"], kb["pmids"]) == (["aspirin"], ["warfarin"], [[1]])


def test_a_store_with_tombstones_reads_old_manifests(tmp_path):
    """Manifests written before deletion vectors (no ``deleted`` keys, inputs without sha256) still open."""
    out = tmp_path / "out"
    with ShardStore(out, "ingest") as store:
        with store.transaction() as txn:
            txn.write([{"pmid": 1, "version": 1, "record_type": "article", "has_abstract": False}])
            txn.commit(inputs={"pubmed25n0001.xml": {"size": 10, "records": 1}})
    manifest = read_manifest(out)
    for s in manifest["shards"]:
        s.pop("deleted"), s.pop("deletions")
    (out / "_manifest.json").write_text(__import__("json").dumps(manifest))
    assert read_articles(out, ["pmid"]).column("pmid").to_pylist() == [1]
    assert tombstones(out).num_rows == 0 and isinstance(tombstones(out), pa.Table)


@pytest.mark.slow
def test_bench_scale_smoke_run(tmp_path):
    """benchmarks/bench_scale.py end to end at a tiny size: each update computes its revised articles."""
    import json
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
    assert all(u["documents_computed"] == u["revised"] == 9 and u["tombstoned"] == 9 + 3 for u in updates)
    assert result["overhead"]["overhead_ms_per_document"] > 0


def test_updates_on_s3_tombstone_in_place_and_parallel_workers_write_there(tmp_path, s3_server, monkeypatch):
    """On an object store: worker processes write the shards, deletion vectors live beside them, the
    readers mask, and a re-run is a no-op."""
    from pipeline.store.storage import location

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
    assert tombstones(out).equals(tombstones(local))
    assert sorted(location(out).files(".parquet")) == sorted(p.name for p in local.glob("*.parquet"))
    again = ingest_files([src], out, shard_rows=SHARD, workers=2)
    assert (again.files, again.skipped) == (0, 4)
