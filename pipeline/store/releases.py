"""The released BioGPT checkpoints: download (resumable), verify, unpack and convert, by name.

Contract:

- :data:`RELEASES` is the one table of the fairseq checkpoints microsoft/BioGPT's README links
  (archive URLs as published there, 2023-11 links valid to 2099) with the task each was fine-tuned
  for and its vocabulary (``base``: BioGPT's ``data/BioGPT/dict.txt`` + ``bpecodes``; ``large``:
  ``data/biogpt_large_dict.txt`` + ``data/BioGPT-Large/bpecodes``). The archives hold one folder,
  ``RE-DDI-BioGPT/checkpoint_avg.pt`` and the like; the vocabulary is not in them.
- :func:`pull` ``NAME``: downloads the archive and the two vocabulary files into
  ``<model_home>/downloads/`` (a ``.part`` file that a cut connection, an HTTP 429/5xx or a killed
  process resumes with an HTTP ``Range`` request; a ``.part`` of another URL is discarded; a host
  that cannot be reached at all is retried, then refused naming it and the ``mirror``), checks the
  vocabulary files against the sha256 pinned here (the files as released) and the archive against
  its expected digest (:func:`expected_sha256`: ``sha256=``, this table, or the machine's
  ``<model_home>/release-pins.json``, where the first pull of an archive pins what it got, since
  microsoft/BioGPT publishes no digests), refusing a mismatch before anything is unpacked, unpacks it (tar ``data`` filter: no paths outside, no links out),
  converts it with :func:`biogpt.fairseq.convert_fairseq_checkpoint` into a temporary folder and
  renames that to :func:`biogpt.hub.released_dir` (``<model_home>/released/NAME``), so a job's
  ``model = "biogpt:NAME"`` sees a whole model or none. ``.biomine-release.json`` there records
  the URL, sizes, checksums and time. The archive is deleted afterwards unless ``keep_archive``.
- ``mirror`` (or ``$BIOMINE_RELEASE_MIRROR``) replaces every download URL by
  ``MIRROR/<archive name>`` and ``MIRROR/<base|large>/<dict.txt|bpecodes>``, for sites that copy
  the files once to an internal server: ``https://`` (or ``file://``); plain ``http://`` only with
  ``allow_http`` (its bytes can be changed on the way; the digests still apply).
- Trust: whatever an archive holds, converting it runs no code from it (the checkpoint is loaded by
  :func:`biogpt.fairseq.load_checkpoint`, torch's ``weights_only`` unpickler with an allowlist by name);
  the digests guard which weights a name gives.

:raises ReleaseError: unknown name, a plain-http mirror without ``allow_http``, download failure
    after retries, checksum mismatch, an archive without a checkpoint; conversion errors are :class:`biogpt.errors.CheckpointError`.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import functools
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from biogpt import hub
from pipeline.errors import BioMineError, StoreError
from pipeline.progress import Progress

log = logging.getLogger(__name__)

RELEASE_INFO = ".biomine-release.json"
_BLOB = "https://msralaphilly2.blob.core.windows.net/release/BioGPT/checkpoints/"
# Read-only SAS links exactly as microsoft/BioGPT's README gives them (valid until 2099-12-30).
_SAS = {
    "Pre-trained-BioGPT": "st=2023-11-13T15:37:35Z&se=2099-12-30T23:37:35Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=3CcG1TOhqJPBhkVutvVn3PtUq0vPyLBgwggUfojypfY%3D",
    "Pre-trained-BioGPT-Large": "st=2023-11-13T15:38:13Z&se=2099-12-30T23:38:13Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=ib1SZut9wAwrsxGWtFtIZDhrnRg92dwPJmoY2lr3MTg%3D",
    "QA-PubMedQA-BioGPT": "st=2023-11-13T15:38:43Z&se=2099-12-30T23:38:43Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=A5SQae6ifsXmrsgpj4E2flhyXm4iHc%2FqO5b8HGOMyjc%3D",
    "QA-PubMedQA-BioGPT-Large": "st=2023-11-13T15:39:40Z&se=2099-12-30T23:39:40Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=t%2B%2FD%2BxVoIxiuyDsD0VXv%2FjSGoS0VcrdVXycYhWZoxUc%3D",
    "RE-BC5CDR-BioGPT": "st=2023-11-13T15:35:14Z&se=2099-12-30T23:35:14Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=uXlLIHlVeKIbS%2BVmdzAmlNCeKdoKO2lxsSmwSi%2FH8nE%3D",
    "RE-DDI-BioGPT": "st=2023-11-13T15:35:58Z&se=2099-12-30T23:35:58Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=DkaQMuM%2FXAsM2p8%2BUs45ecuqhlSRF1DUYRBJNcxD6Pk%3D",
    "RE-DTI-BioGPT": "st=2023-11-13T15:36:23Z&se=2099-12-30T23:36:23Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=bRgUZyqGuwYdM%2FVFzIv6Xa0GThkXq6bVzszmTe9c%2BKM%3D",
    "DC-HoC-BioGPT": "st=2023-11-13T15:37:17Z&se=2099-12-30T23:37:17Z&spr=https&sv=2022-11-02&sr=b"
    "&sig=1DxroWPt%2FBppCTy7QHs842lLy8SQRcUeUwSfMzDFvl0%3D",
}
_RAW = "https://raw.githubusercontent.com/microsoft/BioGPT/"
#: The vocabulary files of each model size, pinned to the commits that hold them and to their
#: sha256 (the released files; base 42,380 words + 40,000 merges, large 57,713 words + 50,000 merges).
VOCABS = {
    "base": {
        "dict.txt": (
            _RAW + "e49e5809bd317c4a1b6cb8498659e27d4e70814a/data/BioGPT/dict.txt",
            "1719be3b72a5af941702d1b393c1a551e839cca233d7e2c2d16485dc3ce46e8a",
        ),
        "bpecodes": (
            _RAW + "e49e5809bd317c4a1b6cb8498659e27d4e70814a/data/BioGPT/bpecodes",
            "9dcbaa97d51e28e26cd82bc4b038affcb29fecf259f5bacf3f3775012d6cf174",
        ),
    },
    "large": {
        "dict.txt": (
            _RAW + "d0910826116de7fd05b20d44ec6ad33d9ed35e1e/data/biogpt_large_dict.txt",
            "42aeae466f4b991c342daa47d5e1a9dfce27d4ad366442a93364f65314344b92",
        ),
        "bpecodes": (
            _RAW + "e49e5809bd317c4a1b6cb8498659e27d4e70814a/data/BioGPT-Large/bpecodes",
            "fa6590c1e18131f84ad33159d0e3a7995416592bebebddae93942639c9b8863c",
        ),
    },
}


PINS_FILE = "release-pins.json"


class ReleaseError(StoreError):
    """A released checkpoint cannot be pulled (unknown name, download, checksum, archive)."""


@dataclass(frozen=True)
class Release:
    name: str  # what `biomine models pull` and `model = "biogpt:NAME"` use
    archive: str  # the published folder / archive stem, e.g. RE-DDI-BioGPT
    task: str  # biogpt.task_spec checkpoint task for the converter
    vocab: str  # "base" | "large"
    what: str
    hub: str | None = None  # the same weights on the Hub, where published there
    # The archive's sha256 where biomine knows it. microsoft/BioGPT publishes none, and none could be
    # measured where this table was written (no route to the blob store), so every entry is None until
    # a digest taken from a verified download is pinned here; until then a machine's first pull pins
    # the digest it got in PINS_FILE (trust on first use) and every later pull must match it.
    sha256: str | None = None

    @property
    def url(self) -> str:
        return f"{_BLOB}{self.archive}.tgz?sp=r&{_SAS[self.archive]}"


RELEASES = {
    r.name: r
    for r in (
        Release("biogpt", "Pre-trained-BioGPT", "lm", "base", "pre-trained BioGPT (347M)", "microsoft/biogpt"),
        Release(
            "biogpt-large",
            "Pre-trained-BioGPT-Large",
            "lm",
            "large",
            "pre-trained BioGPT-Large (1.5B)",
            "microsoft/BioGPT-Large",
        ),
        Release("re-ddi", "RE-DDI-BioGPT", "re-ddi", "base", "relation extraction, DDI 2013 (drug-drug interactions)"),
        Release("re-dti", "RE-DTI-BioGPT", "re-dti", "base", "relation extraction, KD-DTI (drug-target interactions)"),
        Release("re-bc5cdr", "RE-BC5CDR-BioGPT", "re-bc5cdr", "base", "relation extraction, BC5CDR (chemical-disease)"),
        Release("qa-pubmedqa", "QA-PubMedQA-BioGPT", "qa-pubmedqa", "base", "question answering, PubMedQA"),
        Release(
            "qa-pubmedqa-large",
            "QA-PubMedQA-BioGPT-Large",
            "qa-pubmedqa",
            "large",
            "question answering, PubMedQA, BioGPT-Large",
            "microsoft/BioGPT-Large-PubMedQA",
        ),
        Release("dc-hoc", "DC-HoC-BioGPT", "dc-hoc", "base", "document classification, Hallmarks of Cancer"),
    )
}


def release(name: str, prefix: str = "") -> Release:
    """The release ``name``; ``prefix`` is how the caller's user spells a release (``biogpt:`` in a
    job's ``model``), used in the message.

    :raises ReleaseError: ``name`` is not in :data:`RELEASES` (the nearest names are suggested).
    """
    if name not in RELEASES:
        # A misspelling is the usual cause (re-dd for re-ddi): name the nearest releases first.
        near = difflib.get_close_matches(name, RELEASES, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(prefix + n for n in near)}? " if near else ""
        raise ReleaseError(
            f"unknown released model {prefix + name!r}: no released model has that name; {hint}"
            f"the released models are {', '.join(prefix + n for n in RELEASES)} (`biomine models list --available`)",
            setting="model",
        )
    return RELEASES[name]


def _urls(rel: Release, mirror: str | None, allow_http: bool = False) -> tuple[str, dict[str, tuple[str, str]]]:
    mirror = (mirror or os.environ.get("BIOMINE_RELEASE_MIRROR") or "").rstrip("/")
    vocab = VOCABS[rel.vocab]
    if not mirror:
        return rel.url, vocab
    scheme = urllib.parse.urlsplit(mirror).scheme.lower()
    if scheme == "http" and not allow_http:
        raise ReleaseError(
            f"mirror {mirror} is plain http: anyone on the way can change what it sends; use an "
            "https:// mirror, or allow plain http for a mirror on a network you trust",
            setting=("mirror", "allow_http"),
        )
    if scheme not in ("http", "https", "file"):
        raise ReleaseError(
            f"mirror {mirror}: expected an https:// (or file://, or http:// where plain http is allowed) URL",
            setting="mirror",
        )
    return (
        f"{mirror}/{rel.archive}.tgz",
        {name: (f"{mirror}/{rel.vocab}/{name}", sha) for name, (_, sha) in vocab.items()},
    )


def _shown(url: str) -> str:
    """``url`` without its query (the SAS signature is long and says nothing to a reader)."""
    return urllib.parse.urlsplit(url)._replace(query="").geturl()


def download(
    url: str,
    dest: Path,
    *,
    progress: bool | None = None,
    attempts: int = 5,
    timeout: float = 60.0,
    error: type[BioMineError] | None = None,
    again: str = "pull again",
    mirror_env: str = "BIOMINE_RELEASE_MIRROR",
    report: bool = True,
) -> tuple[str, int]:
    """Fetch ``url`` into ``dest`` (through ``dest.part``), resuming a partial file with ``Range``;
    ``(sha256, bytes)`` of the result. A connection that breaks is retried, from where it broke, up
    to ``attempts`` times in a row without progress. The one resumable HTTP download of biomine
    (``models pull``, ``biomine sync``): ``error`` is the class its failures raise (default
    :class:`ReleaseError`), ``again`` the command that resumes (``pull again``) and ``mirror_env``
    the variable that names a mirror, for the messages; ``report=False``: no progress bar or line
    (small files: listings, checksums).

    :raises ReleaseError: an HTTP error, or ``attempts`` failures without a byte of progress.
    """
    fail = error or ReleaseError
    verb = again.split()[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = dest.with_name(dest.name + ".part.url")  # what the .part holds the start of
    if part.exists() and (not source.exists() or source.read_text() != url):
        part.unlink()  # a partial file of another URL or mirror: never resumed into this one
    source.write_text(url)
    failures, restarts = 0, 0
    last_error: Exception | None = None
    bar = None
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    if have and response.status == 200:  # the server ignores Range: start again
                        restarts += 1
                        if restarts > attempts:
                            raise fail(
                                f"{_shown(url)}: the server does not resume downloads (no Range "
                                f"support) and the connection broke {restarts} times; try a mirror",
                                setting="mirror",
                            )
                        log.info("%s: the server does not resume; downloading again", _shown(url))
                        have = 0
                    total = _total(response, have)
                    if bar is None and report:
                        bar = Progress(
                            total, unit="byte", desc=f"download {dest.name}", bar=progress, logger=log, initial=have
                        )
                    # read1 and flush: what arrived is written at once, so a cut or a kill -9 loses none of it
                    read = getattr(response, "read1", response.read)
                    with open(part, "ab" if have else "wb") as f:
                        for chunk in iter(functools.partial(read, 1 << 20), b""):
                            f.write(chunk)
                            f.flush()
                            if bar is not None:
                                bar.update(len(chunk))
                            failures = 0
                    got = part.stat().st_size
                    if total is not None and got < total:
                        raise ConnectionError(f"connection closed at byte {got} of {total}")
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and have:  # nothing left to send: the part is complete
                    break
                if exc.code not in (429, 500, 502, 503, 504):  # those pass: retried below, as a cut connection
                    raise fail(
                        f"{_shown(url)}: HTTP {exc.code} {exc.reason}; check the URL (the mirror, or ${mirror_env})",
                        setting="mirror",
                    ) from None
                failures, last_error = failures + 1, exc
                if failures >= attempts:
                    raise fail(
                        f"{_shown(url)}: HTTP {exc.code} {attempts} times in a row; {again} later to resume"
                    ) from None
                log.warning("%s: HTTP %d; retrying", _shown(url), exc.code)
                time.sleep(min(0.5 * 2**failures, 10.0))
            except urllib.error.URLError as exc:  # no connection at all: refused, no route, no DNS, timeout
                # Nothing was sent, so there is nothing to resume: say the host is unreachable, not
                # "resuming from byte 0" over and over.
                if urllib.parse.urlsplit(url).scheme == "file":  # a missing file of a file:// mirror
                    raise fail(f"{url}: {exc.reason}; check the mirror", setting="mirror") from None
                failures, last_error = failures + 1, exc
                host = urllib.parse.urlsplit(url).netloc
                if failures >= attempts:
                    raise fail(
                        f"cannot reach {host} ({exc.reason}), {attempts} tries: check the network, or {verb} from "
                        f"a mirror you can reach (also ${mirror_env})",
                        setting="mirror",
                    ) from None
                log.warning("cannot reach %s (%s); trying again (%d of %d)", host, exc.reason, failures + 1, attempts)
                time.sleep(min(0.5 * 2**failures, 10.0))
            except (OSError, http.client.HTTPException) as exc:  # reset, cut mid-body (IncompleteRead)
                before = have
                have = part.stat().st_size if part.exists() else 0
                failures = 0 if have > before else failures + 1
                last_error = exc
                if failures >= attempts:
                    raise fail(
                        f"{_shown(url)}: download failed {attempts} times in a row ({last_error}); "
                        f"{again} to resume from byte {have}"
                    ) from None
                log.warning("%s: %s; resuming from byte %d", _shown(url), exc, have)
                time.sleep(min(0.5 * 2**failures, 10.0))
    finally:
        if bar is not None:
            bar.close()
    sha = _sha256(part)
    size = part.stat().st_size
    os.replace(part, dest)
    source.unlink(missing_ok=True)
    return sha, size


def _total(response, have: int) -> int | None:
    """The whole file's size from Content-Range (a 206) or Content-Length (a 200)."""
    content_range = response.headers.get("Content-Range", "")
    if response.status == 206 and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + (have if response.status == 206 else 0) if length and length.isdigit() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpack(archive: Path, into: Path) -> Path:
    """Extract ``archive`` (tar ``data`` filter) into ``into``; the folder holding the checkpoint."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReleaseError(f"{archive} is not a readable .tgz ({exc}); delete it and pull again") from None
    found = sorted(p.parent for p in into.rglob("*.pt"))
    if not found:
        raise ReleaseError(f"{archive} holds no fairseq checkpoint (*.pt)")
    return found[0]


def _pins_path() -> Path:
    return hub.model_home() / PINS_FILE


def _pins() -> dict[str, str]:
    """The archive digests this machine's model home has pinned (archive name -> sha256)."""
    path = _pins_path()
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text())
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise ValueError("expected an object of archive name -> sha256")
    except ValueError as exc:
        raise ReleaseError(
            f"{path} is not a valid pins file ({exc}); fix or delete it (its digests are re-pinned by the next pulls)"
        ) from None
    return pins


