"""The storage layer on its own: leases (refuse, expire, dead holder, lost), the model cache (one
fetch per node, checksum verified), commit records that a storage error cannot turn into garbage.

A non-local file system is needed for the model cache; fsspec's in-memory one stands in for an
object store here (tests/test_cluster.py covers a real S3 server)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time

import pytest

from pipeline.errors import StorageError, StoreError
from pipeline.store.datasets import TaskDataset
from pipeline.store.lease import Lease
from pipeline.store.models import materialize, model_checksum
from pipeline.store.storage import location


def test_a_held_lease_refuses_a_second_run_and_is_released(tmp_path):
    out = location(tmp_path / "out")
    with Lease(out, what="first run"):
        with pytest.raises(StoreError, match=r"in use by another run: first run .*pid \d+"):
            Lease(out, what="second run").acquire()
    assert not (out / "_lease.json").exists()
    with Lease(out, what="second run"):  # free again
        pass


def test_an_expired_or_dead_holders_lease_is_taken_over(tmp_path):
    out = location(tmp_path / "out")
    first = Lease(out, what="killed run").acquire()
    first._stop.set()  # killed: no more renewals, nothing released
    body = json.loads((tmp_path / "out" / "_lease.json").read_text())
    # Expired (on another host, so only the clock can free it).
    body.update(host="elsewhere", expires_at=(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat())
    (tmp_path / "out" / "_lease.json").write_text(json.dumps(body))
    with Lease(out, what="next run") as taken:
        assert json.loads((tmp_path / "out" / "_lease.json").read_text())["run_id"] == taken.run_id
    # Not expired, but its pid is gone on this host (same pid namespace): free at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Lease(out, what="killed run").acquire()._stop.set()
    body = json.loads((tmp_path / "out" / "_lease.json").read_text())
    body["pid"] = int(dead.stdout)
    (tmp_path / "out" / "_lease.json").write_text(json.dumps(body))
    with Lease(out, what="next run"):
        pass
    # Alive, or in another pid namespace (a container on the same host name): refused.
    holder = Lease(out, what="live run").acquire()
    body = json.loads((tmp_path / "out" / "_lease.json").read_text())
    (tmp_path / "out" / "_lease.json").write_text(
        json.dumps({**body, "pid_namespace": "other", "pid": int(dead.stdout)})
    )
    with pytest.raises(StoreError, match="in use by another run: live run"):
        Lease(out, what="next run").acquire()
    holder.release()


def test_a_run_that_lost_its_lease_stops_committing(tmp_path):
    out = location(tmp_path / "out")
    lease = Lease(out, what="stalled run", ttl=0.3).acquire()
    lease.check()  # ours
    other = json.loads((tmp_path / "out" / "_lease.json").read_text())
    other.update(run_id="another-run", what="the run that took over")
    (tmp_path / "out" / "_lease.json").write_text(json.dumps(other))
    deadline = time.monotonic() + 5
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(StoreError, match=r"lost its hold .*\(the run that took over"):
        lease.check()
    assert json.loads((tmp_path / "out" / "_lease.json").read_text())["run_id"] == "another-run"  # not overwritten
    lease.release()


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


def test_a_storage_error_is_one_error_naming_the_location_not_garbage(tmp_path):
    from pipeline.store.storage import Location

    folder = location(tmp_path / "entities")
    (folder / "_commits" / "part-000000.json").write_json({"format": "x"})  # damaged: redone, not fatal
    assert TaskDataset(folder).record("part-000000") is None

    class Unreachable:  # a store that answers every read with a network error
        def open_input_stream(self, *args, **kwargs):
            raise OSError("connection reset by peer")

    dataset = TaskDataset(Location(Unreachable(), folder.path, "s3://bucket/entities"))
    with pytest.raises(StorageError, match=r"s3://bucket/entities/_commits/part-000000.json: connection reset"):
        dataset.record("part-000000")  # propagates: garbage collection must not act on a record it could not read
