"""``biomine sync``: NCBI's baseline/update files mirrored from a loopback fake of NCBI's server
(tests/fake_ncbi.py: the real directory-listing layout, ``.md5`` files in NCBI's layout, small real
gzip'd PubMed XML): only new files downloaded, each verified, resumed with ``Range`` after a cut
connection or a kill -9, a wrong md5 re-downloaded once and then refused, the state recorded."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from conftest import write_job
from fake_ncbi import FakeNcbi, pubmed_file

from pipeline.cli import main
from pipeline.errors import SyncError
from pipeline.pubmed import sync as sync_module
from pipeline.pubmed.sync import STATE, parse_listing, parse_md5, read_state, sync, verified_files
from pipeline.store import releases

REPO = Path(__file__).resolve().parents[1]
B1, B2, U3, U4 = "pubmed26n0001.xml.gz", "pubmed26n0002.xml.gz", "pubmed26n0003.xml.gz", "pubmed26n0004.xml.gz"


@pytest.fixture
def ncbi(monkeypatch):
    # the backoff between retries is not waited for here (only releases' own clock, not time.sleep
    # for everyone)
    monkeypatch.setattr(releases, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.delenv("BIOMINE_PUBMED_MIRROR", raising=False)
    with FakeNcbi() as server:
        server.add("baseline", B1, pubmed_file(list(range(1, 40))))
        server.add("baseline", B2, pubmed_file(list(range(40, 80))))
        server.add("updatefiles", U3, pubmed_file([3, 81], deletions=[5], title="Revised: "))
        yield server


def run_sync(server: FakeNcbi, dest: Path | str, *extra: str) -> int:
    return main(["sync", str(dest), "--mirror", server.url, "--allow-http", "--no-progress", *extra])


def held(dest: Path) -> dict[str, bytes]:
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(dest.glob("*/pubmed*.xml.gz"))}


def assert_mirrors(server: FakeNcbi, dest: Path) -> None:
    """DEST holds exactly the server's files, byte for byte, each recorded with its md5, size, sha256."""
    expected = {f"{f}/{n}": d for f, files in server.files.items() for n, d in files.items() if n.endswith(".gz")}
    assert held(dest) == expected
    state = read_state(str(dest))["files"]
    assert set(state) == set(expected)
    for key, data in expected.items():
        rec = state[key]
        assert rec["md5"] == hashlib.md5(data).hexdigest() and rec["size"] == len(data)
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["verified"]


def test_sync_resumes_a_cut_download_verifies_every_file_and_a_rerun_fetches_nothing(ncbi, tmp_path, capsys):
    dest = tmp_path / "pubmed"
    ncbi.cut[B2] = 1  # the first download of this file breaks in the middle of its body
    assert run_sync(ncbi, dest) == 0
    assert "downloaded 3 file(s)" in capsys.readouterr().out
    assert_mirrors(ncbi, dest)
    half = len(ncbi.files["baseline"][B2]) // 2
    assert [r for r in ncbi.gets() if r[0].endswith(B2)] == [
        (f"/pubmed/baseline/{B2}", None),
        (f"/pubmed/baseline/{B2}", f"bytes={half}-"),
    ]
    assert sorted(p for p, _ in ncbi.gets() if not p.endswith(B2)) == [
        f"/pubmed/baseline/{B1}",
        f"/pubmed/updatefiles/{U3}",
    ]
    assert len(ncbi.gets(".md5")) == 3
    assert not list((dest / ".sync-partial").rglob("*.gz*"))  # nothing staged is left
    # the state says what the mirror listed, for `status` and people
    listed = read_state(str(dest))["listed"]
    assert listed["baseline"]["newest"] == B2 and listed["updatefiles"]["newest"] == U3

    # a re-run: the two listings, and not one file or .md5
    ncbi.requests.clear()
    assert run_sync(ncbi, dest) == 0
    assert (
        capsys.readouterr().out
        == f"nothing new to download; 3 already held; 3 listed on the mirror; {dest} is current\n"
    )
    assert ncbi.requests == [("/pubmed/baseline/", None), ("/pubmed/updatefiles/", None)]

    # the next day NCBI publishes an update file: only it is downloaded
    ncbi.requests.clear()
    ncbi.add("updatefiles", U4, pubmed_file([82, 83]))
    assert run_sync(ncbi, dest) == 0
    assert ncbi.gets() == [(f"/pubmed/updatefiles/{U4}", None)] and ncbi.gets(".md5") == [
        (f"/pubmed/updatefiles/{U4}.md5", None)
    ]
    assert_mirrors(ncbi, dest)
    # in the order they apply: the baseline, then the updates, by sequence number
    assert [loc.name for loc in verified_files(str(dest))] == [B1, B2, U3, U4]


