"""The tasks a job can run: name -> output dataset, typed options and task class.

This table is the one home of task and dataset names (the job file's ``[tasks.NAME]``, the folders
under a job's output, the DuckDB views of ``biomine query``). Task classes are imported lazily, so
``biomine --help`` and job validation do not pull in torch.

:raises JobConfigError: an unknown task name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from pipeline.errors import JobConfigError

from .options import NerOptions, RelationOptions, SummarizeOptions, TaskOptions


@dataclass(frozen=True)
class TaskEntry:
    name: str
    #: The output dataset: ``OUT/<dataset>/``, one Parquet file per document shard.
    dataset: str
    options: type[TaskOptions]
    #: ``module:Class`` of the :class:`pipeline.tasks.base.Task` subclass.
    implementation: str


TASKS: dict[str, TaskEntry] = {
    e.name: e
    for e in (
        TaskEntry("ner", "entities", NerOptions, "pipeline.tasks.ner:NerTask"),
        TaskEntry("re", "relations", RelationOptions, "pipeline.tasks.re:RelationTask"),
        TaskEntry("summarize", "summaries", SummarizeOptions, "pipeline.tasks.summarize:SummarizeTask"),
    )
}
#: Task name -> output dataset name.
DATASETS: dict[str, str] = {e.name: e.dataset for e in TASKS.values()}


def entry(name: str) -> TaskEntry:
    try:
        return TASKS[name]
    except KeyError:
        raise JobConfigError(f"unknown task {name!r}: use one of {', '.join(TASKS)}") from None


def task_class(name: str) -> type:
    """The :class:`~pipeline.tasks.base.Task` subclass of task ``name`` (imports it)."""
    module, attr = entry(name).implementation.split(":")
    return getattr(import_module(module), attr)
