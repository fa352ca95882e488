"""``biomine ingest``: baseline + updates into a current corpus, the documents Delta table of an output;
copy-on-write updates, inputs applied exactly once, resumable; the article schema.

Key assertions read the table with independent Delta readers (deltalake, polars, DuckDB over the
deltalake dataset), not only with biomine's own ``read_articles``."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import re

import duckdb
import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_XML
from deltalake import DeltaTable
from fake_eutils import article_xml, pubmed_document

from pipeline.cli import main
from pipeline.errors import IngestError, PubmedXMLError, StoreError
from pipeline.pubmed.ingest import INGEST_OWNER, ingest_files
from pipeline.store.documents import Documents, read_articles
from pipeline.store.maintenance import compact
from pipeline.store.output import JobOutput
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, SchemaMismatchError, cast, check_schema, to_table

REPO_DEMO = str(DEMO_XML)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
DATA_FILE = re.compile(r"^part-(?P<stem>.+)-(?P<input>[0-9a-f]{16})-(?P<n>\d{4})\.(?P<sha>[0-9a-f]{16})\.parquet$")


def fixed_now():
    return NOW


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


def table_path(out) -> str:
    return str(out / "documents")


def corpus(out) -> dict[int, dict]:
    rows = read_articles(out).to_pylist()
    assert len(rows) == len({r["pmid"] for r in rows}), "a PMID appears twice"
    return {r["pmid"]: r for r in rows}


def titles_by_reader(out, version: int | None = None) -> dict[str, dict[int, str]]:
    """PMID -> title as three independent Delta readers see the documents table (each PMID once)."""
    path = table_path(out)
    table = DeltaTable(path, version=version)
    frame = table.to_pandas(columns=["pmid", "title"])
    con = duckdb.connect()
    con.register("docs", DeltaTable(path, version=version).to_pyarrow_dataset())
    found = {
        "deltalake": list(zip(frame["pmid"].tolist(), frame["title"].tolist())),
        "polars": list(polars.read_delta(path, version=version).select("pmid", "title").iter_rows()),
        "duckdb": con.sql("SELECT pmid, title FROM docs").fetchall(),
    }
    for reader, rows in found.items():
        assert len(rows) == len({p for p, _ in rows}), f"{reader}: a PMID appears twice"
    return {reader: dict(rows) for reader, rows in found.items()}


def assert_readers_see(out, expected: dict[int, str], version: int | None = None) -> None:
    for reader, titles in titles_by_reader(out, version).items():
        assert titles == expected, reader


def live_pmids(out) -> list[int]:
    """The live PMIDs, as deltalake reads them."""
    return sorted(DeltaTable(table_path(out)).to_pandas(columns=["pmid"])["pmid"].tolist())


def table_version(out) -> int:
    return DeltaTable(table_path(out)).version()


def files_of(out) -> dict[str, tuple[int, bytes]]:
    """Every file under ``out`` but the lease (which every writer takes and releases, rewriting it by
    design): its modification time and bytes."""
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith("_lease.json")
    }


def data_files(out) -> dict[str, bytes]:
    """The data files in the documents table's folder (live or not), by name."""
    folder = out / "documents"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".parquet"}


def live_files(out) -> dict[str, int]:
    """The live data files as deltalake's log replay lists them: name -> rows."""
    actions = pa.table(DeltaTable(table_path(out)).get_add_actions(flatten=True))
    return dict(zip(actions.column("path").to_pylist(), actions.column("num_records").to_pylist()))


def applied_inputs(out) -> list[str]:
    """The names of the inputs the table's commits applied, oldest first (commit info ``biomine.inputs``)."""
    docs = Documents(JobOutput(out).documents, create=False)
    names = []
    for entry in reversed(docs.table.commit_metadata()):
        names += [r["name"] for r in entry.get("inputs") or []]
    return names


def without_fetch_time(out) -> pa.Table:
    return read_articles(out).drop_columns(["fetched_at"])


