"""PubMedQA question answering with a fine-tuned BioGPT prompt checkpoint, and the answer grammar.

Contract:

- :class:`QATask` is the ``qa`` task of the job files (the contract of :mod:`pipeline.tasks.base`):
  ``dataset = "answers"``, rows of :data:`schemas.answers.ANSWER_SCHEMA`, exactly one row per
  article, ``sort_keys = ("question_id",)``.
- Checkpoint: a PubMedQA prompt checkpoint (``biomine models pull qa-pubmedqa`` or
  ``qa-pubmedqa-large``, or one converted with ``biomine convert fairseq``) of the released
  reasoning-required input format; :meth:`QATask.check_model` refuses anything else (a base BioGPT,
  an NER model, an RE or HoC checkpoint, a reasoning-free or first-recipe PubMedQA checkpoint, whose
  input needs a long answer or a TSV line an article does not have) with :class:`QAModelError`.
- The question (``[tasks.qa] question``): the job's text, asked of every article, or ``"{title}"``:
  each article's own title when it is a question (:func:`title_question`), how PubMedQA was built.
  The context is the article's abstract (PubMedQA's contexts are the abstract without its
  conclusion section; a PubMed abstract has it).
- Input (:meth:`QATask.prepare`), exactly as the released models' fine-tuning data:
  :func:`pipeline.tasks.re_format.build_source` (``question: Q context: C ``, whitespace collapsed,
  not lower-cased), then ``[2] + source ids + learned1..N`` (:func:`~pipeline.tasks.re_format.prompt_input`,
  the source cut to S-1 ids + ``...``: ``input_truncated = true``).
- Not asked, one ``skipped`` row with the reason (nothing is dropped silently): an article without
  an abstract (:data:`NO_ABSTRACT`); in title mode, an article whose title is not a question
  (:data:`NOT_A_QUESTION`) or that has no title (:data:`NO_TITLE`).
- Decoding as the original ``inference.py``: greedy, ``<pad>`` never chosen, stop at ``</s>``, by
  default to the position limit (``max_new_tokens`` may cap it), on :class:`~pipeline.tasks.decoding.GreedyDecoder`.
- Answer (:func:`parse_answer`): examples/QA-PubMedQA/postprocess.py on the generation as the
  original saw it (``learned1 .. learnedN generation``: :func:`~pipeline.tasks.re_format.echo_prompt`):
  :func:`extract_answer` (cleaned by :func:`~pipeline.tasks.re_grammar.clean_line`, then the text
  after :data:`ANSWER`). ``ok`` with yes/no/maybe; ``unparsed`` without the answer sentence (the
  original's ``failed``); ``other_answer`` when the sentence ends in anything else. The raw
  generation is kept in every asked row. ``answer_logprob`` is the sum of the engine's
  log-probabilities of the answer's tokens (their last occurrence in the generated ids).
- :mod:`pipeline.evaluation.qa` (``biomine eval qa``) scores with the same :func:`extract_answer`.

:raises QAModelError: wrong checkpoint (``check_model``, ``__init__``, ``prepare``).
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar, Sequence

import pyarrow as pa

from biogpt.task_spec import TaskSettings
from pipeline.errors import TaskSettingsError
from schemas import answers as _answers

from . import base
from .decoding import GreedyDecoder
from .options import TITLE_QUESTION, QAOptions
from .re_format import build_source, echo_prompt, prompt_input, prompt_tokens
from .re_grammar import clean_line

#: The target sentence of examples/QA-PubMedQA (``rebuild_data.py`` writes it with the answer and a
#: final ``.``; ``postprocess.py`` searches it anywhere in the cleaned line).
ANSWER = re.compile(r"the answer to the question given the context is(.*)")
#: The answers PubMedQA's ``final_decision`` takes.
ANSWERS = _answers.ANSWERS
#: The input format of the released models (examples/QA-PubMedQA/ReasoningRequired).
SOURCE_FORMAT = "qa-pubmedqa"

NO_ABSTRACT = "no abstract: the abstract is the context, so nothing was asked"
NO_TITLE = "no title: question = {title} asks the article's title"
NOT_A_QUESTION = "the title is not a question (it does not end in '?'), so nothing was asked"
UNPARSED = "no answer sentence ('the answer to the question given the context is ...'): the original's 'failed'"

REQUIRES = (
    "a fine-tuned BioGPT PubMedQA prompt checkpoint (`biomine models pull qa-pubmedqa` or "
    "qa-pubmedqa-large, or one converted with `biomine convert fairseq`)"
)


class QAModelError(base.WrongModelError, TaskSettingsError):
    """The model directory is not a PubMedQA prompt checkpoint a job can ask."""


def extract_answer(line: str) -> str | None:
    """The answer ``postprocess.py`` extracts from one generated line, None for its ``failed``."""
    match = ANSWER.search(clean_line(line))
    return match.group(1).strip() if match is not None else None


def parse_answer(generation: str, learned: Sequence[str]) -> tuple[str | None, str, str | None]:
    """``(answer, parse_status, reason)`` of one generation (module docstring); ``learned`` are the
    checkpoint's prompt tokens (:func:`~pipeline.tasks.re_format.prompt_tokens`)."""
    found = extract_answer(echo_prompt(learned, generation))
    if found is None:
        return None, "unparsed", UNPARSED
    if found in ANSWERS:
        return found, "ok", None
    return None, "other_answer", f"the answer sentence ends in {found!r}, not yes, no or maybe"


