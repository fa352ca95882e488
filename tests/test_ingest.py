"""``biomine ingest``: baseline + updates into a current corpus; atomic, resumable shards; the article schema."""

from __future__ import annotations

import gzip
import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fake_eutils import article_xml, pubmed_document

from pipeline.cli import main
from pipeline.errors import IngestError, PubmedXMLError, ShardStateError
from pipeline.pubmed.ingest import ingest_files
from pipeline.store.shards import MANIFEST, ShardStore, read_articles, read_manifest
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, SchemaMismatchError, cast, check_schema, to_table

REPO_DEMO = os.path.join(os.path.dirname(__file__), "..", "jobs", "data", "demo_pubmed.xml")


def write(path, articles, deletions=None, gz=True):
    data = pubmed_document(articles, deletions).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def pubmed_files(tmp_path):
    """A baseline file and two update files, named as NLM names them."""
    src = tmp_path / "src"
    src.mkdir()
    baseline = [article_xml(p, abstract=None if p == 4 else "") for p in range(1, 11)]
    update1 = [
        article_xml(3, title="Revised title of article 3."),  # same version: replaces
        article_xml(5, title="Second version of article 5.", version=2),  # versioned citation
        article_xml(11, title="A new article."),
    ]
    update2 = [
        article_xml(5, title="A late copy of version 1.", version=1),  # must not replace version 2
        article_xml(12, title="First copy."),
        article_xml(12, title="Corrected copy."),  # same file, same version: the later one wins
        article_xml(2, title="Updated, then deleted in the same file."),
    ]
    write(src / "pubmed25n0001.xml.gz", baseline)
    write(src / "pubmed25n0002.xml.gz", update1, deletions=[7, 999])
    write(src / "pubmed25n0003.xml", update2, deletions=[2], gz=False)
    return src


EXPECTED_TITLES = {
    1: "Article 1 on drug interactions.",
    3: "Revised title of article 3.",
    4: "Article 4 on drug interactions.",
    5: "Second version of article 5.",
    6: "Article 6 on drug interactions.",
    8: "Article 8 on drug interactions.",
    9: "Article 9 on drug interactions.",
    10: "Article 10 on drug interactions.",
    11: "A new article.",
    12: "Corrected copy.",
}


def corpus(out) -> dict[int, dict]:
    rows = read_articles(out).to_pylist()
    assert len(rows) == len({r["pmid"] for r in rows}), "a PMID appears twice"
    return {r["pmid"]: r for r in rows}


def without_fetch_time(out) -> pa.Table:
    return read_articles(out).drop_columns(["fetched_at"])


def test_baseline_plus_updates_is_the_current_corpus(pubmed_files, tmp_path):
    summary = ingest_files([pubmed_files], tmp_path / "out", shard_rows=4)
    rows = corpus(tmp_path / "out")
    assert {p: r["title"] for p, r in rows.items()} == EXPECTED_TITLES
    assert rows[5]["version"] == 2 and rows[5]["source"] == "pubmed25n0002.xml.gz"
    assert rows[3]["source"] == "pubmed25n0002.xml.gz" and rows[1]["source"] == "pubmed25n0001.xml.gz"
    # No abstract: kept and flagged.
    assert rows[4]["has_abstract"] is False and rows[4]["abstract"] is None
    assert (summary.files, summary.records, summary.deleted, summary.rows) == (3, 17, 2, 10)
    manifest = read_manifest(tmp_path / "out")
    assert list(manifest["inputs"]) == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz", "pubmed25n0003.xml"]
    assert all(s["rows"] <= 4 for s in manifest["shards"])
    # What is on disk is exactly what the manifest lists: a plain Parquet reader sees the same corpus.
    assert ds.dataset(tmp_path / "out", format="parquet").to_table().num_rows == 10


def test_files_one_by_one_equal_all_at_once(pubmed_files, tmp_path):
    ingest_files([pubmed_files], tmp_path / "together", shard_rows=4)
    for name in sorted(os.listdir(pubmed_files)):
        ingest_files([pubmed_files / name], tmp_path / "daily", shard_rows=4)
    assert without_fetch_time(tmp_path / "daily").equals(without_fetch_time(tmp_path / "together"))


