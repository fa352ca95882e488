"""``biomine run JOB.toml``: a job end to end on Ray, resumable, incremental, and safe to re-run.

Steps, each idempotent:

0. **Own the output**: take the output's lease (:mod:`pipeline.store.lease`: one run at a time,
   whatever stage the other is in) and check ``OUT/_job.json``: an output location belongs to one job
   (its name and source); another job pointed at it is refused with one line naming both.
1. **Documents**: ``fetch`` (E-utilities query, on the driver) or ``ingest`` (baseline/update XML:
   Ray tasks on every node hash and parse one file each, this process applies them in file order and
   commits) into ``OUT/documents/`` on storage: the manifest-backed shard store of
   :mod:`pipeline.store.shards`. Shards are immutable: an update that changes or deletes an article
   tombstones its row (a deletion vector) and writes the new version into a new shard.
2. **Tasks** (Ray Data, :mod:`pipeline.run.stages`): NER → ``OUT/entities/``, RE → ``OUT/relations/``,
   summarisation → ``OUT/summaries/``. Workers write one data file per document shard to storage; the
   driver commits each with its fingerprint (:mod:`pipeline.store.datasets`). A re-run verifies every
   committed output before it skips it and redoes what is missing, damaged, swapped or stale (other
   settings or another model), saying which and why.
3. **Retire**: outputs of document shards that are no longer committed (only :func:`compaction
   <pipeline.store.shards.compact>` drops shards) are removed. Outputs of tombstoned articles stay
   in their files and are masked by every reader (:mod:`pipeline.outputs`), so every row a reader
   sees has its PMID and version live in ``documents``, and an update computes only its new shards.
4. **Manifest** ``OUT/_manifest.json``: the job spec, models (path, checksum), code version, counts
   per stage (with what was redone and why), timings and per-record failures; then a summary table.

Every location (``output``, source ``paths``, each ``model``) may be a local path or a storage URI
(``s3://...``: :mod:`pipeline.store.storage`), so nothing relies on a disk shared between nodes.
Without an address the run starts a private local Ray that accepts no one else (token
authentication with a token made for this run, and every connection on 127.0.0.1: :func:`init_ray`); with ``--address``/``RAY_ADDRESS``
(``host:port``, ``auto`` or ``ray://``) it joins that cluster and ships its code through Ray's
``runtime_env``, so nodes need no checkout.

:raises JobConfigError: invalid job (see :mod:`pipeline.run.jobspec`).
:raises StoreError: the output belongs to another job or is in use by another run.
:raises BioMineError: from ingestion, fetching or model loading, naming the record or file; an
    unreachable Ray address.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as _dt
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.errors import BioMineError, JobConfigError, StoreError
from pipeline.run.jobspec import JobSpec
from pipeline.store.datasets import TaskDataset
from pipeline.store.lease import Lease
from pipeline.store.models import describe, materialize, model_checksum, pin, vocabulary_checksum
from pipeline.store.storage import Location, location
from pipeline.tasks.options import LinkedOptions

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
JOB_FILE = "_job.json"
CONNECT_TIMEOUT = 10.0


# --- Ray ---------------------------------------------------------------------------------------------
def _private_token() -> None:
    """Token authentication for the embedded Ray: a fresh random token in a private file (mode 0600 in
    a 0700 temporary folder, not ``$HOME``), removed when this process ends. Ray's GCS and raylets then
    refuse every client that does not present it, whatever interface they listen on."""
    if os.environ.get("RAY_AUTH_MODE") == "token" and os.path.exists(os.environ.get("RAY_AUTH_TOKEN_PATH", "")):
        return  # a token made for this process already (a second init after a shutdown)
    folder = tempfile.mkdtemp(prefix="biomine-ray-auth-")
    path = Path(folder) / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    atexit.register(shutil.rmtree, folder, True)
    _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make this (already imported) Ray read the auth settings again: its config and token loader
    are cached at first use (ray/_private/authentication/authentication_token_setup.py does the same
    when it turns token mode on)."""
    from ray._raylet import AuthenticationTokenLoader, Config

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

    return {"py_modules": [os.path.dirname(m.__file__) for m in (biogpt, pipeline, schemas)]}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address``/``$RAY_ADDRESS`` if given, else start a private local Ray sized to this machine.

    :raises BioMineError: the address is unreachable or malformed, or ``ray://`` without ``ray[client]``.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray's C++ core logs a harmless error-level line per actor restart; Ray Data logs every
    # execution plan at INFO. Users get our progress bars and summary instead.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    if address is None:
        _private_token()
        _loopback_only(True)
        # address="local": always a new private instance, never a cluster that `ray start` left
        # running on this machine (ray.init() with no address would join it).
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
        return
    _loopback_only(False)
    check_address(address)
    del kwargs["include_dashboard"]  # a cluster's own choice
    try:
        ray.init(address=address, runtime_env=_runtime_env(), **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise BioMineError(f"cannot join the Ray cluster at {address}: {exc}") from None


def _actors_and_gpus(spec: JobSpec) -> tuple[int, float]:
    """Model actors and GPUs per actor from the cluster's resources: one actor per ``gpus_per_actor``
    GPUs; on a CPU cluster one actor per ``2 * cpus_per_actor`` CPUs (the other half prepare shards)."""
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    per_actor = spec.resources.gpus_per_actor if gpus else 0.0
    if spec.resources.actors:
        return spec.resources.actors, per_actor
    if per_actor:
        return max(1, int(gpus // per_actor)), per_actor
    return max(1, int(resources.get("CPU", 1) // (2 * spec.resources.cpus_per_actor))), 0.0


# --- ownership ---------------------------------------------------------------------------------------
def job_identity(spec: JobSpec) -> dict[str, Any]:
    """What an output location belongs to: the job's name and source."""
    src = spec.source
    # The paths as the job file writes them: moving the checkout (or `ray job submit --working-dir`)
    # keeps the same job.
    written = spec.raw.get("source", {}).get("paths", src.paths)
    source = {"kind": src.kind, "query": src.query} if src.kind == "entrez" else {"kind": src.kind, "paths": written}
    return {"name": spec.name, "source": source}


def _check_owner(out: Location, spec: JobSpec) -> None:
    """Refuse when ``out/_job.json`` names another job (writes nothing).

    :raises StoreError: both jobs named.
    """
    mine = job_identity(spec)
    path = out / JOB_FILE
    try:
        theirs = path.read_json()
    except (FileNotFoundError, ValueError):
        return
    if {k: theirs.get(k) for k in mine} != mine:
        raise StoreError(
            f"{out} belongs to job {theirs.get('name')!r} (source {theirs.get('source')}), not to job "
            f"{spec.name!r} (source {mine['source']}): use another output for this job, or delete {path} "
            "to give it to this job (the other job's outputs would be mixed in)"
        )


def claim_output(out: Location, spec: JobSpec) -> None:
    """Record ``spec`` as the owner of ``out``, or refuse when another job owns it.

    :raises StoreError: ``out`` holds another job's output (both are named).
    """
    mine = job_identity(spec)
    path = out / JOB_FILE
    try:
        theirs = path.read_json()
    except FileNotFoundError:
        theirs = None
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path} is unreadable ({exc}): use another output, or delete it to give the output to this job"
        ) from None
    if theirs is None:
        if (out / "documents").exists():
            try:  # an output of this job written before ownership was recorded: adopt it
                earlier = (out / MANIFEST).read_json().get("job", {}).get("name")
            except (FileNotFoundError, ValueError):
                earlier = None
            if earlier != spec.name:
                raise StoreError(
                    f"{out} holds documents but no {JOB_FILE} and no manifest of job {spec.name!r}: "
                    "it was not written by this job; use another output for it"
                )
        path.write_json({"format": "biomine-job", **mine})
        return
    _check_owner(out, spec)


def code_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("biomine")
    except PackageNotFoundError:
        pkg = "unknown"
    commit = "unknown"
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {"biomine": pkg, "git_commit": commit}


class _RayFuture:
    def __init__(self, ref):
        self.ref = ref

    def cancel(self) -> None:
        import ray

        ray.cancel(self.ref)

    def result(self) -> Any:
        import ray

        from pipeline.run.stages import worker_error

        try:
            return ray.get(self.ref)
        except ray.exceptions.RayTaskError as exc:
            raise worker_error(exc) from None


class RayPool:
    """Ingest's parallel work (:class:`pipeline.pubmed.ingest.Pool`) as Ray tasks, one CPU each, on
    any node: each reads its input from storage and writes its shards to storage. A task lost with
    its node is retried (``max_retries``): it writes the same names and bytes again."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._remote: dict[Any, Any] = {}

    def submit(self, fn, *args) -> _RayFuture:
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1, max_retries=2)(fn)
        return _RayFuture(self._remote[fn].remote(*args))


def _ingest_step(paths: list[str], docs: Location, shard_rows: int, progress: bool, lease: Lease) -> dict[str, Any]:
    """Ingest the source files into ``docs``: this process applies and commits, Ray tasks on every
    node hash and parse (one per file). The run's lease covers the store, so the store takes none of
    its own."""
    import ray

    from pipeline.pubmed.ingest import ingest_files

    workers = int(ray.cluster_resources().get("CPU", 1))
    s = ingest_files(
        paths,
        docs,
        shard_rows=shard_rows,
        progress=progress,
        lock=False,
        pool=RayPool(workers),
        before_commit=lease.check,
    )
    return {
        "kind": "files",
        "files": s.files,
        "files_skipped": s.skipped,
        "records": s.records,
        "added": s.added,
        "replaced": s.replaced,
        "deleted": s.deleted,
        "tombstoned": s.tombstoned,
        "shards_written": s.shards,
        "commits": s.commits,
        "reissued": s.reissued,
        "documents": s.rows,
        "workers": workers,
    }


def _fetch_step(spec: JobSpec, docs_uri: str, progress: bool) -> dict[str, Any]:
    """Fetch the query's hits into ``docs_uri``, on the driver: it is network I/O, and the NCBI email
    and API key stay in this process (never in a Ray task's arguments or a worker's environment)."""
    from pipeline.pubmed.eutils import Credentials, EutilsClient, fetch_query

    src = spec.source
    client = EutilsClient(
        base_url=src.eutils_url, credentials=Credentials.resolve(email=src.email, api_key=src.api_key)
    )
    s = fetch_query(
        client,
        src.query,
        docs_uri,
        mindate=src.mindate,
        maxdate=src.maxdate,
        max_records=src.max,
        shard_rows=src.shard_size,
        progress=progress,
        lock=False,
    )
    return {
        "kind": "entrez",
        "query": src.query,
        "total_hits": s.total_hits,
        "fetched": s.fetched,
        "already_present": s.already_present,
        "unavailable": len(s.unavailable),
        "documents": s.rows,
    }


def _redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """The job spec as the manifest records it: without the NCBI API key."""
    source = dict(raw.get("source", {}))
    if source.get("api_key"):
        source["api_key"] = "(redacted)"
    return {**raw, "source": source} if "source" in raw else dict(raw)


def preflight(spec: JobSpec) -> dict[str, Any]:
    """Every check ``run`` makes before its first Ray call, with every problem listed at once: the Ray
    address, the output (not a file; not another job's), the source (input files exist, NCBI email
    for E-utilities) and each task's checkpoint (kind, task, settings that fit its positions). It
    writes nothing. ``biomine run --check`` runs exactly this.

    Returns the task classes, with each task's model checksum pinned into ``spec.tasks``.

    :raises JobConfigError: listing every problem found.
    """
    from pipeline.pubmed.ingest import discover_inputs
    from pipeline.tasks.registry import task_class

    problems: list[str] = []

    def check(where: str, fn, *args):
        try:
            return fn(*args)
        except BioMineError as exc:
            problems.append(f"{where}{exc}")
            return None

    check("", check_address, spec.resources.address or os.environ.get("RAY_ADDRESS") or None)
    out = check("[job] output: ", location, spec.output)
    if out is not None:
        if check("[job] output: ", out.is_file):
            problems.append(f"[job] output = {spec.output!r} is a file: name a folder (it is created if needed)")
        elif out.is_local and not _writable(out.local_path()):
            problems.append(f"[job] output = {spec.output!r}: this user cannot write there; choose another folder")
        elif check("[job] output: ", (out / JOB_FILE).exists):
            check("", _check_owner, out, spec)
    if spec.source.kind == "files":
        check("[source] paths: ", discover_inputs, spec.source.paths)
    else:
        from pipeline.pubmed.eutils import Credentials, EutilsClient

        src = spec.source
        check(
            "[source] ",
            lambda: EutilsClient(
                base_url=src.eutils_url, credentials=Credentials.resolve(email=src.email, api_key=src.api_key)
            ),
        )
    classes = {}
    for name, options in list(spec.tasks.items()):
        where = f"[tasks.{name}] "
        pinned = check(where, pin, options.model)  # a Hub id -> hf://repo@<commit> (fetched here once)
        if pinned is None:
            continue
        options = dataclasses.replace(options, model=pinned)
        sha = check(where, model_checksum, options.model)
        local = check(where, materialize, options.model, sha) if sha else None
        if local is None:
            continue
        classes[name] = task_class(name)
        before = len(problems)
        check(where, classes[name].check_model, dataclasses.replace(options, model=str(local)))
        extra = {}
        if isinstance(options, LinkedOptions) and options.vocabulary:
            extra["vocabulary_sha256"] = check(where, vocabulary_checksum, options.vocabulary)
        if len(problems) == before:
            spec.tasks[name] = dataclasses.replace(options, model_sha256=sha, **extra)
    if len(problems) == 1:
        raise JobConfigError(problems[0])
    if problems:  # one line still: (1) ...; (2) ... - every problem at once, greppable in a log
        where = f" in {spec.path}" if spec.path else ""
        raise JobConfigError(
            f"{len(problems)} problems{where}: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        )
    return classes


def _writable(path: Path) -> bool:
    """Whether ``path`` (or, when it does not exist yet, its nearest existing parent) can be written."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def run_job(spec: JobSpec, *, progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    """Run ``spec`` end to end; returns the manifest written to ``OUT/_manifest.json``.

    :raises JobConfigError: anything :func:`preflight` finds (all of it at once).
    :raises StoreError: the output belongs to another job or is in use by another run.
    """
    classes = preflight(spec)
    out = location(spec.output)
    out.mkdir()
    with Lease(out, what=f"biomine run {spec.path or spec.name}") as lease:
        claim_output(out, spec)
        return _run(spec, classes, out, lease, progress, num_cpus)


def _run(
    spec: JobSpec, classes: dict[str, Any], out: Location, lease: Lease, progress: bool, num_cpus: int | None
) -> dict[str, Any]:

    from pipeline.run.stages import run_task_stage
    from pipeline.store.shards import committed_shards, read_deletions

    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    init_ray(spec.resources.address, num_cpus=num_cpus)
    manifest: dict[str, Any] = {
        "job": {"name": spec.name, "spec": _redacted(spec.raw), "path": str(spec.path) if spec.path else None},
        "code": code_version(),
        "started_at": started.isoformat(timespec="seconds"),
        "stages": {},
        "models": {name: {**describe(o.model), "sha256": o.model_sha256} for name, o in spec.tasks.items()},
        "failures": [],
        "finished_at": None,
    }
    (out / MANIFEST).write_json(manifest)

    docs = out / "documents"
    t = time.perf_counter()
    if spec.source.kind == "files":
        documents = _ingest_step(spec.source.paths, docs, spec.source.shard_size, progress, lease)
    else:
        documents = _fetch_step(spec, docs.uri, progress)
    manifest["stages"]["documents"] = documents
    manifest["stages"]["documents"]["seconds"] = round(time.perf_counter() - t, 3)
    shards = committed_shards(docs)
    by_stem = {s.stem: s for s in shards}
    live = set(by_stem)
    identities = {s.stem: s.identity() for s in shards}

    vectors: dict[str, set[int]] = {}

    def dead(shard) -> set[int]:  # read once per shard, and only for shards with failures
        if shard.stem not in vectors:
            vectors[shard.stem] = set(read_deletions(docs, shard).to_pylist())
        return vectors[shard.stem]

    actors, gpus_per_actor = _actors_and_gpus(spec)
    for name, options in spec.tasks.items():
        cls = classes[name]
        if options.dtype == "auto":  # resolved here, so the fingerprint says what actually ran
            options = dataclasses.replace(options, dtype="bfloat16" if gpus_per_actor else "float32")
        dataset = TaskDataset(out / cls.dataset)
        if not spec.incremental and dataset.records():
            log.warning("%s: recomputing %s (incremental = false)", spec.name, dataset.loc)
            dataset.clear()
        result = run_task_stage(
            cls,
            options,
            [docs / s.name for s in shards],
            dataset.loc,
            inputs=identities,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=spec.resources.cpus_per_actor,
            progress=progress,
            before_commit=lease.check,
        )
        retired = sorted(set(dataset.records()) - live)
        for shard in retired:
            dataset.retire(shard)
        # What the dataset holds now, whichever invocations computed it (a resumed run's own counts
        # above cover only what it did itself), read from the commit records.
        committed = dataset.records(live)
        manifest["stages"][name] = {
            "dataset": cls.dataset,
            "shards_done": result.shards_done,
            "shards_skipped": result.shards_skipped,
            "shards_retired": len(retired),
            "redone": result.redone,
            "documents": result.documents,
            "rows": result.rows,
            "seconds": round(result.seconds, 3),
            "actors": actors,
            "gpus_per_actor": gpus_per_actor,
            "failures": len(result.failures),
            "committed": {
                "shards": len(committed),
                "documents": sum(r["documents"] for r in committed.values()),
                "rows": sum(r["file"]["rows"] or 0 for r in committed.values()),
                # documents whose output readers see (the others were revised or deleted since)
                "live_documents": sum(by_stem[s].live for s in committed),
            },
        }
        # Every failed record of the current outputs (this run's and any a redo could not fix), read
        # from the commit records, so a killed run loses none; failures of articles revised or
        # deleted since do not count.
        manifest["failures"] += [
            f
            for shard in sorted(committed)
            for f in committed[shard].get("failures", [])
            if not by_stem[shard].deleted or f["pmid"] not in dead(by_stem[shard])
        ]
    manifest["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    (out / MANIFEST).write_json(manifest)
    return manifest


def summary_table(manifest: dict[str, Any]) -> str:
    rows = [("stage", "shards done", "skipped", "documents", "rows", "failures", "seconds", "dataset rows")]
    d = manifest["stages"].get("documents", {})
    rows.append(("documents", "-", "-", str(d.get("documents", "")), "-", "-", str(d.get("seconds", "")), "-"))
    for name, s in manifest["stages"].items():
        if name == "documents":
            continue
        rows.append(
            (
                f"{name} -> {s['dataset']}",
                str(s["shards_done"]),
                str(s["shards_skipped"]),
                str(s["documents"]),
                str(s["rows"]),
                str(s["failures"]),
                str(s["seconds"]),
                str(s.get("committed", {}).get("rows", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
