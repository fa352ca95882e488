"""``biomine run JOB.toml``: a job end to end on Ray, resumable, incremental, and safe to re-run.

Steps, each idempotent:

0. **Plan and own the output**: :func:`pipeline.run.plan.preflight` checks everything and resolves
   each task's options once (a frozen :class:`~pipeline.run.plan.RunPlan`); then the run takes the
   output's lease (:mod:`pipeline.store.lease`: one writer at a time, taken by an atomic
   conditional write) and checks who owns it (:class:`pipeline.store.output.JobOutput`): an output
   location belongs to one job; another job pointed at it is refused with one line naming both.
1. **Documents**: ``fetch`` (E-utilities query, on the driver) or ``ingest`` (baseline/update XML:
   Ray tasks on every node hash and parse one file each, this process applies them in file order and
   commits; a ``pubmed`` source first syncs its files from the mirror, :mod:`pipeline.pubmed.sync`)
   into ``OUT/documents``, a Delta table (:mod:`pipeline.store.documents`). An update
   removes revised and deleted articles copy-on-write, in the same commit that adds their new versions.
2. **Tasks** (Ray Data, :mod:`pipeline.run.stages`): NER → ``OUT/entities``, RE → ``OUT/relations``,
   summarisation → ``OUT/summaries``, PubMedQA answers → ``OUT/answers``, each a Delta table with one output file per documents file. A
   re-run verifies every output before it keeps it; the outputs of rewritten document files are
   copied without their removed articles (no model time); only new, revised, missing, damaged or stale
   outputs are computed, saying which and why. Outputs of articles that left the corpus leave every
   table in the same run.
3. **Knowledge base**: a job with relations rebuilds ``OUT/kb`` (a Delta table) from the relations
   and documents it just committed, so it is never stale (a new table version only when it changed).
4. **Run record**: a ``started`` and a ``finished`` (or ``failed``/``interrupted``) row in the
   ``OUT/runs`` table: the job spec, models (path, checksum), code version, counts per stage (with
   what was redone and why), timings, per-record failures, and the version of every table after the
   run (one consistent snapshot, which ``biomine query`` reads); then a summary table.

Every location (``output``, source ``paths``, each ``model``) may be a local path or a storage URI
(``s3://...``: :mod:`pipeline.store.storage`), so nothing relies on a disk shared between nodes.
The Ray session (a private local Ray, or a cluster joined by address) is :mod:`pipeline.run.cluster`;
the output layout and ownership are :mod:`pipeline.store.output`; this module is the job's flow.

:raises JobConfigError: invalid job (see :mod:`pipeline.run.jobspec`).
:raises StoreError: the output belongs to another job or is in use by another run.
:raises BioMineError: from ingestion, fetching or model loading, naming the record or file; an
    unreachable Ray address.
"""

from __future__ import annotations

import datetime as _dt
import logging
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import BioMineError, SyncError
from pipeline.run.cluster import RayPool, init_ray, placement
from pipeline.run.jobspec import JOB_KEYS, JobSpec, task_keys
from pipeline.run.plan import RunPlan, job_identity, preflight
from pipeline.store.lease import Lease
from pipeline.store.models import describe
from pipeline.store.output import JobOutput

if TYPE_CHECKING:
    from pipeline.pubmed.ingest import BaselineListing

log = logging.getLogger(__name__)


def code_version() -> dict[str, str]:
    from pipeline import package_version

    pkg = package_version()
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


def _bar(progress: bool) -> bool | None:
    """A run's ``progress`` as :class:`pipeline.progress.Progress` takes it: allowed means a bar only
    when stderr is a terminal (log lines otherwise, e.g. under cron or in a CI log); off means log lines."""
    return None if progress else False