def test_a_wrong_md5_once_is_downloaded_again_and_then_verified(ncbi, tmp_path, caplog):
    ncbi.corrupt[B1] = 1
    summary = sync(tmp_path / "pubmed", ncbi.url, allow_http=True, progress=False)
    assert sorted(summary.downloaded) == [f"baseline/{B1}", f"baseline/{B2}", f"updatefiles/{U3}"]
    assert [r for r in ncbi.gets() if r[0].endswith(B1)] == [(f"/pubmed/baseline/{B1}", None)] * 2  # from byte 0
    assert any("does not match its .md5" in r.getMessage() for r in caplog.records)
    assert_mirrors(ncbi, tmp_path / "pubmed")


def test_a_wrong_md5_twice_is_one_error_line_and_nothing_of_it_is_kept(ncbi, tmp_path, capsys):
    dest = tmp_path / "pubmed"
    ncbi.corrupt[U3] = 1_000
    assert run_sync(ncbi, dest) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"biomine: error: {ncbi.url}updatefiles/{U3} does not match its .md5 after two downloads")
    assert err[0].endswith("sync again later, or use another mirror (--mirror)")
    assert len([r for r in ncbi.gets() if r[0].endswith(U3)]) == 2
    state = read_state(str(dest))["files"]
    assert set(state) == {f"baseline/{B1}", f"baseline/{B2}"}  # the others are verified and kept
    assert not (dest / "updatefiles" / U3).exists()
    assert not list((dest / ".sync-partial").rglob(f"{U3}*"))
    # once the mirror serves it right, the next sync fetches only it
    ncbi.corrupt.clear()
    ncbi.requests.clear()
    assert run_sync(ncbi, dest) == 0
    assert ncbi.gets() == [(f"/pubmed/updatefiles/{U3}", None)]
    assert_mirrors(ncbi, dest)


