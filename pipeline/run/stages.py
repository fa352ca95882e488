"""Ray Data stages that run a model task over the documents table, into the task's Delta table.

Contract. Input: the live data files of the documents table (:mod:`pipeline.store.documents`), on
any storage (:mod:`pipeline.store.storage`). For each document file the stage makes sure the task's
table (:mod:`pipeline.store.datasets`) holds exactly one output file of its rows under the current
settings, and nothing else:

- **kept**: an output that is live, of the current settings, complete and intact (size from the
  log, checksum from its name) is left as it is;
- **derived**: a document file that an update rewrote (copy-on-write, without its revised or
  deleted articles) gets the rows of its earlier version's output for the articles still in it:
  copied, never recomputed, so an update computes model output only for new or revised articles;
- **reused**: a document file not computed yet takes the rows of its articles whose model input
  (``content_sha256``) equals that of an article in a document file that is no longer live, from
  that file's output (:meth:`TaskTable.reuse`: a new yearly baseline re-issues every article, and
  costs only those whose title or abstract changed); the rest of its articles are computed and the
  two go into its one output file (when none is left to compute, no model runs: it counts as derived);
- **computed**: the rest, on Ray (and :attr:`StageResult.redone` says why an output that existed
  is computed again: settings changed, missing, damaged, failed documents);
- outputs of document files that are no longer live, or of other settings, are removed in the
  commits that replace them (and the last commit removes the rest).

The WORKERS read the document files from storage (checking each against the name's checksum first)
and write the output files to storage themselves; the driver commits them, several per Delta commit,
every ``COMMIT_SECONDS`` and at the end, so no node needs a disk shared with another and a crash
loses at most the results since the last commit (the re-run computes them again, byte for byte).
A task error does not stop the stage: the failing file is retried in ``batch_size`` chunks, then
document by document; documents that fail on their own get no rows, their output file is named as
incomplete and the commit info lists them (PMID and error), and the next run redoes that file. A
model that cannot load (a :class:`BioMineError` in the task's constructor) stops the stage with
:class:`StageError`.

How: one Ray Data item per document file to compute → ``map_batches(_prepare_shards)`` as separate
CPU tasks (read the file, tokenise, build prompts: this overlaps the model; its ``memory`` request
keeps Ray Data from fusing it into the actor) → ``map_batches(_TaskActor)`` on an actor pool (one
model load per actor, ``num_gpus`` per actor; a model on object storage is fetched once per node,
:mod:`pipeline.store.models`) → the driver. The model sees a WHOLE document file per call and
batches it itself by ``batch_size``, so (1) the batching of a document depends only on its file,
and a resumed run computes bit for bit what an uninterrupted run does (batched kernels round
differently for different batch shapes), and (2) the generation engine's continuous batching keeps
all its slots busy across the file. Rows within a file are sorted by (pmid, the task's own order),
so outputs do not depend on scheduling.

Tasks implement :class:`pipeline.tasks.base.Task`: ``prepare`` (a class method: CPU, a pure function
of the batch and the task's typed options) and ``__call__`` on an instance built once per actor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import pickle
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biogpt import hub
from biogpt.errors import BioMineError
from pipeline.errors import StageError
from pipeline.run.cluster import worker_error
from pipeline.store.datasets import StagePlan, TaskTable, reused_rows, settings_key, write_output
from pipeline.store.models import materialize, materialize_file
from pipeline.store.storage import Location, location
from pipeline.store.tables import DataFile, TableError
from pipeline.tasks.base import Task
from pipeline.tasks.options import TaskOptions

if TYPE_CHECKING:
    from pipeline.run.cluster import Placement
    from pipeline.run.plan import PlannedTask

log = logging.getLogger(__name__)
O = TypeVar("O", bound=TaskOptions)

SHARD_COL = "_shard"
URI_COL = "_uri"
SIZE_COL = "_size"
PAYLOAD_COL = "_payload"
REUSE_COL = "_reuse"  # what a file takes from earlier outputs (Arrow IPC: REUSE_SCHEMA, then the rows)
RESULT_COL = "_result"
FATAL_COL = "_fatal"
COLUMNS = ["pmid", "version", "title", "abstract"]
#: Bytes a prepare task reserves (Ray's ``memory`` resource): one shard's documents and model inputs.
PREPARE_MEMORY = 256 * 1024 * 1024
#: The driver commits finished outputs at most this often (and at the end).
COMMIT_SECONDS = 10.0


@dataclass
class ShardOutput:
    """What a worker wrote for one document file (before the driver commits it)."""

    shard: str  # the document file's path in the documents table
    file: DataFile
    documents: int
    failures: list[dict[str, Any]] = field(default_factory=list)


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
    #: Document files whose output was copied from their earlier version's (no model), and its rows.
    derived: int = 0
    derived_rows: int = 0
    #: Articles of new document files whose rows were copied by their unchanged model input (no model).
    reused: int = 0
    #: Output files removed: of document files no longer live, or of other settings.
    retired: int = 0
    #: Delta commits the stage made.
    commits: int = 0
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
    # mypy checks a **dict against every field; these keys are only the input files' (str) fields.
    return dataclasses.replace(options, **local) if local else options  # type: ignore[arg-type]


def _prepare_shards(batch: dict[str, Any], task_cls: type[Task[O]], options: O, output: Location) -> dict[str, Any]:
    """CPU stage (stateless Ray tasks): read each document file from storage and let the task build its
    inputs; the rows a file takes from earlier outputs (``REUSE_COL``) are read here, from the task's
    table at ``output``, and its articles left out of the model's input.

    One record per FILE, carrying its prepared batch (the task's declared ``prepared_schema``) as
    Arrow IPC bytes, a format any reader can open and whose shape it can see: the model stage then
    sees every file whole, so how its documents are batched depends on the file alone - never on which
    other files were pending - and a resumed run computes bit for bit what an uninterrupted one does.
    """
    options = localise(options)
    out: dict[str, list] = {SHARD_COL: [], PAYLOAD_COL: [], REUSE_COL: []}
    for shard, uri, size, reuse in zip(batch[SHARD_COL], batch[URI_COL], batch[SIZE_COL], batch[REUSE_COL]):
        table = read_verified(location(str(uri)), int(size), COLUMNS)
        rows = b""
        if reuse:  # articles whose rows are copied: the model sees the others only
            taken = from_ipc(reuse)
            table = table.filter(pc.invert(pc.is_in(table.column("pmid"), value_set=taken.column("pmid"))))
            rows = to_ipc(reused_rows(output, task_cls.schema, taken))
        out[SHARD_COL].append(str(shard))
        out[PAYLOAD_COL].append(to_ipc(task_cls.prepare(table, options)))
        out[REUSE_COL].append(rows)
    return out


def to_ipc(table: pa.Table) -> bytes:
    """A prepared batch as Arrow IPC stream bytes (what travels from a prepare task to an actor)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


def read_verified(loc: Location, size: int, columns: list[str]):
    """The ``columns`` of a data file, after checking its bytes against the log (``size``) and its
    name (the checksum): a document file is never trusted unchecked.

    :raises TableError: naming the file and the repair.
    """
    from pipeline.store.tables import split_name

    data = loc.read_bytes()
    _, sha16 = split_name(loc.name)
    if len(data) != size or (sha16 and hashlib.sha256(data).hexdigest()[:16] != sha16):
        raise TableError(
            f"{loc} is damaged ({len(data)} bytes, the log says {size}; or its content does not match its name): "
            "restore it (e.g. an earlier version of the object) or run the job into a new output"
        )
    return pq.read_table(io.BytesIO(data), columns=columns)


def _slice(docs: pa.Table, start: int, stop: int) -> pa.Table:
    return docs.slice(start, stop - start)


def _sort_key(sort_keys: tuple[str, ...]):
    keys = ("pmid",) + tuple(sort_keys)
    return lambda r: tuple(r.get(k) if r.get(k) is not None else -1 for k in keys)


def sorted_rows(task_cls: type[Task[Any]], rows: list[dict[str, Any]]) -> pa.Table:
    """An output file's rows as a table: sorted (stable) by pmid, then the task's own keys, so rows of
    one document keep the task's order, and computed and reused rows merge as one run computes them."""
    rows.sort(key=_sort_key(task_cls.sort_keys))
    return task_cls.cast_batch(rows)


class _TaskActor:
    """Model stage: builds the task once per actor; maps one shard's documents to their rows and
    writes them, as one immutable data file, into the output dataset on storage."""

    def __init__(self, task_cls: type[Task[O]], options: O, out: Location, key: str):
        self.task: Task[O] | None = None
        self.fatal = ""
        self.task_cls = task_cls
        self.chunk = options.batch_size
        self.out = out
        self.key = key
        try:
            self.task = task_cls(localise(options))
        except BioMineError as exc:
            # A user mistake (a damaged or wrong checkpoint) would otherwise kill the actor in a loop
            # of restarts and surface as a Ray traceback; report it with every shard instead, and the
            # driver stops the stage with this message.
            self.fatal = f"{type(exc).__name__}: {exc}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list] = {SHARD_COL: [], RESULT_COL: [], FATAL_COL: []}
        for shard, payload, reuse in zip(batch[SHARD_COL], batch[PAYLOAD_COL], batch[REUSE_COL]):
            out[SHARD_COL].append(str(shard))
            out[FATAL_COL].append(self.fatal)
            if self.task is None:
                out[RESULT_COL].append(b"")
                continue
            docs = from_ipc(payload)
            n = docs.num_rows
            per_doc, errors = self._run(docs, n)
            if len(per_doc) != n:
                raise RuntimeError(
                    f"task {self.task.name} returned {len(per_doc)} results for the {n} documents of shard {shard}"
                )
            failed = [
                {
                    "task": self.task.name,
                    "pmid": int(pmid),
                    "version": int(version),
                    "shard": str(shard),
                    "error": error,
                }
                for pmid, version, error in zip(
                    docs.column("pmid").to_pylist(), docs.column("version").to_pylist(), errors
                )
                if error
            ]
            rows = [row for doc_rows in per_doc for row in doc_rows]
            if reuse:
                rows += from_ipc(reuse).to_pylist()
            stem = str(shard)[: -len(".parquet")]
            written = write_output(self.out, stem, self.key, sorted_rows(self.task_cls, rows), bool(failed))
            out[RESULT_COL].append(pickle.dumps(ShardOutput(str(shard), written, n, failed)))
        return out

    def _run(self, docs: pa.Table, n: int) -> tuple[list[list[dict]], list[str]]:
        """Rows and error text ("" = none) per document. The task sees the whole shard (it batches
        it by ``batch_size`` itself: the RE engine keeps all its slots busy across the shard); after a
        failure, each ``batch_size`` chunk is retried, then each document of a failing chunk, so one
        bad record (or a batch too large for the GPU) costs only the documents that fail alone."""
        task = self.task
        assert task is not None  # __call__ runs a shard only where the task was built
        try:
            return task(docs), [""] * n
        except Exception as exc:  # a bad batch must not kill the run
            log.warning(
                "task %s failed on a shard of %d documents (%s: %s); retrying it in chunks of %d",
                task.name,
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
                per_doc += task(_slice(docs, start, stop))
                errors += [""] * (stop - start)
                continue
            except Exception:
                pass
            for i in range(start, stop):
                try:
                    per_doc += task(_slice(docs, i, i + 1))
                    errors.append("")
                except Exception as one:
                    pmid = docs.column("pmid")[i].as_py()
                    log.error("task %s failed on PMID %s: %s: %s", task.name, pmid, type(one).__name__, one)
                    per_doc.append([])
                    errors.append(f"{type(one).__name__}: {one}")
        return per_doc, errors


class _NoRayDataErrors(logging.Filter):
    """Drop Ray Data's error records (a failed task's traceback, logged twice) from the console: the
    failure reaches the user once, as the run's one ``biomine: error:`` line naming the file, and Ray's
    session log files keep the full trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _quiet_ray_data_console() -> None:
    """Ray Data logs every execution plan at INFO to the console (its own handler, set up when
    ``ray.data`` is imported); keep its warnings there, and everything in Ray's session log files."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)
            if not any(isinstance(f, _NoRayDataErrors) for f in handler.filters):
                handler.addFilter(_NoRayDataErrors())


class _ProgressBarsNoticeFilter(logging.Filter):
    """Drops Ray Data's "Progress bars disabled. To enable, set ..." warning: bars are off because
    biomine turned them off (no terminal, or ``--no-progress``), so the advice to turn them on is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def _drop_progress_bars_notice() -> None:
    """Filter Ray Data's notice that progress bars are disabled (:class:`_ProgressBarsNoticeFilter`)
    at the logger that emits it (``ray.data._internal.progress``), once per process."""
    logger = logging.getLogger("ray.data._internal.progress")
    if not any(isinstance(f, _ProgressBarsNoticeFilter) for f in logger.filters):
        logger.addFilter(_ProgressBarsNoticeFilter())


def run_task_stage(
    task: PlannedTask[Any],
    docs: Mapping[str, DataFile],
    documents: Location,
    dataset: TaskTable,
    *,
    placement: Placement,
    before_commit: Callable[[], None] | None = None,
    progress: bool = True,
    run_id: str | None = None,
) -> StageResult:
    """Run the planned ``task`` (its class and resolved options: :mod:`pipeline.run.plan`) over the
    live document files ``docs`` (path -> file, from the documents table at ``documents``), into
    ``dataset``, with the actors and GPUs of ``placement``. ``before_commit`` is called before each
    commit (the runner's lease check: it raises once another run holds the job).

    :raises StageError: the task's model cannot be loaded (committed outputs are kept).
    :raises StoreError: the output is on a local path the driver cannot see the workers' files in.
    :raises BioMineError: a user error raised inside a worker (shown as one line).
    """
    import ray

    task_cls, options, out = task.cls, task.options, dataset.loc
    result = StageResult(task=task_cls.name)
    start = time.perf_counter()
    settings = stage_settings(task_cls, options)
    key = settings_key(settings)
    dataset.table.remove_orphans()  # a killed run's uncommitted outputs (the caller holds the lease)
    plan = dataset.plan(docs, settings)
    result.shards_skipped = len(plan.keep)
    for path, (kind, why) in sorted(plan.compute.items()):
        if kind != "not computed":
            log.warning("%s: %s is computed again: %s", task_cls.name, path, why)
            result.redone[kind] = result.redone.get(kind, 0) + 1
    # What each new output replaces: outputs of the same document file (other settings, incomplete,
    # damaged) and the earlier version's output a derived one copies. Removed in the same commit.
    replaced: dict[str, list[DataFile]] = {}
    for info in plan.retire:
        replaced.setdefault(info.path.rsplit(".", 3)[0], []).append(info)
    for path, source in plan.derive.items():
        replaced.setdefault(docs[path].stem, []).append(source)
    live_stems = {d.stem for d in docs.values()}
    removed: set[str] = set()
    pending: list[ShardOutput] = []
    last_commit = time.monotonic()

    def flush(final: bool = False) -> None:
        nonlocal last_commit
        adds = [o.file for o in pending]
        removes = {r.path: r for o in pending for r in replaced.get(docs[o.shard].stem, []) if r.path not in removed}
        if final:  # whatever no live document file uses any more
            removes.update({r.path: r for r in plan.retire if r.path not in removed})
            removes.update({r.path: r for r in plan.derive.values() if r.path not in removed})
        if not adds and not removes:
            return
        if before_commit:
            before_commit()
        failures = {o.file.path: o.failures for o in pending if o.failures}
        dataset.commit(adds, list(removes.values()), settings=settings, failures=failures, run=run_id)
        removed.update(removes)
        result.commits += 1
        result.retired += sum(1 for p in removes if p.rsplit(".", 3)[0] not in live_stems)
        pending.clear()
        last_commit = time.monotonic()

    def done(output: ShardOutput) -> None:
        written = out / output.file.path
        if written.size() != output.file.size:  # the worker's file must be there, whole, before we commit it
            if out.is_local:
                raise StageError(
                    f"{task_cls.name}: {written} is not on this machine although a worker wrote it: "
                    "on a cluster the output must be on storage every node reaches (s3://..., "
                    "or a folder mounted at the same path on every node)"
                )
            raise RuntimeError(f"{task_cls.name}: {written} is missing or incomplete after its worker wrote it")
        pending.append(output)
        result.failures += output.failures
        result.shards_done += 1
        result.documents += output.documents
        result.rows += output.file.rows
        log.info(
            "%s: %s done (%d documents, %d rows, %d failed) [%d/%d files]",
            task_cls.name,
            output.shard,
            output.documents,
            output.file.rows,
            len(output.failures),
            result.shards_done + result.shards_skipped + result.derived,
            len(docs),
        )
        if time.monotonic() - last_commit >= COMMIT_SECONDS:
            flush()

    _derive(plan.derive, docs, documents, dataset, key, result, pending)
    reuse = _reuse(task_cls, plan, docs, documents, dataset, settings, key, result, pending)
    whole = {o.shard for o in pending if o.shard in reuse}  # every article reused: no model
    if pending:
        flush()
    todo = sorted(p for p in plan.compute if p not in whole)
    if not todo:
        flush(final=True)
        result.seconds = time.perf_counter() - start
        return result

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # files complete in order
    # A failing UDF's own error, not Ray Data's UserCodeException around it: the wrapper's __cause__
    # (our BioMineError, shown as one line) does not survive the trip to the driver.
    ctx.raise_original_map_exception = True
    # Ray Data's bars in a terminal; elsewhere (cron, CI logs) one log line per finished file instead
    # of Ray's periodic plan dumps, which would bury the lines that name failing records.
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    _quiet_ray_data_console()
    _drop_progress_bars_notice()
    # One item (and block) per document file, so files are prepared in parallel CPU tasks while the
    # actors run the model on files prepared before (Ray Data streams and backpressures between the two).
    items = [
        {
            SHARD_COL: p,
            URI_COL: (documents / p).uri,
            SIZE_COL: docs[p].size,
            REUSE_COL: to_ipc(reuse[p]) if p in reuse else b"",
        }
        for p in todo
    ]
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=len(items))
    # Each prepare task reserves the memory of one prepared file. That also keeps Ray Data from
    # fusing the prepare tasks into the model actors, which it does for maps with equal remote args
    # (num_cpus=1 both, on a CPU cluster: ray/data/_internal/logical/rules/operator_fusion.py), and
    # then tokenisation would run inside the actor instead of beside it.
    ds = ds.map_batches(
        _prepare_shards,  # type: ignore[arg-type]  # Ray's types know no fn_kwargs: its batch is the only argument
        fn_kwargs=dict(task_cls=task_cls, options=options, output=out),
        batch_size=1,
        num_cpus=1,
        memory=PREPARE_MEMORY,
    )
    ds = ds.map_batches(
        _TaskActor,
        fn_constructor_kwargs=dict(task_cls=task_cls, options=options, out=out, key=key),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, placement.actors)),
        num_gpus=placement.gpus_per_actor or None,
        num_cpus=placement.cpus_per_actor,
    )
    # Ray Data restarts dead actors and retries their tasks by default (max_restarts=-1): a lost
    # actor or node costs time, not rows; a file is committed only once its whole result arrived.

    finished: set[str] = set()
    try:
        for record in ds.iter_rows():
            if record[FATAL_COL]:
                flush()
                raise StageError(
                    f"{task_cls.name}: the model actor could not start: {record[FATAL_COL]} "
                    f"({result.shards_done} files committed before are kept; fix the model and re-run)"
                )
            output: ShardOutput = pickle.loads(record[RESULT_COL])
            done(output)
            finished.add(output.shard)
    except ray.exceptions.RayTaskError as exc:  # e.g. a model that changed on storage during the run
        flush()
        raise worker_error(exc) from None
    except BaseException:
        flush()  # what finished is kept (a Ctrl-C loses nothing that was done)
        raise
    missing = sorted(set(todo) - finished)
    if missing:
        raise RuntimeError(f"task {task_cls.name}: files without results after the stage finished: {missing}")
    flush(final=True)
    result.operators = _operators(ds)
    result.seconds = time.perf_counter() - start
    return result


def _derive(
    derive: Mapping[str, DataFile],
    docs: Mapping[str, DataFile],
    documents: Location,
    dataset: TaskTable,
    key: str,
    result: StageResult,
    pending: list[ShardOutput],
) -> None:
    """Outputs of rewritten document files, copied from their earlier version's (no model)."""
    if not derive:
        return

    def one(path: str) -> ShardOutput:
        articles = read_verified(documents / path, docs[path].size, ["pmid", "version"])
        written = dataset.derive(derive[path], docs[path].stem, articles, key)
        return ShardOutput(path, written, articles.num_rows)

    with ThreadPoolExecutor(8) as pool:
        for output in pool.map(one, sorted(derive)):
            pending.append(output)
            result.derived += 1
            result.derived_rows += output.file.rows


def _reuse(
    task_cls: type[Task[Any]],
    plan: StagePlan,
    docs: Mapping[str, DataFile],
    documents: Location,
    dataset: TaskTable,
    settings: Mapping[str, Any],
    key: str,
    result: StageResult,
    pending: list[ShardOutput],
) -> dict[str, pa.Table]:
    """What document files not computed yet take from earlier outputs by their articles' unchanged
    model input (:meth:`TaskTable.reuse`). A file whose every article takes its rows gets its output
    here (added to ``pending``, no model); the others are computed for their other articles (the
    workers read the rows they take)."""
    new = sorted(p for p, (kind, _) in plan.compute.items() if kind == "not computed")
    reuse = dataset.reuse(plan, docs, documents, new, settings) if new else {}
    whole = [p for p, taken in reuse.items() if taken.num_rows == docs[p].rows]

    def one(path: str) -> ShardOutput:
        rows = sorted_rows(task_cls, reused_rows(dataset.loc, dataset.schema, reuse[path]).to_pylist())
        return ShardOutput(path, write_output(dataset.loc, docs[path].stem, key, rows), 0)

    with ThreadPoolExecutor(8) as pool:
        for output in pool.map(one, sorted(whole)):
            pending.append(output)
            result.derived += 1
            result.derived_rows += output.file.rows
    result.reused += sum(t.num_rows for t in reuse.values())
    return reuse


def _operators(ds) -> list[str]:
    """Operator names of an executed dataset, from Ray Data's own stats (``Operator N NAME: ...``)."""
    try:
        text = ds.stats()
    except Exception:  # stats are diagnostics; never fail a finished stage on them
        return []
    return re.findall(r"^Operator \d+ (.+?):", text, flags=re.M)


def read_failures(dataset: TaskTable) -> list[dict[str, Any]]:
    """The failed documents of the live (incomplete) outputs of ``dataset``, from its commit infos."""
    partial = [p for p, (name, _) in dataset.outputs().items() if name.failed] if dataset.exists() else []
    return dataset.failures(partial)