def _pin(rel: Release, sha: str) -> None:
    path = _pins_path()
    pins = {**_pins(), rel.archive: sha}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(dict(sorted(pins.items())), indent=2) + "\n")
    os.replace(tmp, path)


def expected_sha256(rel: Release, sha256: str | None = None) -> tuple[str | None, str]:
    """The digest the archive of ``rel`` must have and who says so: the caller's ``sha256``, biomine's
    table, or this machine's pins file; ``(None, "")`` when nothing is pinned yet (the first pull pins it)."""
    if sha256:
        return sha256.lower(), "the digest asked for"
    if rel.sha256:
        return rel.sha256, "biomine's release table"
    pinned = _pins().get(rel.archive)
    return (pinned, f"the pin in {_pins_path()}") if pinned else (None, "")


def pulled(name: str) -> dict | None:
    """The ``.biomine-release.json`` of a pulled release (None when not pulled)."""
    path = hub.released_dir(name)
    if not (path / "config.json").is_file():
        return None
    info = path / RELEASE_INFO
    record = json.loads(info.read_text()) if info.is_file() else {}
    return {"name": name, "path": str(path), **record}


def list_pulled() -> list[dict]:
    """Every pulled release on this machine (see :func:`pulled`), by name."""
    root = hub.released_dir("")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    return [r for r in (pulled(n) for n in names) if r is not None]


