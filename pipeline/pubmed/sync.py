"""A local or object-store copy of NCBI's PubMed files (``baseline/`` and ``updatefiles/``), kept current.

Contract (what ``biomine sync DEST`` promises):

- **Only the configured mirror is contacted**: ``mirror`` (or ``$BIOMINE_PUBMED_MIRROR``; default
  :data:`DEFAULT_MIRROR`, NCBI's HTTPS server). Plain ``http://`` only with ``allow_http`` (anyone on
  the way could change the files and their ``.md5`` together). Its ``baseline/`` and
  ``updatefiles/`` folders are read as the Apache-style HTML index NCBI serves
  (``<a href="pubmed26n0001.xml.gz">`` with ``pubmed26n0001.xml.gz.md5`` beside each file); only
  relative links named ``pubmedYYnNNNN.xml.gz`` count, and a file whose ``.md5`` is not listed yet
  (NCBI is still uploading it) waits for the next sync.
- **Only what is not held is downloaded**, a few files at a time (``concurrency``, default 3: NCBI
  asks for modest concurrency). Each download goes into a local staging folder (``DEST/.sync-partial``
  for a local DEST; a folder under ``$XDG_CACHE_HOME/biomine/sync`` for an object store) and is
  **resumable**: a cut connection, an HTTP 429/5xx or a killed process continues from where it
  stopped with an HTTP ``Range`` request, retried with backoff
  (:func:`pipeline.store.releases.download`, biomine's one resumable download).
- **Where downloads run**: one file's download, ``.md5`` check and publication is
  :func:`fetch_file`, a pure function of DEST's URI, the mirror and the file's name that returns
  the file's record (size, md5, sha256, host and pid). ``biomine sync`` runs it in ``concurrency``
  threads of its own process; a job (``[source] kind = "pubmed"``) passes a
  :class:`pipeline.run.cluster.RayPool`, so each file is a Ray task on any node of the cluster
  (:data:`TASK_CPUS` each; ``concurrency`` in flight). The task stages in its own node's folder:
  ``DEST/.sync-partial`` of a local DEST (the same folder on every node when DEST is on a shared
  filesystem), or its node's cache folder for an object store, so a task Ray retries on another node
  (its node lost) restarts that file from byte 0 when DEST is an object store. On a multi-node
  cluster DEST must be an object store (``s3://``) or a filesystem every node mounts: a file that a
  node published where this process cannot see it (looked for again for :data:`PUBLISHED_WAIT`
  seconds: a shared filesystem's cache may lag) stops the sync at once (what is pending is
  cancelled), naming the file and the host. Any other failure of a download is one
  :class:`SyncError` naming the file, recorded like a ``.md5`` failure: a folder that cannot be
  written where it ran (naming the host), or its Ray worker lost (crashed, killed, node gone).
- **Every file is verified** against its ``.md5`` (NCBI's ``MD5(name)= hex`` layout, or md5sum's
  ``hex  name``). A mismatch is downloaded again once from byte 0; a second mismatch keeps nothing
  of that file and, once the other files are done, is one :class:`SyncError` naming it.
- **Raw files are immutable and published whole**: ``DEST/baseline/NAME`` and
  ``DEST/updatefiles/NAME``, each written once, atomically (a rename on a local disk, one PUT on an
  object store: :mod:`pipeline.store.storage`), only after its checksum matched. ``biomine ingest
  DEST/baseline DEST/updatefiles`` (or a job with ``[source] kind = "pubmed"``) reads them.
- **The mirror's state is recorded** in ``DEST/_sync.json`` (:data:`STATE`) by the process that runs
  the sync alone (one writer; a download only returns its record; a damaged one is a
  :class:`SyncError` naming it: move it aside and sync again), rewritten after every verified
  file: per file (``baseline/NAME``) its size, md5, sha256, the host that fetched it and when it was
  verified, and per folder the newest file the mirror listed at the last sync (and those listed without a ``.md5`` yet). A killed sync
  resumes (verified files stay verified; partial downloads continue); a re-run downloads nothing
  and fetches no ``.md5``; a file found in DEST but not recorded (a sync killed between publishing
  and recording it), or found whole in staging (killed before publishing it), is checked against
  its ``.md5`` and recorded without downloading it again.
- One sync at a time per DEST: the process that runs it holds DEST's lease (:mod:`pipeline.store.lease`).
- Ctrl-C or SIGTERM: no file starts any more (what is not started is cancelled). Threads finish the
  downloads under way before the lease is released; a Ray task under way is interrupted (its partial
  file resumes later) and waited for, up to :data:`pipeline.run.cluster.DRAIN_TIMEOUT` seconds,
  before the lease is released (a next sync does not race it on its staging file). A file
  published after the interrupt is not recorded: the next sync finds it in DEST, checks it against
  its ``.md5`` and records it without a download.

:raises SyncError: a mirror URL that is not https (without ``allow_http``), a listing without files,
    a download that fails for good (or cannot be written where it runs), a file that fails its
    ``.md5`` twice, a local DEST that a node of the cluster does not share, or a damaged state.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import logging
import os
import queue
import re
import socket
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypedDict

from pipeline.errors import BioMineError, StageError, SyncError
from pipeline.progress import Progress
from pipeline.store import atomic

if TYPE_CHECKING:
    from pipeline.pubmed.ingest import Pool
    from pipeline.store.storage import Location

# pipeline.store's storage (pyarrow) is imported where it is used, so that `biomine sync --help` reads this
# module's defaults without loading pyarrow.

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "https://ftp.ncbi.nlm.nih.gov/pubmed/"
MIRROR_ENV = "BIOMINE_PUBMED_MIRROR"
FOLDERS = ("baseline", "updatefiles")
#: The mirror's state, in DEST (one JSON object; see the module docstring).
STATE = "_sync.json"
STATE_VERSION = 1
#: Local staging folder of a local DEST (hidden: ``ingest DEST/...`` never sees it).
PARTIAL = ".sync-partial"
DEFAULT_CONCURRENCY = 3

#: A PubMed file as NCBI names it: ``pubmed26n0001.xml.gz`` (year, then the sequence number).
FILE_NAME = re.compile(r"pubmed\d{2}n\d{4,}\.xml\.gz")
_HREF = re.compile(r"""<a\s[^>]*?href\s*=\s*["']([^"'?#]+)["']""", re.IGNORECASE)
_MD5_NCBI = re.compile(r"^MD5\s*\((?P<name>[^)]+)\)\s*=\s*(?P<hex>[0-9a-fA-F]{32})\s*$")
_MD5_SUM = re.compile(r"^(?P<hex>[0-9a-fA-F]{32})\s+\*?(?P<name>\S+)\s*$")


@dataclass
class SyncSummary:
    """What one sync did: files listed on the mirror, downloaded, found held, and bytes fetched."""

    listed: int = 0
    downloaded: list[str] = field(default_factory=list)
    held: int = 0
    adopted: list[str] = field(default_factory=list)  # in DEST but not recorded: checked, then recorded
    waiting: list[str] = field(default_factory=list)  # listed without their .md5 yet
    bytes: int = 0
    ran_on: dict[str, str] = field(default_factory=dict)  # file -> "host:pid" of the process that fetched it


def resolve_mirror(mirror: str | None = None, allow_http: bool = False) -> str:
    """The mirror's base URL (ending in ``/``): ``mirror``, else ``$BIOMINE_PUBMED_MIRROR``, else NCBI's.

    :raises SyncError: not an ``https://`` URL (``http://`` is accepted with ``allow_http``).
    """
    url = (mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).strip()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "http" and not allow_http:
        raise SyncError(
            f"mirror {url} is plain http: anyone on the way can change the files and their .md5 together; "
            "use an https:// mirror, or allow plain http for a mirror on a network you trust",
            setting=("mirror", "allow_http"),
        )
    if scheme not in ("http", "https"):
        raise SyncError(
            f"mirror {url}: expected an https:// URL of a copy of NCBI's pubmed/ folder (default {DEFAULT_MIRROR})",
            setting="mirror",
        )
    return url.rstrip("/") + "/"


def parse_listing(html: str) -> set[str]:
    """The names an HTML directory index links to (relative links only: a link elsewhere is no file
    of this folder)."""
    names = set()
    for href in _HREF.findall(html):
        if "/" in href or ":" in href:
            continue
        names.add(urllib.parse.unquote(href))
    return names


def parse_md5(text: str, name: str) -> str:
    """The hex digest a ``.md5`` file gives for ``name``: NCBI's ``MD5(name)= hex`` or md5sum's
    ``hex  name`` (a bare digest is accepted too).

    :raises SyncError: no digest for ``name`` in it.
    """
    for line in text.splitlines():
        line = line.strip()
        m = _MD5_NCBI.match(line) or _MD5_SUM.match(line)
        if m and os.path.basename(m.group("name")) == name:
            return m.group("hex").lower()
        if re.fullmatch(r"[0-9a-fA-F]{32}", line):
            return line.lower()
    raise SyncError(f"{name}.md5 holds no MD5 digest of {name} ({text.strip()[:80]!r}); check the mirror")


def read_state(dest: str | Location) -> dict[str, Any]:
    """DEST's recorded state (:data:`STATE`); an empty one when DEST was never synced.

    :raises SyncError: the state is damaged (not JSON, or not the shape a sync writes), naming the
        file and the fix.
    """
    from pipeline.store.storage import location

    loc = location(dest) / STATE
    if not loc.exists():
        return {"version": STATE_VERSION, "files": {}, "listed": {}}
    try:
        state = loc.read_json()
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise _damaged_state(loc, f"not JSON: {exc}") from None
    problem = _state_problem(state)
    if problem:
        raise _damaged_state(loc, problem)
    state.setdefault("files", {})
    state.setdefault("listed", {})
    return state


def _state_problem(state: Any) -> str | None:
    """What makes ``state`` not one a sync writes (None: nothing)."""
    if not isinstance(state, dict):
        return "not a JSON object"
    for part in ("files", "listed"):
        entries = state.get(part, {})
        if not isinstance(entries, dict):
            return f"its {part!r} is not an object"
        bad = next((key for key, entry in entries.items() if not isinstance(entry, dict)), None)
        if bad is not None:
            return f"its {part!r} entry {bad!r} is not an object"
    for key, entry in state.get("files", {}).items():
        if not isinstance(entry.get("md5"), str) or not isinstance(entry.get("size"), int):
            return f"its 'files' entry {key!r} has no md5 and size"
    return None


def _damaged_state(loc: Location, why: str) -> SyncError:
    # Nothing is lost by starting again: a file held in DEST is checked against its .md5 and recorded
    # without a download (an unrecorded file is adopted).
    return SyncError(
        f"{loc} is damaged ({why}): move it aside (e.g. to {STATE}.bad) and sync again; the files "
        "held there are checked against their .md5 and recorded without a download"
    )


def verified_files(
    dest: str | Location, folders: tuple[str, ...] = FOLDERS, before: str | None = None
) -> list[Location]:
    """The verified raw files of DEST, in the order they apply (file name: the baseline, then the
    updates, by sequence number); with ``before``, only those whose name sorts before it. Ingest
    refuses a new file that sorts before one it applied, so a job ingests up to the first file the
    mirror lists that is not verified yet (``before``), never past a gap."""
    from pipeline.store.storage import location

    root = location(dest)
    keys = [k for k in read_state(root)["files"] if k.split("/", 1)[0] in folders]
    keys = [k for k in keys if before is None or k.rsplit("/", 1)[-1] < before]
    return [root / k for k in sorted(keys, key=lambda k: k.rsplit("/", 1)[-1])]


def mirror_status(dest: str | Location, newest_applied: str | None) -> dict[str, Any]:
    """How far a corpus is behind its mirror, from DEST's state (no request to the mirror): the
    newest file the last sync saw listed (and when), the files verified in DEST, and ``behind``: how
    many sequence numbers the newest listed file is past ``newest_applied`` (the newest input the
    corpus applied; None when either is unknown or they are of different baseline years)."""
    state = read_state(dest)
    listed = [entry for entry in state["listed"].values() if isinstance(entry, dict) and entry.get("newest")]
    newest = max(listed, key=lambda entry: entry["newest"], default=None)
    behind = None
    pattern = re.compile(r"(pubmed\d{2}n)(\d+)")
    if newest is not None and newest_applied:
        a, b = pattern.match(newest["newest"]), pattern.match(newest_applied)
        if a and b and a.group(1) == b.group(1):
            behind = max(0, int(a.group(2)) - int(b.group(2)))
    return {
        "dest": str(dest),
        "mirror": state.get("mirror"),
        "newest_listed": newest["newest"] if newest else None,
        "checked_at": newest.get("checked") if newest else None,
        "verified": len(state["files"]),
        "behind": behind,
    }


def _staging(dest: Location) -> Path:
    if dest.is_local:
        return Path(dest.path) / PARTIAL
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "biomine" / "sync" / hashlib.sha256(dest.uri.encode()).hexdigest()[:16]


def _digest(path: Path | Location, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm, usedforsecurity=False)
    stream = open(path, "rb") if isinstance(path, Path) else path.open_input()
    with stream as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: The CPU request of one download task in a job (:class:`pipeline.run.cluster.RayPool`). A download
#: is network I/O plus two checksums of one file (~40 MB): a quarter CPU lets Ray place it on any node
#: with a little room, next to work that holds whole CPUs, so it never waits for (or takes) a CPU a
#: parse task or model actor could use. It is not zero, so that it never lands on a node that offers
#: no CPU at all (a head started with ``--num-cpus=0`` runs nothing). How many run at once is the
#: window of ``concurrency`` files the driver keeps in flight (NCBI's request), not this request.
TASK_CPUS = 0.25


class FileRecord(TypedDict):
    """What fetching one file did (:func:`fetch_file`): its checksums, whether it was found complete
    in DEST (``adopted``) rather than downloaded, warnings for the driver's log, and where it ran."""

    key: str
    size: int
    md5: str
    sha256: str
    adopted: bool
    notes: list[str]
    host: str
    pid: int


