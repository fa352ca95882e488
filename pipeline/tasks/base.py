"""The task contract the Ray stages rely on (:class:`Task`), and the helpers every model task shares.

A task (``pipeline/tasks/ner.py``, ``re.py``, ``summarize.py``, ``qa.py``) is a subclass of :class:`Task`; it is
what :func:`pipeline.run.stages.run_task_stage` maps over document shards:

==================  ==============================================================================
``name``            ``"ner"`` | ``"re"`` | ``"summarize"`` | ``"qa"`` | ``"classify"``
                    (the job file's ``[tasks.NAME]``)
``dataset``         the output dataset under ``OUT/`` (:data:`pipeline.tasks.registry.DATASETS`)
``schema``          the output rows' Arrow schema (from ``schemas/``)
``Options``         its typed settings (:mod:`pipeline.tasks.options`)
``cast_batch``      the schema module's checked cast of rows to ``schema``, applied before writing
``sort_keys``       row order within one document, after ``pmid`` (outputs never depend on batching)
``requires``        one line naming the checkpoint kind it needs (shown in errors and ``--help``)
``check_model``     ``classmethod(options)``: cheap (reads config/task files, no weights); raises
                    :class:`WrongModelError` naming the directory and what to pass
``prepared_schema`` the columns ``prepare`` adds: the declared shape of a prepared batch
``prepare``         ``classmethod(batch, options) -> pa.Table``: CPU-only, pure; the documents
                    (:data:`DOCUMENT_SCHEMA`) with the model inputs of each (token ids...) as the
                    columns of ``prepared_schema``. Runs in stateless Ray tasks, so it must not hold
                    a model; tokenizers are cached per process (:func:`tokenizer_for`)
``__init__``        ``(options)``: loads the model ONCE per actor (Ray's batch-inference pattern)
``__call__``        ``(prepared) -> list[list[row dict]]``: the output rows of each document of a
                    prepared batch (what ``prepare`` returned, or a slice of it), in batch order; a
                    document with no output gets ``[]``
==================  ==============================================================================

**One data path**: documents (an Arrow table, or a dict of columns) -> ``prepare`` -> a prepared Arrow
table of :data:`DOCUMENT_SCHEMA` plus ``prepared_schema`` (what travels from the prepare tasks to
the model actors, as Arrow IPC: a reader can see its shape) -> ``__call__`` -> row dicts per
document -> ``cast_batch`` -> the output table. The row dicts stay: a document gives any number of
rows, built field by field from spans and parses, and cast once per file (measured by
``benchmarks/bench_scale.py``: 0.09 ms per document, under 4% of the CPU work around the model).
``title``/``abstract`` are null where an article has none. All character offsets index
:func:`article_text`.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Sequence, TypeVar

import pyarrow as pa

from biogpt import hub
from biogpt.errors import CheckpointError, ConfigError, TaskSettingsError
from biogpt.task_spec import TaskSettings, load_task_settings
from pipeline.errors import WrongModelError

from .options import TaskOptions

O = TypeVar("O", bound=TaskOptions)

#: The columns of the documents every ``prepare`` reads (a subset of the article schema).
DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("pmid", pa.int64(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("abstract", pa.string()),
    ]
)
DOCUMENT_COLUMNS = tuple(DOCUMENT_SCHEMA.names)
#: A list of token ids; a character span ``[start, end]``.
IDS = pa.list_(pa.int32())
SPAN = pa.list_(pa.int32(), 2)


def documents(batch: Any) -> pa.Table:
    """``batch`` (an Arrow table, or a dict of columns: numpy arrays or lists) as a table of
    :data:`DOCUMENT_SCHEMA` (a missing ``version`` is 1, a missing title or abstract null), followed by
    the batch's other columns as they are (a caller's keys travel with the prepared batch).

    :raises TypeError: a batch without ``pmid``.
    """
    if isinstance(batch, pa.Table):
        table = batch
        columns = {c: table.column(c) for c in table.column_names}
    else:
        columns = dict(batch)
    if "pmid" not in columns:
        raise TypeError("a batch of documents needs a pmid column (and version, title, abstract)")
    n = len(columns["pmid"])
    arrays = []
    for field in DOCUMENT_SCHEMA:
        values = columns.get(field.name)
        if values is None:
            values = [1] * n if field.name == "version" else [None] * n
        elif not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = [None if v is None or (isinstance(v, float) and v != v) else v for v in as_list(values)]
        arrays.append(pa.array(values, field.type) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values)
    table = pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, DOCUMENT_SCHEMA)], schema=DOCUMENT_SCHEMA)
    for name, values in columns.items():
        if name not in DOCUMENT_COLUMNS:
            extra = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(as_list(values))
            table = table.append_column(name, extra)
    return table


def prepared(docs: pa.Table, schema: pa.Schema, columns: dict[str, list[Any]]) -> pa.Table:
    """``docs`` (:func:`documents`) with the prepared ``columns`` of ``schema`` appended, checked."""
    table = docs
    for field in schema:
        table = table.append_column(field, pa.array(columns[field.name], field.type))
    return table


def check_prepared(task: type[Task[Any]], batch: Any) -> pa.Table:
    """``batch`` when it is a prepared batch of ``task`` (an Arrow table with its declared columns).

    :raises TypeError: anything else (a task's ``__call__`` takes only what ``prepare`` returns).
    """
    missing = (
        [f.name for f in task.prepared_schema if f.name not in batch.column_names]
        if isinstance(batch, pa.Table)
        else ["(not an Arrow table)"]
    )
    if missing:
        raise TypeError(
            f"{task.name}: __call__ takes a prepared batch (the table {task.__name__}.prepare returns); "
            f"missing {', '.join(missing)}"
        )
    return batch


class Task(ABC, Generic[O]):
    """A model task over batches of documents (see the module table), generic over its options class
    (``class NerTask(Task[NerOptions])``)."""

    name: ClassVar[str]
    dataset: ClassVar[str]
    schema: ClassVar[pa.Schema]
    #: The columns ``prepare`` adds to the documents (the declared shape of a prepared batch).
    prepared_schema: ClassVar[pa.Schema]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    sort_keys: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[str]

    @staticmethod
    @abstractmethod
    def cast_batch(rows: list[dict[str, Any]]) -> pa.Table:
        """Rows as a table of ``schema``, checked (the schema module's ``cast_batch``)."""

    #: The options this instance was built with.
    options: O

    @classmethod
    @abstractmethod
    def check_model(cls, options: O) -> Any:
        """Refuse a checkpoint of the wrong kind, cheaply.

        :raises WrongModelError: naming the directory and what to pass instead.
        """

    @classmethod
    @abstractmethod
    def prepare(cls, batch: Any, options: O) -> pa.Table:
        """CPU: ``batch`` plus the model inputs of each document."""

    @abstractmethod
    def __init__(self, options: O):
        """Load the model (once per actor)."""

    @abstractmethod
    def __call__(self, batch: pa.Table) -> list[list[dict[str, Any]]]:
        """The output rows of each document of a prepared ``batch``, in batch order."""


def article_text(title: Any, abstract: Any) -> str:
    """``title + " " + abstract``: the text that entity and evidence offsets index (schemas/entities.py)."""
    return f"{text_of(title)} {text_of(abstract)}"


def text_of(value: Any) -> str:
    """A batch cell as text: ``""`` for a missing title or abstract (None, or NaN from pandas/numpy)."""
    if value is None:
        return ""
    if isinstance(value, float):  # NaN from pandas/numpy for a missing string
        return ""
    return str(value)


def model_id(model_dir: str | Path) -> str:
    """The id written into every output row: the model directory's name (a Hub model: its repo id)."""
    return hub.model_name(Path(model_dir).resolve())


def read_config(model_dir: str | Path, task: str) -> dict[str, Any]:
    """``config.json`` of ``model_dir`` as a dict.

    :raises WrongModelError: no directory or no readable config.json (names ``task`` and the path).
    """
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WrongModelError(
            f"{task}: no config.json in {model_dir}: pass a model directory "
            "(train one with `biomine train ner` or convert one with `biomine convert fairseq`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise WrongModelError(f"{task}: cannot read {path}: {exc}") from None


def architecture(config: dict[str, Any]) -> str | None:
    archs = config.get("architectures") or []
    return archs[0] if archs else None


def prompt_settings(
    model_dir: str | Path,
    what: str,
    needs: str,
    task: str | None = None,
    error: type[WrongModelError] = WrongModelError,
    *,
    family: Sequence[str] | None = None,
    kind: str = "",
) -> TaskSettings:
    """The :class:`~biogpt.task_spec.TaskSettings` of a fine-tuned prompt checkpoint (of ``task``, or
    any when None; of a task in ``family`` when given), after the checks every prompt task makes: a
    readable config.json, a causal LM (``architectures`` ``BioGptForCausalLM`` or none), a valid
    ``biomine_task.json``, prompt ids inside the vocabulary, and the checkpoint's task one of
    ``family`` (``kind`` names the family in the message: ``a PubMedQA one``). Reads no weights.
    ``what`` starts each message (``re``, ``qa``, ``eval qa``), ``needs`` ends those that a
    different checkpoint fixes (what to pass instead; not one that names the ``task`` asked for).

    :raises WrongModelError: as ``error`` (a subclass), naming ``model_dir`` and the fix.
    """
    try:
        config = read_config(model_dir, what)
    except WrongModelError as exc:
        raise error(str(exc), setting=exc.setting or "model") from None
    arch = architecture(config)
    if arch not in (None, "BioGptForCausalLM"):
        raise error(f"{what}: {model_dir} is a {arch} checkpoint; {needs}", setting="model")
    try:
        settings = load_task_settings(model_dir, task)
    except TaskSettingsError as exc:
        # Asked for a task, the message names the fix (ask for the checkpoint's task, or give one of
        # that task); asked for any, it cannot, so ``needs`` says what to give.
        raise error(f"{what}: {exc}" + ("" if task else f"; {needs}"), setting=exc.setting or "model") from None
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and max(settings.prompt_token_ids) >= vocab:
        raise error(
            f"{what}: {model_dir}: prompt token ids {list(settings.prompt_token_ids)} exceed vocab_size {vocab} "
            "of config.json; convert the checkpoint again",
            setting="model",
        )
    if family is not None and settings.task not in family:
        raise error(f"{what}: {model_dir} is a {settings.task} checkpoint, not {kind}; {needs}", setting="model")
    return settings


@functools.lru_cache(maxsize=8)
def tokenizer_for(model_dir: str):
    """The model directory's tokenizer, loaded once per process (prepare runs in many Ray tasks)."""
    from biogpt.tokenizer import BioGptTokenizer

    return BioGptTokenizer.from_pretrained(model_dir)


def resolve_device(device: str | None = None):
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | None, device) -> "Any":
    """``auto`` = bfloat16 on CUDA, float32 elsewhere (CPU bf16 matmuls are slow and inexact)."""
    import torch

    from biogpt.weights import resolve_dtype as _resolve

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _resolve(dtype)


def load_model(cls, model_dir: str, dtype: str | None, device: str | None, task: str):
    """``cls.from_pretrained`` on the resolved device/dtype, in eval mode.

    :raises WrongModelError: the checkpoint cannot be loaded as ``cls`` (names the task and the fix).
    """
    dev = resolve_device(device)
    try:
        model = cls.from_pretrained(model_dir, dtype=resolve_dtype(dtype, dev), device=dev)
    except CheckpointError as exc:
        raise WrongModelError(f"{task}: {exc}") from None
    return model.eval()


def pad(rows: Sequence[Sequence[int]], value: int):
    """``rows`` right-padded with ``value`` to the longest, as one long tensor (on the CPU)."""
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def positive_int(value: Any, what: str) -> int:
    """``value`` when it is an int >= 1 (not a bool).

    :raises ConfigError: otherwise, naming ``what`` (e.g. ``"re: max_new_tokens"``).
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def doc_keys(batch: dict[str, Any]) -> tuple[list[int], list[int]]:
    """``(pmids, versions)`` of a batch as Python ints, in batch order."""
    return [int(p) for p in as_list(batch["pmid"])], [int(v) for v in as_list(batch["version"])]


def as_list(column: Any) -> list:
    """A batch column (numpy array, list, pyarrow array) as a Python list."""
    if hasattr(column, "tolist"):
        return column.tolist()
    return list(column)


def decoding_record(
    *,
    strategy: str = "greedy",
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    length_penalty: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    no_repeat_ngram_size: int | None = None,
) -> dict[str, Any]:
    """The ``decoding`` struct of generated rows (schemas/_rows.py ``DECODING``)."""
    return {
        "strategy": strategy,
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "length_penalty": length_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
    }
