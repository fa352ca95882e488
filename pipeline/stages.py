"""Ray Data stages that run a model task over document shards, with exactly-once per-shard outputs.

Contract. Input: Parquet document shards (``OUT/documents/*.parquet``, article schema: at least
``pmid``, ``version``, ``title``, ``abstract``). For each task the stage writes one output file per
input shard, ``OUT/<dataset>/<shard stem>.parquet``, cast to the task's schema, atomically (temp file
then rename). A shard whose output exists is complete and skipped, so re-running after a crash, a
Ctrl-C, a dead actor or a lost node resumes without losing or duplicating a row. A task error on a
batch does not stop the stage: its documents are retried one by one; those that fail on their own
get no rows and are listed in ``<shard>.failures.json`` beside the output (PMID and error), and the
next run redoes that shard. A model that cannot load (a :class:`BioMineError` in the task's
constructor) stops the stage with :class:`StageError`.

How: ``read_parquet(pending shards)`` → ``map_batches(prepare)`` as CPU tasks (tokenisation and
prompt building overlap the model) → ``map_batches(TaskActor)`` on an actor pool (one model load per
actor, ``num_gpus`` per actor) → the driver. The actor returns exactly ONE record per input document,
holding that document's output rows as a list column, so the driver can count documents per shard and
write a shard the moment its last document arrives, even when a document yields no rows. Rows within
a shard are sorted by (pmid, the task's own order) so outputs do not depend on scheduling.

Tasks implement :class:`Task`: ``prepare`` (static, CPU, pure function of the batch and options) and
``__call__`` on an instance built once per actor.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from biogpt.errors import BioMineError

log = logging.getLogger(__name__)

SHARD_COL = "_shard"
ROWS_COL = "_rows"
ERROR_COL = "_error"
FATAL_COL = "_fatal"


class Task(Protocol):
    """A model task as the pipeline sees it (implementations live in ``pipeline/tasks/``)."""

    name: str  # "ner" | "re" | "summarize"
    dataset: str  # output dataset under OUT/: "entities" | "relations" | "summaries"
    schema: pa.Schema  # the output rows' schema (from schemas/)
    sort_keys: tuple[str, ...]  # row order within a shard, after pmid

    @staticmethod
    def prepare(batch: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """CPU: add model inputs (e.g. token ids) to a batch of documents."""

    def __call__(self, batch: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Model: the output rows of each document of the batch, in batch order."""


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that readers see the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def atomic_write_json(data: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def shard_output(out_dir: Path, shard: Path) -> Path:
    return out_dir / f"{Path(shard).stem}.parquet"


def shard_failures_file(out_dir: Path, shard: Path | str) -> Path:
    """``out_dir/<shard>.failures.json``: the records of that shard whose batch failed. It is written
    before the shard's output and removed after a clean redo, so it survives a crash, and a shard
    that has one is retried by the next run (outputs are deterministic: a redo replaces it as is)."""
    return out_dir / f"{Path(shard).stem}.failures.json"


def read_failures(out_dir: Path, shards: list[Path] | None = None) -> list[dict[str, Any]]:
    """The failure records of ``shards`` (default: every shard with a failures file in ``out_dir``)."""
    files = ([shard_failures_file(out_dir, s) for s in shards] if shards is not None
             else sorted(Path(out_dir).glob("*.failures.json")))
    out: list[dict[str, Any]] = []
    for f in files:
        if f.exists():
            out += json.loads(f.read_text())
    return out


@dataclass
class StageResult:
    task: str
    shards_done: int = 0
    shards_skipped: int = 0
    documents: int = 0
    rows: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _prepare(batch: dict[str, Any], task_cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """CPU stage (stateless Ray tasks, so it never pins a CPU that reads need): tag each document
    with its shard and let the task build its model inputs."""
    batch = dict(batch)
    batch[SHARD_COL] = [Path(p).stem for p in batch.pop("path")]
    return task_cls.prepare(batch, options)


class StageError(BioMineError):
    """A stage cannot run at all (e.g. its model does not load); completed shards are kept."""


class _TaskActor:
    """Model stage: builds the task once per actor; one output record per input document."""

    def __init__(self, task_cls: type, options: dict[str, Any]):
        self.task, self.fatal = None, ""
        try:
            self.task = task_cls(**options)
        except BioMineError as exc:
            # A user mistake (a damaged or wrong checkpoint) would otherwise kill the actor in a loop
            # of restarts and surface as a Ray traceback; report it with every batch instead, and the
            # driver stops the stage with this message.
            self.fatal = f"{type(exc).__name__}: {exc}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["pmid"])
        if self.task is None:
            return {SHARD_COL: list(batch[SHARD_COL]), "pmid": list(batch["pmid"]), ROWS_COL: ["[]"] * n,
                    ERROR_COL: [""] * n, FATAL_COL: [self.fatal] * n}
        # "" not None: an all-None column comes back from Ray Data's numpy batches as NaN (truthy).
        errors = [""] * n
        try:
            per_doc = self.task(batch)
        except Exception as exc:  # a bad batch must not kill the run
            # Retry its documents one by one, so that one bad record (or a batch too large for the
            # GPU) costs only the documents that fail on their own; those are recorded with the error.
            log.warning("task %s failed on a batch of %d (%s: %s); retrying its documents one by one",
                        self.task.name, n, type(exc).__name__, exc)
            per_doc = []
            for i in range(n):
                try:
                    per_doc += self.task({k: v[i:i + 1] for k, v in batch.items()})
                except Exception as one:
                    log.error("task %s failed on PMID %s: %s: %s", self.task.name, batch["pmid"][i],
                              type(one).__name__, one)
                    per_doc.append([])
                    errors[i] = f"{type(one).__name__}: {one}"
        return {
            SHARD_COL: list(batch[SHARD_COL]),
            "pmid": list(batch["pmid"]),
            ROWS_COL: [json.dumps(rows, default=str) for rows in per_doc],
            ERROR_COL: errors,
            FATAL_COL: [""] * n,
        }


def _quiet_ray_data_console() -> None:
    """Ray Data logs every execution plan at INFO to the console (its own handler, set up when
    ``ray.data`` is imported); keep warnings there, and everything in Ray's session log files."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)


def run_task_stage(task_cls: type, options: dict[str, Any], shards: list[Path], out_dir: Path, *,
                   batch_size: int, actors: int, gpus_per_actor: float, cpus_per_actor: float = 1.0,
                   on_shard: Callable[[Path, int, int], None] | None = None,
                   progress: bool = True) -> StageResult:
    """Run ``task_cls`` over ``shards``, writing ``out_dir/<shard>.parquet`` for each pending shard."""
    import ray

    result = StageResult(task=task_cls.name)
    start = time.perf_counter()
    # Pending: no output yet, or an output with failed records (retried: a transient error - an OOM,
    # a lost GPU - must not leave documents without rows for good).
    pending = [s for s in shards
               if not shard_output(out_dir, s).exists() or shard_failures_file(out_dir, s).exists()]
    result.shards_skipped = len(shards) - len(pending)
    if not pending:
        result.seconds = time.perf_counter() - start
        return result
    expected = {Path(s).stem: pq.ParquetFile(s).metadata.num_rows for s in pending}
    empty = [s for s in pending if expected[Path(s).stem] == 0]
    for s in empty:  # nothing to run, but the shard is complete
        atomic_write_parquet(task_cls.schema.empty_table(), shard_output(out_dir, s))
        result.shards_done += 1
    pending = [s for s in pending if expected[Path(s).stem] > 0]
    if not pending:
        result.seconds = time.perf_counter() - start
        return result

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards complete in order: bounded driver buffers
    # Ray Data's bars in a terminal; elsewhere (cron, CI logs) one log line per finished shard instead
    # of Ray's periodic plan dumps, which would bury the lines that name failing records.
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    _quiet_ray_data_console()
    columns = ["pmid", "version", "title", "abstract"]
    ds = ray.data.read_parquet([str(s) for s in pending], columns=columns, include_paths=True)
    ds = ds.map_batches(_prepare, fn_kwargs=dict(task_cls=task_cls, options=options),
                        batch_size=batch_size, batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(_TaskActor, fn_constructor_kwargs=dict(task_cls=task_cls, options=options),
                        batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
                        num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor)
    # Ray Data restarts dead actors and retries their tasks by default (max_restarts=-1): a lost
    # actor or node costs time, not rows; the driver only writes a shard once all its documents arrived.

    buffers: dict[str, list[dict[str, Any]]] = {}
    seen: dict[str, int] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        fatal = next((str(f) for f in batch[FATAL_COL] if f), None)
        if fatal:
            raise StageError(f"{task_cls.name}: the model actor could not start: {fatal} "
                             f"({result.shards_done} shards finished before are kept; fix the model and re-run)")
        for shard, pmid, rows, error in zip(batch[SHARD_COL], batch["pmid"], batch[ROWS_COL], batch[ERROR_COL]):
            shard = str(shard)
            buffers.setdefault(shard, []).extend(json.loads(rows))
            seen[shard] = seen.get(shard, 0) + 1
            if error:
                result.failures.append({"task": task_cls.name, "pmid": int(pmid), "shard": shard, "error": str(error)})
            if seen[shard] == expected[shard]:
                rows_ = buffers.pop(shard)
                rows_.sort(key=lambda r: tuple(r.get(k) if r.get(k) is not None else -1
                                               for k in ("pmid",) + tuple(task_cls.sort_keys)))
                cast = getattr(task_cls, "cast_batch", None)  # the schema module's checked cast
                table = cast(rows_) if cast else pa.Table.from_pylist(rows_, schema=task_cls.schema)
                out = out_dir / f"{shard}.parquet"
                failed = [f for f in result.failures if f["shard"] == shard]
                if failed:  # recorded before the output exists, so a crash cannot lose the record
                    atomic_write_json(failed, shard_failures_file(out_dir, shard))
                atomic_write_parquet(table, out)
                if not failed:
                    shard_failures_file(out_dir, shard).unlink(missing_ok=True)
                result.shards_done += 1
                result.documents += expected[shard]
                result.rows += len(rows_)
                log.info("%s: %s done (%d documents, %d rows) [%d/%d shards]", task_cls.name, out,
                         expected[shard], len(rows_), result.shards_done + result.shards_skipped, len(shards))
                if on_shard:
                    on_shard(out, expected[shard], len(rows_))
    missing = {s: expected[s] - seen.get(s, 0) for s in expected if seen.get(s, 0) != expected[s]}
    if missing:
        raise RuntimeError(f"task {task_cls.name}: shards incomplete after the stage finished: {missing}")
    result.seconds = time.perf_counter() - start
    return result
