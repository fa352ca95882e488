"""The Ray session of a run: a private local Ray that accepts no one else, or a cluster joined by address.

- :func:`init_ray`: without an address, a new local Ray sized to this machine, with token
  authentication (a random token made for this run, in a private file removed when the process
  ends) and every address on 127.0.0.1; with ``--address``/``RAY_ADDRESS`` (``host:port``, ``auto``
  or ``ray://``) it joins that cluster, checked first so that a wrong address is one line within
  seconds, and ships biomine's code through Ray's ``runtime_env`` (nodes need no checkout).
- :func:`placement`: how many model actors and GPUs each, from the cluster's resources and the job's
  ``[resources]``.
- :class:`RayPool`: ingest's parallel work and sync's downloads as Ray tasks on any node.

The private-session details lean on two Ray internals (cited where used): the auth token loader's
cache and the constant behind ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``.

:raises BioMineError: an unreachable or malformed address; ``ray://`` without ``ray[client]``; a
    :class:`RayPool` task whose worker or node failed (a one-line :class:`StageError`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypedDict

from pipeline.errors import BioMineError, StageError
from pipeline.run.jobspec import ResourceSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
#: How long :meth:`RayPool.drain` waits for cancelled tasks to end (a cancelled task is interrupted;
#: one that does not notice is left to Ray after this).
DRAIN_TIMEOUT = 10.0


def _private_token() -> None:
    """Token authentication for the embedded Ray: a fresh random token in a private file (mode 0600 in
    a 0700 temporary folder, not ``$HOME``), removed when this process ends. Ray's GCS and raylets then
    refuse every client that does not present it, whatever interface they listen on."""
    if (
        os.environ.get("RAY_AUTH_MODE") == "token"
        and os.path.exists(os.environ.get("RAY_AUTH_TOKEN_PATH", ""))
        and os.environ.get(TOKEN_OWNER) == str(os.getpid())
    ):
        return  # a token made by this process already (a second init after a shutdown)
    # A token inherited from a parent process (a biomine run started by another) is the parent's:
    # this run makes its own, so that its reaper never touches the parent's Ray.
    _remove_stale_tokens()
    # The folder names this process (the next run removes it if this one is killed: atexit never runs then).
    folder = tempfile.mkdtemp(prefix=f"{TOKEN_PREFIX}{os.getpid()}-")
    path = Path(folder) / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ[TOKEN_OWNER] = str(os.getpid())
    os.environ.pop("RAY_AUTH_TOKEN", None)
    atexit.register(shutil.rmtree, folder, True)
    _reload_ray_auth()


TOKEN_PREFIX = "biomine-ray-auth-"
#: The pid of the process that made the token in RAY_AUTH_TOKEN_PATH (children inherit the variables).
TOKEN_OWNER = "BIOMINE_RAY_TOKEN_OWNER"


def _remove_stale_tokens() -> list[str]:
    """Remove the token folders of runs on this host whose process is gone (a run killed with
    SIGKILL cannot remove its own). Only folders of this user, named ``biomine-ray-auth-<pid>-*``."""
    removed = []
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{TOKEN_PREFIX}*"):
        pid = folder.name[len(TOKEN_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its run is gone
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        except (PermissionError, OSError):
            continue
    return removed


# The reaper: a small process of its own session that outlives this one by at most a second. When this
# process ends, however it ends (SIGKILL included), it ends every process of this user that belongs to
# this run's private Ray: those that carry the run's token path in their environment, or hold files of
# its session folder open (Ray's dashboard and runtime-env agents overwrite their environment with their
# process title, and otherwise linger for a minute or more after a killed driver). Then it removes the
# token folder. It waits on a pidfd, so a recycled pid cannot fool it.
_REAPER = r"""
import os, select, shutil, signal, sys, time
driver, token, session = int(sys.argv[1]), sys.argv[2], sys.argv[3]
marker = ("RAY_AUTH_TOKEN_PATH=" + token).encode()
try:
    fd = os.pidfd_open(driver)
    select.select([fd], [], [])
except (OSError, AttributeError):
    while True:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)