def _ingest_step(
    paths: list[str],
    output: JobOutput,
    shard_rows: int,
    progress: bool,
    lease: Lease,
    new_baseline: bool | BaselineListing | None = None,
) -> dict[str, Any]:
    """Ingest the source files into the output's documents: this process applies and commits, Ray
    tasks on every node hash and parse (one per file), under the run's lease. ``new_baseline``: what
    says a new yearly baseline is whole (:func:`pipeline.pubmed.ingest.ingest_files`)."""
    import ray

    from pipeline.pubmed.ingest import ingest_files

    workers = int(ray.cluster_resources().get("CPU", 1))
    s = ingest_files(
        paths,
        output,
        shard_rows=shard_rows,
        progress=_bar(progress),
        lease=lease,
        pool=RayPool(workers),
        new_baseline=new_baseline,
    )
    return {
        "kind": "files",
        "files": s.files,
        "files_skipped": s.skipped,
        "records": s.records,
        "added": s.added,
        "replaced": s.replaced,
        "deleted": s.deleted,
        # articles a whole new baseline no longer holds, removed (older baselines' rows), and files of
        # an older baseline not applied (the newer one holds them)
        "dropped": s.dropped,
        "superseded": s.superseded,
        "removed": s.tombstoned,
        "files_written": s.shards,
        "files_rewritten": s.rewritten,
        "bytes_rewritten": s.rewritten_bytes,
        "commits": s.commits,
        "reissued": s.reissued,
        "documents": s.rows,
        "workers": workers,
    }


def _sync_step(spec: JobSpec, output: JobOutput, progress: bool, lease: Lease) -> dict[str, Any]:
    """Sync the source's folder with the PubMed mirror (new files only, each verified), then ingest
    the verified files in sequence order as a files job does (:func:`_ingest_step`). Each file's
    download, ``.md5`` check and publication is a Ray task on any node (a fraction of a CPU:
    :data:`pipeline.pubmed.sync.TASK_CPUS`), at most ``concurrency`` at once: they are network I/O,
    bounded by NCBI's request for modest concurrency rather than by CPUs. This process lists the
    mirror, holds DEST's lease and alone writes ``DEST/_sync.json``; so on a multi-node cluster DEST
    is on object storage or a filesystem every node mounts (a local DEST a node does not share is
    refused, naming the file)."""
    from pipeline.pubmed.ingest import listed_baseline
    from pipeline.pubmed.sync import TASK_CPUS, sync, verified_files

    src = spec.source
    assert src.dest is not None  # the job file check requires one for a pubmed source
    pool = RayPool(src.concurrency, num_cpus=TASK_CPUS)
    s = sync(
        src.dest,
        src.mirror,
        allow_http=src.allow_http,
        concurrency=src.concurrency,
        progress=_bar(progress),
        pool=pool,
    )
    lease.check()
    # a file listed without its .md5 yet is a gap: what sorts after it waits for the next run
    gap = min((key.rsplit("/", 1)[-1] for key in s.waiting), default=None)
    files = verified_files(src.dest, before=gap)
    if not files:
        raise SyncError(f"{src.dest} holds no verified PubMed file to ingest yet; check the mirror", setting="mirror")
    # the mirror's listing says when a new baseline is whole (not while a file of it has no .md5 yet)
    baseline = listed_baseline(src.dest, waiting=s.waiting)
    step = _ingest_step([f.uri for f in files], output, src.shard_size, progress, lease, new_baseline=baseline or False)
    step["sync"] = {
        "downloaded": len(s.downloaded),
        "bytes": s.bytes,
        "held": s.held,
        "listed": s.listed,
        "waiting": len(s.waiting),
    }
    return step