def _get(url: str, into: Path, attempts: int, timeout: float) -> tuple[str, int]:
    from pipeline.store.releases import download

    return download(
        url,
        into,
        progress=False,
        attempts=attempts,
        timeout=timeout,
        error=SyncError,
        again="sync again",
        mirror_env=MIRROR_ENV,
        report=False,  # one bar (or line) for the whole sync, not one per file
    )


def _text(url: str, staging: Path, name: str, attempts: int, timeout: float) -> str:
    """A small file of the mirror (a listing, a ``.md5``), fetched whole (never resumed: it may have
    changed since a killed sync fetched part of it)."""
    into = staging / f"{atomic.TMP_PREFIX}{name}"
    into.with_name(into.name + ".part").unlink(missing_ok=True)
    _get(url, into, attempts, timeout)
    try:
        return into.read_text("utf-8", errors="replace")
    finally:
        into.unlink(missing_ok=True)


def listing(mirror: str, folder: str, staging: Path, attempts: int, timeout: float) -> tuple[list[str], list[str]]:
    """``(files with a .md5, files still without one)`` of a mirror folder."""
    names = parse_listing(_text(f"{mirror}{folder}/", staging, f"{folder}.index.html", attempts, timeout))
    files = sorted(n for n in names if FILE_NAME.fullmatch(n))
    return [n for n in files if f"{n}.md5" in names], [n for n in files if f"{n}.md5" not in names]


