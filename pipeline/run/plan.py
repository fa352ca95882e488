"""The plan of a run: every check ``biomine run`` makes before its first Ray call, and what they resolve.

:func:`preflight` takes a parsed job (:class:`~pipeline.run.jobspec.JobSpec`) and returns a frozen
:class:`RunPlan`, changing nothing and writing nothing: the job's output (:class:`JobOutput`), and
per task its class and **fully resolved options**: the model pinned (a Hub id to
``hf://repo@<commit>``, a release name to its folder), the checksum of every file the outputs
depend on (model, concept dictionary). From there the options travel unchanged; the one later step
is :meth:`RunPlan.placed`, which resolves ``dtype = "auto"`` once the cluster is known (bfloat16 on
GPUs, float32 on CPUs), so that the fingerprints say what actually ran. ``biomine run`` (and
``--check``, which stops there) runs :func:`check_job`: the job file parsed and :func:`preflight`'s
checks made on whatever parses, every problem of both listed at once in one layout
(:func:`~pipeline.run.jobspec.problems_error`).

:raises JobConfigError: listing every problem found, in one line.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from biogpt.weights import check_weights
from pipeline.errors import BioMineError
from pipeline.run.cluster import Placement, check_address
from pipeline.run.jobspec import JOB_KEYS, JobSpec, parse_job_partly, problems_error, read_job_file, task_keys
from pipeline.store.models import materialize, model_checksum, pin, vocabulary_checksum
from pipeline.store.output import JobOutput
from pipeline.store.storage import location
from pipeline.tasks.base import Task
from pipeline.tasks.options import TaskOptions

O = TypeVar("O", bound=TaskOptions)


@dataclass(frozen=True)
class PlannedTask(Generic[O]):
    """One task of a run: its class and its resolved options (see the module docstring)."""

    name: str
    cls: type[Task[O]]
    options: O

    @property
    def dataset(self) -> str:
        return self.cls.dataset


@dataclass(frozen=True)
class RunPlan:
    """What a run does, resolved once by :func:`preflight` and passed on unchanged."""

    job: JobSpec
    output: JobOutput
    tasks: tuple[PlannedTask[Any], ...]
    #: Set by :meth:`placed`: the model actors and GPUs of the cluster the run landed on.
    placement: Placement | None = None

    def placed(self, placement: Placement) -> RunPlan:
        """This plan on a cluster: ``dtype = "auto"`` resolved for its hardware."""
        tasks = tuple(
            dataclasses.replace(t, options=dataclasses.replace(t.options, dtype=placement.dtype))
            if t.options.dtype == "auto"
            else t
            for t in self.tasks
        )
        return dataclasses.replace(self, tasks=tasks, placement=placement)


def job_identity(spec: JobSpec) -> dict[str, Any]:
    """What an output location belongs to: the job's name and the kind of its source (and, for an
    E-utilities job, its query). A files job's ``paths`` are not part of it: adding an update file
    to the list (or moving the checkout) is an ordinary change of the same job, and inputs are
    recognised by their content anyway. A ``pubmed`` job is a files job that syncs its files itself
    (:mod:`pipeline.pubmed.sync`), so it owns its output as ``files``: a files job over a synced
    folder carries on as a ``pubmed`` job, and back."""
    src = spec.source
    kind = "files" if src.kind == "pubmed" else src.kind
    source = {"kind": kind, "query": src.query} if kind == "entrez" else {"kind": kind}
    return {"name": spec.name, "source": source}


def check_job(path: str | Path, address: str | None = None) -> RunPlan:
    """The job file at ``path`` parsed and checked whole (``address``: ``--address``): the problems
    of the file and those of :func:`preflight`'s checks on what parses, all in one error, so that a
    user fixes them in one go rather than meeting them one after another. ``biomine run`` and
    ``run --check`` start here; it writes nothing.

    :raises JobConfigError: the file is missing or not TOML; or listing every problem found.
    """
    path = Path(path)
    spec, problems = parse_job_partly(read_job_file(path), path.resolve().parent, path=path, address=address)
    plan = _preflight(spec, problems)
    if problems:
        raise problems_error(problems, spec.path)
    assert plan is not None
    return plan


def preflight(spec: JobSpec) -> RunPlan:
    """Every check ``run`` makes before its first Ray call, with every problem listed at once: the Ray
    address, the output (not a file; not another job's), the source (input files exist, NCBI email
    for E-utilities) and each task's checkpoint (kind, task, settings that fit its positions). It
    writes nothing and changes nothing.

    :raises JobConfigError: listing every problem found.
    """
    problems: list[str] = []
    plan = _preflight(spec, problems)
    if problems:
        raise problems_error(problems, spec.path)
    assert plan is not None
    return plan


def _preflight(spec: JobSpec, problems: list[str]) -> RunPlan | None:
    """:func:`preflight`'s checks, adding to ``problems``; the plan when none was found. Parts of a
    partly parsed job (:func:`~pipeline.run.jobspec.parse_job_partly`) left empty are skipped."""
    from pipeline.pubmed.ingest import discover_inputs
    from pipeline.tasks.registry import task_class

    found = len(problems)

    def check(where: str, fn, *args, keys=JOB_KEYS):
        try:
            return fn(*args)
        except BioMineError as exc:
            # An error about a setting ends with its job key, e.g. "([job] output)"; others get ``where``.
            problems.append(str(exc) if exc.spell(keys).spelling else f"{where}{exc}")
            return None

    check("", check_address, spec.resources.address or os.environ.get("RAY_ADDRESS") or None)
    out = check("[job] output: ", location, spec.output) if spec.output else None
    output = JobOutput(out) if out is not None else None
    if out is not None and output is not None:
        if check("[job] output: ", out.is_file):
            problems.append(f"[job] output = {spec.output!r} is a file: name a folder (it is created if needed)")
        elif out.is_local and not _writable(out.local_path()):
            problems.append(f"[job] output = {spec.output!r}: this user cannot write there; choose another folder")
        elif out.is_local and "\\" in out.path:
            problems.append(
                f"[job] output = {spec.output!r}: a folder name with a backslash cannot hold Delta tables "
                "(delta-rs reads it as a path separator); choose a name without one"
            )
        elif spec.name:
            check("", output.check_owner, job_identity(spec))
    if spec.source.kind == "files" and spec.source.paths:
        check("[source] paths: ", discover_inputs, spec.source.paths)
    elif spec.source.kind == "pubmed":
        from pipeline.pubmed.sync import resolve_mirror

        check("[source] ", resolve_mirror, spec.source.mirror, spec.source.allow_http)
        if spec.source.dest:
            dest = check("[source] dest: ", location, spec.source.dest)
            if dest is not None and check("[source] dest: ", dest.is_file):
                problems.append(
                    f"[source] dest = {spec.source.dest!r} is a file: name a folder (it is created if needed)"
                )
    elif spec.source.kind == "entrez":
        from pipeline.pubmed.eutils import Credentials, EutilsClient

        src = spec.source
        check(
            "[source] ",
            lambda: EutilsClient(
                base_url=src.eutils_url, credentials=Credentials.resolve(email=src.email, api_key=src.api_key)
            ),
        )
    tasks = []
    for name, options in spec.tasks.items():
        planned = check(f"[tasks.{name}] ", _resolve_task, name, task_class(name), options, keys=task_keys(name))
        if planned is not None:
            tasks.append(planned)
    if len(problems) > found or output is None:
        return None
    return RunPlan(job=spec, output=output, tasks=tuple(tasks))


def _resolve_task(name: str, cls: type[Task[O]], options: O) -> PlannedTask[O]:
    """``options`` with the model pinned and every input's checksum, after ``cls.check_model``
    accepted the (local copy of the) model.

    :raises BioMineError: a name that does not resolve, missing files, the wrong kind of model.
    """
    model = pin(options.model)  # a Hub id -> hf://repo@<commit> (fetched here once)
    resolved: dict[str, Any] = {"model": model}
    local: dict[str, Any] = {}
    for ref in dataclasses.replace(options, model=model).inputs():
        if ref.kind == "model":
            sha = model_checksum(ref.uri)
            local[ref.field] = str(materialize(ref.uri, sha))
        else:
            sha = vocabulary_checksum(ref.uri)
        resolved[ref.checksum_field] = sha
    final = dataclasses.replace(options, **resolved)
    cls.check_model(dataclasses.replace(final, **local))
    if "model" in local:
        check_weights(local["model"])  # damaged weights fail here, before Ray starts or anything is written
    return PlannedTask(name, cls, final)


def _writable(path: Path) -> bool:
    """Whether ``path`` (or, when it does not exist yet, its nearest existing parent) can be written."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
