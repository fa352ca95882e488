"""``biomine run JOB.toml``: a job end to end on Ray, resumable and incremental.

Steps, each idempotent:

1. **Documents** (a Ray task): ``fetch`` (E-utilities query) or ``ingest`` (baseline/update XML) into
   ``OUT/documents/`` — the manifest-backed shard store of :mod:`pipeline.store.shards`. Shards are
   immutable: an update that changes or deletes an article writes a new shard and retires the old one.
2. **Tasks** (Ray Data, :mod:`pipeline.run.stages`): for every committed document shard without an output
   yet, NER → ``OUT/entities/``, RE → ``OUT/relations/``, summarisation → ``OUT/summaries/``, one
   Parquet file per document shard, written atomically.
3. **Retire**: outputs of document shards that are no longer committed (replaced or deleted
   articles) are removed, so every output row's PMID exists in ``documents`` with the same version.
4. **Manifest** ``OUT/_manifest.json``: the job spec, model ids and checksums, code version, counts
   per stage, timings and per-record failures; then a summary table on stderr.

A killed run (Ctrl-C, dead actor, lost node) loses only in-flight work: re-running skips every shard
already written and produces the same outputs as an uninterrupted run. An incremental job (files
source) re-run after new update files are added processes only the new or changed articles' shards.

:raises ConfigError: invalid job (see :mod:`pipeline.run.jobspec`).
:raises BioMineError: from ingestion, fetching or model loading, naming the record or file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from pipeline.run.jobspec import JobSpec
from pipeline.run.stages import read_failures, run_task_stage, shard_failures_file
from pipeline.store.atomic import write_json

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address``/``$RAY_ADDRESS`` if given, else start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # A private local cluster: no auth token written to $HOME, no dashboard, quiet workers.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's C++ core logs a harmless error-level line per actor restart; Ray Data logs every
    # execution plan at INFO. Users get our progress bars and summary instead.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)


def code_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("biomine")
    except PackageNotFoundError:
        pkg = "unknown"
    commit = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"biomine": pkg, "git_commit": commit}


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """Model id (directory name) and a sha256 over its config and weight files."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".json", ".safetensors", ".bin", ".txt")):
            with open(model_dir / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
    return {"model_id": model_dir.name, "path": str(model_dir), "sha256": h.hexdigest()}


def _source_step(spec: JobSpec, docs_dir: str, progress: bool) -> dict[str, Any]:
    """Run fetch or ingest; executed as a Ray task (see :func:`run_job`)."""
    src = spec.source
    if src.kind == "files":
        from pipeline.pubmed.ingest import ingest_files

        s = ingest_files(src.paths, docs_dir, shard_rows=src.shard_size, progress=progress)
        return {"kind": "files", "files": s.files, "files_skipped": s.skipped, "records": s.records,
                "added": s.added, "replaced": s.replaced, "deleted": s.deleted, "documents": s.rows}
    from pipeline.pubmed.eutils import Credentials, EutilsClient, fetch_query

    client = EutilsClient(base_url=src.eutils_url,
                          credentials=Credentials.resolve(email=src.email, api_key=src.api_key))
    s = fetch_query(client, src.query, docs_dir, mindate=src.mindate, maxdate=src.maxdate,
                    max_records=src.max, shard_rows=src.shard_size, progress=progress)
    return {"kind": "entrez", "query": src.query, "total_hits": s.total_hits, "fetched": s.fetched,
            "already_present": s.already_present, "unavailable": len(s.unavailable), "documents": s.rows}


def _read_previous_manifest(out: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _actors_and_gpus(spec: JobSpec) -> tuple[int, float]:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    per_actor = spec.resources.gpus_per_actor if gpus else 0.0
    if spec.resources.actors:
        return spec.resources.actors, per_actor
    return (max(1, int(gpus // per_actor)) if per_actor else 1), per_actor


def run_job(spec: JobSpec, *, progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    """Run ``spec`` end to end; returns the manifest written to ``OUT/_manifest.json``."""
    import ray

    from pipeline.store.shards import iter_shard_paths
    from pipeline.tasks.registry import task_class

    # Every task's checkpoint is checked (cheaply: config and task files) before anything runs, so
    # the wrong kind of model is one clear error, not a failure after an hour of fetching.
    classes = {}
    for name, options in spec.tasks.items():
        classes[name] = task_class(name)
        classes[name].check_model(options)

    out = spec.output
    out.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    init_ray(spec.resources.address, num_cpus=num_cpus)
    manifest: dict[str, Any] = {
        "job": {"name": spec.name, "spec": spec.raw, "path": str(spec.path) if spec.path else None},
        "code": code_version(), "started_at": started.isoformat(timespec="seconds"), "stages": {},
        "models": {}, "failures": [],
    }

    docs = out / "documents"
    t = time.perf_counter()
    source_task = ray.remote(num_cpus=1, max_retries=2)(_source_step)
    manifest["stages"]["documents"] = ray.get(source_task.remote(spec, str(docs), progress))
    manifest["stages"]["documents"]["seconds"] = round(time.perf_counter() - t, 3)
    shards = list(iter_shard_paths(docs))
    live = {p.stem for p in shards}

    previous = _read_previous_manifest(out)
    actors, gpus_per_actor = _actors_and_gpus(spec)
    for name, options in spec.tasks.items():
        cls = classes[name]
        manifest["models"][name] = model_fingerprint(Path(options.model))
        out_dir = out / cls.dataset
        old = previous.get("models", {}).get(name, {}).get("sha256")
        stale = not spec.incremental or (old is not None and old != manifest["models"][name]["sha256"])
        if stale and any(out_dir.glob("*.parquet")):
            # Outputs of another model (or a non-incremental job) are recomputed, never mixed.
            log.warning("%s: recomputing %s (%s)", spec.name, out_dir,
                        "model changed" if spec.incremental else "incremental = false")
            for p in [*out_dir.glob("*.parquet"), *out_dir.glob("*.failures.json")]:
                p.unlink()
        # Record the model before its first output exists, so a crash cannot leave outputs of this
        # model under a manifest that names another (the next run would keep them as current).
        models = {**previous.get("models", {}), **manifest["models"]}
        write_json({**manifest, "models": models, "finished_at": None}, out / MANIFEST)
        result = run_task_stage(cls, options, shards, out_dir, actors=actors,
                                gpus_per_actor=gpus_per_actor, cpus_per_actor=spec.resources.cpus_per_actor,
                                progress=progress)
        retired = [p for p in out_dir.glob("*.parquet") if p.stem not in live]
        for p in retired:
            shard_failures_file(out_dir, p).unlink(missing_ok=True)
            p.unlink()
        manifest["stages"][name] = {
            "dataset": cls.dataset, "shards_done": result.shards_done, "shards_skipped": result.shards_skipped,
            "shards_retired": len(retired), "documents": result.documents, "rows": result.rows,
            "seconds": round(result.seconds, 3), "actors": actors, "gpus_per_actor": gpus_per_actor,
            "failures": len(result.failures),
        }
        # Every failed record of the current outputs (this run's and any a redo could not fix), read
        # from the failures files that live beside the outputs, so a killed run loses none.
        manifest["failures"] += read_failures(out_dir, shards)
    manifest["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(manifest, out / MANIFEST)
    return manifest


def summary_table(manifest: dict[str, Any]) -> str:
    rows = [("stage", "shards done", "skipped", "documents", "rows", "failures", "seconds")]
    d = manifest["stages"].get("documents", {})
    rows.append(("documents", "-", "-", str(d.get("documents", "")), "-", "-", str(d.get("seconds", ""))))
    for name, s in manifest["stages"].items():
        if name == "documents":
            continue
        rows.append((f"{name} -> {s['dataset']}", str(s["shards_done"]), str(s["shards_skipped"]),
                     str(s["documents"]), str(s["rows"]), str(s["failures"]), str(s["seconds"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
