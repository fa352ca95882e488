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
- **Every file is verified** against its ``.md5`` (NCBI's ``MD5(name)= hex`` layout, or md5sum's
  ``hex  name``). A mismatch is downloaded again once from byte 0; a second mismatch keeps nothing
  of that file and, once the other files are done, is one :class:`SyncError` naming it.
- **Raw files are immutable and published whole**: ``DEST/baseline/NAME`` and
  ``DEST/updatefiles/NAME``, each written once, atomically (a rename on a local disk, one PUT on an
  object store: :mod:`pipeline.store.storage`), only after its checksum matched. ``biomine ingest
  DEST/baseline DEST/updatefiles`` (or a job with ``[source] kind = "pubmed"``) reads them.
- **The mirror's state is recorded** in ``DEST/_sync.json`` (:data:`STATE`), rewritten after every
  verified file: per file (``baseline/NAME``) its size, md5, sha256 and when it was verified, and
  per folder the newest file the mirror listed at the last sync. A killed sync resumes (verified
  files stay verified; partial downloads continue); a re-run downloads nothing and fetches no
  ``.md5``; a file found in DEST but not recorded (a sync killed between publishing and recording
  it), or found whole in staging (killed before publishing it), is checked against its ``.md5``
  and recorded without downloading it again.
- One sync at a time per DEST: it holds DEST's lease (:mod:`pipeline.store.lease`).

:raises SyncError: a mirror URL that is not https (without ``allow_http``), a listing without files,
    a download that fails for good, or a file that fails its ``.md5`` twice.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import BioMineError, SyncError
from pipeline.progress import Progress
from pipeline.store import atomic

if TYPE_CHECKING:
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
    """DEST's recorded state (:data:`STATE`); an empty one when DEST was never synced."""
    from pipeline.store.storage import location

    loc = location(dest) / STATE
    if not loc.exists():
        return {"version": STATE_VERSION, "files": {}, "listed": {}}
    state = loc.read_json()
    state.setdefault("files", {})
    state.setdefault("listed", {})
    return state


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