def ours(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        if marker in f.read().split(b"\0"):
            return True
    for name in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{name}").startswith(session + "/"):
            return True
    return False

for _ in range(3):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == os.getuid() and ours(pid):
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    time.sleep(0.3)
shutil.rmtree(os.path.dirname(token), ignore_errors=True)
"""


def _signal_handlers() -> dict[int, Any]:
    """The Python handlers of SIGTERM and SIGINT now (None off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(saved: dict[int, Any]) -> None:
    """Put back ``saved`` (:func:`_signal_handlers`). Ray replaces them when it starts: its driver
    exits with status 15 on SIGTERM, and its C++ core installs fatal-signal handlers that dump a C
    stack; the CLI makes SIGTERM an interrupt (the same clean stop as Ctrl-C)."""
    import signal

    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


def _start_reaper(token_path: str, session_dir: str) -> None:
    """Start the reaper of this run's private Ray (see ``_REAPER``)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # it is not one of them
    subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(os.getpid()), token_path, session_dir.rstrip("/")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _reload_ray_auth() -> None:
    """Make this (already imported) Ray read the auth settings again: its config and token loader
    are cached at first use (ray/_private/authentication/authentication_token_setup.py does the same
    when it turns token mode on)."""
    # Both are in the compiled module; Ray's _raylet.pyi declares neither.
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_loopback_set_here = False


def _loopback_only(on: bool) -> None:
    """Keep the embedded Ray on 127.0.0.1: its node address, and so every connection between its
    processes. Ray otherwise picks the host's routable address even for a one-machine cluster. Its
    switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, ray/_private/services.py get_node_ip_address) is read
    from the environment by each process Ray spawns, and from a constant by this already-imported one.
    Joining a cluster undoes what this process set (a user's own setting is left alone)."""
    global _loopback_set_here
    import ray._private.ray_constants as ray_constants

    if on and os.environ.get(_LOOPBACK) != "0":
        os.environ[_LOOPBACK] = "0"
        _loopback_set_here = True
    elif not on and _loopback_set_here:
        os.environ.pop(_LOOPBACK, None)
        _loopback_set_here = False
    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(_LOOPBACK) != "0"


def _probe(address: str) -> None:
    """Fail fast, with one line, when nothing listens at ``host:port`` (Ray itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BioMineError(
            f"Ray address {address!r}: use HOST:PORT (the head's GCS port, 6379 by default), auto, or ray://HOST:10001"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise BioMineError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
            "`ray start --head` there, or omit --address/RAY_ADDRESS to run on this machine"
        ) from None


def check_address(address: str | None) -> None:
    """Refuse, with one line and within seconds, an address that cannot work: malformed, ``ray://``
    without Ray Client installed, or nothing listening there (``auto`` is left to Ray).

    :raises BioMineError: naming the address and the fix.
    """
    if address is None or address == "auto":
        return
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401
            import ray.util.client  # noqa: F401
        except ImportError:
            raise BioMineError(
                f"{address} needs Ray Client: pip install 'ray[client]', or pass the head's "
                "GCS address (HOST:6379) from a node of the cluster"
            ) from None
        address = address[len("ray://") :]
    _probe(address)


def _runtime_env() -> dict[str, Any]:
    """Ship biogpt/, pipeline/ and schemas/ to the cluster's workers (Ray's ``py_modules``)."""
    import biogpt
    import pipeline
    import schemas

    folders = []
    for m in (biogpt, pipeline, schemas):
        assert m.__file__ is not None  # regular packages, imported from their folders
        folders.append(os.path.dirname(m.__file__))
    return {"py_modules": folders}


class _InitArgs(TypedDict, total=False):
    """The keyword arguments of ``ray.init`` that a private Ray and a joined cluster share."""

    include_dashboard: bool
    logging_level: int
    log_to_driver: bool
    configure_logging: bool


#: What Ray's C++ core prints on stderr when it starts in a process with RAY_BACKEND_LOG_LEVEL set,
#: whatever the value (src/ray/util/logging.cc logs it at INFO before the level it read applies).
RAY_LOG_LEVEL_LINE = "Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL"


@contextlib.contextmanager
def _without_ray_log_level_line() -> Iterator[None]:
    """Run the body (``ray.init``) with file descriptor 2 captured, then write what it printed to
    stderr without :data:`RAY_LOG_LEVEL_LINE`: the C++ core writes to the descriptor, past Python's
    ``sys.stderr`` and logging, so only the descriptor can catch it. Everything else comes through,
    in order, once ``ray.init`` returns or fails."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor to capture
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if RAY_LOG_LEVEL_LINE not in line]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address``/``$RAY_ADDRESS`` if given, else start a private local Ray sized to this machine.

    :raises BioMineError: the address is unreachable or malformed, or ``ray://`` without ``ray[client]``.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray's C++ core in this process logs benign error-level lines (once per run: "Actor ... has
    # constructor arguments in the object store", for every Ray Data actor pool); its session log
    # files keep everything. Ray Data logs every execution plan at INFO. Users get our progress bars
    # and summary instead. (Any RAY_BACKEND_LOG_LEVEL makes ray.init print the level it read:
    # _without_ray_log_level_line drops that line.)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    kwargs: _InitArgs = dict(
        include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False
    )
    if address is None:
        _private_token()
        _loopback_only(True)
        # address="local": always a new private instance, never a cluster that `ray start` left
        # running on this machine (ray.init() with no address would join it).
        saved = _signal_handlers()
        with _without_ray_log_level_line():
            ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
        _restore_signal_handlers(saved)
        from ray._private.worker import _global_node  # the session folder of the Ray just started

        if _global_node is not None:
            _start_reaper(os.environ["RAY_AUTH_TOKEN_PATH"], _global_node.get_session_dir_path())
        return
    _loopback_only(False)
    check_address(address)
    del kwargs["include_dashboard"]  # a cluster's own choice
    saved = _signal_handlers()
    try:
        with _without_ray_log_level_line():
            ray.init(address=address, runtime_env=_runtime_env(), **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise BioMineError(f"cannot join the Ray cluster at {address}: {exc}") from None
    _restore_signal_handlers(saved)


@dataclass(frozen=True)
class Placement:
    """Where a run's model stages go: ``actors`` model actors with ``gpus_per_actor`` GPUs (0 on a
    CPU cluster) and ``cpus_per_actor`` CPUs each."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float = 1.0

    @property
    def dtype(self) -> str:
        """What ``dtype = "auto"`` means here: bfloat16 on GPUs, float32 on CPUs."""
        return "bfloat16" if self.gpus_per_actor else "float32"


def placement(resources: ResourceSpec) -> Placement:
    """Model actors and GPUs per actor from the cluster's resources: one actor per ``gpus_per_actor``
    GPUs; on a CPU cluster one actor per ``2 * cpus_per_actor`` CPUs (the other half prepare shards)."""
    import ray

    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0)
    per_actor = resources.gpus_per_actor if gpus else 0.0
    if resources.actors:
        actors = resources.actors
    elif per_actor:
        actors = max(1, int(gpus // per_actor))
    else:
        actors = max(1, int(cluster.get("CPU", 1) // (2 * resources.cpus_per_actor)))
    return Placement(actors, per_actor, resources.cpus_per_actor)


#: What Ray Data appends to a failed UDF's error message (ray.data._internal.util.
#: _annotate_exception_with_retry_context): its retry advice, about Ray Data's settings, not ours.
_RAY_DATA_SUFFIX = re.compile(r"\nFailed to .*? after \d+/\d+ attempts \(total backoff [\d.]+s\)\.[\s\S]*\Z")


def _without_ray_data_suffix(exc: BioMineError) -> BioMineError:
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (_RAY_DATA_SUFFIX.sub("", exc.args[0]),) + exc.args[1:]
    return exc


def worker_error(exc: BaseException) -> BaseException:
    """The user's error inside a failed Ray task or actor (a BioMineError: shown as one line), else
    ``exc``. Ray wraps an error once per layer it crosses (a task inside Ray Data's operator, an
    actor's method): every layer is looked through."""
    # Ray re-raises a user's error as a class that derives from both RayTaskError and the user's
    # class (ray.exceptions.RayTaskError.as_instanceof_cause): it passes isinstance(BioMineError)
    # but its message is Ray's traceback, so only a plain BioMineError is the user's error.
    ray_exceptions = sys.modules.get("ray.exceptions")
    wrapper = getattr(ray_exceptions, "RayTaskError", ())
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BioMineError) and not isinstance(current, wrapper):
            return _without_ray_data_suffix(current)
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return exc


class _RayFuture:
    def __init__(self, ref):
        self.ref = ref

    def cancel(self) -> None:
        """Cancel the task: one not started never runs; a running one is interrupted (Ray raises
        KeyboardInterrupt in it)."""
        import ray

        ray.cancel(self.ref)

    def result(self) -> Any:
        import ray

        try:
            return ray.get(self.ref)
        except ray.exceptions.RayTaskError as exc:
            raise worker_error(exc) from None
        except ray.exceptions.RayError as exc:
            # not the task's own error: its worker or node failed (crashed, killed for memory, lost)
            # or it could not be placed. One line (Ray's message goes on with advice); Ray's error
            # stays the cause, for callers that name the task's work.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise StageError(f"a Ray task failed: {lines[0] if lines else type(exc).__name__}") from exc

    def add_done_callback(self, fn: Callable[["_RayFuture"], Any]) -> None:
        """Call ``fn(self)`` once the task is done (finished, failed or cancelled), from a thread of
        Ray's (as :meth:`concurrent.futures.Future.add_done_callback` does)."""
        self.ref.future().add_done_callback(lambda _: fn(self))


class RayPool:
    """Parallel work (:class:`pipeline.pubmed.ingest.Pool`) as Ray tasks on any node: ingest's
    (one CPU each: each reads its input from storage and writes its shards to storage) and sync's
    downloads (``num_cpus``: :data:`pipeline.pubmed.sync.TASK_CPUS`). A task lost with its node is
    retried (``max_retries``): it writes the same names and bytes again. :meth:`drain` waits, bounded,
    for tasks not done yet (cancelled ones, after Ctrl-C)."""

    def __init__(self, workers: int, num_cpus: float = 1.0):
        self.workers = max(1, workers)
        self.num_cpus = num_cpus
        self._remote: dict[Any, Any] = {}

    def submit(self, fn, *args) -> _RayFuture:
        if fn not in self._remote:
            import ray

            self._remote[fn] = ray.remote(num_cpus=self.num_cpus, max_retries=2)(fn)
        return _RayFuture(self._remote[fn].remote(*args))

    @staticmethod
    def drain(futures: Iterable[_RayFuture], timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait, up to ``timeout`` seconds, for the tasks of ``futures`` to end: after cancelling them
        (Ctrl-C), so that none still writes (a partial download, a staged file) when the caller
        releases what it holds (a lease) and a next run starts on the same files. Nothing is
        fetched (the pool keeps no list of its tasks: that would pin every result)."""
        import ray

        refs = [f.ref for f in futures]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
