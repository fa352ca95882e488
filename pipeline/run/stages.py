"""Ray Data stages that run a model task over document shards, with exactly-once per-shard outputs.

Contract. Input: document shards (Parquet in the article schema: at least ``pmid``, ``version``,
``title``, ``abstract``) on any storage (:mod:`pipeline.store.storage`). For each input shard the
stage writes one immutable data file of the task's schema into the output dataset and commits it
with a record that holds its fingerprint (:mod:`pipeline.store.datasets`). The WORKERS read the
document shards from storage and write the data files to storage themselves; the driver only
verifies and commits, so no node needs a disk shared with another. Before it skips a shard the stage
verifies its committed output (fingerprint, size and checksum of the data file): a missing, damaged,
swapped or stale output is computed again, and :attr:`StageResult.redone` says why. Re-running after
a crash, a Ctrl-C, a dead actor or a lost node therefore resumes without losing or duplicating a row.
A task error does not stop the stage: the failing shard is retried in ``batch_size`` chunks, then
document by document; documents that fail on their own get no rows and are listed in the commit
record (PMID and error), and the next run redoes that shard. A model that cannot load (a
:class:`BioMineError` in the task's constructor) stops the stage with :class:`StageError`.

How: one Ray Data item per pending shard → ``map_batches(_prepare_shards)`` as separate CPU tasks
(read the shard, tokenise, build prompts: this overlaps the model; its ``memory`` request keeps
Ray Data from fusing it into the actor) → ``map_batches(_TaskActor)`` on an actor pool (one model
load per actor, ``num_gpus`` per actor; a model on object storage is fetched once per node,
:mod:`pipeline.store.models`) → the driver, which commits each shard as its result arrives. The
model sees a WHOLE shard per call and batches it itself by ``batch_size``, so (1) the batching of a
document depends only on its shard, and a resumed run computes bit for bit what an uninterrupted
run does (batched kernels round differently for different batch shapes), and (2) the generation
engine's continuous batching keeps all its slots busy across the shard. Rows within a shard are
sorted by (pmid, the task's own order), so outputs do not depend on scheduling.

Tasks implement :class:`pipeline.tasks.base.Task`: ``prepare`` (a class method: CPU, a pure function
of the batch and the task's typed options) and ``__call__`` on an instance built once per actor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from biogpt import hub
from biogpt.errors import BioMineError
from pipeline.errors import StageError, StoreError
from pipeline.run.cluster import worker_error
from pipeline.store.datasets import ShardOutput, TaskDataset, data_file_name, fingerprint
from pipeline.store.models import materialize, materialize_file
from pipeline.store.storage import FileInfo, Location, location, parquet_bytes
from pipeline.tasks.base import Task
from pipeline.tasks.options import TaskOptions

if TYPE_CHECKING:
    from pipeline.run.cluster import Placement
    from pipeline.run.plan import PlannedTask

log = logging.getLogger(__name__)
O = TypeVar("O", bound=TaskOptions)

SHARD_COL = "_shard"
URI_COL = "_uri"
PAYLOAD_COL = "_payload"
RESULT_COL = "_result"
FATAL_COL = "_fatal"
COLUMNS = ["pmid", "version", "title", "abstract"]
#: Bytes a prepare task reserves (Ray's ``memory`` resource): one shard's documents and model inputs.
PREPARE_MEMORY = 256 * 1024 * 1024


@dataclass
class StageResult:
    task: str
    shards_done: int = 0
    shards_skipped: int = 0
    documents: int = 0
    rows: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: Why shards that had a commit record were computed again: reason -> shards.
    redone: dict[str, int] = field(default_factory=dict)
    #: Ray Data's operators, as its stats name them (the prepare step must be its own operator).
    operators: list[str] = field(default_factory=list)
    seconds: float = 0.0


def stage_settings(task_cls: type[Task], options: TaskOptions) -> dict[str, Any]:
    """What a task's outputs depend on: the task, its output schema version and its settings."""
    meta = task_cls.schema.metadata or {}
    return {
        "task": task_cls.name,
        "schema_version": int(meta.get(b"biomine.schema_version", b"0")),
        **options.settings(),
    }


