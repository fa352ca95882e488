"""Typed settings of each task: what a job's ``[tasks.NAME]`` table (and ``[resources] dtype``) gives it.

One frozen dataclass per task; the job file, the runner, the Ray stages and the tasks themselves all
pass these objects, never loose dicts. A field whose metadata says ``job`` is a key of the job's
``[tasks.NAME]`` table (``required`` when the table must set it); the others are for the Python API
and tests (``device``, ``stride``, ``cuda_graph``). This module imports nothing heavy, so job
validation and ``biomine --help`` do not load torch.

- :meth:`TaskOptions.problems` lists what is wrong with the values (messages without a location;
  the job parser prefixes the TOML table), :meth:`TaskOptions.check` raises them.
- :meth:`TaskOptions.settings` is what the outputs depend on (every field but where it runs and the
  batch size): it is part of each output's fingerprint, so changing it recomputes that task's outputs.

:raises ConfigError: from :meth:`TaskOptions.check`, listing every problem.
"""

from __future__ import annotations

import dataclasses
import os
import string
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from biogpt import hub
from biogpt.errors import ConfigError
from biogpt.task_spec import RE_TASKS

DTYPES = ("auto", "float32", "bfloat16", "float16")
_TEMPLATE_FIELDS = ("title", "abstract")


def job_key(default: Any, *, required: bool = False) -> Any:
    """A field that the job's ``[tasks.NAME]`` table may set (``required``: must set)."""
    return field(default=default, metadata={"job": True, "required": required})


def template_problem(template: Any) -> str | None:
    """Why ``template`` is not a prompt template over ``{title}``/``{abstract}`` (None: it is), in
    the job file's terms: the field it misspelled, never a Python exception's repr."""
    if not isinstance(template, str):
        return f"prompt must be a string template, got {template!r}"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:  # unbalanced braces: str.format's own words say where
        return f"prompt {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
    bad = [f for f in fields if f not in _TEMPLATE_FIELDS]
    if bad:
        used = ", ".join("{" + f + "}" for f in dict.fromkeys(bad))
        return f"prompt {template!r} uses {used}; only {{title}} and {{abstract}} may be used"
    try:
        template.format(title="", abstract="")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:  # a format spec, e.g. {title:d}
        return f"prompt {template!r}: {exc}"
    return None


@dataclass(frozen=True)
class FileInput:
    """A file (or model directory) that a task's outputs depend on: its options field, where it is,
    and the field that holds its checksum once the runner has computed it."""

    field: str
    uri: str
    #: ``model``: a model directory (or name); ``file``: one file (a concept dictionary).
    kind: str
    checksum_field: str


def _positive(value: Any, key: str) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [f"{key} must be a positive integer, got {value!r}"]
    return []


