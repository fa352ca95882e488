"""``biomine run JOB.toml``: a job end to end on Ray, resumable, incremental, and safe to re-run.

Steps, each idempotent:

0. **Plan and own the output**: :func:`pipeline.run.plan.preflight` checks everything and resolves
   each task's options once (a frozen :class:`~pipeline.run.plan.RunPlan`); then the run takes the
   output's lease (:mod:`pipeline.store.lease`: one run at a time, whatever stage the other is in)
   and checks who owns it (:class:`pipeline.store.output.JobOutput`): an output location belongs to
   one job (its name and source); another job pointed at it is refused with one line naming both.
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
from typing import Any

from pipeline.run.cluster import RayPool, init_ray, placement
from pipeline.run.jobspec import JobSpec
from pipeline.run.plan import RunPlan, job_identity, preflight
from pipeline.store.lease import Lease
from pipeline.store.models import describe
from pipeline.store.storage import Location

log = logging.getLogger(__name__)


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


def _fetch_step(spec: JobSpec, docs: Location, progress: bool) -> dict[str, Any]:
    """Fetch the query's hits into ``docs``, on the driver: it is network I/O, and the NCBI email
    and API key stay in this process (never in a Ray task's arguments or a worker's environment)."""
    from pipeline.pubmed.eutils import Credentials, EutilsClient, fetch_query

    src = spec.source
    client = EutilsClient(
        base_url=src.eutils_url, credentials=Credentials.resolve(email=src.email, api_key=src.api_key)
    )
    s = fetch_query(
        client,
        src.query,
        docs,
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


def run_job(spec: JobSpec, *, progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    """Run ``spec`` end to end; returns the manifest written to ``OUT/_manifest.json``.

    :raises JobConfigError: anything :func:`~pipeline.run.plan.preflight` finds (all of it at once).
    :raises StoreError: the output belongs to another job or is in use by another run.
    """
    return run_plan(preflight(spec), progress=progress, num_cpus=num_cpus)


def run_plan(plan: RunPlan, *, progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    """Run a checked plan (:func:`~pipeline.run.plan.preflight`); see :func:`run_job`."""
    spec, output = plan.job, plan.output
    output.root.mkdir()
    with output.lease(f"biomine run {spec.path or spec.name}") as lease:
        output.check_owner(job_identity(spec), claim=True)
        init_ray(spec.resources.address, num_cpus=num_cpus)
        return _run(plan.placed(placement(spec.resources)), lease, progress)


def _run(plan: RunPlan, lease: Lease, progress: bool) -> dict[str, Any]:
    from pipeline.run.stages import run_task_stage
    from pipeline.store.shards import committed_shards, read_deletions

    spec, output, place = plan.job, plan.output, plan.placement
    assert place is not None
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    manifest: dict[str, Any] = {
        "job": {"name": spec.name, "spec": _redacted(spec.raw), "path": str(spec.path) if spec.path else None},
        "code": code_version(),
        "started_at": started.isoformat(timespec="seconds"),
        "stages": {},
        "models": {t.name: {**describe(t.options.model), "sha256": t.options.model_sha256} for t in plan.tasks},
        "failures": [],
        "finished_at": None,
    }
    output.write_manifest(manifest)

    docs = output.documents
    t = time.perf_counter()
    if spec.source.kind == "files":
        documents = _ingest_step(spec.source.paths, docs, spec.source.shard_size, progress, lease)
    else:
        documents = _fetch_step(spec, docs, progress)
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

    for task in plan.tasks:
        dataset = output.dataset(task.dataset)
        if not spec.incremental and dataset.records():
            log.warning("%s: recomputing %s (incremental = false)", spec.name, dataset.loc)
            dataset.clear()
        result = run_task_stage(
            task,
            [docs / s.name for s in shards],
            dataset,
            placement=place,
            inputs=identities,
            progress=progress,
            before_commit=lease.check,
        )
        retired = sorted(set(dataset.records()) - live)
        for shard in retired:
            dataset.retire(shard)
        # What the dataset holds now, whichever invocations computed it (a resumed run's own counts
        # above cover only what it did itself), read from the commit records.
        committed = dataset.records(live)
        manifest["stages"][task.name] = {
            "dataset": task.dataset,
            "shards_done": result.shards_done,
            "shards_skipped": result.shards_skipped,
            "shards_retired": len(retired),
            "redone": result.redone,
            "documents": result.documents,
            "rows": result.rows,
            "seconds": round(result.seconds, 3),
            "actors": place.actors,
            "gpus_per_actor": place.gpus_per_actor,
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
    output.write_manifest(manifest)
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
