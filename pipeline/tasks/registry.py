"""Task name -> task class (see :mod:`pipeline.tasks.base` for the contract).

Imports are lazy so that ``biomine --help`` and job validation do not pull in torch.

:raises ConfigError: an unknown task name.
"""

from __future__ import annotations

from importlib import import_module

from biogpt.errors import ConfigError

TASKS = {
    "ner": ("pipeline.tasks.ner", "NerTask"),
    "re": ("pipeline.tasks.re", "RelationTask"),
    "summarize": ("pipeline.tasks.summarize", "SummarizeTask"),
}


def task_class(name: str) -> type:
    try:
        module, attr = TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}: use one of {', '.join(TASKS)}") from None
    return getattr(import_module(module), attr)