def shard_name(shard: str | os.PathLike | Location) -> str:
    """``part-000003`` for ``.../part-000003.parquet``."""
    name = location(shard).name
    return name[: -len(".parquet")] if name.endswith(".parquet") else name


def shard_identity(shard: Location) -> dict[str, Any]:
    """Name, rows, size and sha256 of a document shard read from storage (when its manifest has none)."""
    return {
        "name": shard.name,
        "rows": shard.parquet_metadata().num_rows,
        "size": shard.size(),
        "sha256": shard.sha256(),
    }


def localise(options: O) -> O:
    """``options`` with every input file local to this node: the one place a node turns the run's
    URIs and model names into paths (fetched once per node into its cache, checked against the
    checksums the run pinned: :mod:`pipeline.store.models`)."""
    local: dict[str, str] = {}
    for ref in options.inputs():
        checksum = getattr(options, ref.checksum_field)
        if ref.kind == "model":
            if hub.is_explicit_name(ref.uri) or not location(ref.uri).is_local:
                local[ref.field] = str(materialize(ref.uri, checksum))
        elif not location(ref.uri).is_local:
            local[ref.field] = str(materialize_file(ref.uri, checksum))
    return dataclasses.replace(options, **local) if local else options


def _prepare_shards(batch: dict[str, Any], task_cls: type[Task[O]], options: O) -> dict[str, Any]:
    """CPU stage (stateless Ray tasks): read each shard from storage and let the task build its inputs.

    One record per SHARD, carrying the prepared documents pickled: the model stage then sees every
    shard whole, so how its documents are batched depends on the shard alone - never on which other
    shards were pending - and a resumed run computes bit for bit what an uninterrupted one does.
    """
    options = localise(options)
    out: dict[str, list] = {SHARD_COL: [], PAYLOAD_COL: []}
    for shard, uri in zip(batch[SHARD_COL], batch[URI_COL]):
        table = location(str(uri)).read_table(COLUMNS)
        docs = {c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}
        out[SHARD_COL].append(str(shard))
        out[PAYLOAD_COL].append(pickle.dumps(task_cls.prepare(docs, options), protocol=pickle.HIGHEST_PROTOCOL))
    return out


def _slice(docs: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] for k, v in docs.items()}


def _sort_key(sort_keys: tuple[str, ...]):
    keys = ("pmid",) + tuple(sort_keys)
    return lambda r: tuple(r.get(k) if r.get(k) is not None else -1 for k in keys)


