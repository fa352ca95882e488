"""A job's run state cannot be fooled: ownership of an output, one run at a time, settings that
recompute, and readers that say when a run is unfinished (issue "Run on a real Ray cluster").

Jobs run in this process (one local Ray for the module) on the bundled PubMed sample with tiny
random checkpoints; the overlapping run is a real second `biomine run` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.outputs.query import query
from pipeline.run.jobspec import load_job
from pipeline.run.runner import run_job
from pipeline.store.lease import Lease
from pipeline.store.storage import location

REPO = Path(__file__).resolve().parents[1]
import conftest  # noqa: E402
from conftest import DEMO_XML as SAMPLE  # noqa: E402


@pytest.fixture(scope="module")
def models(demo_models):
    return demo_models


def write_job(path: Path, out: Path, models, *, name: str = "state", prompt: str = "{title} In summary,") -> Path:
    return conftest.write_job(
        path,
        name=name,
        output=out,
        source={"kind": "files", "paths": [str(SAMPLE)], "shard_size": 1},
        tasks={
            "ner": {"model": str(models["ner"])},
            "summarize": {"model": str(models["summarize"]), "prompt": prompt, "max_new_tokens": 4},
        },
    )


def snapshot(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("_lease.json.lock",)
    }


def test_other_job_refused_settings_recompute_and_unfinished_runs_warn(tmp_path, models, ray_local, capsys):
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.toml", out, models)
    first = run_job(load_job(job), progress=False, num_cpus=2)
    shards = first["stages"]["ner"]["shards_done"]
    assert shards >= 3 and first["stages"]["summarize"]["shards_done"] == shards

    # Another job (another name) pointed at the same output: one line naming both, nothing touched.
    before = snapshot(out)
    other = write_job(tmp_path / "other.toml", out, models, name="another-job")
    capsys.readouterr()  # what the first run printed
    assert main(["run", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("biomine: error:"), err
    assert "'state'" in err[0] and "'another-job'" in err[0]
    assert snapshot(out) == before

    # A changed prompt recomputes the summaries (and says why); NER is verified and skipped.
    changed = run_job(load_job(write_job(job, out, models, prompt="{title} TL;DR:")), progress=False)
    assert changed["stages"]["ner"]["shards_skipped"] == shards and changed["stages"]["ner"]["shards_done"] == 0
    assert changed["stages"]["summarize"]["shards_done"] == shards
    assert changed["stages"]["summarize"]["redone"] == {"settings changed": shards}
    from pipeline.store.datasets import OutputName, settings_key
    from pipeline.store.tables import Table

    summaries = Table(out / "summaries")
    live = [OutputName.parse(p) for p in summaries.files()]
    assert len(live) == shards and len({n.settings for n in live}) == 1  # every output of the new prompt
    assert summaries.commit_metadata(1)[0]["settings"]["prompt"] == "{title} TL;DR:"
    assert live[0].settings == settings_key(summaries.commit_metadata(1)[0]["settings"])
    # The files of the old prompt's outputs stay on disk for time travel (until `biomine compact`),
    # but no reader sees them: the log removed them.
    assert len(list((out / "summaries").glob("*.parquet"))) == 2 * shards
    assert query(out, "SELECT count(*) AS n FROM summaries")["n"][0] == len(query(out, "SELECT pmid FROM documents"))

    # An unfinished run (an output removed from the table after the last finished run, as a run
    # killed mid-way leaves it): readers warn and read the last finished run's snapshot.
    from pipeline.store.output import JobOutput
    from schemas.entities import ENTITY_SCHEMA

    entities = JobOutput(out).dataset("entities", ENTITY_SCHEMA)
    first_output = sorted(entities.table.files().values(), key=lambda f: f.path)[0]
    entities.commit([], [first_output], settings={})
    warnings = []
    n = query(out, "SELECT count(*) AS n FROM entities", warn=warnings.append)["n"][0]
    assert len(warnings) == 1 and warnings[0].startswith("entities: version ") and "last finished run" in warnings[0]
    assert n == first["stages"]["ner"]["committed"]["rows"]  # the snapshot still has every row
    assert main(["query", str(out), "SELECT count(*) AS n FROM documents"]) == 0
    assert "biomine: warning: entities: version" in capsys.readouterr().err
    again = run_job(load_job(job), progress=False)
    assert again["stages"]["ner"]["shards_done"] == 1 and again["stages"]["ner"]["shards_skipped"] == shards - 1
    # The record of that (resuming) run still counts the whole table, not just its own output.
    assert again["stages"]["ner"]["committed"]["rows"] == first["stages"]["ner"]["committed"]["rows"]
    assert again["stages"]["ner"]["committed"]["shards"] == first["stages"]["ner"]["committed"]["shards"] == shards


def test_one_run_at_a_time(tmp_path, models, ray_local, capsys):
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.toml", out, models)
    capsys.readouterr()
    # A lease held by a live run (this process stands in for it): refused, whatever stage it is in.
    with Lease(location(out), what="biomine run (the first one)"):
        assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by another run: biomine run (the first one)" in err[0], err
    assert not (out / "documents").exists()  # the refused run touched nothing

    # A real second `biomine run` process while the first is working: the second is refused.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120

        def held_by_it() -> bool:
            try:
                return json.loads((out / "_lease.json").read_text()).get("pid") == proc.pid
            except (FileNotFoundError, ValueError):
                return False

        while not held_by_it() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        holder = json.loads((out / "_lease.json").read_text())
        assert holder["pid"] == proc.pid
        assert main(["run", str(job), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another run" in err and f"pid {proc.pid}" in err
        _, first_err = proc.communicate(timeout=300)
        assert proc.returncode == 0, first_err[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert json.loads((out / "_lease.json").read_text())["released_at"]  # released when the run ended
    from pipeline.outputs.query import snapshot
    from pipeline.store.output import JobOutput

    finished = JobOutput(out).last_run()
    assert finished["record"]["finished_at"] and snapshot(out).warnings == []  # the first run completed, whole


def test_a_user_error_inside_the_ingest_task_is_one_line(tmp_path, models, ray_local, capsys):
    """The ingest step runs as a Ray task; its errors arrive as the user's error, not a Ray traceback."""
    broken = tmp_path / "pubmed25n0001.xml"
    broken.write_text(SAMPLE.read_text()[:700])  # cut mid-record
    job = tmp_path / "job.toml"
    job.write_text(
        write_job(tmp_path / "ok.toml", tmp_path / "out", models).read_text().replace(str(SAMPLE), str(broken))
    )
    capsys.readouterr()
    assert main(["run", str(job), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("biomine:")]
    assert len(err) == 1 and "pubmed25n0001.xml" in err[0] and "Traceback" not in err[0], err
    assert "RayTaskError" not in err[0] and "\x1b[" not in err[0]
