"""The tasks a job can run: name -> output dataset, typed options and task class.

Built from the task classes themselves: each :class:`~pipeline.tasks.base.Task` subclass declares its
``name`` (the job file's ``[tasks.NAME]``) and ``dataset`` (the folder under a job's output and the
DuckDB view of ``biomine query``), and this table collects them, refusing two tasks of one name or
one dataset. The task modules import neither torch nor this module (they load their models in
``__init__``), so ``biomine --help`` and job validation do not pull in torch.

:raises JobConfigError: an unknown task name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import JobConfigError

from .base import Task
from .classify import ClassifyTask
from .ner import NerTask
from .options import TaskOptions
from .qa import QATask
from .re import RelationTask
from .summarize import SummarizeTask


@dataclass(frozen=True)
class TaskEntry:
    name: str
    #: The output dataset: ``OUT/<dataset>/``, one Parquet file per document shard.
    dataset: str
    options: type[TaskOptions]
    #: The :class:`pipeline.tasks.base.Task` subclass.
    implementation: type[Task]


def _table(*classes: type[Task]) -> dict[str, TaskEntry]:
    entries = [TaskEntry(cls.name, cls.dataset, cls.Options, cls) for cls in classes]
    for what in ("name", "dataset"):
        values = [getattr(e, what) for e in entries]
        if len(set(values)) != len(values):
            raise AssertionError(f"two tasks share a {what}: {values}")
    return {e.name: e for e in entries}


TASKS: dict[str, TaskEntry] = _table(NerTask, RelationTask, SummarizeTask, QATask, ClassifyTask)
#: Task name -> output dataset name.
DATASETS: dict[str, str] = {e.name: e.dataset for e in TASKS.values()}


def entry(name: str) -> TaskEntry:
    try:
        return TASKS[name]
    except KeyError:
        raise JobConfigError(f"unknown task {name!r}: use one of {', '.join(TASKS)}") from None


def task_class(name: str) -> type[Task]:
    """The :class:`~pipeline.tasks.base.Task` subclass of task ``name``."""
    return entry(name).implementation
