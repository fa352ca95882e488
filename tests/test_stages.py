"""The Ray stage runner: one output file per document file, committed exactly once, resumable.

Uses a rule-based task (a dictionary lookup, no model) so the Ray mechanics are tested on their own:
documents with no entities still complete their file, a re-run keeps complete outputs, an output that
was lost or damaged is computed again with identical contents, and a task error is recorded per
document. The documents are a small Delta table (:class:`pipeline.store.documents.Documents`) and the
outputs go into the task's Delta table; key results are read back with independent Delta readers
(deltalake, polars, DuckDB), which must see exactly the live rows.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray import cloudpickle as ray_cloudpickle

from pipeline.run import stages
from pipeline.run.cluster import Placement
from pipeline.run.plan import PlannedTask
from pipeline.run.stages import read_failures
from pipeline.store.datasets import OutputName, TaskTable
from pipeline.store.documents import Documents, write_shard
from pipeline.store.output import JobOutput
from pipeline.store.tables import DataFile
from pipeline.tasks.base import Task, check_prepared, documents, prepared
from pipeline.tasks.options import TaskOptions
from schemas.entities import ENTITY_SCHEMA, cast_batch

ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

DRUGS = ("aspirin", "warfarin", "midazolam")


@dataclass(frozen=True)
class DictOptions(TaskOptions):
    #: A file that makes a failure happen once (DyingOnceNer, FailingOnceNer).
    marker: str | None = None
    #: The names looked up: a setting the outputs depend on (changing it must recompute them).
    vocabulary: tuple[str, ...] = DRUGS


class DictionaryNer(Task):
    """Finds drug names by lookup; raises on a PMID of 13 to test failure records."""

    name, dataset, schema, sort_keys = "ner", "entities", ENTITY_SCHEMA, ("start", "end")
    prepared_schema = pa.schema([pa.field("text", pa.string())])
    Options = DictOptions
    cast_batch = staticmethod(cast_batch)

    @classmethod
    def check_model(cls, options):
        return None

    @classmethod
    def prepare(cls, batch, options):
        docs = documents(batch)
        text = [f"{t} {a}" for t, a in zip(docs["title"].to_pylist(), docs["abstract"].to_pylist())]
        return prepared(docs, cls.prepared_schema, {"text": text})

    def __init__(self, options):
        self.model_id = options.model
        self.marker = options.marker
        self.vocabulary = options.vocabulary

    def __call__(self, batch):
        batch = check_prepared(type(self), batch)
        if 13 in batch["pmid"].to_pylist():
            raise ValueError("poisoned document")
        out = []
        columns = (batch[c].to_pylist() for c in ("pmid", "version", "text"))
        for pmid, version, text in zip(*columns):
            rows = [
                dict(
                    pmid=int(pmid),
                    version=int(version),
                    start=m.start(),
                    end=m.end(),
                    label="Chemical",
                    text=m.group(),
                    score=1.0,
                    model_id=self.model_id,
                )
                for m in re.finditer("|".join(self.vocabulary), text.lower())
            ]
            out.append(rows)
        return out


# --- helpers ---------------------------------------------------------------------------------------


def make_documents(tmp_path: Path, docs_per_file: list[int]) -> tuple[JobOutput, list[str]]:
    """An output whose documents table holds one data file per entry of ``docs_per_file`` (PMIDs
    numbered from 1; odd PMIDs mention aspirin and warfarin, even ones no drug), added in one commit.
    Returns the output and the document files' paths in order."""
    out = JobOutput(tmp_path / "out")
    docs = Documents(out.documents)
    paths = []
    pmid = 1
    with docs.transaction() as txn:
        for i, n in enumerate(docs_per_file):
            rows = [
                dict(
                    pmid=p,
                    version=1,
                    record_type="article",
                    title=f"Doc {p}.",
                    abstract="Aspirin and warfarin." if p % 2 else "No drugs here.",
                    has_abstract=True,
                )
                for p in range(pmid, pmid + n)
            ]
            pmid += n
            info = write_shard(docs.loc, f"part-{i:06d}", rows)
            txn.add(info)
            paths.append(info.path)
        assert txn.commit() is not None
    assert sorted(Documents(out.documents).files()) == sorted(paths)
    return out, paths


def entities(out: JobOutput) -> TaskTable:
    return JobOutput(out.root).dataset("entities", ENTITY_SCHEMA)