def pull(
    name: str,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    keep_archive: bool = False,
    progress: bool | None = None,
    allow_http: bool = False,
) -> dict:
    """Download, verify, unpack and convert the release ``name``; its record (see :func:`pulled`).
    An already pulled release is returned as it is unless ``force``.

    :raises ReleaseError: see the module docstring.
    :raises CheckpointError: the checkpoint does not convert.
    """
    from biogpt.fairseq import convert_fairseq_checkpoint

    rel = release(name)
    if not force and (done := pulled(name)) is not None:
        log.info("%s is already pulled at %s (pull it with force to replace it)", name, done["path"])
        return done
    home = hub.model_home()
    downloads = home / "downloads"
    archive_url, vocab = _urls(rel, mirror, allow_http)
    archive = downloads / f"{rel.archive}.tgz"
    expected, pinned_by = expected_sha256(rel, sha256)
    archive_sha, archive_bytes = (
        (_sha256(archive), archive.stat().st_size)
        if archive.is_file()
        else download(archive_url, archive, progress=progress)
    )
    if expected and archive_sha != expected:
        archive.unlink(missing_ok=True)
        raise ReleaseError(
            f"{_shown(archive_url)}: sha256 {archive_sha} is not {expected} ({pinned_by}); the "
            "archive was removed and nothing was unpacked. If the release really changed, check "
            f"the new digest with its publisher and ask for it (or edit {PINS_FILE})",
            setting="sha256",
        )
    vocab_files = {}
    for file_name, (url, released) in vocab.items():
        path = downloads / rel.vocab / file_name
        got, _ = (_sha256(path), 0) if path.is_file() else download(url, path, progress=progress)
        if got != released:
            path.unlink()
            raise ReleaseError(
                f"{_shown(url)}: sha256 {got} is not the released {rel.vocab} {file_name} "
                f"({released}); the download was removed, pull again"
            )
        vocab_files[file_name] = path
    dest = hub.released_dir(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=dest.parent))
    try:
        source = _unpack(archive, work / "archive")
        result = convert_fairseq_checkpoint(
            source,
            work / "model",
            dict_file=vocab_files["dict.txt"],
            bpecodes_file=vocab_files["bpecodes"],
            task=rel.task,
        )
        record = {
            "release": name,
            "what": rel.what,
            "url": _shown(archive_url),
            "archive": archive.name,
            "archive_sha256": archive_sha,
            "archive_bytes": archive_bytes,
            "task": result.task,
            "vocab": {f: VOCABS[rel.vocab][f][1] for f in vocab_files},
            "vocab_size": result.vocab_size,
            "pulled_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        record["archive_sha256_pinned_by"] = pinned_by or "first pull (trust on first use)"
        (work / "model" / RELEASE_INFO).write_text(json.dumps(record, indent=2) + "\n")
        if dest.exists():  # --force: the old copy goes only once the new one is complete
            os.replace(dest, work / "old")
        os.replace(work / "model", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not expected:
        _pin(rel, archive_sha)
        log.warning(
            "%s: no digest of %s.tgz is published; pinned the one this pull got (sha256 %s) in %s, so "
            "every later pull here must match it. Compare it with a copy you trust.",
            name,
            rel.archive,
            archive_sha,
            _pins_path(),
        )
    if not keep_archive:
        archive.unlink(missing_ok=True)
    log.info("pulled %s into %s (archive sha256 %s)", name, dest, archive_sha)
    return {"name": name, "path": str(dest), **record}