def test_baseline_plus_updates_is_the_current_corpus(pubmed_files, tmp_path):
    out = tmp_path / "out"
    summary = ingest_files([pubmed_files], out, shard_rows=4)
    rows = corpus(out)
    assert {p: r["title"] for p, r in rows.items()} == EXPECTED_TITLES
    assert_readers_see(out, EXPECTED_TITLES)
    assert rows[5]["version"] == 2 and rows[5]["source"] == "pubmed25n0002.xml.gz"
    assert rows[3]["source"] == "pubmed25n0002.xml.gz" and rows[1]["source"] == "pubmed25n0001.xml.gz"
    # No abstract: kept and flagged.
    assert rows[4]["has_abstract"] is False and rows[4]["abstract"] is None
    assert (summary.files, summary.records, summary.deleted, summary.rows) == (3, 17, 2, 10)
    assert applied_inputs(out) == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz", "pubmed25n0003.xml"]
    assert all(rows <= 4 for rows in live_files(out).values()) and sum(live_files(out).values()) == 10
    # Rows removed: 3 and 5 revised, 7 and 2 deleted, and update 2's late copy of 5 version 1, which
    # loses to version 2. Was: 5 tombstones in deletion vectors, which a plain Parquet reader still
    # saw. Now the files holding them are rewritten without them (copy-on-write) in the same commit:
    # all three inputs applied in one commit, so the files that never became live were deleted and
    # the table folder holds its log and exactly the live data files.
    assert summary.tombstoned == 5 and summary.commits == 1
    assert sorted(os.listdir(out / "documents")) == sorted(["_delta_log", *live_files(out)])
    assert pa.concat_tables([pq.read_table(out / "documents" / f) for f in live_files(out)]).num_rows == 10


def test_an_update_rewrites_only_the_files_holding_what_it_changes(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files / "pubmed25n0001.xml.gz"], out, shard_rows=4)
    baseline_version, baseline_files = table_version(out), live_files(out)
    assert sorted(baseline_files.values()) == [2, 4, 4]  # PMIDs 1-4, 5-8, 9-10
    summary = ingest_files([pubmed_files / "pubmed25n0002.xml.gz", pubmed_files / "pubmed25n0003.xml"], out)
    after = live_files(out)
    # One commit for both files: the corpus is current for every Delta reader.
    assert table_version(out) == baseline_version + 1 and summary.commits == 1
    assert_readers_see(out, EXPECTED_TITLES)
    # The baseline files holding 2, 3 (file 0000) and 5, 7 (file 0001) were rewritten without them:
    # the same base name, a new content hash; the one holding 9-10 (file 0002) is untouched.
    base = {DATA_FILE.match(f).group("n"): f for f in baseline_files}
    now = {DATA_FILE.match(f).group("n"): f for f in after if DATA_FILE.match(f).group("stem") == "pubmed25n0001"}
    assert now["0002"] == base["0002"]
    for n in ("0000", "0001"):
        assert now[n] != base[n] and now[n].split(".")[0] == base[n].split(".")[0]
        assert after[now[n]] == 2
    assert sorted(pq.read_table(out / "documents" / now["0000"]).column("pmid").to_pylist()) == [1, 4]
    assert sorted(pq.read_table(out / "documents" / now["0001"]).column("pmid").to_pylist()) == [6, 8]
    # Rewritten: those two, and update 2's own file without its late copy of 5 version 1 (written by
    # the worker, then rewritten before the commit: it never became live).
    (own,) = [f for f in after if DATA_FILE.match(f).group("stem") == "pubmed25n0003"]
    assert after[own] == 1
    assert (summary.rewritten, summary.tombstoned) == (3, 5)
    rewritten = [now["0000"], now["0001"], own]
    assert summary.rewritten_bytes == sum((out / "documents" / f).stat().st_size for f in rewritten)
    assert len([f for f in os.listdir(out / "documents") if "pubmed25n0003" in f]) == 1  # its first version deleted
    # The replaced files stay on disk for readers of the earlier version (time travel) until vacuumed.
    assert (out / "documents" / base["0000"]).exists()
    assert_readers_see(out, {p: f"Article {p} on drug interactions." for p in range(1, 11)}, baseline_version)


