"""The fine-tuned task of a converted checkpoint: the one home of task names and ``biomine_task.json``.

BioGPT's released checkpoints are prompt-tuned for one task each. ``biomine convert fairseq`` writes
what inference needs into ``biomine_task.json`` beside the weights (:func:`task_spec`); the pipeline's
relation-extraction and summary tasks read it back (:func:`read_task_spec`, :class:`TaskSettings`).
Every name a task goes by lives in :data:`FINE_TUNED_TASKS`:

==============  ==========  ========================  ======================================
checkpoint      name        output grammar            microsoft/BioGPT example
==============  ==========  ========================  ======================================
``re-ddi``      ``ddi``     ``relis-interaction``     ``examples/RE-DDI``
``re-dti``      ``kd-dti``  ``relis-interaction``     ``examples/RE-DTI``
``re-bc5cdr``   ``bc5cdr``  ``relis-relation``        ``examples/RE-BC5CDR``
``qa-pubmedqa`` ``pubmedqa`` ``qa-answer``            ``examples/QA-PubMedQA``
``dc-hoc``      ``hoc``     ``hoc-type``              ``examples/DC-HoC``
==============  ==========  ========================  ======================================

*checkpoint* is the ``task`` key of ``biomine_task.json`` and ``convert fairseq --task``; *name* is
what job files (``[tasks.re] task``), ``biomine eval re --task`` and output rows say. A pre-trained
language model has task ``lm``. The file layout is documented in docs/convert.md.

:raises TaskSettingsError: a task file that is missing, invalid, or for another task.
:raises CheckpointError: from :func:`read_task_spec` (no file, not JSON, another version).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import CheckpointError, TaskSettingsError

TASK_FILE = "biomine_task.json"
TASK_FILE_VERSION = 1
#: The token a too-long source is cut to (language_model_prompt_dataset.py).
TRUNCATION_MARKER = "..."


@dataclass(frozen=True)
class FineTunedTask:
    """One released fine-tuning task and every name it goes by (see the module table)."""

    checkpoint: str  # biomine_task.json "task", `convert fairseq --task`
    name: str  # job files, `eval re --task`, output rows
    family: str  # "re" (relation extraction) | "qa" | "dc" (document classification)
    #: How the task shows in a checkpoint's data path or file name (for :func:`guess_task`).
    pattern: str
    #: Target sentence, separator between sentences (None: one sentence), output grammar name
    #: (examples/<task>/postprocess.py).
    target: str
    separator: str | None
    grammar: str


FINE_TUNED_TASKS: tuple[FineTunedTask, ...] = (
    FineTunedTask(
        "re-bc5cdr",
        "bc5cdr",
        "re",
        r"bc5cdr",
        "the relation between {chemical} and {disease} exists",
        "; ",
        "relis-relation",
    ),
    FineTunedTask(
        "re-ddi",
        "ddi",
        "re",
        r"(?<![a-z])ddi(?![a-z])",
        "the interaction between {drug} and {target} is {interaction}",
        "; ",
        "relis-interaction",
    ),
    FineTunedTask(
        "re-dti",
        "kd-dti",
        "re",
        r"(?<![a-z])(?:kd-?)?dti(?![a-z])",
        "the interaction between {drug} and {target} is {interaction}",
        "; ",
        "relis-interaction",
    ),
    FineTunedTask(
        "qa-pubmedqa",
        "pubmedqa",
        "qa",
        r"pubmedqa|(?<![a-z])qa(?![a-z])",
        "the answer to the question given the context is {answer}",
        None,
        "qa-answer",
    ),
    FineTunedTask(
        "dc-hoc", "hoc", "dc", r"(?<![a-z])hoc(?![a-z])", "the type of this document is {labels}", None, "hoc-type"
    ),
)
BY_CHECKPOINT: dict[str, FineTunedTask] = {t.checkpoint: t for t in FINE_TUNED_TASKS}
BY_NAME: dict[str, FineTunedTask] = {t.name: t for t in FINE_TUNED_TASKS}
#: What ``convert fairseq --task`` accepts: the fine-tuned tasks and the pre-trained ``lm``.
CHECKPOINT_TASKS: tuple[str, ...] = (*BY_CHECKPOINT, "lm")
#: Task names (job files, eval): relation extraction, then all.
RE_TASKS: tuple[str, ...] = tuple(t.name for t in FINE_TUNED_TASKS if t.family == "re")
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in FINE_TUNED_TASKS)

_TITLE_JOIN = (
    "title + ' ' + abstract when the title ends in a non-word character (regex \\W$), else title + '. ' + abstract"
)
# Source text of each task, as examples/<task>/rebuild_data.py builds it before Moses + BPE.
SOURCE_FORMATS: dict[str, dict[str, Any]] = {
    "re-ddi": {
        "template": "{abstract}",
        "lowercase": True,
        "steps": ["abstract: strip, newlines -> spaces", "lowercase"],
    },
    "re-dti": {
        "template": "{title}{join}{abstract}",
        "lowercase": True,
        "title_join": _TITLE_JOIN,
        "steps": ["join title and abstract", "lowercase"],
    },
    "re-bc5cdr": {
        "template": "{title}{join}{abstract}",
        "lowercase": True,
        "title_join": _TITLE_JOIN,
        "steps": ["join title and abstract", "lowercase"],
    },
    # examples/QA-PubMedQA/ReasoningRequired (the released QA models; data dir pqal_qcl_ansis-bin)
    "qa-pubmedqa": {
        "template": "question: {question} context: {context} ",
        "lowercase": False,
        "steps": [
            "question: strip",
            "context: CONTEXTS stripped and joined by ' ', newlines -> spaces, whitespace runs collapsed, stripped",
        ],
    },
    # examples/QA-PubMedQA/ReasoningFree (data dir pqal_qcal_ansis-bin): the long answer is in the source
    "qa-pubmedqa-reasoning-free": {
        "template": "question: {question} context: {context} answer: {long_answer}",
        "lowercase": False,
        "steps": ["as qa-pubmedqa, then ' answer: ' + LONG_ANSWER stripped"],
    },
    # the first QA recipe (data dir PubMedQA/ansis-bin, from raw/*.tsv lines already in that form)
    "qa-pubmedqa-legacy": {
        "template": "question: {question} context: {context} answer: {long_answer}",
        "lowercase": True,
        "append_period": True,
        "steps": ["strip", "lowercase", "append '.' unless it ends with '.'"],
    },
    "dc-hoc": {
        "template": "{text}",
        "lowercase": False,
        "append_period": True,
        "steps": ["strip", "append '.' unless it ends with '.'"],
    },
}
# Target text and the parser name the post-processing uses (examples/<task>/postprocess.py).


def guess_task(strings: list[str]) -> str | None:
    """The checkpoint task named in the first string (data path, then file path) that names exactly one."""
    for s in strings:
        hits = [t.checkpoint for t in FINE_TUNED_TASKS if re.search(t.pattern, s.lower())]
        if len(hits) == 1:
            return hits[0]
    return None


def task_spec(
    task: str,
    *,
    learned: list[str],
    prompt_ids: list[int],
    sep_token_id: int | None,
    max_source: int | None,
    max_target: int,
    truncation_id: int | None,
    pad_id: int,
    eos_id: int,
    data_path: str = "",
) -> dict[str, Any]:
    """The content of biomine_task.json (documented in docs/convert.md)."""
    spec: dict[str, Any] = {
        "biomine_task_version": TASK_FILE_VERSION,
        "task": task,
        "learned_prompt": len(learned),
        "prompt_tokens": learned,
        "prompt_token_ids": prompt_ids,
        "max_target_positions": max_target,
    }
    if task == "lm":
        # README / fairseq hub generation of the pre-trained model: beam 5, min_len 100, max_len_b 1024.
        spec["decoding"] = {
            "strategy": "beam",
            "num_beams": 5,
            "length_penalty": 1.0,
            "min_len": 100,
            "max_len_b": 1024,
            "max_len": min(1024, max_target - 1),
            "ban_token_ids": [pad_id],
            "eos_token_id": eos_id,
        }
        spec["output_grammar"] = None
        return spec
    source_key = task
    if task == "qa-pubmedqa":
        data = data_path.lower()
        if "qcal" in data:
            source_key = "qa-pubmedqa-reasoning-free"
        elif "qcl" not in data and re.search(r"pubmedqa/ansis", data):
            source_key = "qa-pubmedqa-legacy"
    fine_tuned = BY_CHECKPOINT[task]
    template, separator, grammar = fine_tuned.target, fine_tuned.separator, fine_tuned.grammar
    spec.update(
        {
            # layout of language_model_prompt_dataset.collate (prefix False): </s> source learned1..N target
            "prompt_layout": "prompt_source_sep" if sep_token_id is not None else "source_prompt",
            "sep_token_id": sep_token_id,
            "max_source_positions": max_source,
            "truncation_marker": TRUNCATION_MARKER,
            "truncation_marker_id": truncation_id,
            "truncation": "a source longer than max_source_positions keeps its first max_source_positions - 1 ids "
            "followed by the truncation marker",
            "source_format": {"name": source_key, **SOURCE_FORMATS[source_key]},
            "target_format": {"template": template, "separator": separator, "final": "."},
            # inference.py: sample(beam=1) -> greedy; <pad> never chosen; min(max_len_b, positions - 1) steps
            # after the leading </s>, prompt included; at the last step only </s> is allowed.
            "decoding": {
                "strategy": "greedy",
                "num_beams": 1,
                "do_sample": False,
                "min_len": 1,
                "max_len_b": 1024,
                "max_len": min(1024, max_target - 1),
                "ban_token_ids": [pad_id],
                "eos_token_id": eos_id,
            },
            "output_grammar": grammar,
        }
    )
    return spec


def write_task_spec(spec: Mapping[str, Any], model_dir: str | Path) -> Path:
    """Write ``spec`` (from :func:`task_spec`) as ``model_dir/biomine_task.json``; returns its path."""
    path = Path(model_dir) / TASK_FILE
    path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return path


def read_task_spec(path: str | Path) -> dict[str, Any]:
    """``biomine_task.json`` of a converted model directory."""
    file = Path(path) / TASK_FILE if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise CheckpointError(
            f"no {TASK_FILE} in {path}: convert the fairseq checkpoint with `biomine convert fairseq SRC DST`"
        )
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc}); convert the checkpoint again") from None
    if spec.get("biomine_task_version") != TASK_FILE_VERSION:
        raise CheckpointError(
            f"{file} has version {spec.get('biomine_task_version')}, this biomine reads "
            f"{TASK_FILE_VERSION}; convert the checkpoint again"
        )
    return spec


@dataclass(frozen=True)
class TaskSettings:
    """What prompt-model inference needs from a converted checkpoint's ``biomine_task.json``."""

    task: str
    learned_prompt: int
    prompt_token_ids: tuple[int, ...]
    max_source_positions: int
    max_target_positions: int
    truncation_marker_id: int
    lowercase_source: bool
    #: ``source_format.name``: the task name, or a variant such as ``qa-pubmedqa-reasoning-free``.
    source_format: str
    #: Set only for the ``prompt_source_sep`` layout (fairseq ``--prefix``, unused by released models).
    sep_token_id: int | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str = TASK_FILE) -> "TaskSettings":
        """Validate the parsed ``biomine_task.json`` (docs/convert.md); ``where`` names it in messages.

        :raises TaskSettingsError: a pre-trained LM or unknown task, a missing or mistyped key, or
            values that cannot describe a prompt model (prompt ids that are not N integers, a source
            limit that leaves no room for the prompt).
        """
        kind = spec.get("task")
        if kind == "lm":
            raise TaskSettingsError(f"{where} describes a pre-trained language model, not a fine-tuned task checkpoint")
        if kind not in BY_CHECKPOINT:
            raise TaskSettingsError(f"{where}: task {kind!r} is not one of {sorted(BY_CHECKPOINT)}")
        task = BY_CHECKPOINT[kind].name

        def integer(key: str, minimum: int) -> int:
            value = spec.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise TaskSettingsError(
                    f"{where}: {key} must be an integer >= {minimum}, got {value!r}; convert the checkpoint again"
                )
            return value

        n = integer("learned_prompt", 1)
        ids = spec.get("prompt_token_ids")
        if (
            not isinstance(ids, list)
            or len(ids) != n
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        ):
            raise TaskSettingsError(f"{where}: prompt_token_ids must be {n} non-negative integers, got {ids!r}")
        source, target = integer("max_source_positions", 1), integer("max_target_positions", 2)
        if source + n + 1 > target:
            raise TaskSettingsError(
                f"{where}: max_source_positions {source} + {n} prompt tokens + </s> exceed max_target_positions {target}"
            )
        fmt = spec.get("source_format")
        if not isinstance(fmt, Mapping) or not isinstance(fmt.get("lowercase"), bool) or not fmt.get("name"):
            raise TaskSettingsError(f"{where}: source_format needs a name and a true/false lowercase")
        if spec.get("output_grammar") != BY_CHECKPOINT[kind].grammar:
            raise TaskSettingsError(
                f"{where}: output_grammar {spec.get('output_grammar')!r} is not {BY_CHECKPOINT[kind].grammar!r}, "
                f"the grammar of {kind}"
            )
        layout = spec.get("prompt_layout", "source_prompt")
        if layout not in ("source_prompt", "prompt_source_sep"):
            raise TaskSettingsError(f"{where}: unknown prompt_layout {layout!r}")
        return cls(
            task=task,
            learned_prompt=n,
            prompt_token_ids=tuple(ids),
            max_source_positions=source,
            max_target_positions=target,
            truncation_marker_id=integer("truncation_marker_id", 0),
            lowercase_source=fmt["lowercase"],
            source_format=fmt["name"],
            sep_token_id=integer("sep_token_id", 0) if layout == "prompt_source_sep" else None,
        )


def load_task_settings(model_dir: str | Path, task: str | None = None) -> TaskSettings:
    """Read a converted model directory's ``biomine_task.json``; with ``task``, insist it is for it.

    :raises TaskSettingsError: the directory holds no fine-tuned task checkpoint (a base BioGPT or an
        NER model), the file is unreadable or invalid, or the checkpoint was fine-tuned for another task.
    """
    wanted = f"a fine-tuned {task} checkpoint" if task else "a fine-tuned task checkpoint"
    try:
        spec = read_task_spec(model_dir)
    except CheckpointError as exc:
        raise TaskSettingsError(
            f"{model_dir} is not {wanted} ({exc}); a base BioGPT or NER model cannot generate task outputs"
        ) from exc
    settings = TaskSettings.from_spec(spec, str(Path(model_dir) / TASK_FILE))
    if task is not None and settings.task != task:
        raise TaskSettingsError(
            f"{model_dir} is a {settings.task} checkpoint, not {task}: ask for task {settings.task}, or give a "
            f"{task} model",
            setting=("task", "model"),
        )
    return settings