def test_kill_9_in_the_middle_of_a_download_then_a_rerun_resumes_and_completes(ncbi, tmp_path):
    dest = tmp_path / "pubmed"
    big = pubmed_file(list(range(100, 400)))  # ~9 KB
    ncbi.add("baseline", "pubmed26n0005.xml.gz", big)
    ncbi.pause = ("pubmed26n0005.xml.gz", 4096)  # the server stops sending after 4 KiB, until resumed
    env = {**os.environ, "PYTHONPATH": str(REPO), "BIOMINE_PUBMED_MIRROR": ncbi.url}
    cmd = [sys.executable, "-m", "pipeline.cli", "sync", str(dest), "--allow-http", "--concurrency", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = dest / ".sync-partial" / "baseline" / "pubmed26n0005.xml.gz.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size == 4096):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the sync never started downloading"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    have = part.stat().st_size
    assert have == 4096 < len(big)
    ncbi.resume.set()  # the paused handler ends (its client is gone)
    ncbi.requests.clear()
    sync(dest, ncbi.url, allow_http=True, progress=False)
    assert_mirrors(ncbi, dest)
    resumed = [r for r in ncbi.gets() if r[0].endswith("pubmed26n0005.xml.gz")]
    assert resumed == [("/pubmed/baseline/pubmed26n0005.xml.gz", f"bytes={have}-")]


def test_a_file_held_but_not_recorded_is_checked_and_recorded_without_a_download(ncbi, tmp_path):
    """A sync killed after it published a file and before it recorded it: the file is not fetched again."""
    dest = tmp_path / "pubmed"
    sync(dest, ncbi.url, allow_http=True, progress=False)
    state = json.loads((dest / STATE).read_text())
    del state["files"][f"baseline/{B2}"]
    (dest / STATE).write_text(json.dumps(state))
    ncbi.requests.clear()
    summary = sync(dest, ncbi.url, allow_http=True, progress=False)
    assert summary.adopted == [f"baseline/{B2}"] and not summary.downloaded
    assert ncbi.gets() == [] and ncbi.gets(".md5") == [(f"/pubmed/baseline/{B2}.md5", None)]
    assert_mirrors(ncbi, dest)

    # killed after the download was whole, before it was published: checked in staging, then published
    staged = dest / ".sync-partial" / "baseline" / B1
    (dest / "baseline" / B1).rename(staged)
    state = json.loads((dest / STATE).read_text())
    del state["files"][f"baseline/{B1}"]
    (dest / STATE).write_text(json.dumps(state))
    ncbi.requests.clear()
    summary = sync(dest, ncbi.url, allow_http=True, progress=False)
    assert summary.downloaded == [f"baseline/{B1}"] and ncbi.gets() == [] and not staged.exists()
    assert_mirrors(ncbi, dest)


def test_a_file_without_its_md5_yet_waits_for_the_next_sync(ncbi, tmp_path, capsys):
    dest = tmp_path / "pubmed"
    ncbi.add("updatefiles", U4, pubmed_file([90]), md5=False)  # NCBI is still uploading it
    assert run_sync(ncbi, dest) == 0
    out = capsys.readouterr().out
    assert "1 file(s) have no .md5 on the mirror yet" in out
    assert not (dest / "updatefiles" / U4).exists() and not any(p.endswith(U4) for p, _ in ncbi.gets())


def test_plain_http_is_refused_unless_allowed_and_nothing_else_is_contacted(ncbi, tmp_path, capsys, monkeypatch):
    assert main(["sync", str(tmp_path / "p"), "--mirror", ncbi.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is plain http" in err[0] and err[0].endswith("(--mirror, --allow-http)")
    assert ncbi.requests == []
    # the mirror may come from the environment; no other host is ever contacted
    monkeypatch.setenv("BIOMINE_PUBMED_MIRROR", ncbi.url)
    assert main(["sync", str(tmp_path / "p"), "--allow-http", "--no-progress", "--only", "updatefiles"]) == 0
    assert {p for p, _ in ncbi.requests} == {
        "/pubmed/updatefiles/",
        f"/pubmed/updatefiles/{U3}",
        f"/pubmed/updatefiles/{U3}.md5",
    }


def test_md5_files_and_listings_in_ncbis_layout_and_md5sums():
    digest = "0123456789abcdef0123456789abcdef"
    assert parse_md5(f"MD5(pubmed26n0001.xml.gz)= {digest}\n", "pubmed26n0001.xml.gz") == digest
    assert parse_md5(f"{digest.upper()}  pubmed26n0001.xml.gz\n", "pubmed26n0001.xml.gz") == digest
    assert parse_md5(f"{digest} *baseline/pubmed26n0001.xml.gz", "pubmed26n0001.xml.gz") == digest
    with pytest.raises(SyncError, match=r"pubmed26n0001.xml.gz.md5 holds no MD5 digest"):
        parse_md5("<html>Not Found</html>", "pubmed26n0001.xml.gz")
    html = '<a href="/pubmed/">Parent</a> <a href="https://elsewhere.example/x.xml.gz">x</a> <A HREF="pubmed26n0001.xml.gz">p</A>'
    assert parse_listing(html) == {"pubmed26n0001.xml.gz"}


def test_a_mirror_without_files_is_refused_and_an_empty_updatefiles_folder_is_normal(tmp_path):
    with FakeNcbi() as server:  # nothing published: not a copy of NCBI's folder
        with pytest.raises(SyncError, match=r"lists no pubmedYYnNNNN.xml.gz files in baseline/ or updatefiles/"):
            sync_module.sync(tmp_path / "p", server.url, allow_http=True, progress=False)
        # the day NCBI publishes a new baseline, updatefiles/ is empty
        server.add("baseline", B1, pubmed_file([1]))
        summary = sync_module.sync(tmp_path / "p", server.url, allow_http=True, progress=False)
        assert summary.downloaded == [f"baseline/{B1}"] and summary.listed == 1


def test_in_a_job_each_download_is_a_ray_task_that_gives_the_files_of_the_threaded_sync(ncbi, tmp_path, ray_local):
    """A job's pool (RayPool): every file is fetched, verified and published by a Ray worker process,
    the driver alone records them; the files and state are those of `biomine sync` on its own."""
    from pipeline.pubmed.sync import TASK_CPUS
    from pipeline.run.cluster import RayPool

    threads, tasks = tmp_path / "threads", tmp_path / "tasks"
    by_threads = sync(threads, ncbi.url, allow_http=True, progress=False)
    assert set(by_threads.ran_on.values()) == {f"{socket.gethostname()}:{os.getpid()}"}  # this process
    ncbi.requests.clear()
    summary = sync(tasks, ncbi.url, allow_http=True, progress=False, pool=RayPool(3, num_cpus=TASK_CPUS))
    assert sorted(summary.downloaded) == sorted(by_threads.downloaded) and summary.bytes == by_threads.bytes
    pids = {int(where.rsplit(":", 1)[1]) for where in summary.ran_on.values()}
    assert set(summary.ran_on) == set(summary.downloaded) and os.getpid() not in pids  # Ray workers
    assert_mirrors(ncbi, tasks)
    assert held(tasks) == held(threads)
    strip = lambda d: {
        k: {f: v for f, v in r.items() if f != "verified"} for k, r in read_state(str(d))["files"].items()
    }  # noqa: E731
    assert strip(tasks) == strip(threads)
    assert sorted(p for p, _ in ncbi.gets()) == sorted(f"/pubmed/{k}" for k in summary.downloaded)
    # a re-run: the listings only, not one file or .md5
    ncbi.requests.clear()
    again = sync(tasks, ncbi.url, allow_http=True, progress=False, pool=RayPool(3, num_cpus=TASK_CPUS))
    assert not again.downloaded and again.held == 3
    assert ncbi.requests == [("/pubmed/baseline/", None), ("/pubmed/updatefiles/", None)]


def test_a_wrong_md5_twice_in_a_jobs_ray_task_is_the_same_one_error_line(ncbi, tmp_path, ray_local, capsys):
    """The task's SyncError reaches the driver as itself (not Ray's traceback): one line, the job's spelling."""
    dest = tmp_path / "raw"
    job = pubmed_job(tmp_path, ncbi, tmp_path / "out", dest)
    ncbi.corrupt[U3] = 1_000
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"biomine: error: {ncbi.url}updatefiles/{U3} does not match its .md5 after two downloads")
    assert err[0].endswith("sync again later, or use another mirror ([source] mirror)"), err[0]
    assert len([r for r in ncbi.gets() if r[0].endswith(U3)]) == 2
    assert set(read_state(str(dest))["files"]) == {f"baseline/{B1}", f"baseline/{B2}"}  # the others are kept
    assert not (dest / "updatefiles" / U3).exists() and not list((dest / ".sync-partial").rglob(f"{U3}*"))


def test_a_cancelled_download_task_has_ended_when_the_pool_is_drained(ncbi, tmp_path, ray_local):
    """Ctrl-C in a job: the driver cancels the download tasks, then waits (bounded) for them to end,
    so that none still writes its staging file once the sync releases DEST's lease."""
    import ray

    from pipeline.pubmed.sync import TASK_CPUS, fetch_file
    from pipeline.run.cluster import RayPool

    dest, name = tmp_path / "pubmed", "pubmed26n0005.xml.gz"
    ncbi.add("baseline", name, pubmed_file(list(range(100, 400))))
    ncbi.pause = (name, 4096)  # the download hangs after 4 KiB
    pool = RayPool(1, num_cpus=TASK_CPUS)
    future = pool.submit(fetch_file, str(dest), ncbi.url, "baseline", name, 5, 60.0)
    part = dest / ".sync-partial" / "baseline" / f"{name}.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size == 4096):
        assert time.monotonic() < deadline, "the task never started downloading"
        time.sleep(0.05)
    future.cancel()
    # the task notices the cancel once its blocked read returns: here when the server goes on in a second
    threading.Timer(1.0, ncbi.resume.set).start()
    start = time.monotonic()
    pool.drain([future], timeout=30)
    assert ray.wait([future.ref], timeout=0)[0] == [future.ref]  # the task is over
    assert time.monotonic() - start < 30


def test_a_folder_that_cannot_be_written_in_a_jobs_ray_task_is_one_error_line(ncbi, tmp_path, ray_local, capsys):
    """The OSError of a download in a Ray task (here: a file where its staging folder goes; on a
    cluster, a local DEST a node does not mount) is one line naming the file and the host, not Ray's
    traceback; the other files are kept."""
    dest = tmp_path / "raw"
    (dest / ".sync-partial").mkdir(parents=True)
    (dest / ".sync-partial" / "updatefiles").write_text("in the way")
    job = pubmed_job(tmp_path, ncbi, tmp_path / "out", dest)
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"biomine: error: updatefiles/{U3} could not be stored or read on {socket.gethostname()} ("
    ), err
    assert (
        "on a multi-node cluster keep DEST on object storage (s3://...) or on a filesystem every node mounts" in err[0]
    )
    assert set(read_state(str(dest))["files"]) == {f"baseline/{B1}", f"baseline/{B2}"}


# --- a job with [source] kind = "pubmed": sync, then ingest in sequence order ---------------------------


def pubmed_job(tmp_path: Path, server: FakeNcbi, out: Path, dest: Path, **source) -> Path:
    return write_job(
        tmp_path / f"{out.name}.toml",
        output=out,
        name="pubmed-daily",
        source={"kind": "pubmed", "dest": str(dest), "mirror": server.url, "allow_http": True, **source},
        tasks={},
    )


def documents_of(out: Path) -> tuple[list[dict], dict[str, int]]:
    """The live articles (without the time they were read) and the live documents data files (name
    without its content checksum, which covers the time of reading: rows), as deltalake's log
    replay lists them."""
    import pyarrow as pa
    from deltalake import DeltaTable

    from pipeline.store.documents import read_articles

    rows = read_articles(out).drop_columns(["fetched_at"]).sort_by("pmid").to_pylist()
    actions = pa.table(DeltaTable(str(out / "documents")).get_add_actions(flatten=True))
    names = [p.rsplit(".", 2)[0] for p in actions.column("path").to_pylist()]  # part-<input>-<sha>-NNNN
    return rows, dict(zip(names, actions.column("num_records").to_pylist()))


def test_job_check_refuses_what_a_pubmed_source_needs(tmp_path, capsys):
    path = write_job(
        tmp_path / "j.toml",
        output=tmp_path / "out",
        source={"kind": "pubmed", "mirror": "http://127.0.0.1:1/pubmed/", "paths": ["x"]},
        tasks={},
    )
    same = write_job(
        tmp_path / "same.toml", output=tmp_path / "out", source={"kind": "pubmed", "dest": "out"}, tasks={}
    )
    assert main(["run", str(same), "--check"]) == 2
    assert (
        "[source] dest = 'out' is the job's output: keep the raw files in a folder of their own"
        in capsys.readouterr().err
    )
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # every problem at once, in the one layout: the parse's and the plain-http mirror's
    assert len(err) == 1 and err[0].startswith(f"biomine: error: 3 problems in {path}"), err
    assert (
        '[source] dest is required for kind = "pubmed"' in err[0]
        and '[source] paths: only for kind = "files"' in err[0]
    )
    assert "mirror http://127.0.0.1:1/pubmed/ is plain http" in err[0], err
    assert err[0].endswith("([source] mirror, [source] allow_http)"), err
    path.write_text(path.read_text().replace('paths = ["x"]\n', f'dest = "{tmp_path / "raw"}"\nallow_http = true\n'))
    assert main(["run", str(path), "--check"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "raw").exists()  # --check contacts no mirror and writes nothing


@pytest.mark.slow
def test_a_pubmed_job_syncs_then_ingests_in_sequence_order_as_a_files_job_over_the_same_files(
    ncbi, tmp_path, ray_local, capsys
):
    from pipeline.run.jobspec import load_job
    from pipeline.run.runner import run_job

    dest, out = tmp_path / "raw", tmp_path / "out"
    job = pubmed_job(tmp_path, ncbi, out, dest)
    first = run_job(load_job(job), progress=False, num_cpus=2)
    docs = first["stages"]["documents"]
    assert docs["sync"]["downloaded"] == 3 and docs["files"] == 3 and docs["deleted"] == 1
    assert_mirrors(ncbi, dest)

    def files_job_equals(expected_inputs: list[str]) -> None:
        """A files job over the same raw files gives the same documents table (rows and data files)."""
        ref = tmp_path / f"ref{len(expected_inputs)}"
        paths = [str(dest / key) for key in expected_inputs]
        spec = write_job(tmp_path / f"{ref.name}.toml", output=ref, source={"kind": "files", "paths": paths}, tasks={})
        run_job(load_job(spec), progress=False, num_cpus=2)
        assert documents_of(out) == documents_of(ref)

    files_job_equals([f"baseline/{B1}", f"baseline/{B2}", f"updatefiles/{U3}"])

    # The next day: two update files, the first still without its .md5 (NCBI uploading it). The
    # second is downloaded but not ingested: ingesting it first would refuse the first one later.
    u5 = "pubmed26n0005.xml.gz"
    ncbi.add("updatefiles", U4, pubmed_file([84], title="Late: "), md5=False)
    ncbi.add("updatefiles", u5, pubmed_file([85]))
    ncbi.requests.clear()
    second = run_job(load_job(job), progress=False, num_cpus=2)["stages"]["documents"]
    assert second["sync"] == {
        "downloaded": 1,
        "bytes": len(ncbi.files["updatefiles"][u5]),
        "held": 3,
        "listed": 4,
        "waiting": 1,
    }
    assert second["files"] == 0 and second["files_skipped"] == 3
    assert 85 not in {r["pmid"] for r in documents_of(out)[0]}
    # `biomine status` of the job says how far the corpus is behind the mirror (0003 applied, 0005 listed)
    from pipeline.run.status import output_status

    status = output_status(str(out), dest=str(dest))
    assert status.mirror is not None and status.mirror["newest_listed"] == u5 and status.mirror["behind"] == 2
    assert status.mirror["verified"] == 4 and status.mirror["mirror"] == ncbi.url
    assert main(["status", str(job)]) == 0
    assert f"mirror    newest listed {u5}, checked " in capsys.readouterr().out
    ncbi.add("updatefiles", U4, ncbi.files["updatefiles"][U4])  # its .md5 is published
    third = run_job(load_job(job), progress=False, num_cpus=2)["stages"]["documents"]
    assert third["sync"]["downloaded"] == 1 and third["files"] == 2 and third["added"] == 2
    files_job_equals(
        [f"baseline/{B1}", f"baseline/{B2}", f"updatefiles/{U3}", f"updatefiles/{U4}", f"updatefiles/{u5}"]
    )

    # a re-run downloads nothing and applies nothing
    ncbi.requests.clear()
    fourth = run_job(load_job(job), progress=False, num_cpus=2)["stages"]["documents"]
    assert fourth["sync"]["downloaded"] == 0 and fourth["files"] == 0 and ncbi.gets() == [] and ncbi.gets(".md5") == []
    assert main(["status", str(job)]) == 0
    assert "files verified in" in (page := capsys.readouterr().out) and "; up to date" in page, page

    # December: the mirror lists NCBI's 2027 baseline (PMIDs 4 and 50 are not in it) and an empty
    # updatefiles/; the daily run applies it, but nothing proves yet that the listing is the whole
    # baseline (NCBI may still be uploading): nothing is dropped
    n1, n2, n3 = "pubmed27n0001.xml.gz", "pubmed27n0002.xml.gz", "pubmed27n0003.xml.gz"
    keep = [p for p in sorted(r["pmid"] for r in documents_of(out)[0]) if p not in (4, 50)]
    ncbi.files = {"baseline": {}, "updatefiles": {}}
    ncbi.add("baseline", n1, pubmed_file(keep[:40]))
    ncbi.add("baseline", n2, pubmed_file(keep[40:]))
    fifth = run_job(load_job(job), progress=False, num_cpus=2)["stages"]["documents"]
    assert (fifth["files"], fifth["replaced"], fifth["dropped"]) == (2, len(keep), 0)
    assert {4, 50} <= {r["pmid"] for r in documents_of(out)[0]}
    # the first 2027 update is listed (NCBI numbers it after the baseline's last file): the baseline
    # is whole, and the next run drops what it lacks
    ncbi.add("updatefiles", n3, pubmed_file([keep[0]]))
    sixth = run_job(load_job(job), progress=False, num_cpus=2)["stages"]["documents"]
    assert (sixth["files"], sixth["dropped"]) == (1, 2)
    files_job_equals([f"baseline/{n1}", f"baseline/{n2}", f"updatefiles/{n3}"])


@pytest.mark.slow
def test_sync_onto_s3_publishes_whole_objects_and_resumes_from_a_local_staging_folder(
    ncbi, tmp_path, s3_server, monkeypatch
):
    """DEST on a real S3-compatible server (SeaweedFS on loopback): the staged download resumes in a
    local cache folder, each file becomes one object once verified, the state is an object too."""
    from pipeline.store.storage import location

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dest = f"s3://{s3_server['BIOMINE_TEST_BUCKET']}/pubmed"
    ncbi.cut[B1] = 1
    assert run_sync(ncbi, dest) == 0
    root = location(dest)
    for folder, files in ncbi.files.items():
        for name, data in files.items():
            if name.endswith(".gz"):
                assert (root / folder / name).read_bytes() == data
    state = read_state(dest)["files"]
    assert state[f"baseline/{B1}"]["md5"] == hashlib.md5(ncbi.files["baseline"][B1]).hexdigest() and len(state) == 3
    assert [r[1] for r in ncbi.gets() if r[0].endswith(B1)] == [None, f"bytes={len(ncbi.files['baseline'][B1]) // 2}-"]
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing staged is left
    ncbi.requests.clear()
    assert run_sync(ncbi, dest) == 0
    assert ncbi.gets() == [] and ncbi.gets(".md5") == []


@pytest.mark.slow
def test_on_two_nodes_the_downloads_run_on_the_worker_so_a_local_dest_it_does_not_share_is_refused(
    ncbi, tmp_path, tmp_path_factory
):
    """A head that runs nothing (no CPUs) and a worker node that cannot see this machine's test
    folders (its own mount namespace): a pubmed job's downloads run on the worker, which publishes
    them into its own view of the local dest. The driver does not find the first one there, so the
    run stops at once (no other file is downloaded onto the worker's disk) with one line naming the
    file, the host and the fix (an object store or a shared filesystem), and records nothing it
    cannot see."""
    from ray_cluster import Cluster

    dest = tmp_path / "raw"
    job = pubmed_job(tmp_path, ncbi, tmp_path / "out", dest, concurrency=1)
    with Cluster(tmp_path) as cluster:
        cluster.add_node("worker", cpus=1, hide=[tmp_path_factory.getbasetemp()])
        args = [sys.executable, "-m", "pipeline.cli", "run", str(job), "--address", cluster.address, "--no-progress"]
        refused = subprocess.run(args, env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=180)
        for node in reversed(cluster.nodes):  # the run is over: no need for a graceful stop (~30 s)
            node.stop(signal.SIGKILL)
    assert refused.returncode == 2, refused.stderr[-3000:]
    err = refused.stderr.strip().splitlines()[-1]
    assert err == (
        f"biomine: error: baseline/{B1} was downloaded on {socket.gethostname()}, which does not share {dest}: "
        "on a multi-node cluster keep DEST on object storage (s3://...) or on a filesystem every node mounts"
    ), err
    # the first file was fetched (by the worker), and no other one
    assert ncbi.gets() == [(f"/pubmed/baseline/{B1}", None)]
    assert read_state(str(dest))["files"] == {} and held(dest) == {}


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"version": 1, "files": {', "not JSON: "),
        ('{"version": 1, "files": [], "listed": {}}', "its 'files' is not an object"),
        ('{"files": {"baseline/x": {"md5": 3}}}', "its 'files' entry 'baseline/x' has no md5 and size"),
    ],
)
def test_a_damaged_state_file_is_one_error_line_naming_it_and_the_fix(ncbi, tmp_path, capsys, text, why):
    dest = tmp_path / "pubmed"
    assert run_sync(ncbi, dest) == 0
    (dest / STATE).write_text(text)
    capsys.readouterr()
    ingest = ["ingest", str(dest / "baseline"), "--out", str(tmp_path / "out"), "--no-progress"]
    for args in (["sync", str(dest), "--mirror", ncbi.url, "--allow-http"], ingest):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"biomine: error: {dest / STATE} is damaged ({why}"), err[0]
        assert err[0].endswith(
            "move it aside (e.g. to _sync.json.bad) and sync again; the files held there are "
            "checked against their .md5 and recorded without a download"
        ), err[0]
    # moved aside: the next sync adopts the held files without downloading them again
    (dest / STATE).rename(dest / "_sync.json.bad")
    ncbi.requests.clear()
    assert run_sync(ncbi, dest) == 0
    assert ncbi.gets() == [] and len(ncbi.gets(".md5")) == 3
    assert_mirrors(ncbi, dest)


