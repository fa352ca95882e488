"""Outputs written by the release before Delta tables are upgraded with nothing lost (issue
"Analyst-ready tables", item 4).

tests/data/legacy-v0/out is a real output of that release (tests/data/legacy-v0/make.py: the demo
job, then a daily update that revises, re-issues, deletes and adds articles), with its documents
manifest, deletion vectors, per-shard commit records, kb.parquet and run manifest; ``expected/``
holds what that release's readers returned for each dataset (the live rows).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.outputs.query import read_dataset

LEGACY = Path(__file__).resolve().parent / "data" / "legacy-v0"
TABLES = ("documents", "entities", "relations", "summaries", "kb")
KEYS = {
    "documents": ["pmid", "version", "title"],
    "entities": ["pmid", "version", "start", "end", "label", "text"],
    "relations": ["pmid", "version", "head", "tail", "relation", "parse_status"],
    "summaries": ["pmid", "version", "summary"],
    "kb": ["drug_a", "drug_b", "relation"],
}


def legacy_copy(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(LEGACY / "out", out)
    return out


def rows(table, keys: list[str]) -> list[tuple]:
    return sorted(tuple(r[k] for k in keys) for r in table.select(keys).to_pylist())


def assert_equals_the_old_readers(out: Path) -> None:
    """Every table, read by biomine and by deltalake, polars and DuckDB, is what the old release's
    readers returned."""
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    for name in TABLES:
        expected = pq.read_table(LEGACY / "expected" / f"{name}.parquet")
        ours = read_dataset(out, name)
        assert ours.num_rows == expected.num_rows, name
        assert rows(ours, KEYS[name]) == rows(expected, KEYS[name]), name
        frame = DeltaTable(str(out / name)).to_pandas()[KEYS[name]]
        frame = frame.astype(object).where(frame.notna(), None)  # pandas shows a null string as NaN
        assert sorted(frame.itertuples(index=False, name=None)) == rows(expected, KEYS[name]), name
        assert pl.read_delta(str(out / name)).height == expected.num_rows, name
        con = duckdb.connect()
        con.register("t", DeltaTable(str(out / name)).to_pyarrow_dataset())
        assert con.sql("SELECT count(*) FROM t").fetchall()[0][0] == expected.num_rows, name


def assert_no_old_state(out: Path) -> None:
    assert not (out / "_manifest.json").exists() and not (out / "kb.parquet").exists()
    for name in TABLES:
        leftovers = {p.name for p in (out / name).iterdir() if not p.name.endswith(".parquet")}
        assert leftovers == {"_delta_log"}, (name, leftovers)


def test_an_output_of_the_previous_release_upgrades_with_nothing_lost(tmp_path, capsys):
    out = legacy_copy(tmp_path)
    assert main(["upgrade", str(out)]) == 0
    assert "upgraded" in capsys.readouterr().out
    assert_equals_the_old_readers(out)
    assert_no_old_state(out)
    # The old run manifest is the first run of the runs table; the inputs it had applied are recorded.
    from pipeline.store.documents import Documents
    from pipeline.store.output import JobOutput

    run = JobOutput(out).last_run()
    assert run is not None and run["record"]["job"]["name"] == "demo"
    docs = Documents(out / "documents")
    assert docs.inputs_applied() == 2 and docs.position("pubmed26n0002.xml") == 2
    # Upgrading again: one line, nothing touched.
    assert main(["upgrade", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an output of an older biomine" in err[0]


def test_an_interrupted_upgrade_is_finished_by_running_it_again(tmp_path, monkeypatch):
    from pipeline.store import upgrade as upgrade_module

    out = legacy_copy(tmp_path)
    real = upgrade_module._upgrade_dataset
    calls = []

    def dies_on_the_second_dataset(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between two tables
        return real(*args, **kwargs)

    monkeypatch.setattr(upgrade_module, "_upgrade_dataset", dies_on_the_second_dataset)
    assert main(["upgrade", str(out)]) == 130  # the CLI's resumable exit for an interrupt
    assert (out / "documents" / "_manifest.json").exists()  # not removed before everything was converted
    monkeypatch.setattr(upgrade_module, "_upgrade_dataset", real)
    assert main(["upgrade", str(out)]) == 0
    assert_equals_the_old_readers(out)
    assert_no_old_state(out)


@pytest.mark.slow
def test_a_job_run_on_an_old_output_upgrades_it_and_recomputes_nothing_it_had(tmp_path):
    """`biomine run` finds the old layout, upgrades it under its lease, ingests no input again (both
    were applied), and keeps every output whose settings are the same: the demo's relation and
    summary models are reproducible, so nothing of theirs is computed again."""
    from pipeline.commands.demo import demo_records, make_demo_models, write_bundle
    from pipeline.run.jobspec import load_job
    from pipeline.run.runner import run_job

    job = write_bundle(tmp_path / "demo")
    make_demo_models(load_job(job, check_models=False), demo_records(load_job(job, check_models=False).source.paths))
    job.write_text(job.read_text().replace('paths = ["data/demo_pubmed.xml"]', 'paths = ["data"]'))
    shutil.copy(LEGACY / "data" / "pubmed26n0002.xml", tmp_path / "demo" / "data")
    out = tmp_path / "demo" / "out"
    shutil.copytree(LEGACY / "out", out)
    try:
        record = run_job(load_job(job), progress=False, num_cpus=2)
    finally:
        import ray

        ray.shutdown()
    assert record["stages"]["documents"]["files"] == 0 and record["stages"]["documents"]["files_skipped"] == 2
    for task in ("re", "summarize"):
        stage = record["stages"][task]
        assert stage["shards_done"] == 0 and stage["shards_skipped"] == 3, (task, stage)
    assert_no_old_state(out)
    for name in ("documents", "relations", "summaries"):
        expected = pq.read_table(LEGACY / "expected" / f"{name}.parquet")
        assert rows(read_dataset(out, name), KEYS[name]) == rows(expected, KEYS[name]), name
