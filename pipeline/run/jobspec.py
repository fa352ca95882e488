"""Job specifications: the TOML files in ``jobs/`` that ``biomine run`` executes.

A job names where abstracts come from, which tasks run on them with which models, and where the
outputs go. The file is validated completely before anything runs: unknown keys, bad dates, missing
model directories and impossible combinations are reported together, each with its TOML path, in the
one layout of :func:`problems_error` (which ``biomine run --check`` also uses for the checks of
:mod:`pipeline.run.plan`: :func:`parse_job_partly` gives what parses, for those checks to go on with).

The schema, with every key and its default, is documented in ``jobs/README.md``.

:raises JobConfigError: listing every problem found, with its TOML key path.
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biogpt import hub
from pipeline.errors import EutilsError, JobConfigError
from pipeline.pubmed.eutils import date_problem, date_range
from pipeline.pubmed.sync import DEFAULT_CONCURRENCY
from pipeline.store.storage import is_uri, location
from pipeline.tasks.options import DTYPES, TaskOptions
from pipeline.tasks.registry import TASKS

SCHEDULES = ("once", "hourly", "daily", "weekly", "monthly")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    query: str | None = None
    mindate: str | None = None
    maxdate: str | None = None
    max: int | None = None
    email: str | None = None
    api_key: str | None = None
    eutils_url: str | None = None
    paths: list[str] = field(default_factory=list)
    shard_size: int = 5000
    #: kind = "files": the paths' files of the newest baseline year are NCBI's whole new baseline, so
    #: once they are applied the articles it no longer holds leave the corpus (:mod:`pipeline.pubmed.ingest`).
    new_baseline: bool = False
    #: kind = "pubmed": where the synced raw files are kept, the mirror (None: $BIOMINE_PUBMED_MIRROR,
    #: else NCBI's), plain http allowed, downloads at once (:mod:`pipeline.pubmed.sync`).
    dest: str | None = None
    mirror: str | None = None
    allow_http: bool = False
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class ResourceSpec:
    address: str | None = None
    actors: int = 0
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    dtype: str = "auto"


@dataclass(frozen=True)
class JobSpec:
    name: str
    #: A local path (absolute) or a storage URI (:mod:`pipeline.store.storage`).
    output: str
    source: SourceSpec
    #: Task name -> its typed options (:mod:`pipeline.tasks.options`), in the file's order.
    tasks: dict[str, TaskOptions]
    resources: ResourceSpec
    schedule: str = "once"
    incremental: bool = True
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


_ALLOWED = {
    "job": {"name", "output", "schedule", "incremental"},
    "source": {
        "kind",
        "query",
        "mindate",
        "maxdate",
        "max",
        "email",
        "api_key",
        "eutils_url",
        "paths",
        "shard_size",
        "new_baseline",
        "dest",
        "mirror",
        "allow_http",
        "concurrency",
    },
    **{f"tasks.{name}": set(entry.options.job_keys()) for name, entry in TASKS.items()},
    "resources": {"address", "actors", "gpus_per_actor", "cpus_per_actor", "dtype"},
}

#: How a job file spells the settings that the lower rooms' errors name (:mod:`pipeline.errors`):
#: the runner and :func:`~pipeline.run.plan.preflight` add these to an error's message.
JOB_KEYS = {
    "output": "[job] output",
    **{key: f"[source] {key}" for key in ("query", "mindate", "maxdate", "email", "api_key", "eutils_url")},
    "max_records": "[source] max",
    "mirror": "[source] mirror",
    "allow_http": "[source] allow_http",
    "new_baseline": "[source] new_baseline",
}

#: The kinds of source a job may name (jobs/README.md).
SOURCE_KINDS = ("entrez", "files", "pubmed")


def task_keys(name: str) -> dict[str, str]:
    """How a job file spells the settings of task ``name``: the keys of its ``[tasks.NAME]`` table."""
    return {key: f"[tasks.{name}] {key}" for key in TASKS[name].options.job_keys()}


def _check_dates(src: dict[str, Any], problems: list[str]) -> None:
    """``mindate``/``maxdate`` in the one date grammar of queries (:func:`pipeline.pubmed.eutils.date_problem`)."""
    bad = False
    for key in ("mindate", "maxdate"):
        if key in src:
            problem = date_problem(str(src[key]))
            if problem:
                problems.append(f"[source] {key} = {src[key]!r}: {problem}")
                bad = True
    if not bad:
        try:
            date_range(src.get("mindate") and str(src["mindate"]), src.get("maxdate") and str(src["maxdate"]))
        except EutilsError as exc:  # mindate after maxdate
            problems.append(f"[source] {exc}")


def problems_error(problems: list[str], path: str | Path | None = None) -> JobConfigError:
    """The one layout of a job's problems, however many and whichever check found them: one line,
    ``N problem(s) in PATH: (1) ...; (2) ...`` (greppable in a log, as the CLI prints it)."""
    where = f" in {path}" if path else ""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return JobConfigError(f"{count}{where}: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))


def _typed(table: dict, key: str, typ, where: str, problems: list[str], positive=False):
    if key not in table:
        return None
    value = table[key]
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        names = typ if isinstance(typ, tuple) else (typ,)
        problems.append(f"{where} {key} = {value!r}: expected {' or '.join(t.__name__ for t in names)}")
        return None
    if positive and value <= 0:
        problems.append(f"{where} {key} = {value!r}: must be > 0")
        return None
    return value


def _resolve(spec: str, base_dir: Path) -> str:
    """A storage URI as it is; a local path made absolute from the job file's folder."""
    return spec if is_uri(spec) else os.path.normpath(base_dir / spec)


