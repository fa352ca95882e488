"""Where biomine reads and writes: local paths and storage URIs, behind one small API.

Every path a user gives (a job's source ``paths``, its ``output``, each task's ``model``; ``--out`` and
the like on the command line) is a local path or a URI, and :func:`location` turns it into a
:class:`Location`. Nothing else in the pipeline opens a file by hand, so the same code runs on one
laptop and on a cluster whose nodes share no disk.

- Local paths and ``file://`` URIs: the local file system.
- ``s3://bucket/key``: :class:`pyarrow.fs.S3FileSystem`, configured from the AWS SDK's standard
  environment only (never from a job file): ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  (``AWS_SESSION_TOKEN``), ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-compatible
  server such as MinIO or SeaweedFS, ``AWS_REGION``/``AWS_DEFAULT_REGION`` (default ``us-east-1``:
  the region is never looked up over the network).
- ``gs://``, ``hdfs://`` and the other schemes pyarrow knows: :meth:`pyarrow.fs.FileSystem.from_uri`,
  with that ecosystem's environment (e.g. ``GOOGLE_APPLICATION_CREDENTIALS``).
- Any other scheme fsspec knows (``memory://``, ``az://`` with adlfs installed, ...): fsspec,
  wrapped in :class:`pyarrow.fs.PyFileSystem`.

Writes are atomic for readers: on a local disk through :mod:`pipeline.store.atomic` (temporary file,
fsync, rename); on an object store as one PUT of the whole object (a single object PUT is atomic;
S3 has no rename), so a reader sees the whole object or none. What is committed is what the Delta log
of a table says (:mod:`pipeline.store.tables`: delta-rs commits with a conditional PUT), and one writer
at a time holds an output through a lease (:mod:`pipeline.store.lease`, also a conditional PUT).
A call that fails for a reason that may pass (the store restarting, a dropped connection, throttling)
is tried again, bounded, with backoff (:func:`retrying`); what still fails is one :class:`StorageError`.

A :class:`Location` pickles as its URI and is resolved again where it is unpickled, so credentials
never travel inside Ray tasks: every node takes them from its own environment.

:raises StoreError: a URI whose scheme no file system handles, or a location that cannot be used.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import StorageError, StoreError
from pipeline.store import atomic

log = logging.getLogger(__name__)


#: A storage call that fails for a reason that may pass (the store restarting, a dropped connection,
#: a timeout, throttling, a 5xx) is tried again this many times, waiting ``RETRY_BASE * 2**n`` seconds
#: (with jitter, at most ``RETRY_MAX``) in between: 18 to 36 s in all (jitter) before it is reported.
RETRY_ATTEMPTS = int(os.environ.get("BIOMINE_STORAGE_RETRIES", "7"))
RETRY_BASE = 0.5
RETRY_MAX = 10.0
#: What a transient failure says. Arrow's S3 client names the AWS error code rather than the HTTP
#: status (``AWS Error INTERNAL_FAILURE during GetObject``: a 500 from a store that is starting up;
#: ``SLOW_DOWN``, ``SERVICE_UNAVAILABLE``, ``REQUEST_TIMEOUT``), hence ``[ _-]?`` between words.
_TRANSIENT = re.compile(
    r"connect|connection|timed?[ _-]?out|timeout|temporar|unavailable|reset by peer|broken pipe|throttl"
    r"|slow[ _-]?down|internal[ _-]?(failure|error)|too many requests|\b(429|500|502|503|504)\b|curl ?code"
    r"|network|eof|dns|resolve",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may pass if the same call is made again (see :data:`RETRY_ATTEMPTS`)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return bool(_TRANSIENT.search(str(exc)))


def error_line(exc: BaseException) -> str:
    """One line for an error of the store, for a log line or a ``biomine: error:`` message: its first
    line and, for delta-rs's indented chains of causes, the innermost one (``Generic S3 error ...
    Connection refused (os error 111)``); obstore's multi-line ``Debug source:`` dump is left out."""
    text = re.sub(r"\x1b\[[0-9;]*m|↳", "", str(exc)).split("Debug source:")[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[0] if len(lines) == 1 else f"{lines[0]}: {lines[-1]}")[:300]


def retrying(call, what: str, attempts: int | None = None):
    """``call()``, tried again on a transient failure (bounded, with backoff and jitter). Only for
    idempotent calls: reads, whole-object writes of the same bytes, deletes, content-named writes.

    :raises StorageError: naming ``what`` and the cause, once the attempts are spent (or at once for a
        failure that will not pass: credentials, a missing bucket).
    """
    import random
    import time

    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    for attempt in range(attempts + 1):
        try:
            return call()
        except (FileNotFoundError, StoreError):
            raise
        except OSError as exc:
            if attempt < attempts and is_transient(exc):
                delay = min(RETRY_MAX, RETRY_BASE * 2**attempt) * (0.5 + random.random() / 2)
                log.warning("%s: %s; trying again in %.1f s", what, error_line(exc), delay)
                time.sleep(delay)
                continue
            tries = f" (after {attempt + 1} attempts)" if attempt else ""
            raise StorageError(f"{what}: {exc}{tries}".replace("\n", " ")) from None
    raise AssertionError("unreachable")


