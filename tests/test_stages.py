"""The Ray stage runner: one output file per document shard, exactly once, resumable.

Uses a rule-based task (a dictionary lookup, no model) so the Ray mechanics are tested on their own:
documents with no entities still complete their shard, a re-run skips complete shards, a shard whose
output was lost is redone with identical contents, and a task error is recorded per document.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray import cloudpickle as ray_cloudpickle

from pipeline.run import stages
from pipeline.run.cluster import Placement
from pipeline.run.plan import PlannedTask
from pipeline.run.stages import read_failures
from pipeline.store.datasets import TaskDataset
from pipeline.store.storage import location
from pipeline.tasks.base import Task
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
    Options = DictOptions
    cast_batch = staticmethod(cast_batch)

    @classmethod
    def check_model(cls, options):
        return None

    @classmethod
    def prepare(cls, batch, options):
        batch["text"] = [f"{t} {a}" for t, a in zip(batch["title"], batch["abstract"])]
        return batch

    def __init__(self, options):
        self.model_id = options.model
        self.marker = options.marker
        self.vocabulary = options.vocabulary

    def __call__(self, batch):
        if 13 in list(batch["pmid"]):
            raise ValueError("poisoned document")
        out = []
        for pmid, version, text in zip(batch["pmid"], batch["version"], batch["text"]):
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


def run_task_stage(cls, options, shards, out, *, actors, gpus_per_actor, progress=False, **kw):
    """The stage as the runner calls it, for a task class and its options."""
    return stages.run_task_stage(
        PlannedTask(cls.name, cls, options),
        shards,
        TaskDataset(location(out)),
        placement=Placement(actors, gpus_per_actor),
        progress=progress,
        **kw,
    )


@pytest.fixture(scope="module")
def ray_local():
    from pipeline.run.cluster import init_ray

    init_ray(num_cpus=2)
    yield
    import ray

    ray.shutdown()


def shard_output(out, shard):
    """The committed data file of document shard ``shard`` in dataset ``out`` (its commit record names it)."""
    record = TaskDataset(location(out)).record(shard.stem)
    assert record is not None, f"{shard.stem} has no commit record in {out}"
    return out / record["file"]["name"]


def failures_of(out, shard):
    record = TaskDataset(location(out)).record(shard.stem)
    return record["failures"] if record else None


def make_shards(tmp_path, docs_per_shard):
    shards = []
    pmid = 1
    for i, n in enumerate(docs_per_shard):
        rows = [
            dict(
                pmid=pmid + k,
                version=1,
                title=f"Doc {pmid + k}.",
                abstract="Aspirin and warfarin." if (pmid + k) % 2 else "No drugs here.",
            )
            for k in range(n)
        ]
        pmid += n
        path = tmp_path / "documents" / f"part-{i:06d}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
        shards.append(path)
    return shards


def test_exactly_once_and_resume(tmp_path, ray_local):
    shards = make_shards(tmp_path, [5, 0, 7, 3])
    out = tmp_path / "entities"
    kw = dict(actors=1, gpus_per_actor=0, progress=False)
    r1 = run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=2), shards, out, **kw)
    assert r1.shards_done == 4 and r1.shards_skipped == 0 and r1.documents == 15
    tables = {s.stem: pq.read_table(shard_output(out, s)) for s in shards}
    assert tables["part-000001"].num_rows == 0
    got = pa.concat_tables(tables.values()).to_pylist()
    # PMIDs 1..15, odd ones mention two drugs (PMID 13 failed and yields none).
    expected = sorted((p, d) for p in range(1, 16) if p % 2 and p != 13 for d in ("aspirin", "warfarin"))
    assert sorted((r["pmid"], r["text"].lower()) for r in got) == expected
    assert [f["pmid"] for f in r1.failures] == [13]  # its batch neighbours were retried one by one
    assert all("poisoned document" in f["error"] for f in r1.failures)

    # The failed records are kept in the commit record of their shard (the one holding PMIDs 13-15).
    failed = read_failures(out)
    assert {f["pmid"] for f in failed} == {f["pmid"] for f in r1.failures}
    assert {f["shard"] for f in failed} == {"part-000003"}

    # Re-run: complete shards are skipped; the shard with failed records is retried (and fails again:
    # the poisoned document is still there, and is still on record).
    r2 = run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=2), shards, out, **kw)
    assert r2.shards_done == 1 and r2.shards_skipped == 3
    assert [f["pmid"] for f in r2.failures] == [13] and read_failures(out) == r2.failures
    # Lose one clean output: only that shard is redone, with identical bytes of data.
    lost = shard_output(out, shards[0])
    before = pq.read_table(lost)
    lost.unlink()
    r3 = run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=2), shards, out, **kw)
    assert r3.shards_done == 2 and r3.shards_skipped == 2  # the lost one and the one with failures
    assert pq.read_table(lost).equals(before)


class DyingOnceNer(DictionaryNer):
    """Kills its own actor process the first time it sees PMID 7 (a marker file makes it once)."""

    def __call__(self, batch):
        import os
        from pathlib import Path

        if 7 in list(batch["pmid"]) and not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            os._exit(1)  # the actor process dies mid-batch, as on an OOM kill or a lost node
        return super().__call__(batch)


def test_dead_actor_costs_time_not_rows(tmp_path, ray_local):
    shards = make_shards(tmp_path, [4, 4, 4])
    marker = tmp_path / "died-once"
    out = tmp_path / "entities"
    r = run_task_stage(
        DyingOnceNer,
        DictOptions(model="dict-v1", marker=str(marker), batch_size=2),
        shards,
        out,
        actors=1,
        gpus_per_actor=0,
        progress=False,
    )
    assert marker.exists(), "the actor did not die: the test proves nothing"
    assert r.shards_done == 3 and r.documents == 12 and r.failures == []
    got = pa.concat_tables([pq.read_table(shard_output(out, s)) for s in shards]).to_pylist()
    expected = sorted((p, d) for p in range(1, 13) if p % 2 for d in ("aspirin", "warfarin"))
    assert sorted((row["pmid"], row["text"].lower()) for row in got) == expected  # none lost, none twice


class UnloadableNer(DictionaryNer):
    """A model that cannot load (as a damaged checkpoint): a user error, not a Ray crash."""

    def __init__(self, options):
        from biogpt.errors import CheckpointError

        raise CheckpointError(f"cannot read {options.model}/model.safetensors: damaged")


def test_model_that_does_not_load_stops_the_stage_with_its_message(tmp_path, ray_local):
    from pipeline.errors import StageError

    shards = make_shards(tmp_path, [3, 3])
    with pytest.raises(
        StageError,
        match=r"ner: the model actor could not start: CheckpointError: cannot read "
        r"models/x/model.safetensors: damaged",
    ):
        run_task_stage(
            UnloadableNer,
            DictOptions(model="models/x", batch_size=2),
            shards,
            tmp_path / "entities",
            actors=1,
            gpus_per_actor=0,
            progress=False,
        )
    assert not list((tmp_path / "entities").glob("*.parquet"))  # nothing written as if it were done
    assert TaskDataset(location(tmp_path / "entities")).records() == {}


class FailingOnceNer(DictionaryNer):
    """Raises on PMID 5 during the first run only (a transient error: an OOM, a lost GPU): three
    times, for its shard, its chunk and its one-document retry."""

    def __call__(self, batch):
        from pathlib import Path

        marker = Path(self.marker)
        tries = int(marker.read_text()) if marker.exists() else 0
        if 5 in list(batch["pmid"]) and tries < 3:
            marker.write_text(str(tries + 1))
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().__call__(batch)


def test_a_transient_failure_is_retried_by_the_next_run(tmp_path, ray_local):
    shards = make_shards(tmp_path, [4, 4])
    out = tmp_path / "entities"
    options = DictOptions(model="dict-v1", marker=str(tmp_path / "failed-once"), batch_size=2)
    kw = dict(actors=1, gpus_per_actor=0, progress=False)
    r1 = run_task_stage(FailingOnceNer, options, shards, out, **kw)
    # Only the document that fails on its own is recorded; its batch neighbour got its rows.
    assert [f["pmid"] for f in r1.failures] == [5] and "out of memory" in r1.failures[0]["error"]
    assert failures_of(out, shards[1]) and failures_of(out, shards[0]) == []
    assert 5 not in pq.read_table(shard_output(out, shards[1])).column("pmid").to_pylist()

    r2 = run_task_stage(FailingOnceNer, options, shards, out, **kw)
    assert r2.shards_done == 1 and r2.shards_skipped == 1 and r2.failures == []
    assert failures_of(out, shards[1]) == [] and read_failures(out) == []
    got = pa.concat_tables([pq.read_table(shard_output(out, s)) for s in shards]).to_pylist()
    expected = sorted((p, d) for p in range(1, 9) if p % 2 for d in ("aspirin", "warfarin"))
    assert sorted((row["pmid"], row["text"].lower()) for row in got) == expected


@pytest.mark.parametrize("damage", ["garbled", "truncated", "empty", "swapped"])
def test_a_rerun_verifies_outputs_before_it_skips_them(tmp_path, ray_local, damage):
    """A committed output whose file was damaged, cut short, emptied or replaced by another shard's
    (valid) output is computed again, with the reason; the others are skipped; rows end identical."""
    shards = make_shards(tmp_path, [4, 4, 4])
    out = tmp_path / "entities"
    options = DictOptions(model="dict-v1", batch_size=2)
    kw = dict(actors=1, gpus_per_actor=0, progress=False)
    run_task_stage(DictionaryNer, options, shards, out, **kw)
    clean = {s.stem: pq.read_table(shard_output(out, s)) for s in shards}
    target, other = shard_output(out, shards[1]), shard_output(out, shards[2])
    data = target.read_bytes()
    target.write_bytes(
        {
            "garbled": data[:100] + bytes(len(data) - 100),
            "truncated": data[: len(data) // 2],
            "empty": b"",
            "swapped": other.read_bytes(),
        }[damage]
    )

    r = run_task_stage(DictionaryNer, options, shards, out, **kw)
    assert r.shards_done == 1 and r.shards_skipped == 2
    assert r.redone == {"damaged": 1}, r.redone
    got = {s.stem: pq.read_table(shard_output(out, s)) for s in shards}
    assert all(got[k].equals(clean[k]) for k in clean)  # none lost, none duplicated, none stale
    pmids = sorted(p for t in got.values() for p in set(t.column("pmid").to_pylist()))
    assert pmids == sorted(set(pmids)) and pmids == [p for p in range(1, 13) if p % 2]


def test_changed_settings_recompute_and_say_so(tmp_path, ray_local):
    shards = make_shards(tmp_path, [4, 4])
    out = tmp_path / "entities"
    kw = dict(actors=1, gpus_per_actor=0, progress=False)
    run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=2), shards, out, **kw)
    # The batch size changes no output: nothing is recomputed.
    same = run_task_stage(DictionaryNer, DictOptions(model="dict-v1", batch_size=3), shards, out, **kw)
    assert same.shards_skipped == 2 and same.shards_done == 0
    fewer = DictOptions(model="dict-v1", batch_size=2, vocabulary=("warfarin",))
    r = run_task_stage(DictionaryNer, fewer, shards, out, **kw)
    assert r.shards_done == 2 and r.redone == {"settings changed": 2}
    rows = pa.concat_tables([pq.read_table(shard_output(out, s)) for s in shards]).to_pylist()
    assert {row["text"].lower() for row in rows} == {"warfarin"}  # no stale aspirin rows left
    assert len(list(out.glob("*.parquet"))) == 2  # the superseded files are gone
    # Another model (its checksum) recomputes too; the same model at another path does not.
    model_a = dataclasses.replace(fewer, model_sha256="a" * 64)
    run_task_stage(DictionaryNer, model_a, shards, out, **kw)
    moved = run_task_stage(DictionaryNer, dataclasses.replace(model_a, model="elsewhere/dict-v1"), shards, out, **kw)
    assert moved.shards_done == 0 and moved.shards_skipped == 2
    other = run_task_stage(DictionaryNer, dataclasses.replace(model_a, model_sha256="b" * 64), shards, out, **kw)
    assert other.shards_done == 2 and other.redone == {"settings changed": 2}


def test_prepare_runs_in_its_own_tasks_not_inside_the_model_actor(tmp_path, ray_local):
    """Ray Data would fuse the CPU prepare step into the actor operator (equal remote args on a CPU
    cluster); its own stats must list the two operators separately."""
    shards = make_shards(tmp_path, [3, 3])
    r = run_task_stage(
        DictionaryNer,
        DictOptions(model="dict-v1", batch_size=2),
        shards,
        tmp_path / "entities",
        actors=1,
        gpus_per_actor=0,
        progress=False,
    )
    prepare = [op for op in r.operators if "_prepare_shards" in op]
    actor = [op for op in r.operators if "_TaskActor" in op]
    assert prepare and actor and not set(prepare) & set(actor), r.operators
