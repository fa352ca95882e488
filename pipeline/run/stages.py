"""Ray Data stages that run a model task over document shards, with exactly-once per-shard outputs.

Contract. Input: Parquet document shards (``OUT/documents/*.parquet``, article schema: at least
``pmid``, ``version``, ``title``, ``abstract``). For each task the stage writes one output file per
input shard, ``OUT/<dataset>/<shard stem>.parquet``, cast to the task's schema, atomically (temp file
then rename). A shard whose output exists is complete and skipped, so re-running after a crash, a
Ctrl-C, a dead actor or a lost node resumes without losing or duplicating a row. A task error does not stop
the stage: the failing shard is retried in ``batch_size`` chunks, then document by document; the
documents that fail on their own get no rows and are listed in ``<shard>.failures.json`` beside the
output (PMID and error), and the next run redoes that shard. A model that cannot load (a
:class:`BioMineError` in the task's constructor) stops the stage with :class:`StageError`.

How: one Ray Data item per pending shard → ``map_batches(_prepare_shards)`` as CPU tasks (read the
shard, tokenise, build prompts: this overlaps the model) → ``map_batches(_TaskActor)`` on an actor
pool (one model load per actor, ``num_gpus`` per actor) → the driver, which writes each shard as its
result arrives. The model sees a WHOLE shard per call and batches it itself by ``batch_size``, so
(1) the batching of a document depends only on its shard, and a resumed run computes bit for bit
what an uninterrupted run does (batched kernels round differently for different batch shapes), and
(2) the generation engine's continuous batching keeps all its slots busy across the shard. Rows
within a shard are sorted by (pmid, the task's own order), so outputs do not depend on scheduling.

Tasks implement :class:`pipeline.tasks.base.Task`: ``prepare`` (a class method: CPU, a pure function
of the batch and the task's typed options) and ``__call__`` on an instance built once per actor.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from biogpt.errors import BioMineError
from pipeline.errors import StageError
from pipeline.store.atomic import write_json, write_parquet
from pipeline.tasks.base import Task
from pipeline.tasks.options import TaskOptions

log = logging.getLogger(__name__)

SHARD_COL = "_shard"
ROWS_COL = "_rows"
ERROR_COL = "_error"
FATAL_COL = "_fatal"
PAYLOAD_COL = "_payload"




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


COLUMNS = ["pmid", "version", "title", "abstract"]


def _prepare_shards(batch: dict[str, Any], task_cls: type[Task], options: TaskOptions) -> dict[str, Any]:
    """CPU stage (stateless Ray tasks): read each shard and let the task build its model inputs.

    One record per SHARD, carrying the prepared documents pickled: the model stage then sees every
    shard whole, so how its documents are batched depends on the shard alone - never on which other
    shards were pending - and a resumed run computes bit for bit what an uninterrupted one does.
    """
    out: dict[str, list] = {SHARD_COL: [], "n": [], PAYLOAD_COL: []}
    for path in batch["path"]:
        table = pq.read_table(str(path), columns=COLUMNS)
        docs = {c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}
        out[SHARD_COL].append(Path(str(path)).stem)
        out["n"].append(table.num_rows)
        out[PAYLOAD_COL].append(pickle.dumps(task_cls.prepare(docs, options), protocol=pickle.HIGHEST_PROTOCOL))
    return out


def _slice(docs: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] for k, v in docs.items()}


class _TaskActor:
    """Model stage: builds the task once per actor; maps one shard's documents to their rows."""

    def __init__(self, task_cls: type[Task], options: TaskOptions):
        self.task, self.fatal = None, ""
        self.chunk = options.batch_size
        try:
            self.task = task_cls(options)
        except BioMineError as exc:
            # A user mistake (a damaged or wrong checkpoint) would otherwise kill the actor in a loop
            # of restarts and surface as a Ray traceback; report it with every shard instead, and the
            # driver stops the stage with this message.
            self.fatal = f"{type(exc).__name__}: {exc}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list] = {SHARD_COL: [], ROWS_COL: [], ERROR_COL: [], FATAL_COL: []}
        for shard, n, payload in zip(batch[SHARD_COL], batch["n"], batch[PAYLOAD_COL]):
            failed: list[dict[str, Any]] = []
            if self.task is None:
                per_doc = [[] for _ in range(int(n))]
            else:
                docs = pickle.loads(payload)
                per_doc, errors = self._run(docs, int(n))
                failed = [{"pmid": int(pmid), "error": error} for pmid, error in zip(docs["pmid"], errors) if error]
            out[SHARD_COL].append(str(shard))
            out[ROWS_COL].append(pickle.dumps(per_doc, protocol=pickle.HIGHEST_PROTOCOL))
            out[ERROR_COL].append(json.dumps(failed))
            out[FATAL_COL].append(self.fatal)
        return out

    def _run(self, docs: dict[str, Any], n: int) -> tuple[list[list[dict]], list[str]]:
        """Rows and error text ("" = none) per document. The task sees the whole shard (it batches
        it by ``batch_size`` itself: the RE engine keeps all its slots busy across the shard); after a
        failure, each ``batch_size`` chunk is retried, then each document of a failing chunk, so one
        bad record (or a batch too large for the GPU) costs only the documents that fail alone."""
        try:
            return self.task(docs), [""] * n
        except Exception as exc:  # a bad batch must not kill the run
            log.warning("task %s failed on a shard of %d documents (%s: %s); retrying it in chunks of %d",
                        self.task.name, n, type(exc).__name__, exc, self.chunk)
        per_doc: list[list[dict]] = []
        errors: list[str] = []
        for start in range(0, n, self.chunk):
            stop = min(n, start + self.chunk)
            try:
                per_doc += self.task(_slice(docs, start, stop))
                errors += [""] * (stop - start)
                continue
            except Exception:
                pass
            for i in range(start, stop):
                try:
                    per_doc += self.task(_slice(docs, i, i + 1))
                    errors.append("")
                except Exception as one:
                    log.error("task %s failed on PMID %s: %s: %s", self.task.name, docs["pmid"][i],
                              type(one).__name__, one)
                    per_doc.append([])
                    errors.append(f"{type(one).__name__}: {one}")
        return per_doc, errors


