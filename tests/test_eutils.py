"""The E-utilities client and ``biomine fetch`` against the loopback fake (tests/fake_eutils.py), over real HTTP."""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import re
import time

import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from fake_eutils import FakeEutils, article_xml

from pipeline.cli import main
from pipeline.errors import JobConfigError, StoreError
from pipeline.pubmed.eutils import (
    Credentials,
    EutilsClient,
    EutilsError,
    RateLimiter,
    plan_ranges,
)
from pipeline.pubmed.fetch import fetch_query
from pipeline.pubmed.parser import parse_articles
from pipeline.run.jobspec import source_credentials
from pipeline.store.documents import Documents, read_articles
from pipeline.store.output import JobOutput

QUERY = "warfarin AND drug interactions"


def corpus(n: int, start=dt.date(2019, 1, 1), step_days: int = 3, first_pmid: int = 30_000_000, per_day: int = 1):
    """n (pmid, date, xml) records, ``per_day`` on each date, dates ``step_days`` apart."""
    out = []
    for i in range(n):
        day = start + dt.timedelta(days=(i // per_day) * step_days)
        out.append((first_pmid + i, day, article_xml(first_pmid + i, day)))
    return out


def newest_first(records):
    return [pmid for pmid, _, _ in sorted(records, key=lambda r: (r[1], r[0]), reverse=True)]


@pytest.fixture
def fake():
    with FakeEutils(lifetime=60) as server:
        yield server


@pytest.fixture(autouse=True)
def no_user_credentials(monkeypatch, tmp_path):
    for name in ("NCBI_EMAIL", "NCBI_API_KEY", "BIOMINE_EUTILS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BIOMINE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def client(fake, tmp_path):
    def make(**kw):
        options = dict(rate=500, state_dir=tmp_path / "rate", backoff=0.001, max_backoff=0.01, timeout=5)
        options.update(kw)
        creds = options.pop("credentials", Credentials(email="dev@example.org", api_key="k3y", tool="biomine-tests"))
        return EutilsClient(fake.url, creds, **options)

    return make


def pmids(out) -> list[int]:
    """The live PMIDs as an independent Delta reader (deltalake) returns them, sorted; checked to be
    what biomine's own reader returns."""
    found = sorted(DeltaTable(str(out / "documents")).to_pandas(columns=["pmid"])["pmid"].tolist())
    assert sorted(read_articles(out, ["pmid"]).column("pmid").to_pylist()) == found
    return found


def files(out) -> list[tuple[str, list[int]]]:
    """The live data files (name order, which is fetch order: part-NNNNNN), each with its PMIDs as
    polars reads them through the table's log. Was: the manifest's shards."""
    actions = pa.table(DeltaTable(str(out / "documents")).get_add_actions(flatten=True))
    names = sorted(actions.column("path").to_pylist())
    table = polars.read_delta(str(out / "documents")).select("pmid")
    assert table.height == sum(actions.column("num_records").to_pylist())
    return [
        (n, sorted(pq.read_table(out / "documents" / n, columns=["pmid"]).column("pmid").to_pylist())) for n in names
    ]


def batches_of(order: list[int], sizes: list[int]) -> list[list[int]]:
    """``order`` cut into consecutive pieces of ``sizes``, each sorted (a data file is sorted by PMID)."""
    out, start = [], 0
    for size in sizes:
        out.append(sorted(order[start : start + size]))
        start += size
    return out


def last_notes(out) -> dict:
    """The ``notes`` of the newest commit of the documents table, read from the Delta log with deltalake."""
    (entry,) = DeltaTable(str(out / "documents")).history(1)
    return json.loads(entry["biomine.notes"])


def test_fetch_uses_history_batches_and_sends_credentials(fake, client, tmp_path):
    records = corpus(7)
    fake.add_query(QUERY, records)
    summary = fetch_query(client(), QUERY, tmp_path / "out", batch_size=3, shard_rows=4)
    assert pmids(tmp_path / "out") == sorted(newest_first(records))
    assert (summary.total_hits, summary.fetched, summary.rows) == (7, 7, 7)
    searches, fetches = fake.requests_for("esearch"), fake.requests_for("efetch")
    # The count needs no history; the search whose ids are fetched uses it.
    assert [s.params.get("usehistory") for s in searches] == [None, "y"]
    assert all(f.params["WebEnv"].startswith("MCID_") and f.params["query_key"] == "1" for f in fetches)
    assert [(f.params["retstart"], f.params["retmax"]) for f in fetches] == [("0", "3"), ("3", "3"), ("6", "1")]
    for request in fake.requests:
        assert (request.params["tool"], request.params["email"], request.params["api_key"]) == (
            "biomine-tests",
            "dev@example.org",
            "k3y",
        )
    table = read_articles(tmp_path / "out")
    assert set(table.column("source").to_pylist()) == {QUERY}
    assert table.column("fetched_at").null_count == 0
    # One data file per 4 articles, in fetch order: the newest hits first.
    assert [ids for _, ids in files(tmp_path / "out")] == batches_of(newest_first(records), [4, 3])
    assert [name.split(".")[0] for name, _ in files(tmp_path / "out")] == ["part-000000", "part-000001"]


def test_query_past_the_paging_limit_is_split_by_date(fake, client, tmp_path):
    # Fake and client share a small limit so the split is cheap; several hits share a date, and the
    # ranges must neither overlap nor miss a day.
    fake.limit = 50
    records = corpus(173, per_day=4, step_days=2)
    fake.add_query(QUERY, records)
    summary = fetch_query(client(), QUERY, tmp_path / "out", batch_size=20, split_threshold=50, shard_rows=64)
    got = pmids(tmp_path / "out")
    assert got == sorted(p for p, _, _ in records) and len(got) == len(set(got)) == 173
    # Newest first, across the date ranges: each data file holds the next 64 newest hits.
    assert [ids for _, ids in files(tmp_path / "out")] == batches_of(newest_first(records), [64, 64, 45])
    assert summary.ranges >= 4
    # Nothing ever asked the fake to page past its limit (it would have answered <ERROR>).
    for request in fake.requests:
        assert int(request.params.get("retstart", 0)) + int(request.params.get("retmax", 0)) <= 50


def test_real_paging_limit_of_9999(fake, client, tmp_path):
    fake.limit = 9_999
    records = corpus(12_500, start=dt.date(2015, 1, 1), step_days=1, per_day=5)
    fake.add_query(QUERY, records)
    summary = fetch_query(client(), QUERY, tmp_path / "out", batch_size=5_000)
    got = pmids(tmp_path / "out")
    assert len(got) == len(set(got)) == 12_500 and summary.ranges == 2
    assert max(len(r.params.get("id", "").split(",")) for r in fake.requests) == 1  # all by history, no id lists


def test_split_plan_counts_add_up_and_respect_dates(fake, client):
    fake.limit = 10
    fake.add_query(QUERY, corpus(45, start=dt.date(2020, 1, 1), step_days=1))
    total, ranges = plan_ranges(client(), QUERY, mindate="2020/01/05", maxdate="2020/02", threshold=10)
    assert total == 41 and sum(r.count for r in ranges) == 41 and all(r.count <= 10 for r in ranges)
    # Within the asked dates (ranges without hits are dropped), newest first.
    assert ranges[0].maxdate <= "2020/02/29" and ranges[-1].mindate == "2020/01/05"
    bounds = [(dt.date(*map(int, r.mindate.split("/"))), dt.date(*map(int, r.maxdate.split("/")))) for r in ranges]
    for (newer_lo, _), (_, older_hi) in zip(bounds, bounds[1:]):
        assert older_hi < newer_lo  # disjoint


def test_one_day_with_too_many_hits_fails_clearly(fake, client, tmp_path):
    fake.limit = 10
    fake.add_query(QUERY, corpus(25, start=dt.date(2021, 5, 6), per_day=25))
    with pytest.raises(EutilsError, match=r"25 hits dated 2021/05/06 alone.*narrow the query"):
        fetch_query(client(), QUERY, tmp_path / "out", split_threshold=10)


@pytest.mark.parametrize("kind", ["429", "500", "502", "drop", "malformed", "error"])
def test_transient_failures_are_retried(fake, client, tmp_path, kind):
    records = corpus(6)
    fake.add_query(QUERY, records)
    fake.fail("efetch", kind, when=lambda p: p.get("retstart") == "3")
    fake.fail("esearch", kind)
    fetch_query(client(), QUERY, tmp_path / "out", batch_size=3)
    assert pmids(tmp_path / "out") == sorted(newest_first(records))
    second_batch = [r.fault for r in fake.requests_for("efetch") if r.params.get("retstart") == "3"]
    assert second_batch == [kind, None]


def test_timeouts_are_retried(fake, client, tmp_path):
    fake.add_query(QUERY, corpus(2))
    fake.fail("efetch", "stall", delay=1.0)
    fetch_query(client(timeout=0.3), QUERY, tmp_path / "out")
    assert len(pmids(tmp_path / "out")) == 2
    assert [r.fault for r in fake.requests_for("efetch")] == ["stall", None]


def test_unparseable_batch_fails_the_run_naming_batch_and_query_then_resumes(fake, client, tmp_path):
    records = corpus(7)
    fake.add_query(QUERY, records)
    fault = fake.fail("efetch", "malformed", times=float("inf"), when=lambda p: p.get("retstart") == "3")
    out = tmp_path / "out"
    with pytest.raises(EutilsError) as info:
        fetch_query(client(tries=3), QUERY, out, batch_size=3, shard_rows=3)
    message = str(info.value)
    assert "efetch batch 2/3 (records 4-6 of 7)" in message and repr(QUERY) in message
    assert "after 3 attempts" in message and "malformed or truncated PubMed XML" in message
    assert fault.hits == 3
    # The first batch was committed as a data file; the broken one left nothing behind: the table
    # folder holds its log and that one file, the only live one. (Was: the output folder held the
    # lock, the manifest and one shard; now the output holds its owner and lease files and the table.)
    assert pmids(out) == sorted(newest_first(records)[:3])
    version = DeltaTable(str(out / "documents")).version()
    ((name, first),) = files(out)
    assert first == sorted(newest_first(records)[:3])
    assert sorted(p.name for p in (out / "documents").iterdir()) == ["_delta_log", name]
    assert {p.name for p in out.iterdir()} <= {"_job.json", "_lease.json", "_lease.json.lock", "documents"}

    fault.times = 0
    before = len(fake.requests_for("efetch"))
    fetch_query(client(), QUERY, out, batch_size=3, shard_rows=3)
    assert pmids(out) == sorted(newest_first(records))
    refetched = [r.params.get("retstart") for r in fake.requests_for("efetch")[before:]]
    assert refetched == ["3", "6"]  # the committed first batch was not fetched again
    assert files(out)[0] == (name, first) and DeltaTable(str(out / "documents")).version() > version


def test_crash_after_a_shard_then_rerun_equals_uninterrupted_run(fake, client, tmp_path, monkeypatch):
    records = corpus(11)
    fake.add_query(QUERY, records)
    fetch_query(client(), QUERY, tmp_path / "clean", batch_size=3, shard_rows=4)

    from pipeline.store.documents import DocumentTransaction

    real_commit, calls = DocumentTransaction.commit, []

    def crash_after_first(self, **kw):
        version = real_commit(self, **kw)
        calls.append(version)
        if len(calls) == 1:  # the first data file is committed, then the process dies
            raise KeyboardInterrupt
        return version

    monkeypatch.setattr(DocumentTransaction, "commit", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        fetch_query(client(), QUERY, tmp_path / "crashed", batch_size=3, shard_rows=4)
    monkeypatch.setattr(DocumentTransaction, "commit", real_commit)
    assert pmids(tmp_path / "crashed") == sorted(newest_first(records)[:4])
    fetch_query(client(), QUERY, tmp_path / "crashed", batch_size=3, shard_rows=4)
    clean, resumed = read_articles(tmp_path / "clean"), read_articles(tmp_path / "crashed")
    assert resumed.drop_columns(["fetched_at"]).equals(clean.drop_columns(["fetched_at"]))
    by_deltalake = [
        DeltaTable(str(tmp_path / out / "documents")).to_pandas().drop(columns=["fetched_at"]).sort_values("pmid")
        for out in ("clean", "crashed")
    ]
    assert by_deltalake[0].reset_index(drop=True).equals(by_deltalake[1].reset_index(drop=True))
    sizes = [len(p) for _, p in files(tmp_path / "crashed")]
    assert sizes == [len(p) for _, p in files(tmp_path / "clean")] == [4, 4, 3]
    assert [p for _, p in files(tmp_path / "crashed")] == batches_of(newest_first(records), [4, 4, 3])


def test_rerun_fetches_only_new_hits(fake, client, tmp_path):
    records = corpus(5)
    fake.add_query(QUERY, records)
    out = tmp_path / "out"
    fetch_query(client(), QUERY, out, batch_size=3)
    efetches = len(fake.requests_for("efetch"))
    summary = fetch_query(client(), QUERY, out, batch_size=3)
    assert (summary.fetched, summary.already_present) == (0, 5)
    assert len(fake.requests_for("efetch")) == efetches
    # A new, newest hit shares a batch with hits already present: it is fetched alone, by POSTed id.
    new = (39_999_999, dt.date(2024, 1, 1), article_xml(39_999_999, dt.date(2024, 1, 1)))
    fake.add_query(QUERY, records + [new])
    summary = fetch_query(client(), QUERY, out, batch_size=3)
    assert summary.fetched == 1 and sorted(pmids(out)) == sorted([p for p, _, _ in records] + [new[0]])
    last = fake.requests_for("efetch")[-1]
    assert (last.method, last.params["id"]) == ("POST", str(new[0]))


def test_max_records_takes_the_newest_hits_across_ranges(fake, client, tmp_path):
    fake.limit = 20
    records = corpus(90)
    fake.add_query(QUERY, records)
    fetch_query(client(), QUERY, tmp_path / "a", max_records=45, batch_size=10, split_threshold=20)
    assert pmids(tmp_path / "a") == sorted(newest_first(records)[:45])
    fetch_query(client(), QUERY, tmp_path / "b", max_records=7, batch_size=5, split_threshold=20)
    assert pmids(tmp_path / "b") == sorted(newest_first(records)[:7])


def test_records_withheld_by_efetch_are_asked_by_id_then_reported(fake, client, tmp_path, caplog):
    records = corpus(5)
    fake.add_query(QUERY, records)
    fake.withheld = {records[2][0]}
    with caplog.at_level(logging.WARNING):
        summary = fetch_query(client(), QUERY, tmp_path / "out", batch_size=5)
    assert summary.unavailable == [records[2][0]] and len(pmids(tmp_path / "out")) == 4
    # Was: the manifest's notes. Now: the final commit's info (biomine.notes) in the Delta log.
    notes = last_notes(tmp_path / "out")
    assert notes["unavailable"] == [records[2][0]] and (notes["query"], notes["total_hits"]) == (QUERY, 5)
    docs = Documents(JobOutput(tmp_path / "out").documents, create=False)
    assert docs.table.commit_metadata(limit=1)[0]["notes"] == notes
    assert fake.requests_for("efetch")[-1].params["id"] == str(records[2][0])
    assert "not returned by efetch" in caplog.text


def test_refused_connections_are_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = EutilsClient(
        f"http://127.0.0.1:{port}/eutils",
        Credentials(email="a@b"),
        state_dir=tmp_path,
        rate=500,
        tries=2,
        backoff=0.001,
    )
    with pytest.raises(
        EutilsError, match=r"esearch for query 'q' failed after 2 attempts; last error: URLError.*refused"
    ):
        client.esearch("q")


def test_http_400_is_not_retried(fake, client, tmp_path):
    fake.add_query(QUERY, corpus(2))
    fake.fail("esearch", "400")
    with pytest.raises(EutilsError, match=r"HTTP 400.*not retried"):
        fetch_query(client(), QUERY, tmp_path / "out")
    assert len(fake.requests_for("esearch")) == 1


def test_another_query_into_the_same_output_is_refused(fake, client, tmp_path):
    fake.add_query(QUERY, corpus(2))
    fake.add_query("aspirin", corpus(2, first_pmid=50_000_000))
    fetch_query(client(), QUERY, tmp_path / "out")
    version = DeltaTable(str(tmp_path / "out" / "documents")).version()
    with pytest.raises(StoreError, match=r"belongs to job 'biomine fetch' \(source .*warfarin.*use another output"):
        fetch_query(client(), "aspirin", tmp_path / "out")
    assert DeltaTable(str(tmp_path / "out" / "documents")).version() == version
    assert pmids(tmp_path / "out") == sorted(p for p, _, _ in corpus(2))
    # The documents table inside an output is not an output: refused, before anything is asked of NCBI.
    searches = len(fake.requests_for("esearch"))
    with pytest.raises(StoreError, match="is a table inside the output"):
        fetch_query(client(), QUERY, tmp_path / "out" / "documents")
    assert len(fake.requests_for("esearch")) == searches


@pytest.mark.parametrize("utility,status", [("esearch", "400"), ("efetch", "500")])
def test_a_failed_first_fetch_leaves_the_output_free(fake, client, tmp_path, utility, status):
    """A mistyped query (or NCBI down) on the first fetch must not bind the output to that query."""
    fake.add_query(QUERY, corpus(2))
    fake.add_query("aspirin", corpus(2, first_pmid=50_000_000))
    fake.fail(utility, status, times=float("inf"))
    out = tmp_path / "out"
    with pytest.raises(EutilsError):
        fetch_query(client(tries=1), QUERY, out)
    assert JobOutput(out).owner() is None and not (out / "documents").exists()
    fake.faults.clear()
    fetch_query(client(), "aspirin", out)  # the fixed command uses the same output
    assert JobOutput(out).owner()["source"]["query"] == "aspirin"
    assert pmids(out) == sorted(p for p, _, _ in corpus(2, first_pmid=50_000_000))
    # Once an article is committed, a failing re-run keeps the output this query's.
    fake.fail("esearch", "400")
    with pytest.raises(EutilsError):
        fetch_query(client(tries=1), "aspirin", out)
    assert JobOutput(out).owner()["source"]["query"] == "aspirin"


def test_real_esearch_answer_is_parsed(fake, client, shared):
    fake.fail("esearch", "body", body=shared("data", "entrez", "esearch2.xml").read_bytes())
    result = client().esearch("cancer", retmax=100)
    assert (result.count, len(result.ids), result.query_key) == (42249, 100, "1")
    assert result.webenv == "MCID_6927d6e7fee3e90f880ec190" and result.ids[0] == 41297076


def test_fetch_serving_real_efetch_records(fake, client, tmp_path, shared):
    records, expected = [], []
    for name in ("pubmed1.xml", "pubmed2.xml", "pubmed4.xml", "pubmed5.xml"):
        text = shared("data", "entrez", name).read_text(encoding="utf-8")
        for chunk in re.findall(r"<PubmedArticle>.*?</PubmedArticle>", text, flags=re.S):
            row = parse_articles(("<PubmedArticleSet>" + chunk + "</PubmedArticleSet>").encode())[0]
            records.append((row["pmid"], dt.date(row["pub_year"], row["pub_month"] or 1, 1), chunk))
            expected.append(row)
    fake.add_query(QUERY, records)
    fetch_query(client(), QUERY, tmp_path / "out", batch_size=4)
    table = read_articles(tmp_path / "out").drop_columns(["source", "fetched_at"]).to_pylist()
    from schemas.articles import content_sha256

    # The stored fingerprint of each article's model input (what the parser does not give).
    for row in table:
        assert row.pop("content_sha256") == content_sha256(row["title"], row["abstract"]), row["pmid"]
    assert sorted(table, key=lambda r: r["pmid"]) == sorted(expected, key=lambda r: r["pmid"])


# --- rate limiting and credentials ----------------------------------------------------------------


def _hammer(args):
    state_dir, count, rate = args
    limiter = RateLimiter(rate, "127.0.0.1|shared-key", state_dir)
    slots = []
    for _ in range(count):
        slot = limiter.wait()
        assert time.time() >= slot  # nobody goes before its slot
        slots.append(slot)
    return slots


def test_rate_limit_is_shared_by_processes_using_the_same_key(tmp_path):
    rate = 25.0
    start = time.time()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        slots = sorted(s for part in pool.map(_hammer, [(tmp_path, 8, rate)] * 2) for s in part)
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert len(slots) == 16
    # Never two requests closer than 1/rate, whichever process made them...
    assert min(gaps) >= 1 / rate - 1e-6, gaps
    # ...so 16 requests take at least 15 intervals of wall time.
    assert time.time() - start >= 15 / rate


def test_rate_limiter_without_state_dir_paces_one_process():
    now = [100.0]
    slept = []
    limiter = RateLimiter(4.0, "k", None, clock=lambda: now[0], sleep=slept.append)
    for _ in range(3):
        limiter.wait()
    assert slept == [0.25, 0.5]


def test_default_rates_follow_ncbi_rules(tmp_path):
    with_key = EutilsClient("http://127.0.0.1:9/", Credentials(email="a@b", api_key="k"), state_dir=tmp_path)
    without = EutilsClient("http://127.0.0.1:9/", Credentials(email="a@b"), state_dir=tmp_path)
    assert (with_key.limiter.interval, without.limiter.interval) == (0.1, pytest.approx(1 / 3))
    with pytest.raises(EutilsError, match="exceeds NCBI's limit of 3"):
        EutilsClient(None, Credentials(email="a@b"), rate=5, state_dir=tmp_path)
    with pytest.raises(EutilsError, match="contact email"):
        EutilsClient(None, Credentials(), state_dir=tmp_path)


def test_credentials_resolution_order(tmp_path):
    env = {"NCBI_EMAIL": "env@x", "NCBI_API_KEY": "envkey"}
    assert Credentials.resolve(environ=env) == Credentials("env@x", "envkey", "biomine")
    job = {"email": "job@x", "tool": "nightly"}
    assert Credentials.resolve(job=job, environ=env) == Credentials("job@x", "envkey", "nightly")
    assert Credentials.resolve(email="opt@x", api_key="optkey", job=job, environ=env) == Credentials(
        "opt@x", "optkey", "nightly"
    )
    spec = tmp_path / "job.toml"
    spec.write_text('[job]\nname = "x"\n[source]\nkind = "entrez"\nquery = "q"\nemail = "job@x"\napi_key = "abc"\n')
    assert source_credentials(spec) == {"email": "job@x", "api_key": "abc"}
    spec.write_text("[source\nemail =")
    with pytest.raises(JobConfigError, match=r"job\.toml is not valid TOML"):
        source_credentials(spec)


def test_base_url_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOMINE_EUTILS_URL", "http://127.0.0.1:1234/mirror")
    assert EutilsClient(credentials=Credentials(), state_dir=tmp_path).base_url == "http://127.0.0.1:1234/mirror/"


# --- the command line ------------------------------------------------------------------------------


def test_cli_fetch(fake, tmp_path, capsys):
    fake.add_query(QUERY, corpus(4))
    out = tmp_path / "out"
    spec = tmp_path / "job.toml"
    spec.write_text('[source]\nkind = "entrez"\nemail = "job@example.org"\n')
    code = main(
        [
            "fetch",
            "--query",
            QUERY,
            "--out",
            str(out),
            "--eutils-url",
            fake.url,
            "--job",
            str(spec),
            "--rate",
            "200",
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0 and len(pmids(out)) == 4
    assert "4 hits in 1 date range(s); fetched 4 new" in capsys.readouterr().out
    assert {r.params["email"] for r in fake.requests} == {"job@example.org"}


def test_cli_fetch_failure_is_one_line(fake, tmp_path, capsys):
    fake.add_query(QUERY, corpus(2))
    fake.fail("efetch", "500", times=float("inf"))
    code = main(
        [
            "fetch",
            "--query",
            QUERY,
            "--out",
            str(tmp_path / "out"),
            "--eutils-url",
            fake.url,
            "--rate",
            "200",
            "--tries",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("biomine: error: efetch batch 1/1 (records 1-2 of 2) of the search for query")


def test_cli_fetch_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["fetch", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--eutils-url" in text and "NCBI_API_KEY" in text
