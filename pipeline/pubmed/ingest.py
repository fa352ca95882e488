"""Ingest PubMed baseline and update files into the documents table of an output (the current corpus).

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
- **An update costs what it changes.** Each file's records go into new data files named after the
  file and its checksum (``part-<file>-<sha16>-NNNN.<sha16>.parquet``, sorted by PMID); a record it
  revises or deletes is removed from the data file that held it, copy-on-write (that file is
  rewritten without it: :mod:`pipeline.store.documents`), in the same Delta commit that adds the new
  records, so every reader of the table sees the current corpus, and the task outputs of every
  unchanged article stay valid (a job copies them, it does not recompute them).
- **Inputs are recognised by content and apply exactly once**: every input is hashed (sha256, in
  parallel; a file of a ``biomine sync`` DEST by the sha256 the sync recorded when it verified it,
  as its raw files are immutable, unless its size changed since) and a file whose checksum the table's log records (a Delta app
  transaction of the commit that applied it) is skipped, whatever its name. A file whose name is recorded with another
  checksum (re-issued by NLM, or replaced by hand) is ingested again and applied on top of the
  current corpus, with a warning, if no later file is ingested yet. A new or changed file that sorts
  before an ingested one is refused (applying it now would let older records override newer ones),
  unless it is of an older baseline (below).
- **A new yearly baseline replaces the previous baseline and its updates.** NCBI's baseline of year
  ``YY`` (``pubmedYYn0001`` on; that year's updates number on after it) holds every citation as of
  its cutoff. Name order is (year, sequence) order, so it applies after the previous year's files;
  a file of an older year not applied yet once a newer year's file is applied is *superseded*:
  skipped, with one info line, as the newer baseline holds its records (older-year files are
  judged by name, not read). Once **every** file of the
  new baseline is applied, every live article whose ``source`` is a PubMed-named file
  (``pubmedYYnNNNN.xml[.gz]``) of an older year is removed, in one commit (its metadata:
  ``baseline: {prefix, dropped}``; the summary's ``dropped``): exactly the articles the new baseline
  no longer holds, since it rewrote every one it re-issued. Rows of other files (a user's own XML)
  stay. Whether a baseline is whole is never guessed (``new_baseline`` of :func:`ingest_files`): the
  mirror's listing says it once an update of the same year is listed (:func:`listed_baseline`; a
  job with a ``pubmed`` source; inputs that are a ``biomine sync`` DEST's folders: its
  ``_sync.json``), or the user does (``--new-baseline``: the inputs of the newest year are the
  whole baseline, numbered from 0001 without a gap counting those applied, else refused before
  anything applies); otherwise nothing is removed and the call that starts the newer baseline
  logs one warning saying so. This is checked on the table's state, not on what the
  call applied: a run that stopped between the baseline's last commit and the removal is finished
  by a re-run, even one with nothing new to apply. The removal is copy-on-write like a
  ``DeleteCitation``'s, so a job's task stages treat the removed articles as deleted ones: their
  outputs leave every table in the same run.
- Parsing runs in parallel workers (``workers`` local processes, or Ray tasks in a job:
  :class:`Pool`); each writes its file's data files to the output's storage itself. This process
  applies the files in order (finds the rows they replace) and commits every ``commit_seconds``
  (default 30 s) and at the end: new files, rewritten files and the inputs they came from become
  visible together. A crash loses at most the files applied since the last commit, and
  re-running the same command finishes with exactly the output an uninterrupted run gives (apart
  from ``fetched_at``). A re-run with nothing new is a no-op.
- Memory here is bounded by the PMIDs of the files applied since the last commit and the table's
  file list (its log); no process holds every PMID. Finding the rows a file replaces reads the
  ``pmid``/``version`` columns of the data files whose PMID range (the log's statistics) covers one
  of the file's PMIDs, in parallel tasks.
- One writer at a time: :func:`ingest_files` takes the output's lease (or runs under a job's).

:raises IngestError: an input is missing, unreadable or malformed (the message names the file, the
    position and the last good PMID), a new file sorts before one already ingested, or the inputs
    said to be a whole new baseline skip a file of it.
:raises StoreError: the output is another job's or in use by another run.
"""