def title_question(title: str) -> str | None:
    """The article's title as a question, or None when it is not one: stripped, a final ``.`` and
    MEDLINE's brackets around a translated title (``[Is ...?].``) removed, then it must end in ``?``
    (PubMedQA took the articles whose titles are questions)."""
    text = title.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    return text if text.endswith("?") else None


def answer_logprob(answer: str, ids: Sequence[int], logprobs: Sequence[float], tokenizer: Any) -> float | None:
    """The sum of ``logprobs`` over the LAST occurrence of ``answer``'s token ids in ``ids`` (the
    answer ends the sentence), None when they do not occur."""
    wanted = list(tokenizer.encode(answer, add_special_tokens=False))
    ids = [int(i) for i in ids]
    for start in range(len(ids) - len(wanted), -1, -1):
        if wanted and ids[start : start + len(wanted)] == wanted:
            return float(sum(logprobs[start : start + len(wanted)]))
    return None


def checked_settings(model_dir: str) -> TaskSettings:
    """The :class:`TaskSettings` of ``model_dir`` after checking it is a PubMedQA prompt checkpoint
    of the reasoning-required input format.

    :raises QAModelError: no config.json, a classification head, no or an invalid
        ``biomine_task.json``, another task's checkpoint, another input format, or prompt ids
        outside the vocabulary.
    """
    settings = base.prompt_settings(
        model_dir,
        "qa",
        f"question answering needs {REQUIRES}",
        error=QAModelError,
        family=("pubmedqa",),
        kind="a PubMedQA one",
    )
    if settings.source_format != SOURCE_FORMAT:
        raise QAModelError(
            f"qa: {model_dir} reads the {settings.source_format} input (a long answer or a PubMedQA TSV line "
            f"with it), which an article does not have; give a checkpoint of the released {SOURCE_FORMAT} "
            "input (`question: Q context: C `)",
            setting="model",
        )
    return settings


@functools.lru_cache(maxsize=8)
def _settings(model_dir: str) -> TaskSettings:
    """The checked settings of a checkpoint, read once per process."""
    return checked_settings(model_dir)


def question_for(question: str, title: str) -> tuple[str | None, str]:
    """``(question, why not asked)`` for one article: the job's question, or in title mode the
    title when it is a question (``""``: asked)."""
    if question != TITLE_QUESTION:
        return question.strip(), ""
    if not title.strip():
        return None, NO_TITLE
    asked = title_question(title)
    return (asked, "") if asked is not None else (title.strip(), NOT_A_QUESTION)