def test_files_one_by_one_equal_all_at_once(pubmed_files, tmp_path):
    ingest_files([pubmed_files], tmp_path / "together", shard_rows=4, now=fixed_now)
    for name in sorted(os.listdir(pubmed_files)):
        ingest_files([pubmed_files / name], tmp_path / "daily", shard_rows=4, now=fixed_now)
    assert without_fetch_time(tmp_path / "daily").equals(without_fetch_time(tmp_path / "together"))
    # The same live files, byte for byte (names carry the content hash), for any Delta reader.
    assert live_files(tmp_path / "daily") == live_files(tmp_path / "together")
    together = DeltaTable(table_path(tmp_path / "together")).to_pandas().sort_values("pmid", ignore_index=True)
    daily = DeltaTable(table_path(tmp_path / "daily")).to_pandas().sort_values("pmid", ignore_index=True)
    assert daily.equals(together)


def test_rerun_is_a_no_op(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files], out, shard_rows=4)
    before, version = files_of(out), table_version(out)
    summary = ingest_files([pubmed_files], out, shard_rows=4)
    assert (summary.files, summary.skipped, summary.records, summary.commits) == (0, 3, 0, 0)
    # No new commit (table version) and no file written, changed or removed.
    assert table_version(out) == version and len(DeltaTable(table_path(out)).history()) == version + 1
    assert files_of(out) == before


@pytest.mark.parametrize("crash_at", [1, 3, 5])
def test_crash_then_rerun_equals_an_uninterrupted_run(pubmed_files, tmp_path, monkeypatch, crash_at):
    ingest_files([pubmed_files], tmp_path / "clean", shard_rows=4, now=fixed_now)

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
        ingest_files([pubmed_files], tmp_path / "crashed", shard_rows=4, commit_seconds=0, now=fixed_now)
    monkeypatch.setattr(ingest, "write_shard", real_write)
    # Nothing of the interrupted file is visible: the table is exactly the inputs its log says it
    # applied, as a run of those inputs alone leaves it.
    done = applied_inputs(tmp_path / "crashed")
    assert len(done) < 3 and done == sorted(os.listdir(pubmed_files))[: len(done)]
    if done:
        ingest_files([pubmed_files / n for n in done], tmp_path / "partial", shard_rows=4, now=fixed_now)
        assert titles_by_reader(tmp_path / "crashed") == titles_by_reader(tmp_path / "partial")
    ingest_files([pubmed_files], tmp_path / "crashed", shard_rows=4, now=fixed_now)
    assert without_fetch_time(tmp_path / "crashed").equals(without_fetch_time(tmp_path / "clean"))
    assert_readers_see(tmp_path / "crashed", EXPECTED_TITLES)
    assert live_files(tmp_path / "crashed") == live_files(tmp_path / "clean")
    assert applied_inputs(tmp_path / "crashed") == applied_inputs(tmp_path / "clean")
    # Was: deletion vectors the re-run superseded stay until the directory is next opened. Now: data
    # files no current version refers to (written by the crashed run, or replaced by its commits)
    # stay until `biomine compact` vacuums them; then the two folders hold the same data files.
    for out in ("crashed", "clean"):
        compact(JobOutput(tmp_path / out), retention_hours=0)
    assert data_files(tmp_path / "crashed") == data_files(tmp_path / "clean")
    assert sorted(data_files(tmp_path / "clean")) == sorted(live_files(tmp_path / "clean"))


