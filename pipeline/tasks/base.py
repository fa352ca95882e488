"""The task contract the Ray stages rely on (:class:`Task`), and the helpers every model task shares.

A task (``pipeline/tasks/ner.py``, ``re.py``, ``summarize.py``) is a subclass of :class:`Task`; it is
what :func:`pipeline.run.stages.run_task_stage` maps over document shards:

==================  ==============================================================================
``name``            ``"ner"`` | ``"re"`` | ``"summarize"`` (the job file's ``[tasks.NAME]``)
``dataset``         the output dataset under ``OUT/`` (:data:`pipeline.tasks.registry.DATASETS`)
``schema``          the output rows' Arrow schema (from ``schemas/``)
``Options``         its typed settings (:mod:`pipeline.tasks.options`)
``cast_batch``      the schema module's checked cast of rows to ``schema``, applied before writing
``sort_keys``       row order within one document, after ``pmid`` (outputs never depend on batching)
``requires``        one line naming the checkpoint kind it needs (shown in errors and ``--help``)
``check_model``     ``classmethod(options)``: cheap (reads config/task files, no weights); raises
                    :class:`WrongModelError` naming the directory and what to pass
``prepare``         ``classmethod(batch, options) -> batch``: CPU-only, pure; adds the model inputs
                    of each document (token ids...) as columns. Runs in stateless Ray tasks, so it
                    must not hold a model; tokenizers are cached per process (:func:`tokenizer_for`)
``__init__``        ``(options)``: loads the model ONCE per actor (Ray's batch-inference pattern)
``__call__``        ``(batch) -> list[list[row dict]]``: the output rows of each document, in batch
                    order; a document with no output gets ``[]``
==================  ==============================================================================

Batches arrive as dicts of numpy arrays (or lists) with at least ``pmid``, ``version``, ``title``,
``abstract`` (``None`` where an article has none). All character offsets index :func:`article_text`.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa

from biogpt import hub
from biogpt.errors import CheckpointError, ConfigError
from pipeline.errors import WrongModelError

from .options import TaskOptions

O = TypeVar("O", bound=TaskOptions)


class Task(ABC, Generic[O]):
    """A model task over batches of documents (see the module table), generic over its options class
    (``class NerTask(Task[NerOptions])``)."""

    name: ClassVar[str]
    dataset: ClassVar[str]
    schema: ClassVar[pa.Schema]
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
    def prepare(cls, batch: dict[str, Any], options: O) -> dict[str, Any]:
        """CPU: ``batch`` plus the model inputs of each document."""

    @abstractmethod
    def __init__(self, options: O):
        """Load the model (once per actor)."""

    @abstractmethod
    def __call__(self, batch: dict[str, Any]) -> list[list[dict[str, Any]]]:
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
