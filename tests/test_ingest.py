"""``biomine ingest``: baseline + updates into a current corpus; atomic, resumable shards; the article schema."""

from __future__ import annotations

import gzip
import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_XML
from fake_eutils import article_xml, pubmed_document

from pipeline.cli import main
from pipeline.errors import IngestError, PubmedXMLError, ShardStateError
from pipeline.pubmed.ingest import ingest_files
from pipeline.store.shards import MANIFEST, ShardStore, read_articles, read_manifest
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, SchemaMismatchError, cast, check_schema, to_table

REPO_DEMO = str(DEMO_XML)


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


def files_of(out) -> dict[str, tuple[int, bytes]]:
    """Every file under ``out`` (but the lock): its modification time and bytes."""
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "_lock"
    }


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
    # Shards are immutable: revised and deleted records are tombstoned, not rewritten. A plain Parquet
    # reader sees the committed shards whole (the live rows plus the 5 tombstoned ones: 3 and 5
    # revised, 7 and 2 deleted, and update 2's late copy of 5 version 1, which loses to version 2).
    assert summary.tombstoned == 5
    assert ds.dataset(tmp_path / "out", format="parquet").to_table().num_rows == 10 + 5
    assert sum(s["deleted"] for s in manifest["shards"]) == 5


def test_files_one_by_one_equal_all_at_once(pubmed_files, tmp_path):
    ingest_files([pubmed_files], tmp_path / "together", shard_rows=4)
    for name in sorted(os.listdir(pubmed_files)):
        ingest_files([pubmed_files / name], tmp_path / "daily", shard_rows=4)
    assert without_fetch_time(tmp_path / "daily").equals(without_fetch_time(tmp_path / "together"))


def test_rerun_is_a_no_op(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files], out, shard_rows=4)
    before = files_of(out)
    summary = ingest_files([pubmed_files], out, shard_rows=4)
    assert (summary.files, summary.skipped, summary.records) == (0, 3, 0)
    assert files_of(out) == before


@pytest.mark.parametrize("crash_at", [1, 3, 5])
def test_crash_then_rerun_equals_an_uninterrupted_run(pubmed_files, tmp_path, monkeypatch, crash_at):
    ingest_files([pubmed_files], tmp_path / "clean", shard_rows=4)

    import pipeline.pubmed.ingest as ingest

    real_write, writes = ingest.write_shard, []

    def crashing_write(*args):
        info = real_write(*args)
        writes.append(info)
        if len(writes) == crash_at:
            raise RuntimeError("simulated crash after a shard was written")
        return info

    monkeypatch.setattr(ingest, "write_shard", crashing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest_files([pubmed_files], tmp_path / "crashed", shard_rows=4, commit_seconds=0)
    monkeypatch.setattr(ingest, "write_shard", real_write)
    # Nothing of the interrupted file is visible.
    partial = read_manifest(tmp_path / "crashed")
    assert len(partial["inputs"]) < 3
    ingest_files([pubmed_files], tmp_path / "crashed", shard_rows=4)
    assert without_fetch_time(tmp_path / "crashed").equals(without_fetch_time(tmp_path / "clean"))
    # Deletion vectors the re-run superseded stay until the directory is next opened (a reader may be
    # reading them); opening it removes them, and then the two directories hold the same files.
    for out in ("crashed", "clean"):
        ShardStore(tmp_path / out, "ingest").close()
    assert sorted(files_of(tmp_path / "crashed")) == sorted(files_of(tmp_path / "clean"))


def test_a_file_sorting_before_an_ingested_one_is_refused(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files / "pubmed25n0002.xml.gz"], out)
    with pytest.raises(IngestError, match="pubmed25n0001.xml.gz sorts before pubmed25n0002.xml.gz"):
        ingest_files([pubmed_files / "pubmed25n0001.xml.gz"], out)


def test_inputs_are_recognised_by_content_not_name_and_size(tmp_path, caplog):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    path = write(src / "pubmed25n0001.xml", [article_xml(1, title="Aaaa."), article_xml(2)], gz=False)
    ingest_files([path], out)
    size = path.stat().st_size
    # Same name, same size, other content (NLM re-issued the file, or it was replaced by hand).
    write(path, [article_xml(1, title="Bbbb."), article_xml(3)], gz=False)
    assert path.stat().st_size == size
    summary = ingest_files([path], out)
    assert (summary.files, summary.skipped, summary.reissued) == (1, 0, ["pubmed25n0001.xml"])
    assert "changed since it was ingested" in caplog.text
    rows = corpus(out)
    assert sorted(rows) == [1, 2, 3] and rows[1]["title"] == "Bbbb."
    # The same content again, under any name, is recognised as done.
    (src / "pubmed25n0002.xml").write_bytes(path.read_bytes())
    again = ingest_files([src], out)
    assert (again.files, again.skipped) == (0, 2)
    assert list(read_manifest(out)["inputs"]) == ["pubmed25n0001.xml"]