# --- failures of a download's process, node or disk: one line each, never a traceback -------------------


class _OtherView:
    """A pool whose downloads see DEST somewhere else: a node that does not share a local DEST (it
    publishes on its own disk), without a second node."""

    def __init__(self, elsewhere: Path):
        from concurrent.futures import ThreadPoolExecutor

        self.elsewhere = str(elsewhere)
        self.executor = ThreadPoolExecutor(1)

    def submit(self, fn, dest, *args):
        return self.executor.submit(fn, self.elsewhere, *args)


def test_a_file_the_driver_cannot_see_stops_the_sync_at_once(ncbi, tmp_path, monkeypatch):
    monkeypatch.setattr(sync_module, "PUBLISHED_WAIT", 0.2)
    dest, elsewhere = tmp_path / "pubmed", tmp_path / "node-disk"
    pool = _OtherView(elsewhere)
    with pytest.raises(SyncError) as caught:
        sync(dest, ncbi.url, allow_http=True, progress=False, concurrency=1, pool=pool)
    pool.executor.shutdown()
    host = socket.gethostname()
    assert str(caught.value).startswith(f"baseline/{B1} was downloaded on {host}, which does not share {dest}")
    assert ncbi.gets() == [(f"/pubmed/baseline/{B1}", None)]  # not one more file went to the node's disk
    assert read_state(str(dest))["files"] == {} and held(dest) == {}