def run_task_stage(cls, options, out: JobOutput, *, actors=1, gpus_per_actor=0, progress=False, **kw):
    """The stage as the runner calls it: the live document files, the task's table of a fresh JobOutput."""
    fresh = JobOutput(out.root)
    return stages.run_task_stage(
        PlannedTask(cls.name, cls, options),
        Documents(fresh.documents).files(),
        fresh.documents,
        fresh.dataset(cls.dataset, cls.schema),
        placement=Placement(actors, gpus_per_actor),
        progress=progress,
        **kw,
    )


def outputs(out: JobOutput) -> dict[str, tuple[OutputName, DataFile]]:
    """Live outputs by the document file they came from, checking that every live document file has
    exactly one (and no output is of a document file that is not live)."""
    docs = Documents(out.documents).files()
    live = entities(out).outputs()
    by_doc: dict[str, tuple[OutputName, DataFile]] = {}
    for name, info in live.values():
        doc = name.doc + ".parquet"
        assert doc not in by_doc, f"two live outputs of {doc}: {by_doc[doc][1].path} and {info.path}"
        by_doc[doc] = (name, info)
    assert sorted(by_doc) == sorted(docs), (sorted(by_doc), sorted(docs))
    return by_doc


def shard_output(out: JobOutput, doc: str) -> Path:
    """The live output file of document file ``doc``."""
    return Path(entities(out).loc.path) / outputs(out)[doc][1].path


def failures_of(out: JobOutput, doc: str) -> list[dict]:
    """The failed documents that the commit infos record for the live output of ``doc``."""
    name, info = outputs(out)[doc]
    return entities(out).failures([info.path]) if name.failed else []


def live_rows(out: JobOutput) -> list[tuple[int, str]]:
    """(pmid, text) of every live entity row, read by deltalake and by polars, which must agree."""
    import polars as pl
    from deltalake import DeltaTable

    path = entities(out).loc.path
    by_deltalake = sorted(
        (int(p), t.lower()) for p, t in DeltaTable(path).to_pandas(columns=["pmid", "text"]).itertuples(index=False)
    )
    by_polars = sorted((int(p), t.lower()) for p, t in pl.read_delta(path).select("pmid", "text").iter_rows())
    assert by_deltalake == by_polars
    return by_deltalake


# --- tests -----------------------------------------------------------------------------------------


def test_exactly_once_and_resume(tmp_path, ray_local):
    # An empty document file cannot exist in the documents table (write_shard writes none for no
    # rows); "a file that yields no rows still completes" is file 1: one document without any drug.
    out, docs = make_documents(tmp_path, [5, 1, 6, 3])
    options = DictOptions(model="dict-v1", batch_size=2)
    r1 = run_task_stage(DictionaryNer, options, out)
    assert r1.shards_done == 4 and r1.shards_skipped == 0 and r1.documents == 15 and r1.commits >= 1
    tables = {d: pq.read_table(shard_output(out, d)) for d in docs}
    assert tables[docs[1]].num_rows == 0  # an output with no rows still marks its file as done
    got = pa.concat_tables(tables.values()).to_pylist()
    # PMIDs 1..15, odd ones mention two drugs (PMID 13 failed and yields none).
    expected = sorted((p, d) for p in range(1, 16) if p % 2 and p != 13 for d in ("aspirin", "warfarin"))
    assert sorted((r["pmid"], r["text"].lower()) for r in got) == expected
    assert live_rows(out) == expected  # what any Delta reader sees: these rows, once each
    assert [f["pmid"] for f in r1.failures] == [13]  # its batch neighbours were retried one by one
    assert all("poisoned document" in f["error"] for f in r1.failures)

    # The failed records are kept in the commit info of the output of their file (PMIDs 13-15),
    # whose name says it is incomplete.
    failed = read_failures(entities(out))
    assert {f["pmid"] for f in failed} == {f["pmid"] for f in r1.failures}
    assert {f["shard"] for f in failed} == {docs[3]}
    assert [outputs(out)[d][0].failed for d in docs] == [False, False, False, True]

    # Re-run: complete outputs are kept; the one with failed records is computed again (and fails
    # again: the poisoned document is still there, and is still on record).
    r2 = run_task_stage(DictionaryNer, options, out)
    assert r2.shards_done == 1 and r2.shards_skipped == 3
    assert r2.redone == {"failed documents": 1}
    assert [f["pmid"] for f in r2.failures] == [13] and read_failures(entities(out)) == r2.failures
    assert live_rows(out) == expected

    # Lose one clean output: only that file (and the one with failures) is redone, with identical bytes.
    lost = shard_output(out, docs[0])
    before = lost.read_bytes()
    lost.unlink()
    r3 = run_task_stage(DictionaryNer, options, out)
    assert r3.shards_done == 2 and r3.shards_skipped == 2
    assert r3.redone == {"missing": 1, "failed documents": 1}, r3.redone
    assert shard_output(out, docs[0]) == lost and lost.read_bytes() == before
    assert live_rows(out) == expected