def test_rerun_is_a_no_op(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files], out, shard_rows=4)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.name != "_lock"}
    summary = ingest_files([pubmed_files], out, shard_rows=4)
    assert (summary.files, summary.skipped, summary.records) == (0, 3, 0)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.name != "_lock"}
    assert after == before


@pytest.mark.parametrize("crash_at", [1, 3, 5])
def test_crash_then_rerun_equals_an_uninterrupted_run(pubmed_files, tmp_path, monkeypatch, crash_at):
    ingest_files([pubmed_files], tmp_path / "clean", shard_rows=4)

    import pipeline.store.shards as shards

    real_write, writes = shards.Transaction.write, []

    def crashing_write(self, rows):
        info = real_write(self, rows)
        writes.append(info)
        if len(writes) == crash_at:
            raise RuntimeError("simulated crash after a shard was written")
        return info

    monkeypatch.setattr(shards.Transaction, "write", crashing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest_files([pubmed_files], tmp_path / "crashed", shard_rows=4)
    monkeypatch.setattr(shards.Transaction, "write", real_write)
    # Nothing of the interrupted file is visible.
    partial = read_manifest(tmp_path / "crashed")
    assert len(partial["inputs"]) < 3
    ingest_files([pubmed_files], tmp_path / "crashed", shard_rows=4)
    assert without_fetch_time(tmp_path / "crashed").equals(without_fetch_time(tmp_path / "clean"))
    assert sorted(os.listdir(tmp_path / "crashed")) == sorted(os.listdir(tmp_path / "clean"))


def test_a_file_sorting_before_an_ingested_one_is_refused(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files / "pubmed25n0002.xml.gz"], out)
    with pytest.raises(IngestError, match="pubmed25n0001.xml.gz sorts before pubmed25n0002.xml.gz"):
        ingest_files([pubmed_files / "pubmed25n0001.xml.gz"], out)


def test_a_changed_input_is_refused(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files / "pubmed25n0001.xml.gz"], out)
    write(pubmed_files / "pubmed25n0001.xml.gz", [article_xml(1), article_xml(2)])
    with pytest.raises(IngestError, match="the file changed"):
        ingest_files([pubmed_files / "pubmed25n0001.xml.gz"], out)