from __future__ import annotations

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
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import IngestError
from pipeline.progress import Progress
from pipeline.pubmed.parser import Deletion, iter_records
from pipeline.store.documents import DEFAULT_SHARD_ROWS, AppliedInput, Documents, DocumentTransaction, write_shard
from pipeline.store.lease import Lease
from pipeline.store.output import JobOutput
from pipeline.store.storage import Location, location
from pipeline.store.tables import DataFile, TableError
from schemas.articles import to_table

log = logging.getLogger(__name__)

INPUT_SUFFIXES = (".xml", ".xml.gz")
#: A file as NCBI names it: ``pubmed26n0001.xml.gz`` (its baseline's year prefix, then the sequence
#: number: the baseline from 0001, then that year's updates after it).
PUBMED_FILE = re.compile(r"(?P<prefix>pubmed(?P<year>\d{2})n)(?P<seq>\d{4,})\.xml(?:\.gz)?")
#: The base of a data file ingest wrote (:func:`shard_base`): its rows all come from input ``stem``.
_SHARD_BASE = re.compile(r"part-(?P<stem>.+)-[0-9a-f]{16}-\d{4,}")
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
    #: Rows removed by this call (replaced, deleted, or a lower version than one already there).
    tombstoned: int = 0
    #: Data files written by this call (new, and rewritten copy-on-write), their rows, the commits.
    shards: int = 0
    shard_rows: int = 0
    rewritten: int = 0
    rewritten_bytes: int = 0
    commits: int = 0
    reissued: list[str] = field(default_factory=list)
    #: Files of an older baseline not applied: a newer baseline is applied already, which holds them.
    superseded: int = 0
    #: Articles removed because a complete newer baseline no longer holds them (their source is a
    #: file of an older baseline), and that baseline's prefix (``pubmed27n``) when this call did it.
    dropped: int = 0
    replaced_by: str | None = None


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
        self.fn: Callable[..., Any] | None = fn
        self.args = args

    def result(self) -> Any:
        assert self.fn is not None, "result() of a cancelled task"
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


def baseline_year(name: str) -> int | None:
    """The year of the baseline a PubMed-named file belongs to (26 for ``pubmed26n1400.xml.gz``, an
    update of the 2026 baseline); None for any other name (a user's own XML)."""
    m = PUBMED_FILE.fullmatch(name)
    return int(m.group("year")) if m else None


def checksum(loc: Location) -> InputFile:
    """Size and sha256 of one input (a worker task)."""
    return InputFile(loc, loc.size() or 0, loc.sha256())