def _named(method):
    """Try a storage call again when it fails for a reason that may pass (:func:`retrying`); re-raise
    what remains (credentials, a missing bucket, an endpoint down for good) as one
    :class:`StorageError` naming the location; a missing file stays FileNotFoundError."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return retrying(lambda: method(self, *args, **kwargs), self.uri)

    return wrapper


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_CHUNK = 1 << 22


def is_uri(spec: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included); False for a plain local path."""
    return isinstance(spec, str) and bool(_SCHEME.match(spec))


def _s3_environment() -> tuple[str | None, ...]:
    env = os.environ.get
    return (
        env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
        env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
        env("AWS_SESSION_TOKEN"),
    )


@functools.lru_cache(maxsize=8)
def _s3(
    endpoint: str | None, region: str | None, key: str | None, secret: str | None, token: str | None
) -> pafs.FileSystem:
    kwargs: dict[str, Any] = {"region": region or "us-east-1"}
    if endpoint:
        m = re.match(r"^(https?)://(.+?)/?$", endpoint)
        if not m:
            raise StoreError(f"AWS_ENDPOINT_URL = {endpoint!r}: use http://HOST:PORT or https://HOST:PORT")
        kwargs.update(scheme=m.group(1), endpoint_override=m.group(2))
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    return pafs.S3FileSystem(**kwargs)


def _filesystem(scheme: str, netloc: str) -> pafs.FileSystem:
    if scheme == "file":
        return pafs.LocalFileSystem()
    if scheme in ("s3", "s3a"):  # keyed by the AWS environment, so a changed environment is seen
        return _s3(*_s3_environment())
    return _other_filesystem(scheme, netloc)


@functools.lru_cache(maxsize=16)
def _other_filesystem(scheme: str, netloc: str) -> pafs.FileSystem:
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        pass
    try:
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as exc:
        raise StoreError(
            f"no file system for {scheme}:// URIs ({exc}); use a local path, s3://, gs:// or a "
            "scheme fsspec knows (install its package, e.g. adlfs for az://)"
        ) from None