@dataclass(frozen=True)
class TaskOptions:
    """Settings every task has. ``model`` is the checkpoint directory (a path; stored as a string)."""

    #: The task these options are for (``ner``, ``re``, ``summarize``), for messages.
    task_name: ClassVar[str] = "task"

    model: str = job_key("", required=True)
    batch_size: int = job_key(16)
    #: ``auto`` = bfloat16 on CUDA, float32 elsewhere; from the job's ``[resources] dtype``.
    dtype: str = "auto"
    #: ``None``: CUDA when available, else CPU.
    device: str | None = None
    #: The model's checksum (:func:`pipeline.store.models.model_checksum`), set by the runner: outputs
    #: depend on the model's content, not on where it is stored.
    model_sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))

    @classmethod
    def job_keys(cls) -> dict[str, bool]:
        """``{key: required}`` of the job file's ``[tasks.NAME]`` table."""
        return {f.name: f.metadata["required"] for f in dataclasses.fields(cls) if f.metadata.get("job")}

    def inputs(self) -> list[FileInput]:
        """The files the outputs depend on: the runner pins their checksums into these options, and
        every node fetches its own copy of them (:func:`pipeline.run.stages.localise`)."""
        return [FileInput("model", self.model, "model", "model_sha256")]

    def problems(self) -> list[str]:
        out = []
        if not self.model or not isinstance(self.model, str):
            out.append(f"model is required (a model directory), got {self.model!r}")
        out += _positive(self.batch_size, "batch_size")
        if self.dtype not in DTYPES:
            out.append(f"dtype = {self.dtype!r}: use {', '.join(DTYPES)}")
        return out

    def check(self) -> Self:
        """``self`` when :meth:`problems` finds none.

        :raises ConfigError: naming the task and every problem.
        """
        problems = self.problems()
        if problems:
            raise ConfigError(f"{self.task_name}: " + "; ".join(problems))
        return self

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on: every field but where it runs (``device``, ``cuda_graph``) and
        ``batch_size`` (it changes speed, and at most the last float bits of NER scores); with a
        ``model_sha256`` the model is that checksum and its name (rows carry it), not its path."""
        skip = {"device", "cuda_graph", "batch_size"}
        # a file whose checksum is pinned is its content, not its path
        skip |= {i.field for i in self.inputs() if getattr(self, i.checksum_field)}
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if self.model_sha256:  # rows carry the model's name as their model_id
            settings["model_id"] = hub.model_name(self.model)
        return settings


@dataclass(frozen=True)
class LinkedOptions(TaskOptions):
    """Settings of the tasks whose entities are linked to identifiers (NER mentions, RE heads/tails)."""

    #: A concept dictionary (``biomine vocab build``; a path or URI) that links each entity to an
    #: identifier (pipeline/tasks/linking.py); None: no linking.
    vocabulary: str | None = job_key(None)
    #: Its sha256, set by the runner: outputs depend on the dictionary's content.
    vocabulary_sha256: str | None = None

    def inputs(self) -> list[FileInput]:
        extra = [FileInput("vocabulary", self.vocabulary, "file", "vocabulary_sha256")] if self.vocabulary else []
        return super().inputs() + extra

    def problems(self) -> list[str]:
        out = super().problems()
        if self.vocabulary is not None and (not isinstance(self.vocabulary, str) or not self.vocabulary):
            out.append(f"vocabulary = {self.vocabulary!r}: name a dictionary file from `biomine vocab build`")
        return out


@dataclass(frozen=True)
class NerOptions(LinkedOptions):
    task_name: ClassVar[str] = "ner"

    #: Tokens between window starts for documents longer than the positions (None: 3/4 of a window).
    stride: int | None = None

    def problems(self) -> list[str]:
        out = super().problems()
        if self.stride is not None:
            out += _positive(self.stride, "stride")
        return out


@dataclass(frozen=True)
class RelationOptions(LinkedOptions):
    task_name: ClassVar[str] = "re"

    #: ``ddi``, ``kd-dti`` or ``bc5cdr`` (:data:`biogpt.task_spec.RE_TASKS`); None in the Python API
    #: takes the checkpoint's own task.
    task: str | None = job_key(None, required=True)
    max_new_tokens: int = job_key(256)
    #: ``None``: CUDA graphs on CUDA (the engine's default).
    cuda_graph: bool | None = None

    def problems(self) -> list[str]:
        out = super().problems()
        if self.task is not None and self.task not in RE_TASKS:
            out.append(f"task = {self.task!r}: use one of {', '.join(RE_TASKS)}")
        return out + _positive(self.max_new_tokens, "max_new_tokens")


@dataclass(frozen=True)
class SummarizeOptions(TaskOptions):
    task_name: ClassVar[str] = "summarize"

    #: A template over ``{title}`` and ``{abstract}``.
    prompt: str = job_key("{title}")
    #: Written into every row, so that summaries of several prompts can share a dataset.
    prompt_id: str = job_key("default")
    max_new_tokens: int = job_key(64)
    cuda_graph: bool | None = None

    def problems(self) -> list[str]:
        out = super().problems()
        problem = template_problem(self.prompt)
        if problem:
            out.append(problem)
        if not isinstance(self.prompt_id, str) or not self.prompt_id:
            out.append(f"prompt_id must be a non-empty string, got {self.prompt_id!r}")
        return out + _positive(self.max_new_tokens, "max_new_tokens")


#: ``[tasks.qa] question`` that asks each article's own title (how PubMedQA was built).
TITLE_QUESTION = "{title}"


@dataclass(frozen=True)
class QAOptions(TaskOptions):
    task_name: ClassVar[str] = "qa"

    #: The question asked of every article, or ``"{title}"``: the article's title when it is a question.
    question: str = job_key("", required=True)
    #: Written into every row (one job asks one question; a job with another question recomputes its
    #: answers, so compare questions across outputs by this id); ``title`` by default for ``"{title}"``.
    question_id: str | None = job_key(None)
    #: None: to the position limit, as the original ``inference.py``.
    max_new_tokens: int | None = job_key(None)
    cuda_graph: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.question_id is None and self.question == TITLE_QUESTION:
            object.__setattr__(self, "question_id", "title")

    def problems(self) -> list[str]:
        out = super().problems()
        if not isinstance(self.question, str) or not self.question.strip():
            out.append(f'question must be a question (text) or "{TITLE_QUESTION}", got {self.question!r}')
        elif self.question != TITLE_QUESTION and ("{" in self.question or "}" in self.question):
            out.append(
                f'question {self.question!r}: the only template is the whole "{TITLE_QUESTION}" '
                "(the article's title when it is a question); write any other question out"
            )
        if not isinstance(self.question_id, str) or not self.question_id:
            out.append('question_id is required with a written-out question: name it (e.g. question_id = "q1")')
        if self.max_new_tokens is not None:
            out += _positive(self.max_new_tokens, "max_new_tokens")
        return out


@dataclass(frozen=True)
class ClassifyOptions(TaskOptions):
    task_name: ClassVar[str] = "classify"

    #: New tokens per sentence for the generative HoC checkpoint (its answer sentence with every
    #: label fits in far fewer; a cap so a model that rambles costs little).
    max_new_tokens: int = job_key(64)
    cuda_graph: bool | None = None

    def problems(self) -> list[str]:
        return super().problems() + _positive(self.max_new_tokens, "max_new_tokens")