def test_a_malformed_file_commits_nothing_and_names_the_record(tmp_path):
    good = write(tmp_path / "pubmed25n0001.xml", [article_xml(1)], gz=False)
    text = pubmed_document([article_xml(2), article_xml(3)])
    bad = tmp_path / "pubmed25n0002.xml"
    bad.write_text(text[: text.index("<PMID Version=\"1\">3<")] + "</PubmedArticleSet>", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(PubmedXMLError, match=r"pubmed25n0002\.xml: malformed .* after record 1 \(PMID 2\)"):
        ingest_files([good, bad], out, shard_rows=1)
    assert sorted(corpus(out)) == [1] and list(read_manifest(out)["inputs"]) == ["pubmed25n0001.xml"]


def test_glob_patterns_are_expanded(pubmed_files, tmp_path):
    summary = ingest_files([str(pubmed_files / "pubmed25n000[12].xml.gz")], tmp_path / "out")
    assert summary.files == 2
    with pytest.raises(IngestError, match="matches no files"):
        ingest_files([str(pubmed_files / "pubmed24n*.xml.gz")], tmp_path / "out")


def test_inputs_must_exist_and_be_unambiguous(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        ingest_files([tmp_path / "nope.xml.gz"], tmp_path / "out")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(IngestError, match="holds no .xml"):
        ingest_files([tmp_path / "a"], tmp_path / "out")
    write(tmp_path / "a" / "pubmed25n0001.xml.gz", [article_xml(1)])
    write(tmp_path / "b" / "pubmed25n0001.xml.gz", [article_xml(2)])
    with pytest.raises(IngestError, match="two inputs are named pubmed25n0001.xml.gz"):
        ingest_files([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


# --- shard directories ----------------------------------------------------------------------------


def test_shards_carry_the_schema_version(pubmed_files, tmp_path):
    ingest_files([pubmed_files], tmp_path / "out", shard_rows=4)
    for shard in read_manifest(tmp_path / "out")["shards"]:
        schema = pq.read_schema(tmp_path / "out" / shard["name"])
        assert check_schema(schema, shard["name"]) == SCHEMA_VERSION
        assert schema.equals(ARTICLE_SCHEMA, check_metadata=False)


def test_directory_is_locked_and_foreign_directories_are_refused(tmp_path):
    with ShardStore(tmp_path / "out", "ingest"):
        with pytest.raises(ShardStateError, match="being written by another biomine process"):
            ShardStore(tmp_path / "out", "ingest")
    with pytest.raises(ShardStateError, match="biomine fetch"):
        ShardStore(tmp_path / "out", "fetch", {"query": "x"})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "part-000000.parquet").write_bytes(b"not ours")
    with pytest.raises(ShardStateError, match="no _manifest.json"):
        ShardStore(foreign, "ingest")
    assert (foreign / "part-000000.parquet").exists()


def test_leftovers_of_an_interrupted_run_are_removed(tmp_path):
    out = tmp_path / "out"
    with ShardStore(out, "ingest", shard_rows=2) as store:
        txn = store.transaction()
        txn.write([{"pmid": 1, "version": 1, "record_type": "article", "has_abstract": False}])
        # No commit: the process "dies" here, leaving an uncommitted shard and a temp file.
    (out / ".tmp-part-000001.parquet.123").write_bytes(b"half")
    assert (out / "part-000000.parquet").exists()
    with ShardStore(out, "ingest") as store:
        assert store.shards == [] and sorted(os.listdir(out)) == ["_lock", MANIFEST]


def test_schema_cast_and_to_table():
    row = {"pmid": 1, "version": 1, "record_type": "article", "has_abstract": False, "title": "T"}
    table = to_table([row])
    assert table.schema.metadata[b"biomine.schema_version"] == str(SCHEMA_VERSION).encode()
    partial = pa.table({"pmid": pa.array([2], pa.int32()), "version": [1], "record_type": ["book"], "has_abstract": [True]})
    cast_table = cast(partial)
    assert cast_table.schema.equals(ARTICLE_SCHEMA, check_metadata=True) and cast_table.column("title").null_count == 1
    with pytest.raises(SchemaMismatchError, match="not part of the articles schema"):
        cast(partial.append_column("extra", pa.array([1])))
    with pytest.raises(SchemaMismatchError, match="PMID 4: column 'record_type' is required"):
        to_table([{**row, "pmid": 4, "record_type": None}])
    with pytest.raises(SchemaMismatchError, match="PMID 3"):
        to_table([{**row, "pmid": 3, "pub_year": "not a year"}])
    newer = ARTICLE_SCHEMA.with_metadata({b"biomine.schema": b"articles", b"biomine.schema_version": b"99"})
    with pytest.raises(SchemaMismatchError, match="upgrade biomine"):
        check_schema(newer, "x.parquet")


# --- the command line ------------------------------------------------------------------------------


def test_cli_ingest_demo_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ingest", REPO_DEMO, "--out", str(out), "--no-progress"]) == 0
    assert "4 records, 4 new" in capsys.readouterr().out
    rows = corpus(out)
    assert any(a["collective_name"] for r in rows.values() for a in r["authors"])
    assert main(["ingest", REPO_DEMO, "--out", str(out), "--no-progress"]) == 0
    assert "0 file(s) (1 already done)" in capsys.readouterr().out


def test_cli_ingest_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "pubmed25n0001.xml.gz"
    bad.write_bytes(gzip.compress(pubmed_document([article_xml(1)]).encode())[:-30])
    assert main(["ingest", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and "pubmed25n0001.xml.gz" in err and "Traceback" not in err
