"""The run state under races and damage, on the Delta tables (issue "Analyst-ready tables").

- Writers race for an output on a real S3 server (SeaweedFS): four processes started at the same
  instant, many rounds: exactly one holds the lease each round, never two at once; four real
  `biomine ingest` commands: one proceeds, three are refused in one line.
- kill -9 during a copy-on-write commit (the rewritten files written, the log entry not yet): the
  re-run gives tables identical to a clean run, and no file is left that no table version names.
- Damage: a truncated or replaced data file, a damaged log entry: detected before anything is
  trusted or deleted, one `biomine: error:` line naming the file and the repair, nothing committed
  lost.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_eutils import article_xml, pubmed_document

from pipeline.cli import main
from pipeline.pubmed.ingest import ingest_files
from pipeline.store.documents import Documents, read_articles
from pipeline.store.storage import delta_location, location

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, articles: list[str], deletions: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pubmed_document(articles, deletions).encode(), mtime=0))
    return path


def article(pmid: int, revision: int = 0) -> str:
    title = f"Article {pmid} on warfarin" + (f", revised {revision}." if revision else ".")
    return article_xml(pmid, title=html.escape(title), abstract=html.escape(f"Warfarin in {pmid} patients."))


def corpus(src: Path) -> list[Path]:
    """A baseline of two files (PMIDs 1..20) and an update revising 3 and 12, deleting 7, adding 21."""
    base1 = write(src / "pubmed26n0001.xml.gz", [article(p) for p in range(1, 11)])
    base2 = write(src / "pubmed26n0002.xml.gz", [article(p) for p in range(11, 21)])
    update = src / "updates" / "pubmed26n0003.xml.gz"
    write(update, [article(3, 1), article(12, 1), article(21)], deletions=[7])
    return [base1, base2, update]


def referenced_by_any_version(table: str, options: dict | None = None) -> set[str]:
    """Every data file some version of the table's log names (deltalake's own reading)."""
    from deltalake import DeltaTable

    latest = DeltaTable(table, storage_options=options)
    names: set[str] = set()
    for version in range(latest.version() + 1):
        dt = DeltaTable(table, version=version, storage_options=options)
        names |= {u.rsplit("/", 1)[1] for u in dt.file_uris()}
    return names


def live_rows(table: str, options: dict | None = None) -> list[tuple]:
    from deltalake import DeltaTable

    frame = DeltaTable(table, storage_options=options).to_pandas()
    return sorted(frame[["pmid", "version", "title"]].itertuples(index=False, name=None))


# --- kill -9 during a copy-on-write commit ---------------------------------------------------------
KILLED_AT_COMMIT = """
import os, sys, time
from pathlib import Path
from pipeline.store.tables import Table
real = Table.commit
def commit(self, add=(), remove=(), **kw):
    if list(remove):  # the copy-on-write commit of the update: its new files are written already
        Path(sys.argv[3]).write_text("ready")
        time.sleep(600)
    return real(self, add, remove, **kw)
Table.commit = commit
from pipeline.pubmed.ingest import ingest_files
ingest_files([sys.argv[1]], sys.argv[2], shard_rows=4, workers=1)
"""


def kill_at_the_copy_on_write_commit(src: str, out: str, tmp_path: Path, env: dict) -> None:
    marker = tmp_path / "at-commit"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_AT_COMMIT, src, out, str(marker)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_9_during_a_copy_on_write_commit_then_a_rerun_equals_a_clean_run(tmp_path, where, request):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        env.update(s3)
        os.environ.update(s3)  # this process reads the same store
        out = f"s3://{s3['BIOMINE_TEST_BUCKET']}/killed-{os.getpid()}"
    else:
        out = str(tmp_path / "killed")
    src = tmp_path / "src"
    base1, base2, update = corpus(src)
    ingest_files([base1, base2], out, shard_rows=4)
    uri, options = delta_location(location(out) / "documents")
    before = live_rows(uri, options)

    kill_at_the_copy_on_write_commit(str(update), out, tmp_path, env)
    assert live_rows(uri, options) == before  # the update's commit never landed: the old corpus, whole

    summary = ingest_files([update], out, shard_rows=4)
    assert summary.files == 1 and summary.commits == 1
    clean = tmp_path / "clean"
    ingest_files([base1, base2], clean, shard_rows=4)
    ingest_files([update], clean, shard_rows=4)
    assert live_rows(uri, options) == live_rows(str(clean / "documents"))
    assert read_articles(out).num_rows == 20  # 20 - 1 deleted + 1 new

    # The same data files (their bases and rows; their bytes differ only by the time of ingestion,
    # fetched_at, which no two runs share).
    def layout(docs: Documents) -> list[tuple]:
        return sorted((f.base, f.rows, f.min_pmid, f.max_pmid) for f in docs.files().values())

    assert layout(Documents(location(out) / "documents")) == layout(Documents(clean / "documents"))
    # The killed run's files were written again, byte for byte, and committed: none is left that no
    # version of the table names.
    on_disk = set((location(out) / "documents").files(".parquet"))
    assert on_disk == referenced_by_any_version(uri, options)


# --- writers racing on S3 --------------------------------------------------------------------------
HOLDER = """
import json, sys, time
from pipeline.store.lease import Lease
from pipeline.store.storage import location
from pipeline.errors import StoreError
start_at, out, log = float(sys.argv[1]), sys.argv[2], sys.argv[3]
time.sleep(max(0.0, start_at - time.time()))
try:
    with Lease(location(out), what=f"racer {sys.argv[4]}", ttl=30):
        t0 = time.time()
        time.sleep(1.0)
        t1 = time.time()
    print(json.dumps({"held": [t0, t1]}))