class _TaskActor:
    """Model stage: builds the task once per actor; maps one shard's documents to their rows and
    writes them, as one immutable data file, into the output dataset on storage."""

    def __init__(self, task_cls: type[Task[O]], options: O, out: Location):
        self.task: Task[O] | None = None
        self.fatal = ""
        self.task_cls = task_cls
        self.chunk = options.batch_size
        self.out = out
        try:
            self.task = task_cls(localise(options))
        except BioMineError as exc:
            # A user mistake (a damaged or wrong checkpoint) would otherwise kill the actor in a loop
            # of restarts and surface as a Ray traceback; report it with every shard instead, and the
            # driver stops the stage with this message.
            self.fatal = f"{type(exc).__name__}: {exc}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list] = {SHARD_COL: [], RESULT_COL: [], FATAL_COL: []}
        for shard, payload in zip(batch[SHARD_COL], batch[PAYLOAD_COL]):
            out[SHARD_COL].append(str(shard))
            out[FATAL_COL].append(self.fatal)
            if self.task is None:
                out[RESULT_COL].append(b"")
                continue
            docs = pickle.loads(payload)
            n = len(docs["pmid"])
            per_doc, errors = self._run(docs, n)
            if len(per_doc) != n:
                raise RuntimeError(
                    f"task {self.task.name} returned {len(per_doc)} results for the {n} documents of shard {shard}"
                )
            failed = [
                {"task": self.task.name, "pmid": int(pmid), "shard": str(shard), "error": error}
                for pmid, error in zip(docs["pmid"], errors)
                if error
            ]
            rows = [row for doc_rows in per_doc for row in doc_rows]
            # Stable sort: by pmid, then the task's own keys; rows of one document keep the task's order.
            rows.sort(key=_sort_key(self.task_cls.sort_keys))
            written = write_shard_output(self.out, str(shard), self.task_cls.cast_batch(rows))
            out[RESULT_COL].append(pickle.dumps(ShardOutput(str(shard), written, n, failed)))
        return out

    def _run(self, docs: dict[str, Any], n: int) -> tuple[list[list[dict]], list[str]]:
        """Rows and error text ("" = none) per document. The task sees the whole shard (it batches
        it by ``batch_size`` itself: the RE engine keeps all its slots busy across the shard); after a
        failure, each ``batch_size`` chunk is retried, then each document of a failing chunk, so one
        bad record (or a batch too large for the GPU) costs only the documents that fail alone."""
        try:
            return self.task(docs), [""] * n
        except Exception as exc:  # a bad batch must not kill the run
            log.warning(
                "task %s failed on a shard of %d documents (%s: %s); retrying it in chunks of %d",
                self.task.name,
                n,
                type(exc).__name__,
                exc,
                self.chunk,
            )
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
                    log.error(
                        "task %s failed on PMID %s: %s: %s", self.task.name, docs["pmid"][i], type(one).__name__, one
                    )
                    per_doc.append([])
                    errors.append(f"{type(one).__name__}: {one}")
        return per_doc, errors


def _quiet_ray_data_console() -> None:
    """Ray Data logs every execution plan at INFO to the console (its own handler, set up when
    ``ray.data`` is imported); keep warnings there, and everything in Ray's session log files."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)


def write_shard_output(out: Location, shard: str, table) -> FileInfo:
    """Write one shard's rows as its content-named data file in dataset ``out``."""
    data = parquet_bytes(table)
    digest = hashlib.sha256(data).hexdigest()  # names the file, and is its checksum
    info = (out / data_file_name(shard, digest)).write_bytes(data, digest)
    return FileInfo(info.name, info.size, info.sha256, table.num_rows)