class DyingOnceNer(DictionaryNer):
    """Kills its own actor process the first time it sees PMID 7 (a marker file makes it once)."""

    def __call__(self, batch):
        import os
        from pathlib import Path

        if 7 in batch["pmid"].to_pylist() and not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            os._exit(1)  # the actor process dies mid-batch, as on an OOM kill or a lost node
        return super().__call__(batch)


def test_dead_actor_costs_time_not_rows(tmp_path, ray_local):
    out, docs = make_documents(tmp_path, [4, 4, 4])
    marker = tmp_path / "died-once"
    r = run_task_stage(DyingOnceNer, DictOptions(model="dict-v1", marker=str(marker), batch_size=2), out)
    assert marker.exists(), "the actor did not die: the test proves nothing"
    assert r.shards_done == 3 and r.documents == 12 and r.failures == []
    got = pa.concat_tables([pq.read_table(shard_output(out, d)) for d in docs]).to_pylist()
    expected = sorted((p, d) for p in range(1, 13) if p % 2 for d in ("aspirin", "warfarin"))
    assert sorted((row["pmid"], row["text"].lower()) for row in got) == expected  # none lost, none twice
    assert live_rows(out) == expected


class UnloadableNer(DictionaryNer):
    """A model that cannot load (as a damaged checkpoint): a user error, not a Ray crash."""

    def __init__(self, options):
        from biogpt.errors import CheckpointError

        raise CheckpointError(f"cannot read {options.model}/model.safetensors: damaged")


def test_model_that_does_not_load_stops_the_stage_with_its_message(tmp_path, ray_local):
    from pipeline.errors import StageError

    out, _ = make_documents(tmp_path, [3, 3])
    with pytest.raises(
        StageError,
        match=r"ner: the model actor could not start: CheckpointError: cannot read "
        r"models/x/model.safetensors: damaged",
    ):
        run_task_stage(UnloadableNer, DictOptions(model="models/x", batch_size=2), out)
    table = entities(out)
    assert not list(Path(table.loc.path).glob("*.parquet"))  # nothing written as if it were done
    assert not table.exists() or table.outputs() == {}  # and nothing committed


class FailingOnceNer(DictionaryNer):
    """Raises on PMID 5 during the first run only (a transient error: an OOM, a lost GPU): three
    times, for its file, its chunk and its one-document retry."""

    def __call__(self, batch):
        from pathlib import Path

        marker = Path(self.marker)
        tries = int(marker.read_text()) if marker.exists() else 0
        if 5 in batch["pmid"].to_pylist() and tries < 3:
            marker.write_text(str(tries + 1))
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().__call__(batch)


def test_a_transient_failure_is_retried_by_the_next_run(tmp_path, ray_local):
    out, docs = make_documents(tmp_path, [4, 4])
    options = DictOptions(model="dict-v1", marker=str(tmp_path / "failed-once"), batch_size=2)
    r1 = run_task_stage(FailingOnceNer, options, out)
    # Only the document that fails on its own is recorded; its batch neighbour got its rows.
    assert [f["pmid"] for f in r1.failures] == [5] and "out of memory" in r1.failures[0]["error"]
    assert [f["pmid"] for f in failures_of(out, docs[1])] == [5] and failures_of(out, docs[0]) == []
    assert 5 not in pq.read_table(shard_output(out, docs[1])).column("pmid").to_pylist()
    assert 5 not in {p for p, _ in live_rows(out)}

    r2 = run_task_stage(FailingOnceNer, options, out)
    assert r2.shards_done == 1 and r2.shards_skipped == 1 and r2.failures == []
    assert failures_of(out, docs[1]) == [] and read_failures(entities(out)) == []
    assert not any(name.failed for name, _ in outputs(out).values())
    got = pa.concat_tables([pq.read_table(shard_output(out, d)) for d in docs]).to_pylist()
    expected = sorted((p, d) for p in range(1, 9) if p % 2 for d in ("aspirin", "warfarin"))
    assert sorted((row["pmid"], row["text"].lower()) for row in got) == expected
    assert live_rows(out) == expected  # the incomplete output is gone from the table