def fetch_file(dest: str, mirror: str, folder: str, name: str, attempts: int, timeout: float) -> FileRecord:
    """Make ``folder/name`` held and verified in DEST, wherever this runs (a thread of ``biomine
    sync``, or a Ray task of a job on any node): fetch its ``.md5``, download it into this machine's
    staging folder (:func:`_staging`; resumed from a partial file there), verify it, publish it, and
    return its record. It never writes DEST's state: the caller records what it returns (one writer).
    Pure in its arguments (a URI and plain values), so that it can run anywhere.

    :raises SyncError: a download that fails for good, a file that fails its ``.md5`` twice, or a
        staging folder or DEST that cannot be written here (naming the file and this host).
    :raises StorageError: DEST on an object store that refuses the file (credentials, bucket).
    """
    import pyarrow as pa

    from pipeline.store.storage import location

    try:
        return _fetch(location(dest), mirror, folder, name, attempts, timeout)
    except BioMineError:
        raise
    except (OSError, pa.ArrowException) as exc:
        # e.g. a local DEST that is not mounted on this node (its folder cannot be made), a full disk:
        # one line, not a traceback from a Ray worker
        raise SyncError(_not_written(dest, f"{folder}/{name}", exc)) from None


def _not_written(dest: str, key: str, exc: BaseException) -> str:
    """The message of a file that could not be staged or published on this host."""
    from pipeline.store.storage import location

    hint = ""
    if location(dest).is_local:
        hint = (
            f"; check that {dest} exists and can be written there (free space, permissions): on a multi-node "
            "cluster keep DEST on object storage (s3://...) or on a filesystem every node mounts"
        )
    return f"{key} could not be stored or read on {socket.gethostname()} ({_one_line(exc)}){hint}"


