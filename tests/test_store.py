"""The storage layer on its own: leases (refuse, expire, dead holder, lost, the reader's cap on a
claimed expiry, an unreadable lease, two writers racing), the model cache (one fetch per node,
checksum verified), and storage errors that are one error naming the location, never taken for a
missing or free thing.

A non-local file system is needed for the model cache; fsspec's in-memory one stands in for an
object store here (tests/test_cluster.py covers a real S3 server)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import DEMO_XML

from pipeline.errors import StorageError, StoreError
from pipeline.store.lease import CAP_FACTOR, LEASE, Lease
from pipeline.store.models import materialize, model_checksum
from pipeline.store.storage import location


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def other_hosts_lease(path, **changes) -> dict:
    """A lease as a run on another host writes it (so no pid check can free it)."""
    body = {
        "run_id": "run-elsewhere",
        "what": "biomine run elsewhere.toml",
        "host": "elsewhere",
        "pid": 1,
        "pid_namespace": "other",
        "ttl": 120.0,
        "taken_at": _now().isoformat(timespec="seconds"),
        "expires_at": (_now() + dt.timedelta(seconds=120)).isoformat(timespec="seconds"),
        **changes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return body


def test_a_held_lease_refuses_a_second_run_and_is_released(tmp_path):
    out = location(tmp_path / "out")
    with Lease(out, what="first run") as first:
        with pytest.raises(StoreError, match=r"in use by another run: first run .*pid \d+"):
            Lease(out, what="second run").acquire()
    # Released: marked so (a compare-and-swap like every change of it), not deleted.
    body = json.loads((tmp_path / "out" / LEASE).read_text())
    assert body["run_id"] == first.run_id and body["released_at"] and body["expires_at"] == body["released_at"]
    with Lease(out, what="second run") as second:  # free again
        assert json.loads((tmp_path / "out" / LEASE).read_text())["run_id"] == second.run_id


def test_an_expired_or_dead_holders_lease_is_taken_over(tmp_path):
    out = location(tmp_path / "out")
    first = Lease(out, what="killed run").acquire()
    first._stop.set()  # killed: no more renewals, nothing released
    body = json.loads((tmp_path / "out" / LEASE).read_text())
    # Expired (on another host, so only the clock can free it).
    body.update(host="elsewhere", expires_at=(_now() - dt.timedelta(seconds=1)).isoformat())
    (tmp_path / "out" / LEASE).write_text(json.dumps(body))
    with Lease(out, what="next run") as taken:
        assert json.loads((tmp_path / "out" / LEASE).read_text())["run_id"] == taken.run_id
    # Not expired, but its pid is gone on this host (same pid namespace): free at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Lease(out, what="killed run").acquire()._stop.set()
    body = json.loads((tmp_path / "out" / LEASE).read_text())
    body["pid"] = int(dead.stdout)
    (tmp_path / "out" / LEASE).write_text(json.dumps(body))
    with Lease(out, what="next run"):
        pass
    # Alive, or in another pid namespace (a container on the same host name): refused.
    holder = Lease(out, what="live run").acquire()
    body = json.loads((tmp_path / "out" / LEASE).read_text())
    (tmp_path / "out" / LEASE).write_text(json.dumps({**body, "pid_namespace": "other", "pid": int(dead.stdout)}))
    with pytest.raises(StoreError, match="in use by another run: live run"):
        Lease(out, what="next run").acquire()
    holder.release()


def test_a_run_that_lost_its_lease_stops_committing(tmp_path):
    out = location(tmp_path / "out")
    lease = Lease(out, what="stalled run", ttl=0.3).acquire()
    lease.check()  # ours
    other = json.loads((tmp_path / "out" / LEASE).read_text())
    other.update(run_id="another-run", what="the run that took over")
    (tmp_path / "out" / LEASE).write_text(json.dumps(other))
    deadline = time.monotonic() + 5
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(StoreError, match=r"lost its hold .*\(the run that took over"):
        lease.check()
    assert json.loads((tmp_path / "out" / LEASE).read_text())["run_id"] == "another-run"  # not overwritten
    lease.release()
    assert json.loads((tmp_path / "out" / LEASE).read_text())["run_id"] == "another-run"  # nor marked released
    assert "released_at" not in json.loads((tmp_path / "out" / LEASE).read_text())


def test_a_far_future_expiry_is_capped_by_the_reader(tmp_path):
    """Another host claims its lease until the year 2999 (a bad clock, or a bug): it blocks while
    its file is fresh, and no longer than ttl x CAP_FACTOR after the file was last written."""
    out = location(tmp_path / "out")
    path = tmp_path / "out" / LEASE
    other_hosts_lease(path, expires_at="2999-01-01T00:00:00+00:00")
    # Fresh: refused, and the message gives the capped expiry (not 2999).
    with pytest.raises(StoreError, match="in use by another run: biomine run elsewhere.toml") as refused:
        Lease(out, what="next run").acquire()
    assert "2999" not in str(refused.value) and len(str(refused.value).splitlines()) == 1
    until = str(refused.value).split("expire at ")[1].split(" ")[0]
    written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    cap = dt.timedelta(seconds=120 * CAP_FACTOR)  # the default ttl
    assert abs(dt.datetime.fromisoformat(until) - (written + cap)) <= dt.timedelta(seconds=2)

    # A reader with a small ttl: still fresh -> refused.
    ttl = 0.5
    with pytest.raises(StoreError, match="in use by another run"):
        Lease(out, what="next run", ttl=ttl).acquire()
    # Last written longer ago than ttl x CAP_FACTOR (its holder stopped renewing): expired, whatever it claims.
    old = time.time() - ttl * CAP_FACTOR - 1
    os.utime(path, (old, old))
    assert json.loads(path.read_text())["expires_at"].startswith("2999")
    with Lease(out, what="next run", ttl=ttl) as taken:
        assert json.loads(path.read_text())["run_id"] == taken.run_id
    # Written again just now (a renewal): it blocks again.
    other_hosts_lease(path, expires_at="2999-01-01T00:00:00+00:00")
    with pytest.raises(StoreError, match="in use by another run"):
        Lease(out, what="next run", ttl=ttl).acquire()
    # Older than the reader's ttl but not ttl x CAP_FACTOR: still refused (renewals may be late).
    reader_ttl = 1.0
    between = time.time() - reader_ttl * (1 + CAP_FACTOR) / 2
    os.utime(path, (between, between))
    with pytest.raises(StoreError, match="in use by another run"):
        Lease(out, what="next run", ttl=reader_ttl).acquire()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"run_id": "x"}',  # no expiry
        b'{"run_id": "x", "expires_at": "soon"}',  # not a time
    ],
    ids=["not-json", "empty", "binary", "list", "no-expiry", "bad-time"],
)
def test_an_unreadable_lease_is_refused_never_taken_as_free(tmp_path, capsys, content):
    from pipeline.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE).write_bytes(content)
    with pytest.raises(StoreError, match=r"is not a readable lease .*delete .*_lease.json"):
        Lease(location(out), what="next run").acquire()
    assert (out / LEASE).read_bytes() == content  # not overwritten
    # The same through a command that writes the output: one error line, nothing written.
    capsys.readouterr()
    assert main(["ingest", str(DEMO_XML), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and len(err.strip().splitlines()) == 1, err
    assert "is not a readable lease" in err and "Traceback" not in err
    assert (out / LEASE).read_bytes() == content
    assert not (out / "documents").exists() and not (out / "_job.json").exists()


def test_a_lease_that_cannot_be_read_is_refused(tmp_path, monkeypatch):
    """A store that fails to answer (permissions, network) is not a free lease."""
    from pipeline.store import lease as lease_module

    out = location(tmp_path / "out")
    other_hosts_lease(tmp_path / "out" / LEASE)

    def unreadable(self):
        raise PermissionError(13, "Permission denied", self.path)

    monkeypatch.setattr(lease_module._LocalObject, "read", unreadable)
    with pytest.raises(StoreError, match=r"cannot read .*_lease.json .*Permission denied.*must be readable"):
        Lease(out, what="next run").acquire()
    monkeypatch.undo()
    assert json.loads((tmp_path / "out" / LEASE).read_text())["run_id"] == "run-elsewhere"


@pytest.mark.parametrize("start", ["fresh", "expired", "released"])
def test_two_writers_racing_for_a_lease_never_both_hold_it(tmp_path, monkeypatch, start):
    """Two runs acquire the same output at the same moment, from threads, many times: exactly one
    holds it each time (link(2) to create it; a re-checked replace under flock to take over an
    expired or released one)."""
    from pipeline.store import lease as lease_module

    conflicts = []
    for op in ("create", "replace"):
        original = getattr(lease_module._LocalObject, op)

        def counted(self, *args, _original=original, _op=op):
            try:
                return _original(self, *args)
            except lease_module.LeaseConflict:
                conflicts.append(_op)
                raise

        monkeypatch.setattr(lease_module._LocalObject, op, counted)
    trials = 40
    for trial in range(trials):
        folder = tmp_path / f"out-{trial}"
        if start == "expired":
            other_hosts_lease(folder / LEASE, expires_at=(_now() - dt.timedelta(seconds=5)).isoformat())
        elif start == "released":
            with Lease(location(folder), what="an earlier run"):
                pass
        leases = [Lease(location(folder), what=f"racer {i}") for i in range(2)]
        barrier = threading.Barrier(len(leases))
        won: list[Lease] = []
        lost: list[str] = []

        def race(lease: Lease, barrier=barrier, won=won, lost=lost) -> None:
            barrier.wait()
            try:
                lease.acquire()
                won.append(lease)
            except StoreError as exc:
                lost.append(str(exc))

        threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(won) == 1 and len(lost) == 1, (trial, [w.what for w in won], lost)
        assert "in use by another run" in lost[0]
        assert json.loads((folder / LEASE).read_text())["run_id"] == won[0].run_id
        won[0].release()
    # Both read the lease before either wrote it, and the conditional write decided (else the
    # loser only saw the winner's lease, and the test would prove nothing about the race).
    assert conflicts, "the two writers never raced"


def test_remote_models_are_fetched_once_per_node_and_verified(tmp_path, monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "cache"))
    remote = location("memory://biomine-test/models/tiny-ner")
    for name, data in {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 1000, "bpecodes": b"a b 1\n"}.items():
        (remote / name).write_bytes(data)
    sha = model_checksum(remote)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(materialize(remote, sha))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0].name == "tiny-ner" and results[0].parent.name == sha
    assert sorted(p.name for p in results[0].iterdir()) == [
        ".biomine-verified",
        "bpecodes",
        "config.json",
        "model.safetensors",
    ]
    assert not list((tmp_path / "cache").glob(".fetch-*"))  # no half copies left
    # Every defining file counts (bpecodes has no .json/.safetensors suffix and still changes the model).
    (remote / "bpecodes").write_bytes(b"a c 1\n")
    assert model_checksum(remote) != sha
    with pytest.raises(StoreError, match="changed on storage during the run"):
        materialize(remote, "0" * 64)
    assert materialize(tmp_path) == tmp_path  # a local model is used where it is


def _small_documents(root):
    from pipeline.store.documents import Documents, write_shard
    from pipeline.store.output import JobOutput

    out = JobOutput(root)
    docs = Documents(out.documents)
    rows = [dict(pmid=p, version=1, record_type="article", title="t", abstract="a", has_abstract=True) for p in (1, 2)]
    with docs.transaction() as txn:
        txn.add(write_shard(docs.loc, "part-000000", rows))
        txn.commit()
    return out, docs


def test_a_storage_error_is_one_error_naming_the_location_not_garbage(tmp_path, capsys, monkeypatch):
    """The old store's per-file commit records are gone: the Delta log is the one record. A damaged
    log is one error naming the table (never read as an empty or older table), and a store that
    fails while a file is verified is an error naming the file, never taken for a missing or damaged
    file (which would make a run recompute and remove it)."""
    from pipeline.cli import main
    from pipeline.run.stages import read_verified
    from pipeline.store.storage import Location
    from pipeline.store.tables import Table, TableError

    out, docs = _small_documents(tmp_path / "out")
    info = next(iter(docs.files().values()))

    class Unreachable:  # a store that answers every call with a network error
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise OSError("connection reset by peer")

            return fail

    monkeypatch.setattr("pipeline.store.storage.RETRY_ATTEMPTS", 1)  # one retry, not 18-36 s of them
    table = Table(out.documents)
    # The log was read; then the store went away (the table's files read through this location).
    table.loc = Location(Unreachable(), table.loc.path, "s3://bucket/out/documents")
    with pytest.raises(StorageError, match=rf"s3://bucket/out/documents/{info.path}: connection reset"):
        table.verify([info])
    with pytest.raises(StorageError, match=rf"s3://bucket/out/documents/{info.path}: connection reset"):
        read_verified(table.loc / info.path, info.size, ["pmid"])
    assert Table(out.documents).verify([info]) == {}  # the real file is intact

    # A damaged log entry: one line naming the table, from the API and from a command.
    log_dir = tmp_path / "out" / "documents" / "_delta_log"
    newest = sorted(log_dir.glob("*.json"))[-1]
    newest.write_text("{not json\n")
    with pytest.raises(TableError, match=r"out/documents: cannot read its Delta log") as damaged:
        Table(out.documents)
    assert len(str(damaged.value).splitlines()) == 1
    capsys.readouterr()
    assert main(["query", str(tmp_path / "out"), "SELECT count(*) FROM documents"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and "cannot read its Delta log" in err
    assert len(err.strip().splitlines()) == 1


def test_a_file_written_again_under_its_own_name_stays_live_once(tmp_path):
    """A missing or damaged file computed again gets its own name back (the name is its checksum):
    the commit that replaces it keeps it live once (delta-rs refuses to add and remove one path in
    one commit)."""
    from deltalake import DeltaTable

    from pipeline.store.documents import write_shard

    out, docs = _small_documents(tmp_path / "out")
    info = next(iter(docs.files().values()))
    data = (tmp_path / "out" / "documents" / info.path).read_bytes()
    (tmp_path / "out" / "documents" / info.path).write_bytes(data[:10])  # damaged
    assert docs.table.verify([info])
    rows = [dict(pmid=p, version=1, record_type="article", title="t", abstract="a", has_abstract=True) for p in (1, 2)]
    again = write_shard(docs.loc, "part-000000", rows)
    assert again.path == info.path  # the same rows, the same name and bytes
    version = docs.table.commit([again], [info], metadata={"note": "recomputed"})
    assert docs.table.verify(docs.files().values()) == {}
    assert list(docs.files()) == [info.path]
    assert sorted(DeltaTable(str(tmp_path / "out" / "documents")).to_pandas()["pmid"]) == [1, 2]
    assert DeltaTable(str(tmp_path / "out" / "documents")).version() == version


@pytest.mark.parametrize(
    "message, transient",
    [
        # what Arrow's S3 client raised while SeaweedFS was starting again (tests/test_cluster.py's outage)
        (
            "When reading information for key 'out/documents/a.parquet' in bucket 'biomine': AWS Error "
            "INTERNAL_FAILURE during GetObject operation: ",
            True,
        ),
        ("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.", True),
        ("AWS Error SERVICE_UNAVAILABLE during HeadObject operation: ", True),
        ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7, Couldn't connect to server", True),
        ("connection reset by peer", True),
        ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", False),
        ("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not exist", False),
    ],
)
def test_a_failure_that_may_pass_is_tried_again_and_one_that_will_not_is_not(message, transient, monkeypatch):
    from pipeline.store import storage

    monkeypatch.setattr(storage, "RETRY_BASE", 0.001)
    assert storage.is_transient(OSError(message)) is transient
    calls = []

    def call():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(message)
        return "read"

    if transient:
        assert storage.retrying(call, "s3://biomine/out/documents/a.parquet", attempts=2) == "read"
        assert len(calls) == 2
    else:
        with pytest.raises(StorageError, match=r"^s3://biomine/out/documents/a\.parquet: AWS Error"):
            storage.retrying(call, "s3://biomine/out/documents/a.parquet", attempts=2)
        assert len(calls) == 1


def test_an_error_of_the_store_is_one_line_without_the_clients_debug_dump():
    from pipeline.store.storage import error_line

    # obstore's message for a refused PUT (as logged when the S3 server was down), and delta-rs's chain.
    obstore = (
        "Generic S3 error: Error performing PUT http://127.0.0.1:48627/b/out/_lease.json in 2.1s, after 10 retries"
        ' - HTTP error: error sending request\n\nDebug source:\nGeneric {\n    store: "S3",\n    source: RetryError(\n'
        "        RetryErrorImpl {\n            method: PUT,\n        },\n    ),\n}"
    )
    line = error_line(OSError(obstore))
    assert line.startswith("Generic S3 error: Error performing PUT") and "\n" not in line and "Debug" not in line
    chain = "Failed to read delta log object\n  ↳ Generic S3 error: ...\n    ↳ Connection refused (os error 111)"
    assert error_line(OSError(chain)) == "Failed to read delta log object: Connection refused (os error 111)"
    assert error_line(OSError("")) == "OSError"
