"""``biomine status``: what it reads from an output (runs, tables, inputs, lease) and the schedule rules.

The output is built as a job builds it (real ingest of PubMed XML, task tables, KB, run records:
tests/test_analysts_docs.py::build_output); a real Ray run's status is checked in
tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import datetime as _dt
import json

import pytest
from conftest import write_job
from test_analysts_docs import build_output

from pipeline.cli import main
from pipeline.run.status import format_status, next_due, output_status
from pipeline.store.documents import read_articles
from pipeline.store.output import JobOutput
from pipeline.store.tables import Table

UTC = _dt.timezone.utc


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("status"))


def test_status_names_the_last_run_the_tables_the_newest_input_and_a_free_lease(out):
    s = output_status(str(out))
    assert s.job == "ddi-kb" and s.source == "files"
    assert s.last_run is not None and s.last_run.run_id == "run-2" and s.last_run.outcome == "finished"
    assert s.last_finished == s.last_run
    # Rows and versions as the tables' logs have them, checked against what readers read.
    assert s.tables["documents"].rows == read_articles(str(out)).num_rows
    assert s.tables["documents"].version == Table(out / "documents").version
    assert set(s.tables) == {"documents", "entities", "relations", "kb", "runs"}
    assert s.tables["runs"].rows == len(JobOutput(out).run_events())
    # The newest input is the update file the second run applied; two files in all.
    assert s.newest_input is not None and s.newest_input["name"] == "pubmed26n0002.xml"
    assert s.inputs_applied == 2
    assert s.lease is None
    text = format_status(s)
    assert "run-2" in text and "pubmed26n0002.xml" in text and "lease     free" in text


def test_a_run_holding_the_output_is_shown_while_it_writes(out):
    output = JobOutput(out)
    with output.lease("biomine run jobs/ddi-kb.toml") as lease:
        held = output_status(str(out)).lease
        assert held is not None and held["run_id"] == lease.run_id and held["what"] == "biomine run jobs/ddi-kb.toml"
        assert f"held by biomine run jobs/ddi-kb.toml (run {lease.run_id}" in format_status(output_status(str(out)))
    assert output_status(str(out)).lease is None


def test_json_and_check_for_monitoring(out, capsys):
    assert main(["status", str(out), "--json", "--check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["last_run"]["run_id"] == "run-2" and report["needs_attention"] == []
    assert report["tables"]["documents"]["rows"] == read_articles(str(out)).num_rows


def test_a_failed_run_and_a_killed_one_need_attention(tmp_path, capsys):
    out = build_output(tmp_path)
    output = JobOutput(out)
    output.record_run("run-3", "ddi-kb", "started", {"job": {"name": "ddi-kb"}})
    output.record_run(
        "run-3", "ddi-kb", "failed", {"job": {"name": "ddi-kb"}, "error": "StorageError: s3://b/x: down"}, seconds=4.0
    )
    s = output_status(str(out))
    assert s.last_run is not None and s.last_run.outcome == "failed" and s.last_run.run_id == "run-3"
    assert s.last_finished is not None and s.last_finished.run_id == "run-2"
    assert s.needs_attention == ["the last run failed"]
    assert "StorageError: s3://b/x: down" in format_status(s)
    assert main(["status", str(out), "--check"]) == 1
    capsys.readouterr()

    output.record_run("run-4", "ddi-kb", "started", {"job": {"name": "ddi-kb"}})  # then kill -9: no end
    s = output_status(str(out))
    assert s.last_run is not None and s.last_run.outcome == "running" and s.lease is None
    assert s.needs_attention and "killed" in s.needs_attention[0]


def test_the_schedule_is_due_one_period_after_the_last_finished_run_and_overdue_a_quarter_later(out):
    started = _dt.datetime.fromisoformat(output_status(str(out)).last_finished.started_at)  # type: ignore[union-attr]
    at = {
        "not due": started + _dt.timedelta(hours=23),
        "due": started + _dt.timedelta(hours=25),
        "overdue": started + _dt.timedelta(hours=31),
    }
    for state, now in at.items():
        s = output_status(str(out), "daily", now=now)
        assert s.schedule is not None and s.schedule.state == state, (state, s.schedule)
        assert any("overdue" in a for a in s.needs_attention) == (state == "overdue")
    assert output_status(str(out), "once", now=at["overdue"]).schedule.state == "done"  # type: ignore[union-attr]


def test_next_due_per_schedule():
    t = _dt.datetime(2026, 1, 31, 2, 0, tzinfo=UTC)
    assert next_due("hourly", t) == (t + _dt.timedelta(hours=1), t + _dt.timedelta(minutes=75))
    assert next_due("weekly", t)[0] == _dt.datetime(2026, 2, 7, 2, 0, tzinfo=UTC)  # type: ignore[index]
    assert next_due("monthly", t)[0] == _dt.datetime(2026, 2, 28, 2, 0, tzinfo=UTC)  # type: ignore[index]
    assert next_due("monthly", t.replace(year=2028))[0] == _dt.datetime(2028, 2, 29, 2, 0, tzinfo=UTC)  # type: ignore[index]
    assert next_due("monthly", _dt.datetime(2026, 12, 15, tzinfo=UTC))[0] == _dt.datetime(2027, 1, 15, tzinfo=UTC)  # type: ignore[index]
    assert next_due("once", t) is None


def test_a_job_file_gives_its_output_and_its_schedule(out, tmp_path, capsys):
    job = write_job(
        tmp_path / "daily.toml",
        output=out,
        source={"kind": "files", "paths": [str(tmp_path)]},
        tasks={},
        name="ddi-kb",
        job={"schedule": "weekly"},
    )
    assert main(["status", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(out) and report["schedule"]["schedule"] == "weekly"


def test_a_folder_that_is_no_output_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["status", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("biomine: error:") and "no biomine output" in err and len(err.splitlines()) == 1, err
    assert main(["status", str(tmp_path / "nojob.toml")]) == 2
    assert "no such job file" in capsys.readouterr().err