def location(spec: str | os.PathLike | "Location", base_dir: str | os.PathLike | None = None) -> "Location":
    """The :class:`Location` of a local path or a URI; a relative local path is taken from ``base_dir``
    (default: the current directory).

    :raises StoreError: an unknown URI scheme.
    """
    if isinstance(spec, Location):
        return spec
    if is_uri(str(spec)):
        uri = str(spec).rstrip("/")
        scheme, rest = uri.split("://", 1)
        scheme = scheme.lower()
        if "@" in rest.split("/", 1)[0]:
            raise StoreError(
                f"{scheme}://...@...: put no credentials in a URI; give them through the "
                "environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            )
        if scheme == "file":  # the same place as the plain path, and named like it
            path = os.path.normpath("/" + rest.lstrip("/"))
            return Location(pafs.LocalFileSystem(), path, path)
        netloc = rest.split("/", 1)[0]
        fs = _filesystem(scheme, netloc if scheme not in ("s3", "s3a", "memory") else "")
        path = rest if scheme != "memory" else "/" + rest.lstrip("/")
        return Location(fs, path.rstrip("/"), f"{scheme}://{rest}")
    given = Path(spec)
    if not given.is_absolute():
        given = Path(base_dir or os.getcwd()) / given
    local = os.path.normpath(given)
    return Location(pafs.LocalFileSystem(), local, local)


@dataclass(frozen=True)
class FileInfo:
    """A written file: its name in its folder, bytes, sha256 and (for Parquet) rows."""

    name: str
    size: int
    sha256: str
    rows: int | None = None


@dataclass(frozen=True, eq=False)
class Location:
    """A file or folder on some file system (see the module docstring). ``uri`` is what messages show."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def __reduce__(self):  # resolved again where it lands: credentials stay in each node's environment
        return (location, (self.uri,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    # --- naming ----------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "Location":
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), self.uri.rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> "Location":
        name = str(name).strip("/")
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.uri.rstrip('/')}/{name}")

    def local_path(self) -> Path:
        """The local path (only for a local location).

        :raises StoreError: an object-store location.
        """
        if not self.is_local:
            raise StoreError(f"{self.uri} is not on a local disk")
        return Path(self.path)

    # --- reading ---------------------------------------------------------------------------------
    @_named
    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def size(self) -> int | None:
        """Bytes of the file, None when there is none."""
        info = self.info()
        return info.size if info.type == pafs.FileType.File else None

    def _entries(self) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []

    @_named
    def listdir(self) -> list[str]:
        """Names of the files and folders directly inside (sorted; [] when the folder does not exist)."""
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in self._entries())

    @_named
    def files(self, suffix: str = "") -> list[str]:
        """Names of the files directly inside whose name ends with ``suffix`` (temporary files excluded)."""
        names = [posixpath.basename(i.path) for i in self._entries() if i.type == pafs.FileType.File]
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith(atomic.TMP_PREFIX))

    def open_input(self) -> IO[bytes]:
        return self.fs.open_input_stream(self.path, compression=None)

    @_named
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path, compression=None) as f:
            return f.read()

    def read_json(self) -> Any:
        return json.loads(self.read_bytes().decode("utf-8"))

    @_named
    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path, compression=None) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    @_named
    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path, columns=columns, filesystem=self.fs)

    @_named
    def parquet_metadata(self) -> pq.FileMetaData:
        with self.fs.open_input_file(self.path) as f:
            return pq.ParquetFile(f).metadata

    # --- writing (atomic for readers) --------------------------------------------------------------
    @_named
    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    @_named
    def write_bytes(self, data: bytes, sha256: str | None = None) -> FileInfo:
        """``data`` as this file, atomically; returns its size and sha256 (``sha256``: already known)."""
        if self.is_local:
            atomic.write_bytes(data, self.path)
        else:
            # One PUT of the whole object: readers see all of it or (before) none of it.
            with self.fs.open_output_stream(self.path, compression=None) as f:
                f.write(data)
        return FileInfo(self.name, len(data), sha256 or hashlib.sha256(data).hexdigest())

    def write_json(self, data: Any) -> FileInfo:
        payload = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
        return self.write_bytes(payload.encode("utf-8"))

    def write_parquet(self, table: pa.Table) -> FileInfo:
        """``table`` as a zstd Parquet file here, atomically; returns size, sha256 and rows."""
        info = self.write_bytes(parquet_bytes(table))
        return FileInfo(info.name, info.size, info.sha256, table.num_rows)

    @_named
    def delete(self) -> None:
        """Remove this file (nothing when it is gone already)."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    @_named
    def remove_dir(self) -> None:
        """Remove this folder if it is empty (nothing when it is gone already)."""
        if self.is_dir() and not self._entries():
            self.fs.delete_dir(self.path)

    @_named
    def download(self, dest: Path) -> None:
        """Copy this file to the local path ``dest`` (parents made)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self.path, compression=None) as src, open(dest, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                out.write(chunk)


def delta_location(loc: Location) -> tuple[str, dict[str, str] | None]:
    """``(table_uri, storage_options)`` for opening ``loc`` with deltalake (delta-rs): a local path as
    it is; ``s3://`` with the same AWS environment :func:`location` reads (endpoint, region, keys;
    plain-http endpoints allowed only when the endpoint says http); other URIs as they are, with
    delta-rs reading that ecosystem's environment itself."""
    if loc.is_local:
        if "\\" in loc.path:
            # delta-rs's local store reads a backslash as a path separator (as on Windows), so a table
            # under such a folder would be written somewhere else.
            raise StoreError(
                f"{loc.path}: a folder name with a backslash cannot hold a Delta table (delta-rs reads it as a "
                "path separator); choose a name without one"
            )
        return loc.path, None
    if loc.uri.startswith(("s3://", "s3a://")):
        endpoint, region, key, secret, token = _s3_environment()
        options = {"AWS_REGION": region or "us-east-1"}
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if key and secret:
            options.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
            if token:
                options["AWS_SESSION_TOKEN"] = token
        return "s3://" + loc.uri.split("://", 1)[1], options
    return loc.uri, None


def object_store_options(loc: Location) -> tuple[str, dict[str, Any]]:
    """``(uri, keyword arguments of obstore.store.from_url)`` for a location on an object store, from
    the same environment as :func:`location` (used for the conditional writes of leases)."""
    uri, options = delta_location(loc)
    if not options:
        return uri, {}
    config = {k.lower().removeprefix("aws_"): v for k, v in options.items() if k != "AWS_ALLOW_HTTP"}
    config = {("endpoint" if k == "endpoint_url" else k): v for k, v in config.items()}
    client = {"allow_http": True} if options.get("AWS_ALLOW_HTTP") == "true" else {}
    return uri, {"config": config, "client_options": client}


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` serialised as the pipeline writes every Parquet file (zstd)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