def _one_line(exc: BaseException) -> str:
    """``exc`` in one line, without Python's quoting: an OSError's reason and path, else the first
    line of its message (a Ray error's message goes on with advice and tracebacks)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _fetch(root: Location, mirror: str, folder: str, name: str, attempts: int, timeout: float) -> FileRecord:
    """:func:`fetch_file` in DEST ``root``; an OSError is left to it."""
    staging = _staging(root)
    key, url = f"{folder}/{name}", f"{mirror}{folder}/{name}"
    expected = parse_md5(_text(f"{url}.md5", staging, f"{name}.md5", attempts, timeout), name)
    target = root / folder / name
    notes: list[str] = []
    host, pid = socket.gethostname(), os.getpid()  # where it ran, for the driver's log and state
    if target.exists():  # published by a sync killed before it recorded the file
        if _digest(target) == expected:
            return FileRecord(
                key=key,
                size=target.size() or 0,
                md5=expected,
                sha256=target.sha256(),
                adopted=True,
                notes=notes,
                host=host,
                pid=pid,
            )
        notes.append(f"{key} in {root} does not match its .md5; downloading it again")
    staged = staging / folder / name
    for attempt in (1, 2):
        if attempt == 1 and staged.exists():  # downloaded whole by a sync killed before it published it
            sha, size = _digest(staged, "sha256"), staged.stat().st_size
        else:
            sha, size = _get(url, staged, attempts, timeout)
        got = _digest(staged)
        if got == expected:
            break
        staged.unlink()
        if attempt == 2:
            raise SyncError(
                f"{url} does not match its .md5 after two downloads (got {got}, {name}.md5 says "
                f"{expected}); nothing of it is kept: sync again later, or use another mirror",
                setting="mirror",
            )
        notes.append(f"{key} does not match its .md5 (got {got}, expected {expected}); downloading it again")
    _publish(staged, target)
    return FileRecord(key=key, size=size, md5=expected, sha256=sha, adopted=False, notes=notes, host=host, pid=pid)


def _publish(staged: Path, target: Location) -> None:
    """``staged`` as the immutable file ``target``: a rename on a local disk (the staging folder is
    inside DEST), else one whole-object write."""
    if target.is_local:
        final = Path(target.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        atomic.fsync_dir(final.parent)
    else:
        target.write_bytes(staged.read_bytes())
        staged.unlink()


class _Threads:
    """``biomine sync`` on its own: :func:`fetch_file` in ``workers`` threads of this process (the
    downloads are network I/O; the checksums release the GIL). A :class:`pipeline.pubmed.ingest.Pool`."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._executor.submit(fn, *args)

    def close(self) -> None:
        # Ctrl-C: the downloads under way end (a thread cannot be stopped; their partial files resume
        # later), so that nothing of this sync writes DEST after its lease is released
        self._executor.shutdown(wait=True, cancel_futures=True)