def test_a_file_published_by_another_node_is_looked_for_again_before_the_dest_is_refused(tmp_path, monkeypatch):
    """A shared filesystem's attribute cache may not show at once a file another node renamed into place."""
    from pipeline.store.storage import location

    monkeypatch.setattr(sync_module, "PUBLISHED_WAIT", 5.0)
    (tmp_path / "baseline").mkdir()
    record = {"key": f"baseline/{B1}", "host": "node-2"}
    later = threading.Timer(0.3, (tmp_path / "baseline" / B1).write_bytes, [b"x"])
    later.start()
    start = time.monotonic()
    sync_module._check_published(location(str(tmp_path)), record)  # no error: it came
    assert 0.25 < time.monotonic() - start < 3
    monkeypatch.setattr(sync_module, "PUBLISHED_WAIT", 0.2)
    with pytest.raises(SyncError, match=f"baseline/{B2} was downloaded on node-2, which does not share"):
        sync_module._check_published(location(str(tmp_path)), {**record, "key": f"baseline/{B2}"})


def test_a_folder_that_cannot_be_written_where_a_download_runs_is_one_error_line_naming_file_and_host(
    ncbi, tmp_path, capsys
):
    """An OSError in a download (here: a file where its staging folder goes; on a cluster, a local
    DEST not mounted on a node, a full disk) is a SyncError naming the file and the host; the other
    files are downloaded and kept."""
    dest = tmp_path / "pubmed"
    (dest / ".sync-partial").mkdir(parents=True)
    (dest / ".sync-partial" / "baseline").write_text("in the way")
    assert run_sync(ncbi, dest, "--concurrency", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"biomine: error: baseline/{B1} could not be stored or read on {socket.gethostname()} (File exists: "
        f"{dest / '.sync-partial' / 'baseline'}); check that {dest} exists and can be written there"
    ), err[0]
    assert (
        "on a multi-node cluster keep DEST on object storage (s3://...) or on a filesystem every node mounts" in err[0]
    )
    assert err[0].endswith("(1 more files failed too; see the log above)"), err[0]
    assert set(read_state(str(dest))["files"]) == {f"updatefiles/{U3}"}


