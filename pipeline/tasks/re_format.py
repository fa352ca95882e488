"""Task inputs and targets exactly as BioGPT's fine-tuning data, and a checkpoint's task settings.

Contract:

- :func:`build_source` makes the source text of one record as the task's ``rebuild_data.py`` did
  (microsoft/BioGPT ``examples/*/rebuild_data.py``):

  ============  ==============================================================================
  task          source text
  ============  ==============================================================================
  ddi           abstract, stripped, newlines -> spaces, lower-cased (no title: the DDI corpus
                has none)
  kd-dti        title + (``" "`` if the title ends in a non-word character else ``". "``) +
  bc5cdr        abstract, lower-cased (nothing stripped)
  pubmedqa      ``question: Q context: C `` (trailing space; contexts joined by a space,
                whitespace runs collapsed; NOT lower-cased); with a long answer
                ``question: Q context: C answer: A`` (the reasoning-free variant)
  hoc           the sentence, stripped, with ``.`` appended unless it ends in one (not lower-cased)
  ============  ==============================================================================

- :func:`build_target` makes the gold target string used for fine-tuning (``relis`` template for RE,
  with the original ordering quirks), so training data and round-trip tests use the released grammar.
- Task names and a checkpoint's settings (:class:`~biogpt.task_spec.TaskSettings`, read from its
  ``biomine_task.json`` by :func:`~biogpt.task_spec.load_task_settings`) live in :mod:`biogpt.task_spec`.
- :func:`prompt_input` (ids and whether the source was cut) and :func:`prompt_input_ids` build the prompt-model input ``[2] + source ids + [V0 .. V0+N-1]``, the
  source cut to ``S-1`` ids plus the ``...`` id when longer than ``S`` (as
  ``src/language_model_prompt_dataset.py`` truncates), given any tokenizer with
  ``encode(text, add_special_tokens=False)``.
- :func:`prompt_tokens` names a checkpoint's learned prompt tokens (``learned1 .. learnedN``) and
  :func:`echo_prompt` puts them in front of a generation: the original ``inference.py`` wrote the whole
  hypothesis (source, prompt tokens, generation) and every ``postprocess.py`` cut it after the last
  prompt token, so ``echo_prompt(...)`` is what those scripts saw, up to the source in front (which
  cannot change what they extract).

:raises TaskSettingsError: missing/invalid settings, or a checkpoint of the wrong kind or task.
:raises RecordError: a record lacks a field its task's format needs.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol, Sequence

from biogpt.task_spec import TASK_NAMES, TaskSettings
from pipeline.errors import RecordError, TaskSettingsError

#: ``</s>``: fairseq starts every sequence with it (never ``<s>``).
EOS_ID = 2


class TokenizerLike(Protocol):
    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...


# --- source and target text ----------------------------------------------------------------------


def _field(record: Mapping[str, Any], key: str, task: str, record_id: str | None) -> Any:
    value = record.get(key)
    if value is None:
        raise RecordError(
            f"record {record_id or '(unnamed)'} has no {key!r}, which the {task} input format needs; "
            f"add it (see docs/tasks.md)"
        )
    return value


def build_source(
    task: str,
    record: Mapping[str, Any],
    *,
    with_long_answer: bool = False,
    record_id: str | None = None,
) -> str:
    """The source text of ``record`` for ``task`` (module table).

    ``record`` keys: ``abstract`` (ddi); ``title``, ``abstract`` (kd-dti, bc5cdr); ``QUESTION``,
    ``CONTEXTS`` and, with ``with_long_answer``, ``LONG_ANSWER`` (pubmedqa, the PubMedQA json layout);
    ``sentence`` (hoc). ``record_id`` names the record in errors.

    :raises RecordError: a needed field is missing (or a HoC sentence is empty).
    :raises TaskSettingsError: unknown task.
    """
    if task == "ddi":
        # examples/RE-DDI/rebuild_data.py: strip, then newlines -> spaces, then lower().
        return _field(record, "abstract", task, record_id).strip().replace("\n", " ").lower()
    if task in ("kd-dti", "bc5cdr"):
        # examples/RE-DTI and RE-BC5CDR/rebuild_data.py: re.search(r"\W$", title) picks the joiner; an
        # empty title gets ". " too. Nothing is stripped and newlines stay.
        title = _field(record, "title", task, record_id)
        abstract = _field(record, "abstract", task, record_id)
        return (title + (" " if re.search(r"\W$", title) else ". ") + abstract).lower()
    if task == "pubmedqa":
        # examples/QA-PubMedQA/ReasoningRequired/rebuild_data.py (the current script): contexts
        # stripped and joined by a space, newlines then whitespace runs collapsed; a trailing space.
        question = _field(record, "QUESTION", task, record_id)
        contexts = _field(record, "CONTEXTS", task, record_id)
        context = re.sub(r"\s+", " ", re.sub(r"\n", " ", " ".join(c.strip() for c in contexts)))
        if with_long_answer:
            answer = _field(record, "LONG_ANSWER", task, record_id)
            return f"question: {question.strip()} context: {context.strip()} answer: {answer.strip()}"
        return f"question: {question.strip()} context: {context.strip()} "
    if task == "hoc":
        # examples/DC-HoC/rebuild_data.py: newlines removed, stripped, "." appended if missing.
        sentence = _field(record, "sentence", task, record_id).replace("\n", "").strip()
        if not sentence:
            raise RecordError(f"HoC record {record_id or '(unnamed)'} has an empty sentence; drop it")
        return sentence if sentence.endswith(".") else sentence + "."
    raise TaskSettingsError(f"unknown task {task!r}; use one of {', '.join(TASK_NAMES)}")


def _relis(triples: Sequence[Mapping[str, str]]) -> str:
    return (
        "; ".join(
            f"the interaction between {t['drug'].lower()} and {t['target'].lower()} is {t['interaction'].lower()}"
            for t in triples
        )
        + "."
    )


def unify_names(name2id: Mapping[str, str]) -> dict[str, str]:
    """MeSH id -> the LONGEST name with that id (first seen wins a tie), as BC5CDR's ``unify_ent2id``."""
    id2name: dict[str, str] = {}
    for name, mesh in name2id.items():
        if mesh not in id2name or len(name) > len(id2name[mesh]):
            id2name[mesh] = name
    return id2name