def sync(
    dest: str | Location,
    mirror: str | None = None,
    *,
    allow_http: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    folders: tuple[str, ...] = FOLDERS,
    progress: bool | None = None,
    attempts: int = 5,
    timeout: float = 60.0,
    pool: Pool | None = None,
) -> SyncSummary:
    """Bring DEST up to date with the mirror's ``folders`` (see the module docstring).

    Each file is :func:`fetch_file`, run by ``pool`` (a job's :class:`pipeline.run.cluster.RayPool`:
    Ray tasks on any node) or, without one, by ``concurrency`` threads of this process; either way at
    most ``concurrency`` files are in flight. This process alone lists the mirror, holds DEST's lease
    and writes :data:`STATE`. ``pool``'s futures need ``result()``, ``cancel()`` and
    ``add_done_callback(fn)`` (``fn`` called with the future once it is done).

    :raises SyncError: see the module docstring; a failed file does not stop the others, and the
        first failure is raised once they are done.
    :raises StoreError: DEST is held by another sync, or cannot be written.
    """
    from pipeline.store.lease import Lease
    from pipeline.store.storage import location

    base = resolve_mirror(mirror, allow_http)
    root = location(dest)
    root.mkdir()
    window = max(1, concurrency)
    with Lease(root, what="biomine sync"), contextlib.ExitStack() as stack:
        state = read_state(root)
        state["mirror"] = base
        summary = SyncSummary()
        todo: list[tuple[str, str]] = []
        # the listings of one sync carry its start: an update listed by this sync proves the baseline
        # whole only with a baseline listing of the same sync (not one left by an older, partial one)
        started = _now()
        for folder in folders:
            names, waiting = listing(base, folder, _staging(root), attempts, timeout)
            summary.waiting += [f"{folder}/{n}" for n in waiting]
            if names:
                # `waiting`: listed without their .md5 yet (still uploading): a reader of the state alone
                # (`biomine ingest` of DEST) must not take the listing for a whole baseline while one is
                state["listed"][folder] = {
                    "newest": names[-1],
                    "files": len(names),
                    "waiting": waiting,
                    "checked": _now(),
                    "sync": started,
                }
            summary.listed += len(names)
            present = set((root / folder).files())  # one listing, not a request per file
            for name in names:
                if f"{folder}/{name}" in state["files"] and name in present:
                    summary.held += 1
                else:
                    todo.append((folder, name))
        if not summary.listed and not summary.waiting:
            # (one empty folder is normal: NCBI empties updatefiles/ when it publishes a new baseline)
            raise SyncError(
                f"{base} lists no pubmedYYnNNNN.xml.gz files in {' or '.join(f + '/' for f in folders)}; check "
                "that the mirror is a copy of NCBI's pubmed/ folder",
                setting="mirror",
            )
        for key in summary.waiting:
            log.info("%s: no .md5 listed yet; left for the next sync", key)
        if pool is None:
            threads = _Threads(window)
            stack.callback(threads.close)  # closed before the lease is released
            pool = threads
        errors = _fetch_all(root, base, todo, pool, window, state, summary, progress, attempts, timeout)
        (root / STATE).write_json(state)
        if errors:
            more = f" ({len(errors) - 1} more files failed too; see the log above)" if len(errors) > 1 else ""
            first = errors[0]
            raise type(first)(f"{first}{more}", setting=first.setting)
        return summary