def test_a_changed_file_that_sorts_before_a_later_one_is_refused(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write(src / "pubmed25n0001.xml", [article_xml(1, title="Aaaa.")], gz=False)
    write(src / "pubmed25n0002.xml", [article_xml(1, title="Newer.")], deletions=[], gz=False)
    ingest_files([src], out)
    before = files_of(out)
    write(src / "pubmed25n0001.xml", [article_xml(1, title="Bbbb.")], gz=False)  # re-issued, but 0002 is newer
    with pytest.raises(IngestError, match="pubmed25n0001.xml changed since it was ingested, and pubmed25n0002.xml"):
        ingest_files([src], out)
    assert files_of(out) == before and corpus(out)[1]["title"] == "Newer."


def test_the_same_content_twice_in_one_call_applies_once(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write(src / "pubmed25n0001.xml", [article_xml(1)], gz=False)
    (src / "pubmed25n0002.xml").write_bytes((src / "pubmed25n0001.xml").read_bytes())
    summary = ingest_files([src], out)
    assert (summary.files, summary.skipped, summary.records) == (1, 1, 1)
    assert list(read_manifest(out)["inputs"]) == ["pubmed25n0001.xml"]


def test_any_file_name_gives_a_valid_shard_name(tmp_path):
    path = write(tmp_path / "my export (1) données.xml", [article_xml(1), article_xml(2)], gz=False)
    ingest_files([path], tmp_path / "out")
    (shard,) = read_manifest(tmp_path / "out")["shards"]
    assert shard["name"].startswith("part-my_export__1__donn_es-") and sorted(corpus(tmp_path / "out")) == [1, 2]


def test_a_transaction_undoes_only_what_came_after_its_last_commit(tmp_path):
    out = tmp_path / "out"
    row = {"version": 1, "record_type": "article", "has_abstract": False}
    with ShardStore(out, "ingest", shard_rows=2) as store:
        with pytest.raises(RuntimeError, match="boom"):
            with store.transaction() as txn:
                first = txn.write([{**row, "pmid": 1}])
                txn.commit()
                second = txn.write([{**row, "pmid": 2}])
                txn.tombstone(first.name, [1])
                raise RuntimeError("boom")
        assert [s.name for s in store.shards] == [first.name] and store.shards[0].deleted == 0
        assert (out / first.name).exists() and not (out / second.name).exists()


def test_a_failed_cleanup_after_a_commit_loses_nothing(tmp_path, monkeypatch):
    from pipeline.store import shards as shards_module
    from pipeline.store.storage import Location

    out = tmp_path / "out"
    write(tmp_path / "pubmed25n0001.xml", [article_xml(p) for p in range(1, 5)], gz=False)
    write(tmp_path / "pubmed25n0002.xml", [], deletions=[1, 2, 3], gz=False)
    ingest_files([tmp_path / "pubmed25n0001.xml", tmp_path / "pubmed25n0002.xml"], out)
    real_delete = Location.delete

    def failing_delete(self):
        if self.name.endswith(".parquet") and not self.name.startswith("."):
            raise OSError("transient storage error")
        return real_delete(self)

    monkeypatch.setattr(Location, "delete", failing_delete)
    with ShardStore(out, "ingest") as store:
        ((old, new),) = shards_module.compact(store, min_deleted=0.5)
    monkeypatch.setattr(Location, "delete", real_delete)
    assert (out / old).exists()  # could not be removed: left for the next open
    assert sorted(corpus(out)) == [4] and [s["name"] for s in read_manifest(out)["shards"]] == [new]
    ShardStore(out, "ingest").close()
    assert not (out / old).exists() and sorted(corpus(out)) == [4]


def test_a_malformed_file_commits_nothing_and_names_the_record(tmp_path):
    good = write(tmp_path / "pubmed25n0001.xml", [article_xml(1)], gz=False)
    text = pubmed_document([article_xml(2), article_xml(3)])
    bad = tmp_path / "pubmed25n0002.xml"
    bad.write_text(text[: text.index('<PMID Version="1">3<')] + "</PubmedArticleSet>", encoding="utf-8")
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
    partial = pa.table(
        {"pmid": pa.array([2], pa.int32()), "version": [1], "record_type": ["book"], "has_abstract": [True]}
    )
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