@pytest.mark.parametrize("damage", ["garbled", "truncated", "empty", "swapped"])
def test_a_rerun_verifies_outputs_before_it_keeps_them(tmp_path, ray_local, damage):
    """A committed output whose file was damaged, cut short, emptied or replaced by another file's
    (valid) output is computed again, with the reason; the others are kept; rows end identical."""
    out, docs = make_documents(tmp_path, [4, 4, 4])
    options = DictOptions(model="dict-v1", batch_size=2)
    run_task_stage(DictionaryNer, options, out)
    clean = {d: pq.read_table(shard_output(out, d)) for d in docs}
    target, other = shard_output(out, docs[1]), shard_output(out, docs[2])
    data = target.read_bytes()
    target.write_bytes(
        {
            "garbled": data[:100] + bytes(len(data) - 100),  # same size: only the checksum tells
            "truncated": data[: len(data) // 2],
            "empty": b"",
            "swapped": other.read_bytes(),
        }[damage]
    )

    r = run_task_stage(DictionaryNer, options, out)
    assert r.shards_done == 1 and r.shards_skipped == 2
    assert r.redone == {"damaged": 1}, r.redone
    got = {d: pq.read_table(shard_output(out, d)) for d in docs}
    assert all(got[k].equals(clean[k]) for k in clean)  # none lost, none duplicated, none stale
    assert target.read_bytes() == data
    expected = sorted((p, d) for p in range(1, 13) if p % 2 for d in ("aspirin", "warfarin"))
    assert live_rows(out) == expected
    assert entities(out).table.verify(entities(out).table.files().values()) == {}  # every live file intact


def test_changed_settings_recompute_and_say_so(tmp_path, ray_local):
    import duckdb
    from deltalake import DeltaTable

    from pipeline.store.maintenance import compact

    out, docs = make_documents(tmp_path, [4, 4])
    run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=2), out)
    # The batch size changes no output: nothing is recomputed.
    same = run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=3), out)
    assert same.shards_skipped == 2 and same.shards_done == 0 and same.commits == 0
    fewer = DictOptions(model="dict-v1", batch_size=2, vocabulary=("warfarin",))
    r = run_task_stage(DictionaryNer, fewer, out)
    assert r.shards_done == 2 and r.redone == {"settings changed": 2}
    rows = pa.concat_tables([pq.read_table(shard_output(out, d)) for d in docs]).to_pylist()
    assert {row["text"].lower() for row in rows} == {"warfarin"}  # no stale aspirin rows left
    assert {t for _, t in live_rows(out)} == {"warfarin"}
    con = duckdb.connect()
    con.register("e", DeltaTable(entities(out).loc.path).to_pyarrow_dataset())
    assert con.sql("SELECT DISTINCT lower(text) FROM e").fetchall() == [("warfarin",)]
    # The superseded files are no longer live (the log); they stay on disk for time travel until
    # a vacuum, which then deletes them (the old test's "the superseded files are gone").
    loc = Path(entities(out).loc.path)
    assert len(entities(out).table.files()) == 2 and len(list(loc.glob("*.parquet"))) == 4
    compact(JobOutput(out.root), retention_hours=0)
    assert sorted(p.name for p in loc.glob("*.parquet")) == sorted(entities(out).table.files())
    # Another model (its checksum) recomputes too; the same model at another path does not.
    model_a = dataclasses.replace(fewer, model_sha256="a" * 64)
    run_task_stage(DictionaryNer, model_a, out)
    moved = run_task_stage(DictionaryNer, dataclasses.replace(model_a, model="elsewhere/dict-v1"), out)
    assert moved.shards_done == 0 and moved.shards_skipped == 2
    other = run_task_stage(DictionaryNer, dataclasses.replace(model_a, model_sha256="b" * 64), out)
    assert other.shards_done == 2 and other.redone == {"settings changed": 2}
    assert len(outputs(out)) == 2


def test_prepare_runs_in_its_own_tasks_not_inside_the_model_actor(tmp_path, ray_local):
    """Ray Data would fuse the CPU prepare step into the actor operator (equal remote args on a CPU
    cluster); its own stats must list the two operators separately."""
    out, _ = make_documents(tmp_path, [3, 3])
    r = run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=2), out)
    prepare = [op for op in r.operators if "_prepare_shards" in op]
    actor = [op for op in r.operators if "_TaskActor" in op]
    assert prepare and actor and not set(prepare) & set(actor), r.operators