class _Sync:
    """One sync of DEST from a mirror (see :func:`sync`)."""

    def __init__(self, dest: Location, mirror: str, *, attempts: int, timeout: float):
        self.dest, self.mirror = dest, mirror
        self.attempts, self.timeout = attempts, timeout
        self.staging = _staging(dest)
        self.state = read_state(dest)
        self.state["mirror"] = mirror
        self.lock = threading.Lock()
        self.summary = SyncSummary()

    def _get(self, url: str, into: Path) -> tuple[str, int]:
        from pipeline.store.releases import download

        return download(
            url,
            into,
            progress=False,
            attempts=self.attempts,
            timeout=self.timeout,
            error=SyncError,
            again="sync again",
            mirror_env=MIRROR_ENV,
            report=False,  # one bar (or line) for the whole sync, not one per file
        )

    def _text(self, url: str, name: str) -> str:
        """A small file of the mirror (a listing, a ``.md5``), fetched whole (never resumed: it may
        have changed since a killed sync fetched part of it)."""
        into = self.staging / f"{atomic.TMP_PREFIX}{name}"
        into.with_name(into.name + ".part").unlink(missing_ok=True)
        self._get(url, into)
        try:
            return into.read_text("utf-8", errors="replace")
        finally:
            into.unlink(missing_ok=True)

    def listing(self, folder: str) -> tuple[list[str], list[str]]:
        """``(files with a .md5, files still without one)`` of a mirror folder."""
        names = parse_listing(self._text(f"{self.mirror}{folder}/", f"{folder}.index.html"))
        files = sorted(n for n in names if FILE_NAME.fullmatch(n))
        return [n for n in files if f"{n}.md5" in names], [n for n in files if f"{n}.md5" not in names]

    def _record(self, key: str, size: int, md5: str, sha256: str) -> None:
        with self.lock:
            self.state["files"][key] = {"size": size, "md5": md5, "sha256": sha256, "verified": _now()}
            (self.dest / STATE).write_json(self.state)

    def fetch(self, folder: str, name: str) -> None:
        """Make ``folder/name`` held and verified in DEST (see the module docstring)."""
        key, url = f"{folder}/{name}", f"{self.mirror}{folder}/{name}"
        expected = parse_md5(self._text(f"{url}.md5", f"{name}.md5"), name)
        target = self.dest / folder / name
        if target.exists():  # published by a sync killed before it recorded the file
            if _digest(target) == expected:
                self._record(key, target.size() or 0, expected, target.sha256())
                with self.lock:
                    self.summary.adopted.append(key)
                return
            log.warning("%s in %s does not match its .md5; downloading it again", key, self.dest)
        staged = self.staging / folder / name
        for attempt in (1, 2):
            if attempt == 1 and staged.exists():  # downloaded whole by a sync killed before it published it
                sha, size = _digest(staged, "sha256"), staged.stat().st_size
            else:
                sha, size = self._get(url, staged)
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
            log.warning("%s does not match its .md5 (got %s, expected %s); downloading it again", key, got, expected)
        self._publish(staged, target)
        self._record(key, size, expected, sha)
        log.debug("%s: %d bytes, md5 verified", key, size)
        with self.lock:
            self.summary.downloaded.append(key)
            self.summary.bytes += size

    def _publish(self, staged: Path, target: Location) -> None:
        """``staged`` as the immutable file ``target``: a rename on a local disk (the staging folder
        is inside DEST), else one whole-object write."""
        if target.is_local:
            final = Path(target.path)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            atomic.fsync_dir(final.parent)
        else:
            target.write_bytes(staged.read_bytes())
            staged.unlink()


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
) -> SyncSummary:
    """Bring DEST up to date with the mirror's ``folders`` (see the module docstring).

    :raises SyncError: see the module docstring; a failed file does not stop the others, and the
        first failure is raised once they are done.
    :raises StoreError: DEST is held by another sync, or cannot be written.
    """
    from pipeline.store.lease import Lease
    from pipeline.store.storage import location

    base = resolve_mirror(mirror, allow_http)
    root = location(dest)
    root.mkdir()
    with Lease(root, what="biomine sync"):
        job = _Sync(root, base, attempts=attempts, timeout=timeout)
        todo: list[tuple[str, str]] = []
        for folder in folders:
            names, waiting = job.listing(folder)
            job.summary.waiting += [f"{folder}/{n}" for n in waiting]
            if names:
                job.state["listed"][folder] = {"newest": names[-1], "files": len(names), "checked": _now()}
            job.summary.listed += len(names)
            held = job.state["files"]
            present = set((root / folder).files())  # one listing, not a request per file
            for name in names:
                if f"{folder}/{name}" in held and name in present:
                    job.summary.held += 1
                else:
                    todo.append((folder, name))
        if not job.summary.listed and not job.summary.waiting:
            # (one empty folder is normal: NCBI empties updatefiles/ when it publishes a new baseline)
            raise SyncError(
                f"{base} lists no pubmedYYnNNNN.xml.gz files in {' or '.join(f + '/' for f in folders)}; check "
                "that the mirror is a copy of NCBI's pubmed/ folder",
                setting="mirror",
            )
        for key in job.summary.waiting:
            log.info("%s: no .md5 listed yet; left for the next sync", key)
        errors: list[BioMineError] = []
        pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync")
        try:
            with Progress(len(todo), unit="file", desc="sync", bar=progress, logger=log, every=30.0) as bar:
                futures = {pool.submit(job.fetch, folder, name): f"{folder}/{name}" for folder, name in todo}
                for future in as_completed(futures):
                    try:
                        future.result()
                    except BioMineError as exc:
                        log.error("%s: %s", futures[future], exc)
                        errors.append(exc)
                    bar.update()
                    bar.set_postfix(bytes=job.summary.bytes)
        finally:
            # Ctrl-C: nothing new starts; downloads under way end (their partial files resume later)
            pool.shutdown(wait=True, cancel_futures=True)
        with job.lock:
            (root / STATE).write_json(job.state)
        if errors:
            more = f" ({len(errors) - 1} more files failed too; see the log above)" if len(errors) > 1 else ""
            first = errors[0]
            raise type(first)(f"{first}{more}", setting=first.setting)
        return job.summary