def _fetch_all(
    root: Location,
    mirror: str,
    todo: list[tuple[str, str]],
    pool: Pool,
    window: int,
    state: dict[str, Any],
    summary: SyncSummary,
    progress: bool | None,
    attempts: int,
    timeout: float,
) -> list[BioMineError]:
    """Fetch ``todo`` in ``pool``, ``window`` files in flight, recording each verified file in
    ``state`` (and :data:`STATE`) as it comes back; the failures, in the order they came. A failed
    download (the mirror, storage, its Ray worker or node lost) is one :class:`SyncError` naming the
    file, except a local DEST that a node does not share: that stops the sync at once
    (:func:`_check_published`). A bug is raised as it is, with its traceback, once what is pending
    is cancelled.

    :raises SyncError: a file published where this process cannot see it (what is pending is cancelled).
    """
    errors: list[BioMineError] = []
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()  # futures, as they finish (any order)
    pending: dict[Any, str] = {}
    files = iter(todo)
    where = f"on {socket.gethostname()}" if isinstance(pool, _Threads) else "in its Ray task"

    def submit() -> None:
        for folder, name in itertools.islice(files, 1):
            future = pool.submit(fetch_file, root.uri, mirror, folder, name, attempts, timeout)
            pending[future] = f"{folder}/{name}"
            future.add_done_callback(done.put)

    try:
        with Progress(len(todo), unit="file", desc="sync", bar=progress, logger=log, every=30.0) as bar:
            for _ in range(window):
                submit()
            while pending:
                future = done.get()
                key = pending.pop(future)
                error: BioMineError | None = None
                try:
                    record = future.result()
                except StageError as exc:  # the task itself failed (worker crashed, node died, OOM)
                    error = _task_failed(key, where, exc.__cause__ or exc)
                except BioMineError as exc:
                    error = exc
                # anything else is a bug (fetch_file turns I/O failures into SyncError): it keeps its
                # traceback (pipeline.errors), after what is pending is cancelled (below)
                if error is not None:
                    log.error("%s: %s", key, error)
                    errors.append(error)
                else:
                    # a local DEST that a node does not share: every other file would land on that
                    # node's disk too; stop now rather than after downloading them all
                    _check_published(root, record)
                    _record(root, state, summary, record)
                submit()
                bar.update()
                bar.set_postfix(bytes=summary.bytes)
    finally:
        # Ctrl-C or SIGTERM: no file starts any more. (A download that ends after this is not
        # recorded; the next sync finds its file in DEST, checks it against its .md5 and records it.)
        for future in pending:
            future.cancel()
        drain = getattr(pool, "drain", None)  # a RayPool: its cancelled tasks end before the lease is released
        if pending and drain is not None:
            drain(list(pending))
    return errors


