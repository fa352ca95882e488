"""Relation extraction (DDI, KD-DTI, BC5CDR) with a fine-tuned BioGPT prompt checkpoint.

Contract:

- :class:`RelationTask` is the ``re`` task of the job files (the contract of
  :mod:`pipeline.tasks.base`): ``dataset = "relations"``, rows of
  :data:`schemas.relations.RELATION_SCHEMA`, ``sort_keys = ()`` (rows stay in the order the task
  yields them - relations in generation order, then unparsed pieces - because the stage's sort by
  ``pmid`` is stable).
- Checkpoint: a fine-tuned prompt checkpoint of the job's task, as ``biomine convert fairseq`` writes
  it (``biomine_task.json``); :meth:`RelationTask.check_model` refuses anything else (a base
  BioGPT, an NER model, another task's checkpoint) with :class:`RelationModelError`, which is both a
  :class:`~pipeline.tasks.base.WrongModelError` and a
  :class:`~biogpt.errors.TaskSettingsError`.
- Input of each article (:meth:`RelationTask.prepare`), exactly as the fine-tuning data:
  ``re_format.build_source`` (DDI: the abstract; KD-DTI, BC5CDR: title + joiner + abstract, lower-cased)
  then ``[2] + source ids + learned1..N`` (``re_format.prompt_input``, the source cut to S-1 ids +
  ``...``; such rows say ``input_truncated = true``). A DDI article without an abstract, or any article without title and abstract, gets no
  prompt; it yields one ``unparsed`` row whose reason says so (nothing is silently dropped).
- Decoding as the original ``inference.py``: greedy (beam 1), ``<pad>`` never chosen, stop at
  ``</s>``; each prompt may generate ``min(max_new_tokens, L - prompt length)`` tokens where
  ``L = min(max_target_positions, max_position_embeddings)``, so no prompt can overflow the positions
  (fairseq's ``max_len`` counts the tokens after the leading ``</s>``, prompt included, and forces
  ``</s>`` at position L). Runs on :class:`biogpt.engine.Engine` (continuous batching, CUDA graphs on
  a GPU, eager on CPU); its greedy ids equal :func:`biogpt.generation.generate`'s.
- Text: the new ids without ``<s>``/``</s>`` (fairseq's ``Dictionary.string``; ``<unk>`` is kept),
  decoded and Moses-detokenised by the tokenizer. The original decoded the whole hypothesis
  (source + ``learned1 .. learnedN`` + generation) and its post-processing cut the text after the
  last ``learnedN``; that cut is the first prefix rule, so the other prefix rules (``we have that``
  ...) never applied to a generation. :meth:`RelationTask.parse` reproduces this by parsing
  ``"learned1 ... learnedN " + generation`` (the source in front cannot change the result) and keeps
  the generation alone as ``raw_generation``.
- Rows (``re_grammar.relation_rows``): one ``ok`` row per parsed relation with evidence offsets into
  ``title + " " + abstract``, one ``unparsed`` row per piece that did not parse, with the reason and the
  raw generation. BC5CDR ids: PubMed articles carry no name -> MeSH maps, so ``head_id``/``tail_id``
  are ``"-1"`` there (the benchmark evaluation maps names with the gold file's maps).
- :func:`pipeline.evaluation.re.evaluate_re` (``biomine eval re``) runs a checkpoint over a BioGPT
  benchmark file through the same building blocks (:meth:`RelationTask.generate_ids`,
  :meth:`RelationTask.generation_text`, :meth:`RelationTask.grammar_input`, :meth:`RelationTask.parse`).

:raises RelationModelError: wrong checkpoint (``check_model``, ``__init__``, ``prepare``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Sequence

import pyarrow as pa

from biogpt.task_spec import RE_TASKS, TaskSettings
from pipeline.errors import TaskSettingsError
from schemas import relations as _relations

from . import base
from .decoding import GreedyDecoder
from .linking import load_linker
from .options import RelationOptions
from .re_format import build_source, echo_prompt, prompt_input, prompt_tokens
from .re_grammar import ParseResult, Unparsed, parse_generation, relation_rows

#: ``max_new_tokens`` when the job does not say (:class:`~pipeline.tasks.options.RelationOptions`).
DEFAULT_MAX_NEW_TOKENS = RelationOptions.max_new_tokens
NO_ABSTRACT = (
    "no abstract: the ddi model reads the abstract only (the DDI corpus has no titles), so no prompt was built"
)
NO_TEXT = "no title and no abstract: nothing to build a prompt from"


class RelationModelError(base.WrongModelError, TaskSettingsError):
    """The model directory is not a fine-tuned prompt checkpoint of the requested RE task."""


# --- per-process caches (prepare runs in many stateless Ray tasks) ------------------------------


#: The entity types of each task's head and tail, for linking (None: any; KD-DTI targets are
#: proteins, which MeSH and DrugBank name only in part).
HEAD_TAIL_TYPES = {"ddi": ("Chemical", "Chemical"), "kd-dti": ("Chemical", None), "bc5cdr": ("Chemical", "Disease")}


REQUIRES = (
    "a fine-tuned BioGPT relation-extraction prompt checkpoint of the same task (ddi, kd-dti or "
    "bc5cdr), converted with `biomine convert fairseq` (it writes biomine_task.json)"
)


def checked_settings(model_dir: str, task: str | None) -> TaskSettings:
    """The :class:`TaskSettings` of relation-extraction checkpoint ``model_dir`` (of ``task``, or any
    when None), after checking it is one.

    :raises RelationModelError: no config.json, a non-causal-LM architecture, no or an invalid
        ``biomine_task.json`` (a base BioGPT, an NER model), a checkpoint of another task (the
        message says which task it is for), or prompt ids outside the vocabulary.
    """
    if task is not None and task not in RE_TASKS:
        raise RelationModelError(f"re: unknown task {task!r}; use one of {', '.join(RE_TASKS)}", setting="task")
    return base.prompt_settings(
        model_dir,
        "re",
        f"relation extraction needs {REQUIRES}",
        task,
        error=RelationModelError,
        family=RE_TASKS,
        kind="a relation-extraction one",
    )


@functools.lru_cache(maxsize=8)
def _settings(model_dir: str, task: str | None) -> TaskSettings:
    """The checked task settings of a checkpoint, read once per process (every prepare task and
    actor of a node asks for the same model)."""
    return checked_settings(model_dir, task)


# --- the task -----------------------------------------------------------------------------------


class RelationTask(base.Task[RelationOptions]):
    """The ``re`` task (see the module docstring and :mod:`pipeline.tasks.base`)."""

    name = "re"
    dataset = "relations"
    schema = _relations.RELATION_SCHEMA
    prepared_schema = pa.schema(
        [
            pa.field("_input_ids", base.IDS),  # the prompt (source + learned prompt), null: no prompt
            pa.field("_truncated", pa.bool_()),  # whether the source was cut to fit the positions
            pa.field("_skip", pa.string()),  # why there is no prompt ("" when there is one)
            pa.field("_text", pa.string()),  # title + " " + abstract: what evidence offsets index
        ]
    )
    Options = RelationOptions
    cast_batch = staticmethod(_relations.cast_batch)
    #: Keep the task's order (relations as generated, then unparsed pieces): the stage sorts by pmid
    #: first and Python's sort is stable, so no key is needed and None/str never get compared.
    sort_keys: ClassVar[tuple[str, ...]] = ()
    requires = REQUIRES

    @classmethod
    def check_model(cls, options: RelationOptions) -> TaskSettings:
        """The checkpoint's :class:`TaskSettings` (:func:`checked_settings`); cheap (config and task
        files only). ``options.task`` None accepts any relation-extraction checkpoint.

        :raises RelationModelError: see :func:`checked_settings`.
        """
        return checked_settings(options.model, options.task)

    @classmethod
    def prepare(cls, batch: Any, options: RelationOptions) -> pa.Table:
        """Add ``_input_ids`` (the prompt ids, or None), ``_truncated`` (whether the source was cut to
        fit the positions, or None), ``_skip`` (why there is no prompt, or ``""``) and ``_text``
        (``title + " " + abstract``, which evidence offsets index)."""
        model_dir = options.model
        settings = _settings(model_dir, options.task)
        tokenizer = base.tokenizer_for(model_dir)
        inputs, truncated, skips, texts = [], [], [], []
        docs = base.documents(batch)
        for title, abstract in zip(docs.column("title").to_pylist(), docs.column("abstract").to_pylist()):
            title, abstract = base.text_of(title), base.text_of(abstract)
            texts.append(base.article_text(title, abstract))
            skip = ""
            if settings.task == "ddi" and not abstract.strip():
                skip = NO_ABSTRACT
            elif not title.strip() and not abstract.strip():
                skip = NO_TEXT
            ids, cut = None, None
            if not skip:
                ids, cut = prompt_input(
                    build_source(settings.task, {"title": title, "abstract": abstract}), tokenizer, settings
                )
            inputs.append(ids)
            truncated.append(cut)
            skips.append(skip)
        columns: dict[str, list[Any]] = {"_input_ids": inputs, "_truncated": truncated, "_skip": skips, "_text": texts}
        return base.prepared(docs, cls.prepared_schema, columns)

    def __init__(self, options: RelationOptions):
        options.check()
        self.model_dir = options.model
        self.settings = _settings(self.model_dir, options.task)
        self.task = self.settings.task
        self.options = dataclasses.replace(options, task=self.task)
        self.max_new_tokens = options.max_new_tokens
        self.decoder = GreedyDecoder.for_task(self.model_dir, "re", options, self.settings.max_target_positions)
        self.tokenizer = self.decoder.tokenizer
        self.prompt_tokens = prompt_tokens(self.tokenizer, self.settings)
        self.model_id = base.model_id(self.model_dir)
        self.decoding = base.decoding_record(strategy="greedy", num_beams=1, max_new_tokens=self.max_new_tokens)
        # The ids the grammar's separator and final "." come out as (Moses makes each its own word).
        self._separator_ids = set(self.tokenizer.encode(";", add_special_tokens=False))
        self._period_ids = set(self.tokenizer.encode(".", add_special_tokens=False))
        self.linker = load_linker(options.vocabulary) if options.vocabulary else None

    # -- building blocks (also used by pipeline.evaluation.re and the tests) --------------------------------
    def generate_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Greedy new ids per prompt (including the final ``</s>`` when one was generated)."""
        return self.decoder.run(prompts, self.max_new_tokens)

    def generation_text(self, ids: Sequence[int]) -> str:
        """The generated text of new ids (``<s>``/``</s>`` dropped, ``<unk>`` kept, detokenised)."""
        return self.decoder.text(ids)

    def grammar_input(self, generation: str) -> str:
        """The text the original post-processing saw, up to the source in front of it:
        ``learned1 ... learnedN `` + the generation (see the module docstring)."""
        return echo_prompt(self.prompt_tokens, generation)

    def parse(
        self,
        generation: str,
        *,
        chemical2id: Mapping[str, str] | None = None,
        disease2id: Mapping[str, str] | None = None,
    ) -> ParseResult:
        """Parse one generation as the original did; ``raw`` (and a whole-text unparsed record) is the
        generation itself, without the prompt tokens."""
        text = self.grammar_input(generation)
        result = parse_generation(text, self.task, chemical2id=chemical2id, disease2id=disease2id)
        unparsed = tuple(Unparsed(generation, u.reason) if u.text == text else u for u in result.unparsed)
        return dataclasses.replace(result, raw=generation, unparsed=unparsed)

    def piece_logprobs(
        self, ids: Sequence[int], logprobs: Sequence[float], pieces: int
    ) -> list[tuple[float, int] | None] | None:
        """``(sum of log p, tokens)`` per piece of the cleaned generation (:attr:`ParseResult.pieces`):
        the new ids are split at the separator token (``;``), ``</s>``, the final ``.`` and empty
        trailing segments (a generation cut right after a ``;``) left out; a cut prefix such as "we can
        conclude that" counts with the first triple. None when the segments do not match the text's
        pieces one to one (a ``;`` inside a name): then no row gets a number, never a guess; a piece
        without tokens gets none either."""
        segments: list[list[float]] = [[]]
        tokens = [
            (int(t), float(lp)) for t, lp in zip(ids, logprobs) if int(t) not in (self.decoder.eos, self.decoder.bos)
        ]
        if tokens and tokens[-1][0] in self._period_ids:
            tokens.pop()
        for token, lp in tokens:
            if token in self._separator_ids:
                segments.append([])
            else:
                segments[-1].append(lp)
        while len(segments) > 1 and not segments[-1]:
            segments.pop()
        if pieces < 1 or len(segments) != pieces:
            return None
        return [(sum(s), len(s)) if s else None for s in segments]

    def __call__(self, batch: pa.Table) -> list[list[dict[str, Any]]]:
        batch = base.check_prepared(type(self), batch)
        pmids, versions = batch.column("pmid").to_pylist(), batch.column("version").to_pylist()
        skips = [s or "" for s in batch.column("_skip").to_pylist()]
        texts = batch.column("_text").to_pylist()
        cut = batch.column("_truncated").to_pylist()
        new = self.decoder.run_prompted_scored(batch.column("_input_ids").to_pylist(), self.max_new_tokens)
        generations = {i: self.generation_text(ids) for i, (ids, _) in new.items()}
        out: list[list[dict[str, Any]]] = []
        for i, (pmid, version) in enumerate(zip(pmids, versions)):
            scores: dict[str, Any] = {}
            if i in generations:
                result, decoding = self.parse(generations[i]), self.decoding
                ids, lps = new[i]
                scores = {
                    "piece_logprobs": self.piece_logprobs(ids, lps, result.pieces),
                    "generation_logprob": (float(sum(lps)), len(lps)) if lps else None,
                }
            else:
                reason = skips[i] or NO_TEXT
                result = ParseResult(task=self.task, raw="", relations=(), unparsed=(Unparsed("", reason),))
                decoding = None  # nothing was decoded
            rows = relation_rows(
                result,
                pmid=pmid,
                text=str(texts[i]),
                model_id=self.model_id,
                version=version,
                decoding=decoding,
                input_truncated=None if cut[i] is None else bool(cut[i]),
                **scores,
            )
            if self.linker is not None:
                self.link_rows(rows, str(texts[i]))
            out.append(rows)
        return out

    def link_rows(self, rows: list[dict[str, Any]], text: str) -> None:
        """Fill ``head_id``/``tail_id`` and ``head_match``/``tail_match`` of ``ok`` rows from the task's
        vocabulary (abbreviations of the article ``text`` count); unlinked: null ids."""
        from .linking import abbreviations

        assert self.linker is not None, "link_rows() of a task without a vocabulary"
        types = HEAD_TAIL_TYPES[self.task]
        abbrev = abbreviations(text)
        for row in rows:
            if row["parse_status"] != "ok":
                continue
            for side, type_ in zip(("head", "tail"), types):
                link, _ = self.linker.link(row[side], type_, abbrev)
                row[f"{side}_id"] = link.concept_id if link else None
                row[f"{side}_match"] = link.matched_by if link else None