except StoreError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


@pytest.mark.slow
def test_writers_started_at_the_same_instant_on_s3_never_hold_an_output_together(tmp_path, s3_server):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **s3_server}
    bucket = s3_server["BIOMINE_TEST_BUCKET"]
    for round_ in range(6):
        out = f"s3://{bucket}/race-{os.getpid()}-{round_}"
        start_at = time.time() + 3.0  # every process imports first, then all go at once
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(start_at), out, str(tmp_path), str(i)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-2000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        held = [r["held"] for r in results if "held" in r]
        refused = [r["refused"] for r in results if "refused" in r]
        # At least one proceeds; whoever proceeded later did so only after the holder released.
        assert held, results
        spans = sorted(held)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"two holders at once in round {round_}"
        assert all("in use by another run" in r for r in refused) and len(held) + len(refused) == 4
        if len(held) == 1:
            assert len(refused) == 3


@pytest.mark.slow
def test_four_ingests_of_one_output_at_once_on_s3_one_proceeds(tmp_path, s3_server):
    """Every writer of an output takes its lease: four `biomine ingest` at once, one proceeds, the
    others are refused with one line; the table is the one ingest's, once."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **s3_server}
    bucket = s3_server["BIOMINE_TEST_BUCKET"]
    src = tmp_path / "src"
    base1, base2, _ = corpus(src)
    out = f"s3://{bucket}/four-ingests-{os.getpid()}"
    # A barrier, so the four race for the lease however slowly each imports under load: each
    # imports biomine, says so, and waits for the go file.
    go = tmp_path / "go"
    script = (
        "import os, sys, time; from pipeline.cli import main; print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
        "sys.exit(main(sys.argv[2:]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go), "ingest", str(base1), str(base2), "--out", out, "--workers", "1"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    # One ingests both files. Each other one is refused with one line while it works, or (on a machine
    # so loaded that it reached the lease only after the first had finished) finds both files applied
    # and ingests nothing: never two writers at once, never a file applied twice.
    ingested = [out_ for code, out_, _ in outcomes if code == 0 and out_.startswith("ingested 2 file(s)")]
    assert len(ingested) == 1, outcomes
    for code, stdout, err in outcomes:
        if code == 2:
            lines = [line for line in err.strip().splitlines() if line.startswith("biomine:")]
            assert len(lines) == 1 and "is in use by another run" in lines[0], err[-2000:]
        else:
            assert code == 0 and stdout.startswith(("ingested 2 file(s)", "ingested 0 file(s) (2 already done)")), (
                outcomes
            )
    assert sum(code == 2 for code, _, _ in outcomes) >= 1, "no ingest met another one holding the lease"
    os.environ.update(s3_server)
    uri, options = delta_location(location(out) / "documents")
    rows = live_rows(uri, options)
    assert [p for p, _, _ in rows] == list(range(1, 21))


# --- damage ----------------------------------------------------------------------------------------
@pytest.fixture
def ingested(tmp_path):
    src = tmp_path / "src"
    base1, base2, update = corpus(src)
    out = tmp_path / "out"
    ingest_files([base1, base2], out, shard_rows=4)
    return out, update


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1 and err[0].startswith("biomine: error: "), err
    return err[0]


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_a_damaged_data_file_is_found_before_an_update_trusts_it(ingested, capsys, damage):
    out, update = ingested
    docs = Documents(out / "documents")
    # the data file holding PMID 3, which the update revises
    target = next(f for f in docs.files().values() if f.min_pmid <= 3 <= f.max_pmid)
    path = out / "documents" / target.path
    data = path.read_bytes()
    version = docs.table.version
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # the same size, other bytes: only the checksum in its name tells
        path.write_bytes(data[:-40] + bytes(40))
    assert main(["ingest", str(update), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert target.path in line and "restore" in line
    assert Documents(out / "documents").table.version == version  # nothing committed, nothing deleted
    assert path.exists() and len(list((out / "documents").glob("*.parquet"))) >= len(docs.files())


def test_a_damaged_log_is_one_line_for_every_reader_and_writer(ingested, capsys):
    out, update = ingested
    newest = sorted((out / "documents" / "_delta_log").glob("*.json"))[-1]
    newest.write_text(newest.read_text()[:50])  # a torn log entry
    for argv in (
        ["query", str(out), "SELECT count(*) FROM documents"],
        ["ingest", str(update), "--out", str(out)],
        ["compact", str(out)],
        ["export", str(out), "--format", "pubtator", "--out", str(out.parent / "x.txt")],
    ):
        assert main(argv) == 2, argv
        line = one_error_line(capsys)
        assert "documents" in line, (argv, line)
    assert not (out.parent / "x.txt").exists()


def test_a_missing_data_file_is_one_line_for_query(ingested, capsys):
    out, _ = ingested
    victim = sorted((out / "documents").glob("*.parquet"))[0]
    victim.unlink()
    assert main(["query", str(out), "SELECT count(*) FROM documents"]) == 2
    line = one_error_line(capsys)
    assert victim.name in line or "No such file" in line or "not found" in line.lower(), line
