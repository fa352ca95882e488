"""Ingest PubMed baseline and update files into a current-corpus directory of article shards.

Contract (what ``biomine ingest`` promises):

- Inputs are PubMed XML files (``pubmedYYnNNNN.xml.gz`` or any ``.xml``/``.xml.gz``), given as files,
  directories (a directory contributes its ``*.xml`` and ``*.xml.gz`` files, not recursively) or
  glob patterns, each a local path or a storage URI (:mod:`pipeline.store.storage`); the output too.
  They apply in file-name order, which for NLM's files is publication order (the baseline, then the
  daily updates, by sequence number), **whatever order the parallel workers finish in**: the same
  inputs give the same shards (names and bytes) and the same rows with 1 worker or 16.
- The output is the **current corpus**: each PMID live at most once, in the version that the latest
  file gives it, except that a higher ``PMID Version`` is never replaced by a lower one (for
  versioned journals, where NLM keeps several versions of one PMID). A ``DeleteCitation`` removes
  the PMID, including any record of it earlier in the same file (the DTD puts deletions last).
  Within one file a later record of the same PMID and version wins.
- **An update costs what it changes.** Each file's records go into new shards named after the file
  and its checksum (``part-<file>-<sha8>-NNNN.parquet``); a record it revises or deletes is
  tombstoned in the shard that held it (its deletion vector, :mod:`pipeline.store.shards`), never
  rewritten, so the task outputs of every unchanged article stay valid and only the file's own
  records are computed.
- **Inputs are recognised by content**: every input is hashed (sha256, in parallel) and a file whose
  checksum is recorded is skipped, whatever its name. A file whose name is recorded with another
  checksum (re-issued by NLM, or replaced by hand) is ingested again and applied on top of the
  current corpus, with a warning, if no later file is ingested yet. A new or changed file that sorts
  before an ingested one is refused (applying it now would let older records override newer ones).
- Parsing runs in parallel workers (``workers`` local processes, or Ray tasks in a job:
  :class:`Pool`); each writes its file's shards to the output's storage itself. This process applies
  the files in order (finds the rows they replace, tombstones them) and commits every
  ``commit_seconds`` (default 30 s) and at the end: new shards, tombstones and the files they came
  from become visible together. A crash loses at most the files applied since the last commit, and
  re-running the same command finishes with exactly the output an uninterrupted run gives (apart
  from ``fetched_at``). A re-run with nothing new is a no-op.
- Memory here is bounded by the PMIDs of the files applied since the last commit and the manifest
  (a few hundred bytes per shard); no process holds every PMID. Finding the rows a file replaces
  reads the ``pmid``/``version`` columns of the shards whose PMID range covers the file's (for the
  baseline, a neighbour or two; for a daily update, every shard), in parallel tasks.

:raises IngestError: an input is missing, unreadable or malformed (the message names the file, the
    position and the last good PMID), or a new file sorts before one already ingested.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import fnmatch
import gc
import glob
import logging
import multiprocessing
import os
import re
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import IngestError
from pipeline.progress import Progress
from pipeline.pubmed.parser import Deletion, iter_records
from pipeline.store.shards import (
    DEFAULT_SHARD_ROWS,
    ShardInfo,
    ShardStore,
    Transaction,
    live_mask,
    read_deletions,
    write_shard,
)
from pipeline.store.storage import Location, location
from schemas.articles import to_table

log = logging.getLogger(__name__)

INPUT_SUFFIXES = (".xml", ".xml.gz")
#: Locating replaced rows runs here, not in a task, when the candidate shards hold fewer rows.
INLINE_LOCATE_ROWS = 50_000


@dataclass
class IngestSummary:
    """Counts over the files ingested by one call (``skipped``: files already done)."""

    files: int = 0
    skipped: int = 0
    records: int = 0
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    #: Live articles in the output after the call.
    rows: int = 0
    #: Rows tombstoned by this call (replaced, deleted, or a lower version than one already there).
    tombstoned: int = 0
    #: Shards written by this call, their rows, the commits and the manifest bytes they wrote.
    shards: int = 0
    shard_rows: int = 0
    commits: int = 0
    manifest_bytes: int = 0
    reissued: list[str] = field(default_factory=list)


# --- parallelism ------------------------------------------------------------------------------------
class Pool(Protocol):
    """Where ingest runs its parallel work: ``submit(fn, *args)`` returns something with
    ``result()``. ``fn`` is a module-level function of picklable arguments (a :class:`Location`
    pickles as its URI and is resolved again where it lands). ``workers`` sizes the window of files
    parsed ahead of the one being applied."""

    workers: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...  # -> has result() and cancel()


class _Deferred:
    """Inline work, run when its result is asked for (so a serial ingest parses a file, then applies it)."""

    def __init__(self, fn: Callable[..., Any], args: tuple):
        self.fn, self.args = fn, args

    def result(self) -> Any:
        return self.fn(*self.args)

    def cancel(self) -> None:
        self.fn = None


class LocalPool:
    """``workers`` processes on this machine; 1: everything inline, in this process."""

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        # spawn: each worker starts from this process's environment as it is now (storage endpoint
        # and credentials: a forkserver would hand on the environment of whenever it first started)
        # and inherits none of its threads (a lease renewer, an S3 client's pool), which a forked
        # child would inherit in an unknown state.
        self._executor = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | _Deferred:
        return self._executor.submit(fn, *args) if self._executor else _Deferred(fn, args)

    def close(self) -> None:
        if self._executor:
            self._executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "LocalPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def discover_inputs(paths: Iterable[str | os.PathLike]) -> list[Location]:
    """The input files, in processing (file-name) order. Each item is a local path, a storage URI
    (``s3://bucket/pubmed/baseline/``), a folder of either kind, or a glob pattern (``*`` etc. in the
    last part of the name).

    :raises IngestError: a path does not exist, a pattern or directory matches no PubMed XML, or two
        inputs share a file name (their order would be ambiguous).
    """
    files: list[Location] = []
    for item in paths:
        loc = location(item)
        if not loc.exists() and glob.has_magic(str(item)):
            # A quoted glob (job specs list them): expand it here, as a shell would; on object storage
            # the pattern may be in the last part of the name only.
            if loc.is_local:
                matches = [location(p) for p in sorted(glob.glob(loc.path))]
            else:
                matches = [loc.parent / n for n in loc.parent.listdir() if fnmatch.fnmatchcase(n, loc.name)]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise IngestError(f"input pattern {item} matches no files")
            files.extend(matches)
            continue
        if loc.is_dir():
            found = [loc / n for n in loc.files() if n.endswith(INPUT_SUFFIXES) and not n.startswith(".")]
            if not found:
                raise IngestError(f"{loc} holds no .xml or .xml.gz files; pass PubMed XML files or their directory")
            files.extend(found)
        elif loc.is_file():
            files.append(loc)
        else:
            raise IngestError(f"input {loc} does not exist")
    by_name: dict[str, Location] = {}

    def same(a: Location, b: Location) -> bool:
        return a == b or (a.is_local and b.is_local and os.path.realpath(a.path) == os.path.realpath(b.path))

    for loc in files:
        other = by_name.setdefault(loc.name, loc)
        if not same(other, loc):
            raise IngestError(f"two inputs are named {loc.name} ({other} and {loc}); their order is ambiguous")
    return sorted(by_name.values(), key=lambda p: p.name)


@dataclass(frozen=True)
class InputFile:
    """One input, recognised by its content."""

    loc: Location
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return self.loc.name

    @property
    def stem(self) -> str:
        name = self.name
        for suffix in (".xml.gz", ".xml", ".gz"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name


def checksum(loc: Location) -> InputFile:
    """Size and sha256 of one input (a worker task)."""
    return InputFile(loc, loc.size() or 0, loc.sha256())


def shard_name(source: InputFile, index: int) -> str:
    """Shard ``index`` of input ``source``: named by file and content, so a re-issued file with the
    same name never reuses a name, and any worker writes the same name for the same file. Characters
    other than letters, digits, ``.``, ``_`` and ``-`` in the file's name become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", source.stem)
    return f"part-{stem}-{source.sha256[:16]}-{index:04d}.parquet"