class _StubRef:
    """The ref of a Ray task whose worker died (what ``ray.get`` raises is patched in)."""

    def future(self):
        from concurrent.futures import Future

        done: Future = Future()
        done.set_result(None)
        return done


def test_a_download_whose_ray_worker_died_is_one_error_line_naming_the_file(ncbi, tmp_path, monkeypatch, capsys):
    """A Ray error that is not the task's own (worker crashed, node died, OOM) reaches `_fetch_all`
    as a StageError of one line (RayPool's futures), then names the file; the other files are kept."""
    import ray

    from pipeline.run.cluster import _RayFuture

    crashed = ray.exceptions.WorkerCrashedError()
    monkeypatch.setattr(ray, "get", lambda ref: (_ for _ in ()).throw(crashed))

    class Pool(_OtherView):
        def submit(self, fn, dest, mirror, folder, name, *args):
            if name == B2:
                return _RayFuture(_StubRef())
            return self.executor.submit(fn, dest, mirror, folder, name, *args)

    pool = Pool(tmp_path)
    with pytest.raises(SyncError) as caught:
        sync(tmp_path / "pubmed", ncbi.url, allow_http=True, progress=False, pool=pool)
    pool.executor.shutdown()
    first = str(crashed).strip().splitlines()[0].rstrip(".")
    assert str(caught.value) == (
        f"download of baseline/{B2} in its Ray task failed: {first}; sync again (it resumes where it stopped)"
    )
    assert set(read_state(str(tmp_path / "pubmed"))["files"]) == {f"baseline/{B1}", f"updatefiles/{U3}"}


def test_a_bug_in_a_download_keeps_its_traceback_and_what_is_pending_is_cancelled(ncbi, tmp_path, monkeypatch):
    """Only failures of the download itself (the mirror, storage, a lost worker) become one line
    naming the file; a bug (here a TypeError inside fetch_file) is raised as it is, as
    pipeline.errors asks of programming errors, and the files verified before it stay recorded."""
    real = sync_module.fetch_file

    def buggy(dest, mirror, folder, name, *args):
        if folder == "updatefiles":
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return real(dest, mirror, folder, name, *args)

    monkeypatch.setattr(sync_module, "fetch_file", buggy)
    with pytest.raises(TypeError, match="unsupported operand"):
        sync(tmp_path / "pubmed", ncbi.url, allow_http=True, progress=False, concurrency=1)
    assert set(read_state(str(tmp_path / "pubmed"))["files"]) <= {f"baseline/{B1}", f"baseline/{B2}"}