def shard_base(source: InputFile, index: int) -> str:
    """The base name of data file ``index`` of input ``source``: named by file and content, so a
    re-issued file with the same name never reuses a name, and any worker writes the same name for
    the same file. Characters other than letters, digits, ``.``, ``_`` and ``-`` in the file's name
    become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", source.stem)
    return f"part-{stem}-{source.sha256[:16]}-{index:04d}"


@dataclass
class ParsedInput:
    """What a worker wrote for one input file (its shards, not yet committed) and what it found."""

    source: InputFile
    records: int
    deletions: list[int]
    shards: list[DataFile]
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
    written: list[tuple[DataFile, list[int], list[int], list[int]]] = []  # file, positions, pmids, versions
    buffer = RowBuffer()
    positions: list[int] = []
    pmids: list[int] = []
    versions: list[int] = []
    records = 0

    def flush() -> None:
        info = write_shard(docs, shard_base(source, len(written)), buffer.take())
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
    shards: list[DataFile] = []
    rows: list[tuple[list[int], list[int]]] = []
    for info, shard_positions, shard_pmids, shard_versions in written:
        keep = [p in winners for p in shard_positions]
        if not all(keep):  # rare: rewrite the file (still uncommitted, so nobody reads it) without them
            table = (docs / info.path).read_table()
            order = pc.array_sort_indices(pa.array(shard_pmids, pa.int64()))  # the file is sorted (stably)
            kept = pc.take(pa.array(keep, pa.bool_()), order)
            table = table.filter(kept)
            (docs / info.path).delete()
            if not table.num_rows:
                continue
            new = write_shard(docs, info.base, table)
            assert new is not None
            info = new
            shard_pmids, shard_versions = table.column("pmid").to_pylist(), table.column("version").to_pylist()
        shards.append(info)
        rows.append((shard_pmids, shard_versions))
    return ParsedInput(source, records, deleted, shards, rows)


def locate(docs: Location, files: list[DataFile], pmids: pa.Array) -> list[tuple[int, str, int]]:
    """``(pmid, file, version)`` of the rows of ``files`` whose PMID is in ``pmids`` (a worker task: it
    reads only the ``pmid``/``version`` columns)."""
    found = []
    for info in files:
        try:
            table = (docs / info.path).read_table(["pmid", "version"])
        except (FileNotFoundError, pa.ArrowInvalid) as exc:  # truncated, overwritten or deleted
            raise TableError(
                f"{docs / info.path} is missing or damaged ({str(exc).strip().splitlines()[0][:200]}): it cannot be "
                "updated; restore the file (e.g. an earlier version of the object) or build the corpus again into a "
                "new output"
            ) from None
        table = table.filter(pc.is_in(table.column("pmid"), value_set=pmids))
        found += [
            (p, info.path, v) for p, v in zip(table.column("pmid").to_pylist(), table.column("version").to_pylist())
        ]
    return found


# --- the driver -------------------------------------------------------------------------------------
def ingest_files(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike | Location | JobOutput,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool | None = None,
    now: Callable[[], _dt.datetime] | None = None,
    lease: Lease | None = None,
    workers: int = 1,
    pool: Pool | None = None,
    commit_seconds: float = 30.0,
    new_baseline: bool | BaselineListing | Iterable[str] | None = None,
) -> IngestSummary:
    """Ingest PubMed XML files into the documents table of output ``out`` (see the module docstring).

    ``workers``: local processes that hash and parse (ignored when ``pool`` is given: a job passes
    its Ray tasks). ``progress`` None shows a bar on a terminal only, and logs a line every 30 s
    elsewhere (:class:`pipeline.progress.Progress`). ``lease``: the caller holds the output's lease
    already (a job run; it is checked before each commit); else this takes it, and records the
    output as a ``biomine ingest`` corpus. ``commit_seconds``: commit at most this often (0: after
    every file).

    ``new_baseline`` says when a new yearly baseline is whole, so that the articles it no longer
    holds leave the corpus (see the module docstring): True, the inputs of the newest year prefix
    are NCBI's whole new baseline (``biomine ingest --new-baseline``; they must run from 0001
    without a gap, counting those applied already); a :class:`BaselineListing` (a job of a
    ``pubmed`` source passes the mirror's listing: :func:`listed_baseline`) or the names of every
    file of the new baseline; None (default), the listing of the ``biomine sync`` DEST whose folders
    the inputs are, if they are one's, else not known; False, not known.

    Inputs in the folders of a ``biomine sync`` DEST are recognised by the sha256 its state
    recorded when it verified them (its files are immutable): not read again to be hashed.

    :raises IngestError: see the module docstring.
    :raises StoreError: ``out`` is another job's output, or in use by another run.
    """
    now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
    output = out if isinstance(out, JobOutput) else JobOutput(out)
    files = discover_inputs(paths)
    with contextlib.ExitStack() as stack:
        if lease is None:
            output.refuse_table_path()
            output.root.mkdir()
            lease = stack.enter_context(output.lease(f"biomine ingest into {output.root}"))
            output.check_owner(INGEST_OWNER, claim=True)
        docs = Documents(output.documents)
        docs.table.remove_orphans()  # a killed writer's leftovers (we hold the lease)
        if pool is None:  # closed before the lease: no worker of ours writes after it is released
            pool = stack.enter_context(LocalPool(min(workers, max(1, len(files)))))
        last = _last_applied(docs)
        listing = _baseline_files(docs, files, new_baseline)  # first: a wrong --new-baseline applies nothing
        todo, summary = _plan(docs, files, pool, last, _recorded_checksums(files))
        if todo:
            _apply_all(docs, todo, pool, now(), progress, commit_seconds, summary, lease, shard_rows, last)
        _replace_older_baselines(docs, files, listing, last, summary, lease)
        summary.rows = docs.count()
    return summary


#: What ``biomine ingest --out DIR`` records as the owner of DIR.
INGEST_OWNER = {"name": "biomine ingest", "source": {"kind": "ingest"}}


def _named_result(future: Any, name: str) -> Any:
    """``future.result()``; a failure of the pool itself (a Ray worker crashed or killed for memory,
    its node lost: a :class:`~pipeline.errors.StageError`) names the input it was working on."""
    from pipeline.errors import StageError

    try:
        return future.result()
    except StageError as exc:
        raise IngestError(f"{name}: {exc}; ingest again (what was committed stays)") from exc


def _recorded_checksums(files: list[Location]) -> dict[str, InputFile]:
    """The inputs that a ``biomine sync`` DEST's state recorded when it verified them (by URI), with
    their recorded size and sha256: immutable raw files, so a daily run does not read the whole
    baseline again to recognise it."""
    from pipeline.pubmed.sync import read_state

    dest = _synced_dest(files)
    if dest is None:
        return {}
    recorded = read_state(dest)["files"]
    candidates = []
    for loc in files:
        entry = recorded.get(f"{loc.parent.name}/{loc.name}")
        if _same_place(loc.parent.parent, dest) and isinstance(entry, dict) and entry.get("sha256"):
            candidates.append((loc, int(entry.get("size") or 0), str(entry["sha256"])))

    def unchanged(item: tuple[Location, int, str]) -> bool:
        # a file replaced by hand since the sync verified it (a restore, a copy from elsewhere) is
        # hashed like any input; one stat (a HEAD on object storage) per file tells most apart
        return item[0].size() == item[1]

    with ThreadPoolExecutor(16) as threads:
        same = list(threads.map(unchanged, candidates))
    return {loc.uri: InputFile(loc, size, sha) for (loc, size, sha), ok in zip(candidates, same) if ok}


def _same_place(a: Location, b: Location) -> bool:
    """One folder, however spelled (a local path through a link)."""
    return a.uri == b.uri or (a.is_local and b.is_local and os.path.realpath(a.path) == os.path.realpath(b.path))


def _plan(
    docs: Documents, files: list[Location], pool: Pool, last: str | None, known: Mapping[str, InputFile]
) -> tuple[list[InputFile], IngestSummary]:
    """Hash every input (in parallel; ``known``: recognised already, by URI) and keep the ones whose
    content is not applied yet, less the files of a baseline older than the newest one applied
    (``last``: the newest input applied), which are not even hashed."""
    summary = IngestSummary()
    applied = docs.inputs_applied()
    # the newest baseline applied: of the newest input applied, or of any input applied (the newest
    # commit may have applied a user's own file only)
    years = [baseline_year(last) if last else None]
    years += [y for loc in files if (y := baseline_year(loc.name)) is not None and docs.position(loc.name) is not None]
    newest_year = max((y for y in years if y is not None), default=None)
    superseded: list[str] = []
    current: list[Location] = []
    for loc in files:
        year = baseline_year(loc.name)
        if year is not None and newest_year is not None and year < newest_year:
            # NCBI's newer baseline holds every citation as of its cutoff, this file's records
            # included: applying it now would let its older records override the newer ones.
            if docs.position(loc.name) is not None:
                summary.skipped += 1  # applied before the newer baseline
            else:
                superseded.append(loc.name)
            continue
        current.append(loc)
    futures = [known[loc.uri] if loc.uri in known else pool.submit(checksum, loc) for loc in current]
    seen: set[str] = set()
    todo: list[InputFile] = []
    for loc, future in zip(current, futures):
        source: InputFile = future if isinstance(future, InputFile) else _named_result(future, loc.name)
        if source.sha256 in seen or docs.applied(source.sha256):
            summary.skipped += 1
            log.info("%s: its content is applied already (under this or another name): skipped", source.loc)
            continue
        seen.add(source.sha256)  # the same content twice in one call applies once, as a re-run would
        position = docs.position(source.name)
        if position is not None:
            if position < applied:
                raise IngestError(
                    f"{source.name} changed since it was ingested, and later files are ingested already into "
                    f"{docs.loc}: applying it now would let its older records override newer ones (and bring "
                    "back deleted ones). Ingest all files into a new output",
                    setting="output",
                )
            log.warning(
                "%s changed since it was ingested (sha256 now %s...): its records are applied again, on top "
                "of the current corpus",
                source.loc,
                source.sha256[:12],
            )
            summary.reissued.append(source.name)
        todo.append(source)
    if superseded:
        summary.superseded = len(superseded)
        log.info(
            "%d file(s) of an older baseline not applied (%s%s): superseded by the newer baseline already "
            "applied (up to %s), which holds their records",
            len(superseded),
            superseded[0],
            ", ..." if len(superseded) > 1 else "",
            last,
        )
    return todo, summary


def _last_applied(docs: Documents) -> str | None:
    """The name of the newest input file applied (from the newest commits that applied inputs)."""
    for entry in docs.table.commit_metadata(limit=50):
        inputs = entry.get("inputs")
        if inputs:
            return max(r["name"] for r in inputs)
    return None


def _apply_all(
    docs: Documents,
    todo: list[InputFile],
    pool: Pool,
    fetched_at: _dt.datetime,
    progress: bool | None,
    commit_seconds: float,
    summary: IngestSummary,
    lease: Lease,
    shard_rows: int,
    last: str | None,
) -> None:
    """Parse ``todo`` ahead in the pool (a window of ``2 * workers`` files) and apply each in order
    (``last``: the newest input applied before)."""
    early = [s.name for s in todo if last is not None and s.name < last and s.name not in summary.reissued]
    if early:
        raise IngestError(
            f"{early[0]} sorts before {last}, which is already ingested into {docs.loc}: applying it now would "
            "let its older records override newer ones (and bring back deleted ones). Ingest all files into "
            "a new output",
            setting="output",
        )
    window = max(2, 2 * pool.workers)
    pending: list[Any] = []
    queue = iter(todo)
    uncommitted = 0

    def top_up() -> None:
        while len(pending) < window:
            source = next(queue, None)
            if source is None:
                return
            pending.append((source.name, pool.submit(parse_input, source, docs.loc, shard_rows, fetched_at)))

    def commit(txn: DocumentTransaction) -> None:
        nonlocal uncommitted
        lease.check()
        before = set(txn.files())
        txn.commit()
        after = docs.files()
        rewritten = [f for p, f in after.items() if p not in before]
        summary.rewritten += len(rewritten)
        summary.rewritten_bytes += sum(f.size for f in rewritten)
        summary.commits += 1
        uncommitted = 0

    last_commit = time.monotonic()
    with (
        docs.transaction() as txn,
        Progress(len(todo), unit="file", desc=f"ingest into {docs.loc}", bar=progress, logger=log) as bar,
    ):
        top_up()
        try:
            while pending:
                name, future = pending.pop(0)
                try:
                    parsed: ParsedInput = _named_result(future, name)
                except BaseException:
                    # A file that cannot be parsed (malformed, unreadable) stops the run, but the
                    # files applied before it are good: commit them, so a fixed re-run starts there.
                    if uncommitted:
                        commit(txn)
                    raise
                top_up()
                counts = _apply(txn, parsed, pool)
                txn.applied(
                    AppliedInput(
                        parsed.source.name,
                        parsed.source.size,
                        parsed.source.sha256,
                        parsed.records,
                        len(parsed.deletions),
                        counts["added"],
                        counts["replaced"],
                        counts["deleted"],
                    )
                )
                uncommitted += 1
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
            for _, ahead in pending:  # files parsed ahead: their data files will never be committed
                ahead.cancel()
            raise
        if uncommitted:
            commit(txn)


def _find(txn: DocumentTransaction, pmids: list[int], pool: Pool) -> dict[int, list[tuple[str, int]]]:
    """Where the corpus (as the transaction has it so far) holds these sorted PMIDs:
    ``pmid -> [(file, version)]``. Files whose PMID range (the log's statistics) misses them all are
    not read."""
    found: dict[int, list[tuple[str, int]]] = {}
    if not pmids:
        return found
    candidates = [f for f in txn.files().values() if f.rows and f.covers(pmids)]
    wanted = pa.array(pmids, pa.int64())
    docs = txn.docs.loc
    if sum(f.rows for f in candidates) <= INLINE_LOCATE_ROWS:
        hits = locate(docs, candidates, wanted)
    else:
        per_task = max(1, -(-len(candidates) // (4 * pool.workers)))
        futures = [
            pool.submit(locate, docs, candidates[i : i + per_task], wanted) for i in range(0, len(candidates), per_task)
        ]
        hits = [hit for f in futures for hit in f.result()]
    for pmid, path, version in hits:
        if pmid not in txn.pending_removals(path):  # removed earlier in this transaction
            found.setdefault(pmid, []).append((path, version))
    return found


def _apply(txn: DocumentTransaction, parsed: ParsedInput, pool: Pool) -> dict[str, int]:
    """Apply one parsed file: remove the rows it replaces or deletes, add its data files."""
    name = parsed.source.name
    own = {
        pmid: (version, shard.path)
        for shard, (pmids, versions) in zip(parsed.shards, parsed.rows)
        for pmid, version in zip(pmids, versions)
    }
    existing = _find(txn, sorted(set(own) | set(parsed.deletions)), pool)
    for shard in parsed.shards:
        txn.add(shard)
    counts = {"records": parsed.records, "added": 0, "replaced": 0, "deleted": 0, "tombstoned": 0}

    def remove(path: str, pmid: int) -> None:
        txn.remove(path, [pmid])
        counts["tombstoned"] += 1

    for pmid in sorted(set(parsed.deletions)):
        olds = existing.get(pmid, [])
        for path, _ in olds:
            remove(path, pmid)
        if olds:
            counts["deleted"] += 1
        else:
            log.debug("%s: DeleteCitation of PMID %d, which is not in the corpus", name, pmid)
    for pmid, (version, path) in own.items():
        olds = existing.get(pmid, [])
        newer = [v for _, v in olds if v > version]
        if newer:
            log.info("%s: PMID %d version %d kept over this file's version %d", name, pmid, max(newer), version)
            remove(path, pmid)
            continue
        for old_path, _ in olds:
            remove(old_path, pmid)
        counts["replaced" if olds else "added"] += 1
    log.info(
        "%s: %d records (%d new, %d replaced, %d deleted)",
        name,
        parsed.records,
        counts["added"],
        counts["replaced"],
        counts["deleted"],
    )
    return counts


# --- a new yearly baseline replaces the previous one ---------------------------------------------------
_PUBMED_STEM = re.compile(r"pubmed(?P<year>\d{2})n\d{4,}")


@dataclass(frozen=True)
class BaselineListing:
    """The newest baseline that a ``biomine sync`` DEST's state knows of (:func:`listed_baseline`)."""

    #: ``pubmed27n``
    prefix: str
    #: Every file of it: ``pubmed27n0001.xml.gz`` up to the newest listed (NCBI numbers a baseline
    #: from 0001, without gaps).
    files: frozenset[str]
    #: Why the listing is not known to be the whole baseline yet; empty when it is.
    pending: str = ""


def listed_baseline(dest: str | Location, waiting: Iterable[str] = ()) -> BaselineListing | None:
    """The newest baseline that the last ``biomine sync`` of ``dest`` saw listed on the mirror (its
    ``_sync.json``); None when no baseline was listed.

    The listing is the whole baseline (``pending`` empty) only with positive evidence: the mirror
    lists an update of the same year in ``updatefiles/``. NCBI numbers a year's updates after the
    last file of its baseline and publishes them once the baseline is out, so an update of the
    year proves that no baseline file is still to come; a listing seen while NCBI is still uploading
    the baseline (some files not listed yet, or listed without their ``.md5``: ``waiting`` keys
    ``folder/name`` and the state's own list) is not taken for the whole baseline, and neither is a
    baseline listing left by an earlier sync than the one that listed the update (``sync``)."""
    from pipeline.pubmed.sync import read_state

    listed = read_state(dest)["listed"]
    entry = listed.get("baseline")
    m = PUBMED_FILE.fullmatch(str(entry.get("newest") or "")) if isinstance(entry, dict) else None
    if m is None:
        return None
    assert isinstance(entry, dict)
    prefix, digits = m.group("prefix"), m.group("seq")
    files = frozenset(f"{prefix}{i:0{len(digits)}d}.xml.gz" for i in range(1, int(digits) + 1))
    waiting = sorted({*waiting, *(f"baseline/{name}" for name in entry.get("waiting") or ())})
    late = [key.rsplit("/", 1)[-1] for key in waiting if key.startswith(f"baseline/{prefix}")]
    if late:
        return BaselineListing(prefix, files, f"{late[0]} is listed without its .md5 yet")
    updates = listed.get("updatefiles")
    u = PUBMED_FILE.fullmatch(str(updates.get("newest") or "")) if isinstance(updates, dict) else None
    if u is None or u.group("prefix") != prefix or int(u.group("seq")) <= int(digits):
        return BaselineListing(
            prefix,
            files,
            f"the mirror lists no {prefix} update yet (NCBI publishes a year's updates once its baseline is whole)",
        )
    assert isinstance(updates, dict)
    if not entry.get("sync") or entry.get("sync") != updates.get("sync"):
        # e.g. `biomine sync --only updatefiles` after a sync that saw part of the baseline
        return BaselineListing(prefix, files, "the baseline was not listed by the sync that listed its updates")
    return BaselineListing(prefix, files)


def _synced_dest(files: list[Location]) -> Location | None:
    """The ``biomine sync`` DEST whose ``baseline/`` or ``updatefiles/`` folders the PubMed-named
    inputs are in, when they are all one DEST's; else None."""
    from pipeline.pubmed.sync import FOLDERS, STATE

    parents = {f.parent.uri: f.parent for f in files if baseline_year(f.name) is not None}
    if not parents or any(p.name not in FOLDERS for p in parents.values()):
        return None
    dests: dict[str, Location] = {}
    for p in parents.values():
        key = os.path.realpath(p.parent.path) if p.parent.is_local else p.parent.uri
        dests.setdefault(key, p.parent)
    if len(dests) != 1:
        return None
    (dest,) = dests.values()
    return dest if (dest / STATE).exists() else None


def _baseline_files(
    docs: Documents, files: list[Location], new_baseline: bool | BaselineListing | Iterable[str] | None
) -> BaselineListing | None:
    """The newest baseline, as ``new_baseline`` says (see :func:`ingest_files`); None when not known.

    :raises IngestError: ``new_baseline`` is True and the newest year's files, among the inputs and
        those applied already, do not run from 0001 without a gap (they are not a whole baseline).
    """
    if new_baseline is None:  # the folders of one `biomine sync` DEST: its state knows the mirror's listing
        dest = _synced_dest(files)
        return listed_baseline(dest) if dest is not None else None
    if isinstance(new_baseline, BaselineListing):
        return new_baseline
    if not isinstance(new_baseline, bool):
        names = frozenset(new_baseline)
        found = [m for m in (PUBMED_FILE.fullmatch(n) for n in names) if m]
        top = max(found, key=lambda m: int(m.group("year")), default=None)
        return BaselineListing(top.group("prefix") if top else "", names)
    matches = [m for m in (PUBMED_FILE.fullmatch(f.name) for f in files) if m]
    if not new_baseline or not matches:
        return None
    year = max(int(m.group("year")) for m in matches)
    newest = [m for m in matches if int(m.group("year")) == year]
    prefix, width = newest[0].group("prefix"), len(newest[0].group("seq"))
    given = {int(m.group("seq")): m.group(0) for m in newest}
    for seq in range(1, max(given) + 1):
        name = given.get(seq, f"{prefix}{seq:0{width}d}.xml.gz")
        if seq not in given and docs.position(name) is None and docs.position(name[: -len(".gz")]) is None:
            raise IngestError(
                f"the {prefix} inputs are said to be NCBI's whole new baseline, but {name} is neither among them "
                f"nor applied: pass every file of the baseline, {prefix}{1:0{width}d} to the last, or say so only "
                "once you have them all",
                setting="new_baseline",
            )
    return BaselineListing(prefix, frozenset(given.values()))


def _replace_older_baselines(
    docs: Documents,
    files: list[Location],
    listing: BaselineListing | None,
    last: str | None,
    summary: IngestSummary,
    lease: Lease,
) -> None:
    """Once every file of a new baseline is applied, remove every live article whose source is a
    PubMed file of an older baseline, in one commit (see the module docstring).

    It looks at the table, not at what this call applied: a run that stopped between the last file
    of the baseline and this commit is finished by the next one, even with nothing new to apply.
    ``listing``: the newest baseline, when known (:func:`_baseline_files`); ``last``: the newest
    input applied before this call (for the warning about a new baseline).
    """
    names = {f.name for f in files}
    if listing is not None and listing.files:
        year = int(listing.prefix[len("pubmed") : -1]) if listing.prefix else None
        done = sum(1 for n in listing.files if n in names and docs.position(n) is not None)
        if year is not None and not listing.pending and done == len(listing.files):
            if not _dropped_already(docs, listing.prefix):
                _drop_older(docs, year, summary, lease)
            return
        if done:
            why = listing.pending or "the others are not applied yet"
            log.info(
                "the %s baseline: %d of its %d listed files applied; the articles it no longer holds leave the "
                "corpus once it is whole and applied (%s)",
                listing.prefix,
                done,
                len(listing.files),
                why,
            )
        return
    # Not known: say so once, in the call that starts a newer baseline.
    before = baseline_year(last) if last else None
    started = [
        m
        for m in (PUBMED_FILE.fullmatch(f.name) for f in files)
        if m and before is not None and int(m.group("year")) > before and docs.position(m.group(0)) is not None
    ]
    if started:
        log.warning(
            "%s starts a new baseline (%s): articles of the older baselines that it no longer holds stay live, "
            "as nothing says when it is whole. Once all its files are applied, ingest again with "
            "--new-baseline (a files job: [source] new_baseline = true; the inputs of its year are NCBI's whole "
            "new baseline), or ingest the folders of a `biomine sync` DEST (or run a job with [source] kind = "
            '"pubmed"), which know the mirror\'s listing',
            started[0].group(0),
            started[0].group("prefix"),
        )


def _dropped_already(docs: Documents, prefix: str) -> bool:
    """Whether a recent commit dropped the articles that the ``prefix`` baseline no longer holds: it
    was atomic, and no older baseline's file applies after it (superseded), so nothing is left to
    find. (Beyond the recent commits the check reads the candidate files again: correct, slower.)"""
    return any(
        isinstance(entry.get("baseline"), dict) and entry["baseline"].get("prefix") == prefix
        for entry in docs.table.commit_metadata(limit=50)
    )


def _drop_older(docs: Documents, year: int, summary: IngestSummary, lease: Lease) -> None:
    """Remove the live articles whose source is a PubMed file of a baseline before ``year``."""
    candidates: list[str] = []
    for path, info in docs.files().items():
        m = _SHARD_BASE.fullmatch(info.base)
        if m is not None:  # written by ingest: its rows all come from the input its name gives
            stem = _PUBMED_STEM.fullmatch(m.group("stem"))
            if stem is None or int(stem.group("year")) >= year:
                continue
        candidates.append(path)  # an older baseline's file, or one not named by ingest: read it
    if not candidates:
        return

    def older(path: str) -> list[int]:
        table = docs.read(["pmid", "source"], files=[path])
        sources = [s for s in pc.unique(table.column("source")).to_pylist() if s is not None]
        gone = [s for s in sources if (y := baseline_year(s)) is not None and y < year]
        if not gone:
            return []
        return table.filter(pc.is_in(table.column("source"), value_set=pa.array(gone))).column("pmid").to_pylist()

    prefix = f"pubmed{year:02d}n"
    with ThreadPoolExecutor(16) as threads:
        found = dict(zip(candidates, threads.map(older, candidates)))
    dropped = sum(len(p) for p in found.values())
    if not dropped:
        return
    with docs.transaction() as txn:
        for path, pmids in found.items():
            if pmids:
                txn.remove(path, pmids)
        lease.check()
        txn.commit(metadata={"baseline": {"prefix": prefix, "dropped": dropped}})
    summary.dropped += dropped
    summary.replaced_by = prefix
    summary.commits += 1
    log.info(
        "the %s baseline is whole and applied: %d article(s) of older baselines that it no longer holds "
        "left the corpus",
        prefix,
        dropped,
    )