@dataclass
class ParsedInput:
    """What a worker wrote for one input file (its shards, not yet committed) and what it found."""

    source: InputFile
    records: int
    deletions: list[int]
    shards: list[ShardInfo]
    #: Per shard, the PMIDs and versions of its rows (the file's winning records).
    rows: list[tuple[list[int], list[int]]]


def iter_file_records(path: Location, stack: contextlib.ExitStack) -> Iterator[dict[str, Any] | Deletion]:
    """The records of one input file wherever it is: a local file by path (the parser reads it with
    its own buffering), anything else as a stream that ``stack`` closes."""
    source = path.local_path() if path.is_local else stack.enter_context(path.open_input())
    return iter_records(source, path.name)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a file is parsed (the caller collects at each
    shard boundary instead).

    Why: parsing allocates millions of small containers that survive until their shard is written,
    and each automatic full collection walks all of them again: measured, the Arrow step of ingest
    ran 1.5x slower with the collector on (``benchmarks/bench_parse.py`` prints the ratio). Parser
    rows and ElementTree elements form no reference cycles, so nothing waits for the collector; the
    explicit ``gc.collect()`` per shard bounds whatever might.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class RowBuffer:
    """Article rows on their way into a shard, converted to Arrow every ``batch`` rows, so a shard's
    rows never sit in memory as Python dicts (+386 MB per 30,000 articles as dicts, +157 MB as Arrow
    batches: ``benchmarks/bench_parse.py``)."""

    def __init__(self, batch: int = 1000):
        self.batch = batch
        self._tables: list[pa.Table] = []
        self._rows: list[dict[str, Any]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._count += 1
        if len(self._rows) >= self.batch:
            self._tables.append(to_table(self._rows))
            self._rows = []

    def take(self) -> pa.Table:
        """Everything buffered, as one table in the article schema; the buffer is empty after."""
        if self._rows or not self._tables:
            self._tables.append(to_table(self._rows))
        table = pa.concat_tables(self._tables) if len(self._tables) > 1 else self._tables[0]
        self._tables, self._rows, self._count = [], [], 0
        return table


def parse_input(source: InputFile, docs: Location, shard_rows: int, fetched_at: _dt.datetime) -> ParsedInput:
    """Parse one input into new shards of ``docs`` (a worker task; nothing is committed).

    Streams the file, writing a shard each ``shard_rows`` records. Records the file itself overrides
    (a later copy of the same PMID, or a DeleteCitation at its end) are dropped from its shards
    before it returns, so each PMID is in the file's shards at most once.

    :raises IngestError: (PubmedXMLError) the file is malformed, naming the position and last PMID.
    """
    best: dict[int, tuple[int, int]] = {}  # pmid -> (version, position) of the file's winning record
    deleted: list[int] = []
    written: list[tuple[ShardInfo, list[int], list[int], list[int]]] = []  # shard, positions, pmids, versions
    buffer = RowBuffer()
    positions: list[int] = []
    pmids: list[int] = []
    versions: list[int] = []
    records = 0

    def flush() -> None:
        info = write_shard(docs, shard_name(source, len(written)), buffer.take())
        if info is not None:
            written.append((info, list(positions), list(pmids), list(versions)))
        positions.clear()
        pmids.clear()
        versions.clear()
        gc.collect()  # the collector is paused while parsing: collect here, with the buffer empty

    with contextlib.ExitStack() as stack:
        stack.enter_context(collector_paused())
        for position, record in enumerate(iter_file_records(source.loc, stack)):
            if isinstance(record, Deletion):
                deleted.append(record.pmid)
                continue
            records += 1
            record["source"] = source.name
            record["fetched_at"] = fetched_at
            key = (record["version"], position)
            if record["pmid"] not in best or key > best[record["pmid"]]:
                best[record["pmid"]] = key
            buffer.append(record)
            positions.append(position)
            pmids.append(record["pmid"])
            versions.append(record["version"])
            if len(buffer) >= shard_rows:
                flush()
        flush()
    gone = set(deleted)
    winners = {pos for pmid, (_, pos) in best.items() if pmid not in gone}
    shards: list[ShardInfo] = []
    rows: list[tuple[list[int], list[int]]] = []
    for info, shard_positions, shard_pmids, shard_versions in written:
        keep = [p in winners for p in shard_positions]
        if not all(keep):  # rare: rewrite the shard (still uncommitted, so nobody reads it) without them
            table = (docs / info.name).read_table().filter(pa.array(keep, pa.bool_()))
            if not table.num_rows:
                (docs / info.name).delete()
                continue
            info = write_shard(docs, info.name, table)
            shard_pmids, shard_versions = table.column("pmid").to_pylist(), table.column("version").to_pylist()
        shards.append(info)
        rows.append((shard_pmids, shard_versions))
    return ParsedInput(source, records, deleted, shards, rows)


def locate(docs: Location, shards: list[ShardInfo], pmids: pa.Array) -> list[tuple[int, str, int]]:
    """``(pmid, shard, version)`` of the live rows of ``shards`` whose PMID is in ``pmids`` (a
    worker task: it reads only the ``pmid``/``version`` columns and each shard's deletion vector)."""
    found = []
    for shard in shards:
        table = (docs / shard.name).read_table(["pmid", "version"])
        hit = pc.is_in(table.column("pmid"), value_set=pmids)
        mask = live_mask(table, read_deletions(docs, shard))
        if mask is not None:
            hit = pc.and_(hit, mask)
        table = table.filter(hit)
        found += [
            (p, shard.name, v) for p, v in zip(table.column("pmid").to_pylist(), table.column("version").to_pylist())
        ]
    return found


# --- the driver -------------------------------------------------------------------------------------
def ingest_files(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike | Location,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool | None = None,
    now: Callable[[], _dt.datetime] | None = None,
    lock: bool = True,
    workers: int = 1,
    pool: Pool | None = None,
    commit_seconds: float = 30.0,
    before_commit: Callable[[], None] | None = None,
) -> IngestSummary:
    """Ingest PubMed XML files into the current-corpus directory ``out`` (see the module docstring).

    ``workers``: local processes that hash and parse (ignored when ``pool`` is given: a job passes
    its Ray tasks). ``progress`` None shows a bar on a terminal only, and logs a line every 30 s
    elsewhere (:class:`pipeline.progress.Progress`). ``lock=False``: the caller holds
    a lease that covers ``out`` already (a job run), so the store takes none of its own.
    ``commit_seconds``: commit at most this often (0: after every file). ``before_commit`` is called
    before each commit (a job's lease check: it raises once another run holds the job).

    :raises IngestError: see the module docstring.
    :raises ShardStateError: ``out`` is another kind of output or in use.
    """
    now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
    files = discover_inputs(paths)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(ShardStore(out, "ingest", shard_rows=shard_rows, lock=lock))
        if pool is None:  # closed before the store: no worker of ours writes after the lock is gone
            pool = stack.enter_context(LocalPool(min(workers, max(1, len(files)))))
        todo, summary = _plan(store, files, pool)
        if todo:
            _apply_all(store, todo, pool, now(), progress, commit_seconds, summary, before_commit)
        summary.rows = store.row_count()
    return summary


def _plan(store: ShardStore, files: list[Location], pool: Pool) -> tuple[list[InputFile], IngestSummary]:
    """Hash every input (in parallel) and keep the ones whose content is not ingested yet."""
    summary = IngestSummary()
    futures = [pool.submit(checksum, loc) for loc in files]
    inputs = store.inputs
    known = {r["sha256"] for r in inputs.values() if r.get("sha256")}
    todo: list[InputFile] = []
    for future in futures:
        source: InputFile = future.result()
        record = inputs.get(source.name)
        if source.sha256 in known or (record is not None and "sha256" not in record and record["size"] == source.size):
            summary.skipped += 1  # (a record without a checksum: written before they were kept)
            if record is None or record.get("sha256") != source.sha256:
                log.info("%s: the same content as an input already ingested (or given twice): skipped", source.loc)
            continue
        known.add(source.sha256)  # the same content twice in one call applies once, as a re-run would
        if record is not None:
            log.warning(
                "%s changed since it was ingested (sha256 %s..., now %s...): its records are applied "
                "again, on top of the current corpus",
                source.loc,
                str(record.get("sha256"))[:12],
                source.sha256[:12],
            )
            summary.reissued.append(source.name)
        todo.append(source)
    if todo and inputs:
        last = max(inputs)
        early = [s.name for s in todo if s.name < last]
        if early:
            what = "changed since it was ingested, and" if early[0] in inputs else "sorts before"
            raise IngestError(
                f"{early[0]} {what} {last} is already ingested into {store.loc}: applying it now would let "
                f"its older records override newer ones (and bring back deleted ones). Ingest all files into "
                f"a new output directory (--out, or [job] output in a job)"
            )
    return todo, summary


def _apply_all(
    store: ShardStore,
    todo: list[InputFile],
    pool: Pool,
    fetched_at: _dt.datetime,
    progress: bool | None,
    commit_seconds: float,
    summary: IngestSummary,
    before_commit: Callable[[], None] | None,
) -> None:
    """Parse ``todo`` ahead in the pool (a window of ``2 * workers`` files) and apply each in order."""
    window = max(2, 2 * pool.workers)
    pending: list[Any] = []
    queue = iter(todo)
    uncommitted: dict[str, Any] = {}

    def top_up() -> None:
        while len(pending) < window:
            source = next(queue, None)
            if source is None:
                return
            pending.append(pool.submit(parse_input, source, store.loc, store.shard_rows, fetched_at))

    def commit(txn: Transaction) -> None:
        if before_commit:
            before_commit()
        txn.commit(inputs=uncommitted)
        summary.commits += 1
        summary.manifest_bytes += (store.loc / "_manifest.json").size() or 0
        uncommitted.clear()

    last_commit = time.monotonic()
    with (
        store.transaction() as txn,
        Progress(len(todo), unit="file", desc=f"ingest into {store.loc}", bar=progress, logger=log) as bar,
    ):
        top_up()
        try:
            while pending:
                try:
                    parsed: ParsedInput = pending.pop(0).result()
                except BaseException:
                    # A file that cannot be parsed (malformed, unreadable) stops the run, but the
                    # files applied before it are good: commit them, so a fixed re-run starts there.
                    if uncommitted:
                        commit(txn)
                    raise
                top_up()
                counts = _apply(txn, parsed, pool)
                uncommitted[parsed.source.name] = {
                    "size": parsed.source.size,
                    "sha256": parsed.source.sha256,
                    "records": parsed.records,
                    "deletions": len(parsed.deletions),
                    "shards": [s.name for s in parsed.shards],
                    "ingested_at": fetched_at.isoformat(timespec="seconds"),
                }
                for key in ("records", "added", "replaced", "deleted", "tombstoned"):
                    setattr(summary, key, getattr(summary, key) + counts[key])
                summary.files += 1
                summary.shards += len(parsed.shards)
                summary.shard_rows += sum(s.rows for s in parsed.shards)
                bar.update(1)
                bar.set_postfix(articles=summary.records)
                if time.monotonic() - last_commit >= commit_seconds:
                    commit(txn)
                    last_commit = time.monotonic()
        except BaseException:
            for future in pending:  # files parsed ahead: their shards will never be committed
                future.cancel()
            raise
        if uncommitted:
            commit(txn)


def _find(txn: Transaction, pmids: list[int], pool: Pool) -> dict[int, list[tuple[str, int]]]:
    """Where the corpus (as the transaction has it so far) holds these sorted PMIDs live:
    ``pmid -> [(shard, version)]``. Shards whose PMID range misses them all are not read."""
    found: dict[int, list[tuple[str, int]]] = {}
    if not pmids:
        return found
    candidates = []
    for shard in txn.shards():
        first = bisect.bisect_left(pmids, shard.min_pmid)
        if shard.live and first < len(pmids) and pmids[first] <= shard.max_pmid:
            candidates.append(shard)
    wanted = pa.array(pmids, pa.int64())
    docs = txn.store.loc
    if sum(s.rows for s in candidates) <= INLINE_LOCATE_ROWS:
        hits = locate(docs, candidates, wanted)
    else:
        per_task = max(1, -(-len(candidates) // (4 * pool.workers)))
        futures = [
            pool.submit(locate, docs, candidates[i : i + per_task], wanted) for i in range(0, len(candidates), per_task)
        ]
        hits = [hit for f in futures for hit in f.result()]
    for pmid, shard, version in hits:
        if pmid not in txn.pending_tombstones(shard):  # tombstoned earlier in this transaction
            found.setdefault(pmid, []).append((shard, version))
    return found


def _apply(txn: Transaction, parsed: ParsedInput, pool: Pool) -> dict[str, int]:
    """Apply one parsed file: tombstone the rows it replaces or deletes, add its shards."""
    name = parsed.source.name
    own = {
        pmid: (version, shard.name)
        for shard, (pmids, versions) in zip(parsed.shards, parsed.rows)
        for pmid, version in zip(pmids, versions)
    }
    existing = _find(txn, sorted(set(own) | set(parsed.deletions)), pool)
    counts = {"records": parsed.records, "added": 0, "replaced": 0, "deleted": 0, "tombstoned": 0}

    def tombstone(shard: str, pmid: int) -> None:
        txn.tombstone(shard, [pmid])
        counts["tombstoned"] += 1

    for pmid in sorted(set(parsed.deletions)):
        olds = existing.get(pmid, [])
        for shard, _ in olds:
            tombstone(shard, pmid)
        if olds:
            counts["deleted"] += 1
        else:
            log.debug("%s: DeleteCitation of PMID %d, which is not in the corpus", name, pmid)
    for pmid, (version, shard) in own.items():
        olds = existing.get(pmid, [])
        newer = [v for _, v in olds if v > version]
        if newer:
            log.info("%s: PMID %d version %d kept over this file's version %d", name, pmid, max(newer), version)
            tombstone(shard, pmid)
            continue
        for old_shard, _ in olds:
            tombstone(old_shard, pmid)
        counts["replaced" if olds else "added"] += 1
    for shard in parsed.shards:
        txn.add(shard)
    log.info(
        "%s: %d records (%d new, %d replaced, %d deleted)",
        name,
        parsed.records,
        counts["added"],
        counts["replaced"],
        counts["deleted"],
    )
    return counts
