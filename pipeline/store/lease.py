"""One writer at a time per output location, taken with an atomic conditional write.

``ROOT/_lease.json`` names the run that holds an output location (a random run id, what it is,
host, pid, when it was taken) and until when (``expires_at``). A writer takes the lease before it
touches anything, renews it from a background thread every ``ttl / 3`` seconds while it works, and
releases it when it ends. Every writer of an output takes the same lease: ``biomine run``, and
``ingest``, ``fetch``, ``compact``, ``kb build`` and ``upgrade`` on it.

Each change of the lease object is a **compare-and-swap**, so two writers can never both hold it:

- on object stores, a conditional PUT (S3 ``If-None-Match: *`` to create it, ``If-Match: <etag>`` to
  renew, take over or release it; the same primitive delta-rs commits with), through obstore;
- on a local disk, ``link(2)`` of a complete temporary file (fails when the name exists) to create,
  and a replace under an exclusive ``flock`` that re-checks the content first.

Another writer finds a valid lease and is refused with one line naming the holder. A holder that
was killed cannot renew, so its lease expires; on the holder's own host a dead pid frees it at once.
Expiry is **bounded by the reader**: whatever ``expires_at`` a writer claims (a far-future one, a
clock that is ahead), a lease counts as held for at most ``ttl x CAP_FACTOR`` after the store last
saw it written (the object's modification time, taken by the storage server's clock). A lease that
cannot be read or parsed is never treated as free.

:raises StoreError: the location is held by another run (the message names it and says what to do),
    or its lease object is unreadable.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.errors import StoreError
from pipeline.store.storage import Location, error_line

log = logging.getLogger(__name__)

LEASE = "_lease.json"
DEFAULT_TTL = 120.0
#: A lease counts as held for at most ``ttl * CAP_FACTOR`` after it was last written (renewals come
#: every ``ttl / 3``): a writer's clock or claim cannot block a location longer.
CAP_FACTOR = 2.0


class LeaseConflict(Exception):
    """A compare-and-swap on the lease object lost: someone else wrote it first."""


@dataclass(frozen=True)
class Stored:
    """The lease object as read: its bytes, a tag that changes with every write, when it was written."""

    data: bytes
    tag: str
    modified: _dt.datetime


class _LocalObject:
    """The lease object on a local disk (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = path + ".lock"

    def read(self) -> Stored | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                stat = os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        modified = _dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc)
        return Stored(data, hashlib.sha256(data).hexdigest(), modified)

    def _temp(self, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(prefix=".lease-", dir=os.path.dirname(self.path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, data: bytes) -> str:
        tmp = self._temp(data)
        try:
            os.link(tmp, self.path)  # atomic, and fails when the name exists
        except FileExistsError:
            raise LeaseConflict() from None
        finally:
            os.unlink(tmp)
        return hashlib.sha256(data).hexdigest()

    def replace(self, data: bytes, tag: str) -> str:
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self.read()
            if now is None or now.tag != tag:
                raise LeaseConflict()
            os.replace(self._temp(data), self.path)
        finally:
            os.close(fd)
        return hashlib.sha256(data).hexdigest()


class _RemoteObject:
    """The lease object on an object store, with conditional PUTs (obstore)."""

    def __init__(self, loc: Location):
        import obstore
        from obstore.store import from_url

        from pipeline.store.storage import object_store_options

        self._obstore = obstore
        uri, options = object_store_options(loc)
        prefix, self.key = uri.rsplit("/", 1)
        self.store = from_url(prefix, **options)

    def read(self) -> Stored | None:
        try:
            result = self._obstore.get(self.store, self.key)
        except FileNotFoundError:
            return None
        meta = result.meta
        return Stored(bytes(result.bytes()), str(meta["e_tag"]), meta["last_modified"])

    def create(self, data: bytes) -> str:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return str(self._obstore.put(self.store, self.key, data, mode="create")["e_tag"])
        except (AlreadyExistsError, PreconditionError):
            raise LeaseConflict() from None

    def replace(self, data: bytes, tag: str) -> str:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return str(self._obstore.put(self.store, self.key, data, mode={"e_tag": tag})["e_tag"])
        except (AlreadyExistsError, PreconditionError, FileNotFoundError):
            raise LeaseConflict() from None


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _pid_namespace() -> str:
    """Which pids this process can see: its pid namespace and boot (two containers that share a
    host name do not share pids, so a pid is only checked where it means the same process)."""
    parts = []
    for path in ("/proc/self/ns/pid", "/proc/sys/kernel/random/boot_id"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else open(path).read().strip())
        except OSError:
            parts.append("?")
    return "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """Use as a context manager: ``with Lease(out, what="biomine run job.toml"): ...``."""

    def __init__(self, folder: Location, *, what: str, ttl: float = DEFAULT_TTL):
        self.path = folder / LEASE
        self.what = what
        self.ttl = ttl
        self.run_id = uuid.uuid4().hex
        self._taken_at: str | None = None
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._object: _LocalObject | _RemoteObject | None = None
        #: Why this run no longer holds the lease (another run took it over), or "".
        self.lost = ""

    @property
    def store(self) -> _LocalObject | _RemoteObject:
        if self._object is None:
            self._object = _LocalObject(self.path.path) if self.path.is_local else _RemoteObject(self.path)
        return self._object

    def _body(self, released: bool = False) -> bytes:
        now = _now()
        body = {
            "run_id": self.run_id,
            "what": self.what,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "ttl": self.ttl,
            "taken_at": self._taken_at or now.isoformat(timespec="seconds"),
            "expires_at": (now + _dt.timedelta(seconds=self.ttl)).isoformat(timespec="seconds"),
        }
        if released:
            body["released_at"] = body["expires_at"] = now.isoformat(timespec="seconds")
        return (json.dumps(body, indent=1) + "\n").encode()

    def _read(self) -> tuple[Stored | None, dict[str, Any] | None]:
        """The stored lease and its content.

        :raises StoreError: it cannot be read, or is not a lease (never taken for a free one).
        """
        try:
            stored = self.store.read()
        except Exception as exc:
            raise StoreError(f"cannot read {self.path} ({exc}); the output's lease must be readable") from None
        if stored is None:
            return None, None
        try:
            held = json.loads(stored.data.decode("utf-8"))
            if not isinstance(held, dict) or "run_id" not in held or "expires_at" not in held:
                raise ValueError("expected an object with run_id and expires_at")
            _dt.datetime.fromisoformat(held["expires_at"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"{self.path} is not a readable lease ({exc}); if no biomine run is writing this output, "
                f"delete {self.path} and run again"
            ) from None
        return stored, held

    def expires(self, stored: Stored, held: dict[str, Any]) -> _dt.datetime:
        """When ``held`` stops counting: its ``expires_at``, capped at ``ttl x CAP_FACTOR`` (this
        reader's ttl) after the store last saw it written."""
        claimed = _dt.datetime.fromisoformat(held["expires_at"])
        if claimed.tzinfo is None:
            claimed = claimed.replace(tzinfo=_dt.timezone.utc)
        return min(claimed, stored.modified + _dt.timedelta(seconds=self.ttl * CAP_FACTOR))

    def _free_because(self, stored: Stored, held: dict[str, Any]) -> str | None:
        """Why ``held`` (a stored lease) no longer holds the location, or None while it does."""
        if held.get("released_at"):
            return "released"
        expires = self.expires(stored, held)
        if expires <= _now():
            return f"expired at {expires.isoformat(timespec='seconds')}"
        if (
            held.get("host") == socket.gethostname()
            and held.get("pid_namespace") == _pid_namespace()
            and isinstance(held.get("pid"), int)
            and not _pid_alive(held["pid"])
        ):
            return f"pid {held['pid']} on this host is no longer running"
        return None

    def _valid(self, stored: Stored, held: dict[str, Any]) -> bool:
        """Whether ``held`` (another run's lease) still holds the location."""
        why = self._free_because(stored, held)
        if why is not None and why != "released":
            log.warning(
                "%s: the lease of run %s (%s, host %s, pid %s) is free (%s); taking it over",
                self.path,
                held.get("run_id"),
                held.get("what"),
                held.get("host"),
                held.get("pid"),
                why,
            )
        return why is None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the location now, as a writer would count it (the lease's content, with
        ``expires``: when it stops counting), or None when it is free. Only reads.

        :raises StoreError: the lease object cannot be read or is not a lease.
        """
        stored, held = self._read()
        if stored is None or held is None or self._free_because(stored, held) is not None:
            return None
        return {**held, "expires": self.expires(stored, held).isoformat(timespec="seconds")}

    def _refuse(self, stored: Stored | None, held: dict[str, Any]) -> None:
        until = self.expires(stored, held).isoformat(timespec="seconds") if stored else held.get("expires_at")
        raise StoreError(
            f"{self.path.parent} is in use by another run: {held.get('what')} (run {held.get('run_id')}, host "
            f"{held.get('host')}, pid {held.get('pid')}, since {held.get('taken_at')}); wait for it to finish, "
            f"or, if it was killed, for its lease to expire at {until} (or delete {self.path})"
        )

    def acquire(self) -> Lease:
        self._taken_at = _now().isoformat(timespec="seconds")
        self.path.parent.mkdir()
        stored, held = self._read()
        try:
            if stored is None:
                self._tag = self.store.create(self._body())
            elif held is not None and held.get("run_id") != self.run_id and self._valid(stored, held):
                self._refuse(stored, held)
            else:
                self._tag = self.store.replace(self._body(), stored.tag)
        except LeaseConflict:
            # Another writer changed it between our read and our write: it holds the location now.
            stored, held = self._read()
            self._refuse(stored, held or {"what": "a run that started at the same time"})
        self._thread = threading.Thread(target=self._renew, name="biomine-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._tag = self.store.replace(self._body(), self._tag or "")
            except LeaseConflict:
                # We stalled past the ttl and another run took over (or the lease was deleted): stop,
                # never overwrite it.
                try:
                    _, held = self._read()
                except StoreError:
                    held = None
                self.lost = (
                    f"run {held.get('run_id')} ({held.get('what')}, host {held.get('host')}) took over {self.path} "
                    "while this run had stalled"
                    if held
                    else f"{self.path} was deleted while this run held it"
                )
                log.error("%s", self.lost)
                return
            except Exception as exc:  # a blip of the store: the next renewal tries again
                log.warning("could not renew %s: %s", self.path, error_line(exc))

    def check(self) -> None:
        """Call before each commit.

        :raises StoreError: another run holds the location now (this one must stop writing).
        """
        if self.lost:
            raise StoreError(
                f"this run lost its hold on {self.path.parent}: {self.lost}; nothing more is "
                "committed by it (the other run continues the job)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
            if not self.lost and self._tag:
                try:
                    self.store.replace(self._body(released=True), self._tag)
                except Exception as exc:  # taken over, or a blip: the lease expires on its own
                    log.warning("could not release %s (%s); it expires on its own", self.path, error_line(exc))

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