def _task_failed(key: str, where: str, exc: BaseException) -> SyncError:
    inner = getattr(exc, "cause", None)  # a Ray task's own exception arrives wrapped (RayTaskError.cause)
    if isinstance(inner, BaseException):
        exc = inner
    reason = _one_line(exc).rstrip(".")
    return SyncError(f"download of {key} {where} failed: {reason}; sync again (it resumes where it stopped)")


#: How long the driver looks for a file another node published in a local DEST (a shared
#: filesystem's attribute cache may not show it at once) before it refuses the DEST as not shared.
PUBLISHED_WAIT = 5.0


def _check_published(root: Location, record: FileRecord) -> None:
    """A local DEST must be the same folder wherever a download ran: on a multi-node cluster, a
    node that does not share it published the file on its own disk. On a miss the parent folder is
    listed (which makes NFS and FUSE clients revalidate their cached view of it) and looked at again
    for up to :data:`PUBLISHED_WAIT` seconds.

    :raises SyncError: the file is not in DEST as this process sees it.
    """
    if not root.is_local:
        return
    target = Path((root / record["key"]).path)
    deadline = time.monotonic() + PUBLISHED_WAIT
    delay = 0.05
    while not target.exists():
        if time.monotonic() >= deadline:
            raise SyncError(
                f"{record['key']} was downloaded on {record['host']}, which does not share {root}: on a "
                "multi-node cluster keep DEST on object storage (s3://...) or on a filesystem every node mounts"
            )
        with contextlib.suppress(OSError):
            os.listdir(target.parent)  # a fresh READDIR: revalidates the cached folder
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _record(root: Location, state: dict[str, Any], summary: SyncSummary, record: FileRecord) -> None:
    """``record`` in DEST's state, written at once (a killed sync keeps what it verified), and in ``summary``."""
    key = record["key"]
    for note in record["notes"]:
        log.warning("%s", note)
    state["files"][key] = {
        "size": record["size"],
        "md5": record["md5"],
        "sha256": record["sha256"],
        "verified": _now(),
        "host": record["host"],
    }
    (root / STATE).write_json(state)
    summary.ran_on[key] = f"{record['host']}:{record['pid']}"
    if record["adopted"]:
        summary.adopted.append(key)
    else:
        summary.downloaded.append(key)
        summary.bytes += record["size"]
    log.debug("%s: %d bytes, md5 verified (%s, pid %d)", key, record["size"], record["host"], record["pid"])
