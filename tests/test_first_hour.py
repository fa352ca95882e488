"""What a new user meets in the first hour (issue 26): help pages that are true, query results an
analyst can read and parse, `biomine --version`, messages without Python reprs, and no Ray noise or
carriage-return bars where stderr is not a terminal. Every test here is fast (no Ray)."""

from __future__ import annotations

import re

import pytest
from conftest import DEMO_XML

from pipeline.cli import main


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