def build_target(task: str, record: Mapping[str, Any], *, record_id: str | None = None) -> str:
    """The gold target string of ``record`` (the text the fine-tuned model learned to generate).

    - ddi / kd-dti: ``the interaction between {drug} and {target} is {interaction}`` per triple,
      lower-cased, joined by ``"; "``, final ``.``. Triples are stably sorted by
      ``source.find(drug)`` where the source is LOWER-cased but the drug keeps its case, so a drug
      with capitals gets -1 and sorts first (the quirk of ``sort_triples`` in rebuild_data.py).
    - bc5cdr: ``the relation between {chemical} and {disease} exists`` per relation in FILE order,
      names = the longest name of each MeSH id in the record's ``chemical2id``/``disease2id``.
    - pubmedqa: ``the answer to the question given the context is {final_decision}.``
    - hoc: ``the type of this document is {labels}.`` (``labels`` as in the file, ``a|b``).

    :raises RecordError: no triples/relations (the original drops such records), or a relation whose
        MeSH id has no name in the record.
    """
    if task in ("ddi", "kd-dti"):
        triples = record.get("triples")
        if not triples:
            raise RecordError(f"record {record_id or '(unnamed)'} has no triples; the original drops such records")
        source = build_source(task, record, record_id=record_id)
        return _relis(sorted(triples, key=lambda t: source.find(t["drug"])))
    if task == "bc5cdr":
        relations = record.get("relations")
        if not relations:
            raise RecordError(f"record {record_id or '(unnamed)'} has no relations; the original drops such records")
        chemicals = unify_names(_field(record, "chemical2id", task, record_id))
        diseases = unify_names(_field(record, "disease2id", task, record_id))
        parts = []
        for rel in relations:
            if rel["chemical"] not in chemicals or rel["disease"] not in diseases:
                raise RecordError(
                    f"record {record_id or '(unnamed)'}: relation {rel['chemical']}-{rel['disease']} names a "
                    f"MeSH id absent from chemical2id/disease2id; add its names"
                )
            parts.append(f"the relation between {chemicals[rel['chemical']]} and {diseases[rel['disease']]} exists")
        return "; ".join(parts) + "."
    if task == "pubmedqa":
        return f"the answer to the question given the context is {_field(record, 'final_decision', task, record_id)}."
    if task == "hoc":
        return f"the type of this document is {_field(record, 'labels', task, record_id)}."
    raise TaskSettingsError(f"unknown task {task!r}; use one of {', '.join(TASK_NAMES)}")


# --- model input ---------------------------------------------------------------------------------


def prompt_input_ids(source: str, tokenizer: TokenizerLike, settings: TaskSettings) -> list[int]:
    """The ids of :func:`prompt_input` (without its truncation flag)."""
    return prompt_input(source, tokenizer, settings)[0]


def prompt_input(source: str, tokenizer: TokenizerLike, settings: TaskSettings) -> tuple[list[int], bool]:
    """The prompt-model input and whether the source was cut: ``[2] + source ids + prompt ids``
    (``[2] + prompt ids + source ids + [sep]`` in the ``prompt_source_sep`` layout), the source cut
    to ``S-1`` ids + ``...`` when longer than ``S`` (then the flag is True).

    ``source`` is lower-cased here when the checkpoint expects it (a no-op for :func:`build_source`
    output; it protects raw text, the cause of "RE returns the input" reports, microsoft/BioGPT#107).
    """
    text = source.lower() if settings.lowercase_source else source
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    limit = settings.max_source_positions
    # src/language_model_prompt_dataset.py __getitem__: with more than S source tokens keep S+1 items
    # (eos included), then overwrite the last two with "..." and eos: S-1 source ids + "...".
    truncated = len(ids) > limit
    if truncated:
        ids = ids[: limit - 1] + [settings.truncation_marker_id]
    prompt = list(settings.prompt_token_ids)
    # collate(): cat([source, prompt, target]) or, with --prefix, cat([prompt, source, sep, target]);
    # the eos that ends the target moves to the front.
    if settings.sep_token_id is not None:
        return [EOS_ID] + prompt + ids + [settings.sep_token_id], truncated
    return [EOS_ID] + ids + prompt, truncated


def prompt_tokens(tokenizer: Any, settings: TaskSettings) -> list[str]:
    """The learned prompt tokens of a checkpoint as text (``learned1 .. learnedN``), named by
    ``tokenizer.convert_ids_to_tokens``."""
    return [str(tokenizer.convert_ids_to_tokens(int(i))) for i in settings.prompt_token_ids]


def echo_prompt(tokens: Sequence[str], generation: str) -> str:
    """``"learned1 ... learnedN " + generation``: the text the original post-processing saw, up to
    the source in front of it (module docstring). An empty generation stays empty: the original's
    line then ended in ``learnedN`` with no space after it, so its prefix cut left ``learnedN``, which
    parses as nothing either."""
    if not generation.strip():
        return generation
    return " ".join([*tokens, generation])