class QATask(base.Task[QAOptions]):
    """The ``qa`` task (see the module docstring and :mod:`pipeline.tasks.base`)."""

    name = "qa"
    dataset = "answers"
    schema = _answers.ANSWER_SCHEMA
    prepared_schema = pa.schema(
        [
            pa.field("_input_ids", base.IDS),  # the prompt, null: not asked
            pa.field("_truncated", pa.bool_()),  # whether the source was cut to fit
            pa.field("_question", pa.string()),  # the question asked (null: no title in title mode)
            pa.field("_skip", pa.string()),  # why it was not asked ("" when it was)
        ]
    )
    Options = QAOptions
    cast_batch = staticmethod(_answers.cast_batch)
    sort_keys: ClassVar[tuple[str, ...]] = ("question_id",)
    requires = REQUIRES

    @classmethod
    def check_model(cls, options: QAOptions) -> TaskSettings:
        """The checkpoint's :class:`TaskSettings` (:func:`checked_settings`); cheap.

        :raises QAModelError: see :func:`checked_settings`.
        """
        return checked_settings(options.model)

    @classmethod
    def prepare(cls, batch: Any, options: QAOptions) -> pa.Table:
        """Add ``_input_ids``, ``_truncated``, ``_question`` and ``_skip`` (module docstring)."""
        settings = _settings(options.model)
        tokenizer = base.tokenizer_for(options.model)
        columns: dict[str, list[Any]] = {"_input_ids": [], "_truncated": [], "_question": [], "_skip": []}
        docs = base.documents(batch)
        for title, abstract in zip(docs.column("title").to_pylist(), docs.column("abstract").to_pylist()):
            title, abstract = base.text_of(title), base.text_of(abstract)
            question, skip = question_for(options.question, title)
            if not skip and not abstract.strip():
                skip = NO_ABSTRACT
            ids, cut = None, None
            if not skip:
                source = build_source("pubmedqa", {"QUESTION": question, "CONTEXTS": [abstract]})
                ids, cut = prompt_input(source, tokenizer, settings)
            for key, value in zip(columns, (ids, cut, question, skip)):
                columns[key].append(value)
        return base.prepared(docs, cls.prepared_schema, columns)

    def __init__(self, options: QAOptions):
        options.check()
        self.options = options
        self.model_dir = options.model
        self.settings = _settings(self.model_dir)
        self.decoder = GreedyDecoder.for_task(self.model_dir, "qa", options, self.settings.max_target_positions)
        self.tokenizer = self.decoder.tokenizer
        self.prompt_tokens = prompt_tokens(self.tokenizer, self.settings)
        # The original generated to the position limit; the decoder caps each prompt to what is left.
        self.max_new_tokens = options.max_new_tokens or self.decoder.max_seq_len
        self.model_id = base.model_id(self.model_dir)
        self.decoding = base.decoding_record(strategy="greedy", num_beams=1, max_new_tokens=self.max_new_tokens)

    def __call__(self, batch: pa.Table) -> list[list[dict[str, Any]]]:
        batch = base.check_prepared(type(self), batch)
        pmids, versions = batch.column("pmid").to_pylist(), batch.column("version").to_pylist()
        questions, skips = batch.column("_question").to_pylist(), batch.column("_skip").to_pylist()
        cut = batch.column("_truncated").to_pylist()
        new = self.decoder.run_prompted_scored(batch.column("_input_ids").to_pylist(), self.max_new_tokens)
        out: list[list[dict[str, Any]]] = []
        for i, (pmid, version) in enumerate(zip(pmids, versions)):
            row: dict[str, Any] = {
                "pmid": pmid,
                "version": version,
                "question_id": self.options.question_id,
                "question": questions[i],
                "model_id": self.model_id,
            }
            if i not in new:
                row.update(parse_status="skipped", reason=skips[i] or NO_ABSTRACT)
            else:
                ids, lps = new[i]
                generation = self.decoder.text(ids).replace("\r", " ").replace("\n", " ")
                answer, status, reason = parse_answer(generation, self.prompt_tokens)
                row.update(
                    answer=answer,
                    parse_status=status,
                    reason=reason,
                    raw_generation=generation,
                    answer_logprob=answer_logprob(answer, ids, lps, self.tokenizer) if answer else None,
                    decoding=dict(self.decoding),
                    input_truncated=bool(cut[i]),
                )
            out.append([row])
        return out
