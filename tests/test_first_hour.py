"""What a new user meets in the first hour (issue 26): help pages that are true, query results an
analyst can read and parse, `biomine --version`, messages without Python reprs, and no Ray noise or
carriage-return bars where stderr is not a terminal. Every test here is fast (no Ray)."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
from conftest import DEMO_XML

from pipeline.cli import build_parser, main


def help_text(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


@pytest.fixture
def ingested(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["ingest", str(DEMO_XML), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    return out


def test_ingest_help_names_a_query_that_reads_an_ingest_output(ingested, capsys):
    """`biomine ingest --help` says how to read its output: that exact command works, on OUT and
    on OUT/documents (the table the same page points Delta readers at)."""
    page = help_text(capsys, "ingest")
    suggested = re.search(r'`biomine query OUT "([^"]+)"`', page)
    assert suggested, page
    for target in (ingested, ingested / "documents"):
        assert main(["query", str(target), suggested.group(1), "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines() == ["count_star()", "4"]


def test_query_prints_empty_results_and_nulls_as_an_analyst_expects(ingested, capsys):
    empty = "SELECT pmid, title FROM documents WHERE pmid < 0"
    assert main(["query", str(ingested), empty]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["pmid  title", "(0 rows)"] and "DataFrame" not in out
    assert main(["query", str(ingested), empty, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # NULLs of every type print the same way: an integer, a string and a float column, all NULL.
    sql = (
        "SELECT pmid, CASE WHEN pmid = 90000001 THEN NULL ELSE pub_year END AS year, pub_season, "
        "CASE WHEN pmid = 90000001 THEN NULL ELSE 0.5 END::DOUBLE AS score FROM documents ORDER BY pmid LIMIT 2"
    )
    assert main(["query", str(ingested), sql]) == 0
    first, second = capsys.readouterr().out.splitlines()[1:3]
    assert first.split() == ["90000001", "NULL", "NULL", "NULL"]
    assert second.split() == ["90000002", "2019", "NULL", "0.5"]  # the year stays an integer
    assert "None" not in first + second and "NaN" not in first + second
    assert main(["query", str(ingested), sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["90000001,,,", "90000002,2019,,0.5"]
    assert main(["query", str(ingested), sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # one JSON document, not JSON Lines
    assert rows[0] == {"pmid": 90000001, "year": None, "pub_season": None, "score": None}
    assert main(["query", str(ingested), sql, "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == rows
    # A table longer than --max-rows says so, and how to see the rest.
    assert main(["query", str(ingested), "SELECT pmid FROM documents", "--max-rows", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("(4 rows, the first 1 shown")


def test_query_help_says_what_each_format_writes(capsys):
    page = help_text(capsys, "query")
    assert "json (one JSON array of objects)" in page and "jsonl (JSON Lines" in page


def test_version(capsys, monkeypatch):
    import tomllib
    from importlib import metadata
    from pathlib import Path

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"biomine {version}\n"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)  # a checkout that was never installed
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out == f"biomine {version}\n"


def test_a_misspelled_prompt_field_is_named_not_a_python_repr(tmp_path, capsys):
    """A job's prompt = "{titel}" is the job file's mistake: say so in its words, not KeyError('titel')."""
    from conftest import DEMO_XML as sample

    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\nname = "p"\noutput = "{tmp_path / "out"}"\n[source]\nkind = "files"\npaths = ["{sample}"]\n'
        f'[tasks.summarize]\nmodel = "{tmp_path / "model"}"\nprompt = "{{titel}}: {{abstract}}"\n'
    )
    assert main(["run", str(job), "--check"]) == 2
    err = capsys.readouterr().err
    assert "uses {titel}; only {title} and {abstract} may be used" in err
    assert "KeyError" not in err and "['" not in err


def test_bars_only_on_a_terminal(monkeypatch, caplog):
    """Progress draws a bar only when stderr is a terminal; otherwise it logs plain lines (what
    `run` and `demo` now pass it: None unless --no-progress)."""
    from pipeline.progress import Progress
    from pipeline.run.runner import _bar

    assert _bar(True) is None and _bar(False) is False

    class Stream:
        def __init__(self, tty: bool):
            self.tty, self.text = tty, ""

        def isatty(self) -> bool:
            return self.tty

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            pass

    for tty in (False, True):
        stream = Stream(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        with (
            caplog.at_level(logging.INFO, logger="pipeline"),
            Progress(3, unit="file", desc="ingest", bar=_bar(True)) as p,
        ):
            p.update(3)
        assert ("\r" in stream.text) is tty
        assert ("ingest: 3/3 files done" in caplog.text) is not tty
        caplog.clear()


def test_ray_start_prints_no_log_level_line(capfd):
    """Ray's C++ core writes "Set ray log level from environment variable ..." to file descriptor 2
    when it starts (RAY_BACKEND_LOG_LEVEL, which biomine sets to keep its benign errors off the
    console): ray.init runs with the descriptor captured, and everything else it wrote comes through."""
    import os

    from pipeline.run.cluster import _without_ray_log_level_line

    with _without_ray_log_level_line():
        os.write(2, b"[2026-12-03 17:04:50,631 I 1 1] logging.cc:303: Set ray log level from environment ")
        os.write(2, b"variable RAY_BACKEND_LOG_LEVEL to 5\nsomething Ray had to say\n")
    assert capfd.readouterr().err == "something Ray had to say\n"
    with pytest.raises(RuntimeError), _without_ray_log_level_line():
        os.write(2, b"said before failing\n")
        raise RuntimeError("ray.init failed")
    assert capfd.readouterr().err == "said before failing\n"


def test_ray_data_notice_that_bars_are_off_is_dropped(caplog):
    """Bars are off where biomine turned them off: Ray Data's advice to turn them on is not shown,
    and its other warnings still are."""
    from pipeline.run.stages import _drop_progress_bars_notice

    _drop_progress_bars_notice()
    _drop_progress_bars_notice()  # once per process, however many stages run
    logger = logging.getLogger("ray.data._internal.progress")
    with caplog.at_level(logging.WARNING, logger="ray.data._internal.progress"):
        logger.warning(
            "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`."
        )
        logger.warning("Progress bars for operators disabled.")
    assert [r.getMessage() for r in caplog.records] == ["Progress bars for operators disabled."]
    assert len(logger.filters) == 1