def test_a_file_sorting_before_an_ingested_one_is_refused(pubmed_files, tmp_path, capsys):
    out = tmp_path / "out"
    ingest_files([pubmed_files / "pubmed25n0002.xml.gz"], out)
    version = table_version(out)
    with pytest.raises(IngestError, match="pubmed25n0001.xml.gz sorts before pubmed25n0002.xml.gz") as err:
        ingest_files([pubmed_files / "pubmed25n0001.xml.gz"], out)
    # The library speaks of the output; the command adds its flag.
    assert str(err.value).endswith("Ingest all files into a new output") and err.value.setting == "output"
    assert main(["ingest", str(pubmed_files / "pubmed25n0001.xml.gz"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.endswith("Ingest all files into a new output (--out)\n")
    assert table_version(out) == version and live_pmids(out) == [3, 5, 11]


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
    assert_readers_see(out, {1: "Bbbb.", 2: "Article 2 on drug interactions.", 3: "Article 3 on drug interactions."})
    # The same content again, under any name, is recognised as done (its Delta app transaction):
    # nothing is committed.
    version = table_version(out)
    (src / "pubmed25n0002.xml").write_bytes(path.read_bytes())
    again = ingest_files([src], out)
    assert (again.files, again.skipped) == (0, 2) and table_version(out) == version
    assert applied_inputs(out) == ["pubmed25n0001.xml", "pubmed25n0001.xml"]  # both contents, under one name
    table = DeltaTable(table_path(out))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert table.transaction_version(f"biomine.input.{sha}") == 1
    assert table.transaction_version("biomine.input-name.pubmed25n0001.xml") == 2  # the 2nd input applied
    assert table.transaction_version("biomine.input-name.pubmed25n0002.xml") is None
    assert table.transaction_version("biomine.inputs") == 2


def test_a_changed_file_that_sorts_before_a_later_one_is_refused(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write(src / "pubmed25n0001.xml", [article_xml(1, title="Aaaa.")], gz=False)
    write(src / "pubmed25n0002.xml", [article_xml(1, title="Newer.")], deletions=[], gz=False)
    ingest_files([src], out)
    before = files_of(out)
    write(src / "pubmed25n0001.xml", [article_xml(1, title="Bbbb.")], gz=False)  # re-issued, but 0002 is newer
    with pytest.raises(IngestError, match="pubmed25n0001.xml changed since it was ingested, and later files"):
        ingest_files([src], out)
    assert files_of(out) == before and corpus(out)[1]["title"] == "Newer."
    assert_readers_see(out, {1: "Newer."})


def test_the_same_content_twice_in_one_call_applies_once(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write(src / "pubmed25n0001.xml", [article_xml(1)], gz=False)
    (src / "pubmed25n0002.xml").write_bytes((src / "pubmed25n0001.xml").read_bytes())
    summary = ingest_files([src], out)
    assert (summary.files, summary.skipped, summary.records) == (1, 1, 1)
    assert applied_inputs(out) == ["pubmed25n0001.xml"] and live_pmids(out) == [1]
    assert DeltaTable(table_path(out)).transaction_version("biomine.input-name.pubmed25n0002.xml") is None


def test_any_file_name_gives_a_valid_shard_name(tmp_path):
    path = write(tmp_path / "my export (1) données.xml", [article_xml(1), article_xml(2)], gz=False)
    ingest_files([path], tmp_path / "out")
    (name,) = live_files(tmp_path / "out")
    match = DATA_FILE.match(name)
    assert match and match.group("stem") == "my_export__1__donn_es" and match.group("n") == "0000"
    assert match.group("input") == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert live_pmids(tmp_path / "out") == [1, 2] and sorted(corpus(tmp_path / "out")) == [1, 2]


def test_a_transaction_undoes_only_what_came_after_its_last_commit(tmp_path):
    out = tmp_path / "out"
    docs = Documents(str(out / "documents"))
    row = {"version": 1, "record_type": "article", "has_abstract": False}
    with pytest.raises(RuntimeError, match="boom"):
        with docs.transaction() as txn:
            first = txn.write([{**row, "pmid": 1}])
            txn.commit()
            second = txn.write([{**row, "pmid": 2}])
            txn.remove(first.path, [1])
            raise RuntimeError("boom")
    assert list(docs.files()) == [first.path] and docs.files()[first.path].rows == 1
    assert (out / "documents" / first.path).exists() and not (out / "documents" / second.path).exists()
    assert live_pmids(out) == [1]


def test_a_failed_cleanup_after_a_commit_loses_nothing(tmp_path, monkeypatch):
    from pipeline.store.storage import Location

    # Was: compaction could not delete the shard it replaced. Now: the cleanup after a commit deletes
    # the files written in the same transaction that a later input of it rewrote (never referenced
    # by the log): 0001's file holding 1-4 is rewritten by 0002's deletions before the one commit.
    out = tmp_path / "out"
    write(tmp_path / "pubmed25n0001.xml", [article_xml(p) for p in range(1, 5)], gz=False)
    write(tmp_path / "pubmed25n0002.xml", [], deletions=[1, 2, 3], gz=False)
    real_delete, failed = Location.delete, []

    def failing_delete(self):
        if self.name.endswith(".parquet") and not self.name.startswith("."):
            failed.append(self.name)
            raise OSError("transient storage error")
        return real_delete(self)

    monkeypatch.setattr(Location, "delete", failing_delete)
    summary = ingest_files([tmp_path / "pubmed25n0001.xml", tmp_path / "pubmed25n0002.xml"], out)
    monkeypatch.setattr(Location, "delete", real_delete)
    (old,) = failed
    assert (summary.commits, summary.deleted, summary.rows) == (1, 3, 1)
    assert (out / "documents" / old).exists()  # could not be removed: left for the vacuum
    assert old not in live_files(out) and live_pmids(out) == [4] and sorted(corpus(out)) == [4]
    compact(JobOutput(out), retention_hours=0)
    assert not (out / "documents" / old).exists() and live_pmids(out) == [4]


def test_a_malformed_file_commits_the_files_before_it_and_names_the_record(tmp_path):
    good = write(tmp_path / "pubmed25n0001.xml", [article_xml(1)], gz=False)
    text = pubmed_document([article_xml(2), article_xml(3)])
    bad = tmp_path / "pubmed25n0002.xml"
    bad.write_text(text[: text.index('<PMID Version="1">3<')] + "</PubmedArticleSet>", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(PubmedXMLError, match=r"pubmed25n0002\.xml: malformed .* after record 1 \(PMID 2\)"):
        ingest_files([good, bad], out, shard_rows=1)
    assert sorted(corpus(out)) == [1] and live_pmids(out) == [1]
    assert applied_inputs(out) == ["pubmed25n0001.xml"]
    table = DeltaTable(table_path(out))
    assert table.transaction_version(f"biomine.input.{hashlib.sha256(bad.read_bytes()).hexdigest()}") is None


def test_glob_patterns_are_expanded(pubmed_files, tmp_path):
    summary = ingest_files([str(pubmed_files / "pubmed25n000[12].xml.gz")], tmp_path / "out")
    assert summary.files == 2 and applied_inputs(tmp_path / "out") == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz"]
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
    assert not (tmp_path / "out" / "documents").exists()  # refused before anything was written


# --- the documents table ----------------------------------------------------------------------------


def test_data_files_carry_the_schema_version_and_match_their_names(pubmed_files, tmp_path):
    out = tmp_path / "out"
    ingest_files([pubmed_files], out, shard_rows=4)
    table = DeltaTable(table_path(out))
    assert table.metadata().configuration == {
        "biomine.dataset": "documents",
        "biomine.schema_version": str(SCHEMA_VERSION),
        "delta.dataSkippingStatsColumns": "pmid,version",  # what each file's statistics cover
    }
    assert pa.schema(table.schema().to_arrow()).names == ARTICLE_SCHEMA.names
    for name in live_files(out):
        path = out / "documents" / name
        schema = pq.read_schema(path)
        assert check_schema(schema, name) == SCHEMA_VERSION
        assert schema.equals(ARTICLE_SCHEMA, check_metadata=False)
        pmids = pq.read_table(path, columns=["pmid"]).column("pmid").to_pylist()
        assert pmids == sorted(pmids)  # sorted by PMID
        assert DATA_FILE.match(name).group("sha") == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    docs = Documents(JobOutput(out).documents, create=False)
    assert docs.table.verify(docs.files().values()) == {}


def test_one_writer_at_a_time_and_foreign_outputs_are_refused(tmp_path):
    # Was: a `_lock` file and `_manifest.json` owner checks. Now: the output's lease, `_job.json`.
    src = write(tmp_path / "pubmed25n0001.xml", [article_xml(1)], gz=False)
    out = tmp_path / "out"
    with JobOutput(out).lease("another run"):
        with pytest.raises(StoreError, match="is in use by another run: another run"):
            ingest_files([src], out)
    assert not (out / "documents").exists()
    ingest_files([src], out)
    assert live_pmids(out) == [1] and JobOutput(out).owner()["name"] == INGEST_OWNER["name"]
    # The table inside an output is not an output.
    with pytest.raises(StoreError, match="is a table inside the output"):
        ingest_files([src], out / "documents")
    # Another job's output.
    fetched = tmp_path / "fetched"
    JobOutput(fetched).root.mkdir()
    JobOutput(fetched).check_owner({"name": "biomine fetch", "source": {"kind": "entrez", "query": "x"}}, claim=True)
    with pytest.raises(StoreError, match="belongs to job 'biomine fetch'"):
        ingest_files([src], fetched)
    # Documents biomine did not write: refused, and left as they are.
    foreign = tmp_path / "foreign"
    (foreign / "documents").mkdir(parents=True)
    (foreign / "documents" / "part-000000.parquet").write_bytes(b"not ours")
    with pytest.raises(StoreError, match="holds documents but no _job.json"):
        ingest_files([src], foreign)
    assert (foreign / "documents" / "part-000000.parquet").read_bytes() == b"not ours"
    assert sorted(os.listdir(foreign / "documents")) == ["part-000000.parquet"]


def test_leftovers_of_an_interrupted_run_are_never_read_and_are_vacuumed(tmp_path):
    # Was: the next open removed uncommitted shards and temp files. Now nothing refers to them (the
    # log is the one truth of what is live), so every reader ignores them, and `biomine compact`
    # vacuums them.
    out = tmp_path / "out"
    docs = Documents(str(out / "documents"))
    txn = docs.transaction()
    leftover = txn.write([{"pmid": 1, "version": 1, "record_type": "article", "has_abstract": False}])
    # No commit: the process "dies" here, leaving an uncommitted data file.
    assert (out / "documents" / leftover.path).exists()
    assert docs.files() == {} and live_pmids(out) == [] and read_articles(out).num_rows == 0
    assert_readers_see(out, {})
    compact(JobOutput(out), retention_hours=0)
    assert not (out / "documents" / leftover.path).exists()
    assert [n for n in os.listdir(out / "documents") if not n.startswith("_")] == []


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
    assert live_pmids(out) == sorted(rows)
    version = table_version(out)
    assert main(["ingest", REPO_DEMO, "--out", str(out), "--no-progress"]) == 0
    assert "0 file(s) (1 already done)" in capsys.readouterr().out
    assert table_version(out) == version


def test_cli_ingest_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "pubmed25n0001.xml.gz"
    bad.write_bytes(gzip.compress(pubmed_document([article_xml(1)]).encode())[:-30])
    assert main(["ingest", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and "pubmed25n0001.xml.gz" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated data file", "replaced data file", "damaged log"])
def test_cli_ingest_into_a_damaged_table_is_one_line(tmp_path, capsys, damage):
    # Was: a damaged or unreadable manifest. Now: a damaged Delta log, or a data file that does not
    # match the log (size) or its name (checksum), found before the update trusts it.
    src = tmp_path / "src"
    src.mkdir()
    write(src / "pubmed25n0001.xml", [article_xml(p) for p in range(1, 5)], gz=False)
    write(src / "pubmed25n0002.xml", [article_xml(2, title="Revised.")], gz=False)
    out = tmp_path / "out"
    assert main(["ingest", str(src / "pubmed25n0001.xml"), "--out", str(out), "--no-progress"]) == 0
    (name,) = live_files(out)
    data, log = out / "documents" / name, out / "documents" / "_delta_log" / f"{table_version(out):020d}.json"
    good = data.read_bytes()
    if damage == "truncated data file":
        data.write_bytes(good[:-100])
    elif damage == "replaced data file":  # the same size, other bytes
        data.write_bytes(good[:1000] + bytes(b ^ 0xFF for b in good[1000:1100]) + good[1100:])
    else:
        log.write_text(log.read_text()[:50])
    logs = sorted(os.listdir(out / "documents" / "_delta_log"))
    capsys.readouterr()
    assert main(["ingest", str(src / "pubmed25n0002.xml"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert (str(out / "documents") + ": cannot read its Delta log") in err if damage == "damaged log" else name in err
    assert sorted(os.listdir(out / "documents" / "_delta_log")) == logs  # nothing was committed
    if damage != "damaged log":
        data.write_bytes(good)  # restored: the update goes through
        assert main(["ingest", str(src / "pubmed25n0002.xml"), "--out", str(out), "--no-progress"]) == 0
        assert_readers_see(
            out,
            {1: "Article 1 on drug interactions.", 2: "Revised."}
            | {p: f"Article {p} on drug interactions." for p in (3, 4)},
        )
