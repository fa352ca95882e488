"""Hardening (issue "No code runs from a model file, transient storage faults are retried, and every
failure is one line"): items 3-6. Item 1 is in test_fairseq_convert.py / test_models_hub.py, item 2
(the store going away) in test_cluster.py, the lease's reader cap in test_store.py.

- output paths with spaces, both quote kinds and non-ASCII reach DuckDB as registered relations,
  never pasted into SQL (a backslash in a table's folder is refused: delta-rs reads it as a separator);
- SIGTERM stops a run as Ctrl-C does: one line, the run recorded as interrupted, the lease released,
  exit status 130;
- a run killed with SIGKILL leaves no Ray process and no token folder behind (within seconds);
- damaged model weights fail `run --check`, before Ray starts.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_XML, write_job

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1 and err[0].startswith("biomine: error: "), err
    return err[0]


def test_output_paths_with_quotes_backslashes_and_non_ascii_reach_duckdb_safely(tmp_path, capsys):
    """`query`, `kb build` and `export` on an output whose path would break (or inject into) SQL."""
    from pipeline.outputs.kb import update_kb
    from pipeline.pubmed.ingest import ingest_files
    from pipeline.store.datasets import write_output
    from pipeline.store.documents import Documents
    from pipeline.store.output import JobOutput
    from schemas.relations import RELATION_SCHEMA, cast_batch

    out = tmp_path / 'o\'ut "x" ünï côdé; DROP VIEW documents; --'
    ingest_files([DEMO_XML], out)
    output = JobOutput(out)
    doc = sorted(Documents(output.documents).files().values(), key=lambda f: f.path)[0]
    rows = [
        {
            "pmid": 90000001,
            "version": 1,
            "task": "ddi",
            "head": "warfarin",
            "tail": "aspirin",
            "relation": "effect",
            "parse_status": "ok",
            "model_id": "m",
            "raw_generation": "x",
        }
    ]
    relations = output.dataset("relations", RELATION_SCHEMA)
    relations.commit([write_output(relations.loc, doc.stem, "0" * 16, cast_batch(rows))], [], settings={})
    assert update_kb(output)["edges"] == 1
    capsys.readouterr()
    assert main(["query", str(out), "SELECT count(*) AS n FROM documents", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "4"
    assert main(["query", str(out), "SELECT drug_a, drug_b FROM kb", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "aspirin,warfarin"
    export = tmp_path / 'ex\'port "ü".xml'
    assert main(["kb", "build", str(out), "--out", str(tmp_path / "k'b \\ ü.parquet")]) == 0
    assert main(["export", str(out), "--format", "bioc-xml", "--out", str(export)]) == 0
    assert export.read_text().count("<document>") == 4
    capsys.readouterr()
    # A table under a folder whose name has a backslash: delta-rs would write it elsewhere (it reads a
    # backslash as a path separator); refused in one line. (Files, as the two above, may have one.)
    assert main(["ingest", str(DEMO_XML), "--out", str(tmp_path / "back\\slash")]) == 2
    assert "backslash" in one_error_line(capsys)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job_file(tmp_path: Path, models, out: Path) -> Path:
    return write_job(
        tmp_path / "job.toml",
        name="hardening",
        output=out,
        source={"kind": "files", "paths": [str(DEMO_XML)], "shard_size": 1},
        tasks={
            "ner": {"model": str(models["ner"]), "batch_size": 1},
            "summarize": {"model": str(models["summarize"]), "max_new_tokens": 64},
        },
    )


def start_run(job: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def ray_session_of(pid: int) -> str | None:
    found = glob.glob(f"/tmp/ray/session_*_{pid}")
    return found[0] if found else None


def processes_of_session(session: str) -> list[int]:
    """Processes of this user that hold files of a Ray session folder open."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session + "/"):
                    pids.append(int(pid))
                    break
        except OSError:
            continue
    return pids


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, demo_models):
    from pipeline.store.output import JobOutput

    out = tmp_path / "out"
    proc = start_run(job_file(tmp_path, demo_models, out))
    try:
        wait_for(lambda: ray_session_of(proc.pid) is not None or proc.poll() is not None, 120, "Ray to start")
        wait_for(lambda: (out / "entities").exists() or proc.poll() is not None, 240, "the NER stage")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        session = ray_session_of(proc.pid)
        proc.send_signal(signal.SIGTERM)  # to the driver only, as `kill PID` and Kubernetes send it
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("biomine:")]
    assert lines == ["biomine: interrupted; what was committed is kept and a re-run resumes"], err[-3000:]
    assert "Traceback" not in err and "core dumped" not in err.lower()
    assert [e["event"] for e in JobOutput(out).run_events()] == ["started", "interrupted"]
    assert json.loads((out / "_lease.json").read_text())["released_at"]
    wait_for(lambda: not processes_of_session(session), 10, "the run's Ray processes to end")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_no_ray_process_and_no_token(tmp_path, demo_models):
    out = tmp_path / "out"
    proc = start_run(job_file(tmp_path, demo_models, out))
    try:
        wait_for(lambda: ray_session_of(proc.pid) is not None or proc.poll() is not None, 120, "Ray to start")
        wait_for(lambda: (out / "entities").exists() or proc.poll() is not None, 240, "the NER stage")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        session = ray_session_of(proc.pid)
        tokens = glob.glob(f"/tmp/biomine-ray-auth-{proc.pid}-*")
        assert len(tokens) == 1 and processes_of_session(session)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: its Ray must not outlive it
        proc.wait(timeout=30)
        wait_for(lambda: not processes_of_session(session), 10, "the killed run's Ray processes to end")
        wait_for(lambda: not os.path.exists(tokens[0]), 10, "the token folder to go")
    finally:
        stop(proc)


def test_a_stale_token_folder_of_a_dead_run_is_removed_by_the_next(tmp_path):
    import tempfile

    from pipeline.run.cluster import TOKEN_PREFIX, _remove_stale_tokens

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = Path(tempfile.mkdtemp(prefix=f"{TOKEN_PREFIX}{int(dead.stdout)}-"))
    mine = Path(tempfile.mkdtemp(prefix=f"{TOKEN_PREFIX}{os.getpid()}-"))
    try:
        removed = _remove_stale_tokens()
        assert str(stale) in removed and not stale.exists()
        assert mine.exists()  # a live run's token stays
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


def test_damaged_weights_fail_run_check_before_anything_starts(tmp_path, demo_models, capsys):
    model = tmp_path / "ner-damaged"
    shutil.copytree(demo_models["ner"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a download cut short
    out = tmp_path / "out"
    job = job_file(tmp_path, {**demo_models, "ner": model}, out)
    assert main(["run", str(job), "--check"]) == 2
    line = one_error_line(capsys)
    assert "[tasks.ner]" in line and str(weights) in line and "damaged or incomplete" in line
    assert not out.exists()
