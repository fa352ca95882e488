"""One run at a time per output location: a lease object that works on object stores too.

``OUT/_lease.json`` names the run that holds the location (a random run id, host, pid, when it was
taken) and until when (``expires_at``). A run takes the lease before it touches anything, renews it
from a background thread every ``ttl / 3`` seconds while it works, and deletes it when it ends.
Another run finds a valid lease and is refused with one line naming the holder. A run that was killed
cannot renew, so its lease expires after ``ttl`` seconds; on the holder's own host a dead pid frees
it at once.

Object stores have no locks and (through pyarrow) no conditional PUT, so taking a lease is
write-then-confirm: write our lease, wait ``settle`` seconds, read it back; if another run wrote in
between, the last writer holds it and the other gives up. Two runs started within the same instant
on different hosts could both read an expired lease; the settle step makes that a narrow window, and
every commit the pipeline makes is idempotent, so even then rows are neither lost nor duplicated.

:raises StoreError: the location is held by another run (the message names it and says what to do).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from pipeline.errors import StoreError
from pipeline.store.storage import Location

log = logging.getLogger(__name__)

LEASE = "_lease.json"
DEFAULT_TTL = 120.0


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

    def __init__(self, folder: Location, *, what: str, ttl: float = DEFAULT_TTL, settle: float = 0.3):
        self.path = folder / LEASE
        self.what = what
        self.ttl = ttl
        self.settle = settle
        self.run_id = uuid.uuid4().hex
        self._taken_at: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why this run no longer holds the lease (another run took it over), or "".
        self.lost = ""

    def _body(self) -> dict[str, Any]:
        now = _now()
        return {
            "run_id": self.run_id,
            "what": self.what,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "taken_at": self._taken_at or now.isoformat(timespec="seconds"),
            "expires_at": (now + _dt.timedelta(seconds=self.ttl)).isoformat(timespec="seconds"),
        }

    def _holder(self) -> dict[str, Any] | None:
        """The valid lease of another run, or None."""
        try:
            held = self.path.read_json()
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:  # a torn or foreign file: no valid lease
            log.warning("%s is not a lease (%s); taking it over", self.path, exc)
            return None
        # Any other storage error propagates: a lease we could not read is not a lease we may take.
        if held.get("run_id") == self.run_id:
            return None
        try:
            expires = _dt.datetime.fromisoformat(held["expires_at"])
        except (KeyError, TypeError, ValueError):
            return None
        if expires <= _now():
            log.warning(
                "%s: the lease of run %s (%s, host %s, pid %s) expired at %s; taking it over",
                self.path,
                held.get("run_id"),
                held.get("what"),
                held.get("host"),
                held.get("pid"),
                held["expires_at"],
            )
            return None
        if (
            held.get("host") == socket.gethostname()
            and held.get("pid_namespace") == _pid_namespace()
            and isinstance(held.get("pid"), int)
            and not _pid_alive(held["pid"])
        ):
            log.warning(
                "%s: run %s (pid %s on this host) is no longer running; taking its lease over",
                self.path,
                held.get("run_id"),
                held.get("pid"),
            )
            return None
        return held

    def _refuse(self, held: dict[str, Any]) -> None:
        raise StoreError(
            f"{self.path.parent} is in use by another run: {held.get('what')} (run {held.get('run_id')}, host "
            f"{held.get('host')}, pid {held.get('pid')}, since {held.get('taken_at')}); wait for it to finish, "
            f"or, if it was killed, for its lease to expire at {held.get('expires_at')} (or delete {self.path})"
        )

    def acquire(self) -> "Lease":
        held = self._holder()
        if held:
            self._refuse(held)
        self._taken_at = _now().isoformat(timespec="seconds")
        self.path.parent.mkdir()
        self.path.write_json(self._body())
        time.sleep(self.settle)
        try:
            mine = self.path.read_json().get("run_id") == self.run_id
        except (OSError, ValueError):
            mine = False
        if not mine:
            held = self._holder()
            self._refuse(held or {"what": "a run that started at the same time"})
        self._thread = threading.Thread(target=self._renew, name="biomine-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                held = self.path.read_json()
                if held.get("run_id") != self.run_id:
                    # We stalled past the ttl and another run took over: stop, never overwrite it.
                    self.lost = (
                        f"run {held.get('run_id')} ({held.get('what')}, host {held.get('host')}) took "
                        f"over {self.path} while this run had stalled"
                    )
                    log.error("%s", self.lost)
                    return
                self.path.write_json(self._body())
            except FileNotFoundError:
                self.lost = f"{self.path} was deleted while this run held it"
                log.error("%s", self.lost)
                return
            except Exception as exc:  # a blip of the store: the next renewal tries again
                log.warning("could not renew %s: %s", self.path, exc)

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
            try:
                if self.path.read_json().get("run_id") == self.run_id:
                    self.path.delete()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