def _quiet_ray_data_console() -> None:
    """Ray Data logs every execution plan at INFO to the console (its own handler, set up when
    ``ray.data`` is imported); keep warnings there, and everything in Ray's session log files."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)


def run_task_stage(task_cls: type[Task], options: TaskOptions, shards: list[Path], out_dir: Path, *,
                   actors: int, gpus_per_actor: float, cpus_per_actor: float = 1.0,
                   on_shard: Callable[[Path, int, int], None] | None = None,
                   progress: bool = True) -> StageResult:
    """Run ``task_cls`` over ``shards``, writing ``out_dir/<shard>.parquet`` for each pending shard.

    :raises StageError: the task's model cannot be loaded (finished shards are kept).
    """
    import ray

    result = StageResult(task=task_cls.name)
    start = time.perf_counter()
    # Pending: no output yet, or an output with failed records (retried: a transient error - an OOM,
    # a lost GPU - must not leave documents without rows for good).
    pending = [s for s in shards
               if not shard_output(out_dir, s).exists() or shard_failures_file(out_dir, s).exists()]
    result.shards_skipped = len(shards) - len(pending)
    expected = {Path(s).stem: pq.ParquetFile(s).metadata.num_rows for s in pending}
    for s in [s for s in pending if expected[Path(s).stem] == 0]:  # nothing to run, but complete
        write_parquet(task_cls.schema.empty_table(), shard_output(out_dir, s))
        shard_failures_file(out_dir, s).unlink(missing_ok=True)
        result.shards_done += 1
    pending = [s for s in pending if expected[Path(s).stem] > 0]
    if not pending:
        result.seconds = time.perf_counter() - start
        return result

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards complete in order
    # Ray Data's bars in a terminal; elsewhere (cron, CI logs) one log line per finished shard instead
    # of Ray's periodic plan dumps, which would bury the lines that name failing records.
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    _quiet_ray_data_console()
    # One item (and block) per shard, so shards are prepared in parallel CPU tasks while the actors
    # run the model on shards prepared before (Ray Data streams and backpressures between the two).
    ds = ray.data.from_items([{"path": str(s)} for s in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(_prepare_shards, fn_kwargs=dict(task_cls=task_cls, options=options),
                        batch_size=1, num_cpus=1)
    ds = ds.map_batches(_TaskActor, fn_constructor_kwargs=dict(task_cls=task_cls, options=options),
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
                        num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor)
    # Ray Data restarts dead actors and retries their tasks by default (max_restarts=-1): a lost
    # actor or node costs time, not rows; a shard is written only once its whole result arrived.

    done: set[str] = set()
    for record in ds.iter_rows():
        if record[FATAL_COL]:
            raise StageError(f"{task_cls.name}: the model actor could not start: {record[FATAL_COL]} "
                             f"({result.shards_done} shards finished before are kept; fix the model and re-run)")
        shard = str(record[SHARD_COL])
        per_doc = pickle.loads(record[ROWS_COL])
        if len(per_doc) != expected[shard]:
            raise RuntimeError(f"task {task_cls.name} returned {len(per_doc)} results for the "
                               f"{expected[shard]} documents of shard {shard}")
        failed = [{"task": task_cls.name, "pmid": f["pmid"], "shard": shard, "error": f["error"]}
                  for f in json.loads(record[ERROR_COL])]
        rows = [row for doc_rows in per_doc for row in doc_rows]
        # Stable sort: by pmid, then the task's own keys; rows of one document keep the task's order.
        rows.sort(key=lambda r: tuple(r.get(k) if r.get(k) is not None else -1
                                      for k in ("pmid",) + tuple(task_cls.sort_keys)))
        table = task_cls.cast_batch(rows)  # the schema module's checked cast
        out = shard_output(out_dir, Path(shard))
        if failed:  # recorded before the output exists, so a crash cannot lose the record
            write_json(failed, shard_failures_file(out_dir, shard))
        write_parquet(table, out)
        if not failed:
            shard_failures_file(out_dir, shard).unlink(missing_ok=True)
        result.failures += failed
        result.shards_done += 1
        result.documents += expected[shard]
        result.rows += len(rows)
        done.add(shard)
        log.info("%s: %s done (%d documents, %d rows, %d failed) [%d/%d shards]", task_cls.name, out,
                 expected[shard], len(rows), len(failed), result.shards_done + result.shards_skipped, len(shards))
        if on_shard:
            on_shard(out, expected[shard], len(rows))
    missing = sorted(set(expected) - done - {Path(s).stem for s in shards if expected.get(Path(s).stem) == 0})
    if missing:
        raise RuntimeError(f"task {task_cls.name}: shards without results after the stage finished: {missing}")
    result.seconds = time.perf_counter() - start
    return result