def _fetch_step(spec: JobSpec, output: JobOutput, lease: Lease, progress: bool) -> dict[str, Any]:
    """Fetch the query's hits into the output's documents, on the driver: it is network I/O, and the NCBI email
    and API key stay in this process (never in a Ray task's arguments or a worker's environment)."""
    from pipeline.pubmed.eutils import Credentials, EutilsClient
    from pipeline.pubmed.fetch import fetch_query

    src = spec.source
    assert src.query is not None  # the job file check requires one for an entrez source
    client = EutilsClient(
        base_url=src.eutils_url, credentials=Credentials.resolve(email=src.email, api_key=src.api_key)
    )
    s = fetch_query(
        client,
        src.query,
        output,
        mindate=src.mindate,
        maxdate=src.maxdate,
        max_records=src.max,
        shard_rows=src.shard_size,
        progress=_bar(progress),
        lease=lease,
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


def run_job(spec: JobSpec, *, progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    """Run ``spec`` end to end; returns the run record (also the ``finished`` row of ``OUT/runs``).

    :raises JobConfigError: anything :func:`~pipeline.run.plan.preflight` finds (all of it at once).
    :raises StoreError: the output belongs to another job or is in use by another run.
    """
    return run_plan(preflight(spec), progress=progress, num_cpus=num_cpus)


def run_plan(plan: RunPlan, *, progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    """Run a checked plan (:func:`~pipeline.run.plan.preflight`); see :func:`run_job`. An error about
    a setting ends with its job key, e.g. ``([job] output)`` (:data:`~pipeline.run.jobspec.JOB_KEYS`)."""
    try:
        return _run_plan(plan, progress, num_cpus)
    except BioMineError as exc:
        exc.spell(JOB_KEYS)
        raise


def _run_plan(plan: RunPlan, progress: bool, num_cpus: int | None) -> dict[str, Any]:
    spec, output = plan.job, plan.output
    output.root.mkdir()
    with output.lease(f"biomine run {spec.path or spec.name}") as lease:
        if output.is_legacy():
            from pipeline.store.upgrade import upgrade

            log.warning("%s was written by an older biomine: upgrading it to Delta tables first", output.root)
            upgrade(output, lease=lease)
        output.check_owner(job_identity(spec), claim=True)
        init_ray(spec.resources.address, num_cpus=num_cpus)
        return _run(plan.placed(placement(spec.resources)), lease, progress)


def _run(plan: RunPlan, lease: Lease, progress: bool) -> dict[str, Any]:
    spec, output = plan.job, plan.output
    run_id = lease.run_id
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "job": {"name": spec.name, "spec": _redacted(spec.raw), "path": str(spec.path) if spec.path else None},
        "code": code_version(),
        "started_at": started.isoformat(timespec="seconds"),
        "stages": {},
        "models": {t.name: {**describe(t.options.model), "sha256": t.options.model_sha256} for t in plan.tasks},
        "failures": [],
        "finished_at": None,
    }
    output.record_run(run_id, spec.name, "started", manifest)
    try:
        _stages(plan, output, lease, progress, manifest)
    except BaseException as exc:
        event = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        manifest["error"] = f"{type(exc).__name__}: {exc}"
        try:
            output.record_run(run_id, spec.name, event, manifest, seconds=round(time.perf_counter() - t0, 3))
        except Exception as record_error:  # the run's own error is what the user must see
            log.warning("could not record the %s run in %s: %s", event, output.runs, record_error)
        raise
    manifest["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    lease.check()
    manifest["versions"] = output.versions()
    output.record_run(
        run_id,
        spec.name,
        "finished",
        manifest,
        seconds=manifest["seconds"],
        versions=manifest["versions"],
        failures=[{k: f.get(k) for k in ("task", "pmid", "version", "error")} for f in manifest["failures"]],
    )
    return manifest


def _stages(plan: RunPlan, output: JobOutput, lease: Lease, progress: bool, manifest: dict[str, Any]) -> None:
    """Documents, then each task, then the knowledge base (see the module docstring)."""
    from pipeline.run.stages import read_failures, run_task_stage
    from pipeline.store.documents import Documents

    spec, place = plan.job, plan.placement
    assert place is not None
    t = time.perf_counter()
    if spec.source.kind == "files":
        documents = _ingest_step(
            spec.source.paths,
            output,
            spec.source.shard_size,
            progress,
            lease,
            new_baseline=True if spec.source.new_baseline else None,  # None: a sync DEST's listing, if any
        )
    elif spec.source.kind == "pubmed":
        documents = _sync_step(spec, output, progress, lease)
    else:
        documents = _fetch_step(spec, output, lease, progress)
    manifest["stages"]["documents"] = documents
    manifest["stages"]["documents"]["seconds"] = round(time.perf_counter() - t, 3)
    docs = Documents(output.documents).files()

    for task in plan.tasks:
        dataset = output.dataset(task.dataset, task.cls.schema)
        if not spec.incremental and dataset.exists() and dataset.outputs():
            log.warning("%s: recomputing %s (incremental = false)", spec.name, dataset.loc)
            dataset.commit([], [info for _, info in dataset.outputs().values()], settings={"cleared": True})
        try:
            result = run_task_stage(
                task,
                docs,
                output.documents,
                dataset,
                placement=place,
                progress=progress,
                before_commit=lease.check,
                run_id=lease.run_id,
            )
        except BioMineError as exc:
            exc.spell(task_keys(task.name))  # e.g. "([tasks.re] task, [tasks.re] model)"
            raise
        live = dataset.table.refresh().files()
        manifest["stages"][task.name] = {
            "dataset": task.dataset,
            "shards_done": result.shards_done,
            "shards_skipped": result.shards_skipped,
            "shards_derived": result.derived,
            "rows_derived": result.derived_rows,
            "documents_reused": result.reused,
            "shards_retired": result.retired,
            "redone": result.redone,
            "documents": result.documents,
            "rows": result.rows,
            "commits": result.commits,
            "seconds": round(result.seconds, 3),
            "actors": place.actors,
            "gpus_per_actor": place.gpus_per_actor,
            "failures": len(result.failures),
            # What the table holds now, whichever runs computed it: its live files, from the log.
            "committed": {
                "shards": len(live),
                "rows": sum(f.rows for f in live.values()),
                "documents": sum(d.rows for d in docs.values()),
                "version": dataset.table.version,
            },
        }
        # Every failed record of the current outputs (this run's, and those of incomplete outputs a
        # redo could not fix), from the commit infos, so a killed run loses none.
        manifest["failures"] += read_failures(dataset)
    manifest["stages"]["documents"]["live"] = sum(d.rows for d in docs.values())
    if any(t.name == "re" for t in plan.tasks):
        from pipeline.outputs.kb import update_kb

        t = time.perf_counter()
        lease.check()
        re_task = next(t for t in plan.tasks if t.name == "re")
        kb = update_kb(output, task=getattr(re_task.options, "task", None) or "ddi")
        manifest["stages"]["kb"] = {**kb, "seconds": round(time.perf_counter() - t, 3)}


def summary_table(manifest: dict[str, Any]) -> str:
    """The run record as a table: per stage, what was computed, kept and copied, and the live rows."""
    header = ("stage", "files done", "kept", "copied", "documents", "rows", "failures", "seconds", "table rows")
    rows = [header]
    d = manifest["stages"].get("documents", {})
    rows.append(
        (
            "documents",
            "-",
            "-",
            "-",
            str(d.get("documents", "")),
            "-",
            "-",
            str(d.get("seconds", "")),
            str(d.get("live", "")),
        )
    )
    for name, s in manifest["stages"].items():
        if name in ("documents", "kb"):
            continue
        rows.append(
            (
                f"{name} -> {s['dataset']}",
                str(s["shards_done"]),
                str(s["shards_skipped"]),
                str(s.get("shards_derived", 0)),
                str(s["documents"]),
                str(s["rows"]),
                str(s["failures"]),
                str(s["seconds"]),
                str(s.get("committed", {}).get("rows", "")),
            )
        )
    kb = manifest["stages"].get("kb")
    if kb:
        rows.append(("kb", "-", "-", "-", "-", "-", "-", str(kb.get("seconds", "")), str(kb.get("edges", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