def run_task_stage(
    task: PlannedTask[Any],
    shards: Sequence[str | os.PathLike | Location],
    dataset: TaskDataset,
    *,
    placement: Placement,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
    before_commit: Callable[[], None] | None = None,
    progress: bool = True,
) -> StageResult:
    """Run the planned ``task`` (its class and resolved options: :mod:`pipeline.run.plan`) over the
    document ``shards`` (locations of their Parquet files), into ``dataset``, with the actors and
    GPUs of ``placement``.

    ``inputs`` gives each shard's identity (``ShardInfo.identity()`` from the documents manifest, by
    shard name); a shard without one is read from storage to get it. ``before_commit`` is called
    before each commit (the runner's lease check: it raises once another run holds the job).

    :raises StageError: the task's model cannot be loaded (committed shards are kept).
    :raises StoreError: the output is on a local path the driver cannot see the workers' files in.
    :raises BioMineError: a user error raised inside a worker (shown as one line).
    """
    import ray

    task_cls, options, out = task.cls, task.options, dataset.loc
    result = StageResult(task=task_cls.name)
    start = time.perf_counter()
    settings = stage_settings(task_cls, options)
    shard_locs = {shard_name(s): location(s) for s in shards}
    identities = {name: dict((inputs or {}).get(name) or shard_identity(loc)) for name, loc in shard_locs.items()}
    wanted = {name: (fingerprint(identities[name], settings), identities[name]) for name in shard_locs}
    out.mkdir()
    dataset.collect_garbage()
    reasons = dataset.plan(wanted, settings)
    result.shards_skipped = len(shard_locs) - len(reasons)
    for name, (kind, why) in sorted(reasons.items()):
        if kind != "not computed":
            log.warning("%s: %s is computed again: %s", task_cls.name, name, why)
            result.redone[kind] = result.redone.get(kind, 0) + 1

    def commit(output: ShardOutput) -> None:
        written = out / output.file.name
        if written.size() != output.file.size:  # the worker's file must be there, whole, before we commit it
            if out.is_local:
                raise StoreError(
                    f"{task_cls.name}: {written} is not on this machine although a worker wrote it: "
                    "on a cluster the output must be on storage every node reaches (s3://..., "
                    "or a folder mounted at the same path on every node)"
                )
            raise RuntimeError(f"{task_cls.name}: {written} is missing or incomplete after its worker wrote it")
        if before_commit:
            before_commit()
        fp, info = wanted[output.shard]
        dataset.commit(output, task=task_cls.name, expected=fp, input_shard=info, settings=settings)
        result.failures += output.failures
        result.shards_done += 1
        result.documents += output.documents
        result.rows += output.file.rows or 0
        log.info(
            "%s: %s done (%d documents, %d rows, %d failed) [%d/%d shards]",
            task_cls.name,
            written,
            output.documents,
            output.file.rows or 0,
            len(output.failures),
            result.shards_done + result.shards_skipped,
            len(shard_locs),
        )

    pending = sorted(reasons)
    for name in [n for n in pending if identities[n]["rows"] == 0]:  # nothing to run, but complete
        commit(ShardOutput(name, write_shard_output(out, name, task_cls.schema.empty_table()), 0))
    pending = [n for n in pending if identities[n]["rows"] > 0]
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
    items = [{SHARD_COL: n, URI_COL: shard_locs[n].uri} for n in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Each prepare task reserves the memory of one prepared shard. That also keeps Ray Data from
    # fusing the prepare tasks into the model actors, which it does for maps with equal remote args
    # (num_cpus=1 both, on a CPU cluster: ray/data/_internal/logical/rules/operator_fusion.py), and
    # then tokenisation would run inside the actor instead of beside it.
    ds = ds.map_batches(
        _prepare_shards,
        fn_kwargs=dict(task_cls=task_cls, options=options),
        batch_size=1,
        num_cpus=1,
        memory=PREPARE_MEMORY,
    )
    ds = ds.map_batches(
        _TaskActor,
        fn_constructor_kwargs=dict(task_cls=task_cls, options=options, out=out),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, placement.actors)),
        num_gpus=placement.gpus_per_actor or None,
        num_cpus=placement.cpus_per_actor,
    )
    # Ray Data restarts dead actors and retries their tasks by default (max_restarts=-1): a lost
    # actor or node costs time, not rows; a shard is committed only once its whole result arrived.

    done: set[str] = set()
    try:
        for record in ds.iter_rows():
            if record[FATAL_COL]:
                raise StageError(
                    f"{task_cls.name}: the model actor could not start: {record[FATAL_COL]} "
                    f"({result.shards_done} shards committed before are kept; fix the model and re-run)"
                )
            output: ShardOutput = pickle.loads(record[RESULT_COL])
            commit(output)
            done.add(output.shard)
    except ray.exceptions.RayTaskError as exc:  # e.g. a model that changed on storage during the run
        raise worker_error(exc) from None
    dataset.collect_garbage()  # superseded files of retried workers: the folder holds what is committed
    missing = sorted(set(pending) - done)
    if missing:
        raise RuntimeError(f"task {task_cls.name}: shards without results after the stage finished: {missing}")
    result.operators = _operators(ds)
    result.seconds = time.perf_counter() - start
    return result


def _operators(ds) -> list[str]:
    """Operator names of an executed dataset, from Ray Data's own stats (``Operator N NAME: ...``)."""
    try:
        text = ds.stats()
    except Exception:  # stats are diagnostics; never fail a finished stage on them
        return []
    return re.findall(r"^Operator \d+ (.+?):", text, flags=re.M)


def read_failures(out: str | os.PathLike | Location, shards: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The failed documents recorded in dataset ``out``'s commits (of ``shards``, by name; default all)."""
    return TaskDataset(location(out)).failures(shards)