def _task_options(
    name: str, table: dict[str, Any], base_dir: Path, dtype: str, check_models: bool, problems: list[str]
) -> TaskOptions | None:
    """``[tasks.NAME]`` as the task's typed options (None when anything in it is wrong: the checks
    of its checkpoint cannot go on from there)."""
    cls, where = TASKS[name].options, f"[tasks.{name}]"
    before = len(problems)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    ok = True
    for key, required in cls.job_keys().items():
        if key not in table:
            if required:
                what = " (a model directory)" if key == "model" else ""
                problems.append(f"{where} {key} is required{what}")
                ok = False
            continue
        # The field's type, without None: a job key is given a value or left out.
        types = tuple(t for t in (typing.get_args(hints[key]) or (hints[key],)) if t is not type(None))
        value = table[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problems.append(f"{where} {key} = {value!r}: expected {' or '.join(t.__name__ for t in types)}")
            ok = False
            continue
        values[key] = value
    if not ok:
        return None
    model = values["model"]
    named = hub.is_name(model, base_dir)  # a Hub id or biogpt:NAME: the runner's preflight resolves it
    # A name is written out explicitly (hf://owner/name, biogpt:NAME): past the parser nothing reads
    # a bare owner/name again, so no folder of the current directory can stand in for it.
    values["model"] = str(hub.parse(model, base_dir=base_dir)) if named else _resolve(model, base_dir)
    if isinstance(values.get("vocabulary"), str):
        values["vocabulary"] = _resolve(values["vocabulary"], base_dir)
    local = location(values["model"])
    if check_models and not named and local.is_local and not local.local_path().is_dir():
        problems.append(f"{where} model = {hub.no_folder(model, values['model'])}")
    elif check_models and not named and not (local / "config.json").exists():
        problems.append(
            f"{where} model = {model!r}: no config.json in {values['model']} (train or convert a "
            "model first: see `biomine train ner --help` and `biomine convert fairseq --help`)"
        )
    options = cls(**values, dtype=dtype)
    problems += [f"{where} {p}" for p in options.problems()]
    return options if len(problems) == before else None


def parse_job(
    data: dict[str, Any],
    base_dir: Path,
    check_models: bool = True,
    path: Path | None = None,
    address: str | None = None,
) -> JobSpec:
    """The job in ``data`` (a parsed TOML document), validated whole; local paths are made absolute
    from ``base_dir``; ``address`` (``--address``) overrides ``[resources] address``.

    :raises JobConfigError: listing every problem found, with its TOML key path.
    """
    spec, problems = parse_job_partly(data, base_dir, check_models=check_models, path=path, address=address)
    if problems:
        raise problems_error(problems, path)
    return spec


def parse_job_partly(
    data: dict[str, Any],
    base_dir: Path,
    check_models: bool = True,
    path: Path | None = None,
    address: str | None = None,
) -> tuple[JobSpec, list[str]]:
    """The job in ``data`` as far as it is right, and every problem found (see :func:`parse_job`).
    What is wrong is left empty, so that the later checks skip it rather than report it twice: a
    missing or mistyped ``name``/``output`` is ``""``, an unknown source kind ``""`` (bad ``paths``:
    ``[]``), and a task with any problem is left out of ``tasks``."""
    problems: list[str] = []
    task_tables: dict[str, Any] = data["tasks"] if isinstance(data.get("tasks"), dict) else {}
    if "tasks" in data and not isinstance(data["tasks"], dict):
        problems.append("[tasks] must be a table of [tasks.NAME] tables")
    for section in data:
        if section not in ("job", "source", "tasks", "resources"):
            problems.append(f"[{section}]: unknown section (expected job, source, tasks, resources)")
    for name, table in [
        ("job", data.get("job", {})),
        ("source", data.get("source", {})),
        ("resources", data.get("resources", {})),
    ] + [(f"tasks.{k}", v) for k, v in task_tables.items()]:
        if name not in _ALLOWED:
            problems.append(f"[{name}]: unknown task (expected one of {', '.join(TASKS)})")
            continue
        if not isinstance(table, dict):
            problems.append(f"[{name}] must be a table")
            continue
        for key in table:
            if key not in _ALLOWED[name]:
                problems.append(f"[{name}] {key}: unknown key (allowed: {', '.join(sorted(_ALLOWED[name]))})")

    job = data.get("job", {})
    if not isinstance(job, dict):
        job = {}  # reported above
    for key in ("name", "output"):
        if not job.get(key):
            problems.append(f"[job] {key} is required")
        elif not isinstance(job[key], str):
            problems.append(f"[job] {key} = {job[key]!r}: expected a string")
    job_name: str = job["name"] if isinstance(job.get("name"), str) else ""
    output = _resolve(job["output"], base_dir) if job.get("output") and isinstance(job["output"], str) else ""
    schedule = job.get("schedule", "once")
    if schedule not in SCHEDULES:
        problems.append(f"[job] schedule = {schedule!r}: use one of {', '.join(SCHEDULES)}")
        schedule = "once"

    src = data.get("source")
    source: dict[str, Any] = {"kind": ""}
    if not src:
        problems.append('[source] is required (kind = "entrez", "files" or "pubmed")')
    elif isinstance(src, dict):
        kind = src.get("kind")
        source["kind"] = kind if kind in SOURCE_KINDS else ""
        paths = src.get("paths")
        if kind == "entrez":
            if not src.get("query"):
                problems.append('[source] query is required for kind = "entrez"')
            _check_dates(src, problems)
        elif kind == "files":
            if not paths or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                problems.append("[source] paths must be a non-empty list of files, directories or globs")
                paths = []
        elif kind == "pubmed":
            if isinstance(src.get("dest"), str) and isinstance(job.get("output"), str):
                if _resolve(src["dest"], base_dir) == _resolve(job["output"], base_dir):
                    problems.append(
                        f"[source] dest = {src['dest']!r} is the job's output: keep the raw files in a folder "
                        "of their own (the output holds the tables)"
                    )
            if not src.get("dest"):
                problems.append(
                    '[source] dest is required for kind = "pubmed": where the synced files are kept '
                    '(e.g. "../data/pubmed" or "s3://bucket/pubmed")'
                )
        else:
            problems.append(f'[source] kind = {kind!r}: use "entrez", "files" or "pubmed"')
        if kind != "pubmed":
            for key in ("dest", "mirror", "allow_http", "concurrency"):
                if key in src:
                    problems.append(f'[source] {key}: only for kind = "pubmed"')
        elif "paths" in src:
            problems.append('[source] paths: only for kind = "files" (a pubmed job ingests what it syncs into dest)')
        if kind != "files" and "new_baseline" in src:
            problems.append(
                '[source] new_baseline: only for kind = "files" (a pubmed job knows the baseline from the mirror)'
            )
        dest = _typed(src, "dest", str, "[source]", problems)
        values = {
            key: _typed(src, key, str, "[source]", problems) for key in ("query", "email", "api_key", "eutils_url")
        }
        source.update(
            **values,
            mindate=str(src["mindate"]) if "mindate" in src else None,
            maxdate=str(src["maxdate"]) if "maxdate" in src else None,
            max=_typed(src, "max", int, "[source]", problems, positive=True),
            shard_size=_typed(src, "shard_size", int, "[source]", problems, positive=True) or 5000,
            new_baseline=_typed(src, "new_baseline", bool, "[source]", problems) or False,
            paths=[_resolve(p, base_dir) for p in paths if isinstance(p, str)] if isinstance(paths, list) else [],
            dest=_resolve(dest, base_dir) if dest else None,
            mirror=_typed(src, "mirror", str, "[source]", problems),
            allow_http=_typed(src, "allow_http", bool, "[source]", problems) or False,
            concurrency=_typed(src, "concurrency", int, "[source]", problems, positive=True) or DEFAULT_CONCURRENCY,
        )

    if "incremental" in job and not isinstance(job["incremental"], bool):
        problems.append(f"[job] incremental = {job['incremental']!r}: use true or false (no quotes)")
    res = data.get("resources", {})
    if not isinstance(res, dict):
        res = {}  # reported above
    dtype = _typed(res, "dtype", str, "[resources]", problems) or "auto"
    for key, minimum, strict in (("actors", 0, False), ("gpus_per_actor", 0, False), ("cpus_per_actor", 0, True)):
        value = res.get(key)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (value <= minimum if strict else value < minimum)
        ):
            problems.append(
                f"[resources] {key} = {value!r}: must be {'>' if strict else '>='} {minimum}"
                + (" (0 = one per GPU, or per 2 CPUs)" if key == "actors" else "")
            )
    tasks: dict[str, TaskOptions] = {}
    for name, table in task_tables.items():
        if name in TASKS and isinstance(table, dict):
            options = _task_options(name, table, base_dir, dtype if dtype in DTYPES else "auto", check_models, problems)
            if options is not None:
                tasks[name] = options

    resources = ResourceSpec(
        address=address or _typed(res, "address", str, "[resources]", problems) or None,
        actors=_typed(res, "actors", int, "[resources]", problems) or 0,
        gpus_per_actor=float(_typed(res, "gpus_per_actor", (int, float), "[resources]", problems) or 1.0),
        cpus_per_actor=float(_typed(res, "cpus_per_actor", (int, float), "[resources]", problems) or 1.0),
        dtype=dtype,
    )
    if resources.dtype not in DTYPES:
        problems.append(f"[resources] dtype = {resources.dtype!r}: use {', '.join(DTYPES)}")
    spec = JobSpec(
        name=job_name,
        output=output,
        source=SourceSpec(**source),
        tasks=tasks,
        resources=resources,
        schedule=schedule,
        incremental=job.get("incremental", True) is not False,
        path=path,
        raw=data,
    )
    return spec, problems


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The TOML document of a job file, unvalidated: the one reader of job files (:func:`load_job`,
    :func:`source_credentials`).

    :raises JobConfigError: the file is missing, unreadable or not TOML.
    """
    path = Path(path)
    if not path.exists():
        raise JobConfigError(f"job file {path} does not exist (examples are in jobs/)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise JobConfigError(f"{path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobConfigError(f"cannot read job file {path}: {exc}") from None


def load_job(path: str | Path, check_models: bool = True, address: str | None = None) -> JobSpec:
    """Read and validate a job TOML file (``address``: see :func:`parse_job`).

    :raises JobConfigError: the file is missing, not TOML, or has problems (all listed).
    """
    data = read_job_file(path)
    path = Path(path)
    return parse_job(data, path.resolve().parent, check_models=check_models, path=path, address=address)


def source_credentials(path: str | Path) -> dict[str, str]:
    """The NCBI credentials a job file gives: the ``email``, ``api_key`` and ``tool`` of its ``[source]``
    table, those that are set (``biomine fetch --job``). Only these keys are read and checked, so a
    partial job file, or a job whose models do not exist yet, serves.

    :raises JobConfigError: the file is missing or not TOML, or one of these keys is not a string.
    """
    source = read_job_file(path).get("source", {})
    if not isinstance(source, dict):
        raise JobConfigError(f"[source] must be a table in {path}")
    problems: list[str] = []
    values = {key: _typed(source, key, str, "[source]", problems) for key in ("email", "api_key", "tool")}
    if problems:
        raise problems_error(problems, path)
    return {key: value for key, value in values.items() if value}
