"""Document classification with the released HoC checkpoint (``biogpt:dc-hoc``): the ``classify`` task.

Contract:

- :class:`ClassifyTask` is the ``classify`` task of the job files (the contract of
  :mod:`pipeline.tasks.base`): ``dataset = "labels"``, rows of :data:`schemas.labels.LABEL_SCHEMA`,
  ``sort_keys = ()`` (rows stay in the order the task yields them: labels in the order the
  document's sentences first name them, then ``unparsed`` rows in sentence order; the stage's sort
  by ``pmid`` is stable).
- Checkpoint: the fine-tuned HoC prompt checkpoint as ``biomine convert fairseq`` / ``biomine models
  pull dc-hoc`` writes it (``biomine_task.json`` task ``dc-hoc``); :meth:`ClassifyTask.check_model`
  refuses anything else - a QA or RE checkpoint, a base BioGPT, an NER model - with
  :class:`ClassifyModelError` (a :class:`~pipeline.errors.WrongModelError`) naming what it is.
- Sentences (:func:`sentences`): the checkpoint was fine-tuned on single sentences (HoC's
  ``sentence<TAB>labels``), so each article is cut into sentences and each is classified. Title and
  abstract are split separately (a title without a final ``.`` is its own sentence) by
  :func:`pipeline.tasks.re_grammar.sentence_spans` (a run of ``. ! ?`` before whitespace or the end
  ends a sentence; decimals do not; an abbreviation such as ``e.g.`` does, which only makes two
  shorter sentences); offsets index :func:`pipeline.tasks.base.article_text` (``title + " " +
  abstract``, the text NER and RE offsets index).
- Input of each sentence, exactly as the fine-tuning data: ``re_format.build_source("hoc", ...)``
  (newlines removed, stripped, ``.`` appended unless it ends in one), then ``[2] + source ids +
  learned1..N`` (``re_format.prompt_input``; a sentence longer than the source positions is cut to
  S-1 ids + ``...``).
- Decoding: greedy on :class:`~pipeline.tasks.decoding.GreedyDecoder` (the engine's continuous
  batching, as RE), with the log-probability of every new token from the decode step. Every sentence
  of every document of a prepared batch goes to the engine in ONE call (no per-sentence or
  per-document model call); at most ``max_new_tokens`` (default 64) new tokens per sentence, stopping
  at ``</s>``.
- Parsing: ``echo_prompt`` then :func:`pipeline.tasks.hoc_labels.parse_labels` (the original
  ``postprocess.py`` extraction, ``examples/DC-HoC``). A document's labels are the union of its
  sentences' labels other than ``empty`` (known classes named by a line that also names unknown
  pieces count too, as the original scoring counts them). Each label's row carries its best
  sentence - the one whose generation gives the label's tokens the highest log-probability
  (:func:`piece_logprobs`; the first sentence when none could be aligned) - as evidence, the
  ``logprob``, ``score = exp(logprob)`` and how many sentences gave it. A document whose sentences are
  all ``empty`` (or that has no text) yields no row.
- Every ``unparsed`` line (no answer sentence, nothing after it, a piece that is no class) is one
  ``unparsed`` row with its reason, the sentence as evidence and the generation: nothing is dropped.

:raises ClassifyModelError: from :meth:`ClassifyTask.check_model`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import pyarrow as pa

from biogpt.task_spec import TaskSettings, load_task_settings
from pipeline.errors import TaskSettingsError
from schemas import labels as _labels

from . import base
from .decoding import GreedyDecoder
from .hoc_labels import EMPTY, LABELS, SEPARATOR, LabelParse, parse_labels
from .options import ClassifyOptions
from .re_format import build_source, echo_prompt, prompt_input, prompt_tokens
from .re_grammar import sentence_spans

REQUIRES = (
    'the fine-tuned HoC prompt checkpoint (`biomine models pull dc-hoc`, then model = "biogpt:dc-hoc"; '
    "or `biomine convert fairseq ... --task dc-hoc`)"
)


class ClassifyModelError(base.WrongModelError):
    """The model directory is not a checkpoint the ``classify`` task can run."""


def checked_settings(model_dir: str) -> TaskSettings:
    """The :class:`TaskSettings` of HoC checkpoint ``model_dir``, after checking it is one (reads only
    config.json and biomine_task.json).

    :raises ClassifyModelError: no config.json, a classification head, no or an invalid
        ``biomine_task.json`` (a base BioGPT, an NER model), a checkpoint of another task (QA, RE:
        the message says which), or prompt ids outside the vocabulary.
    """
    try:
        config = base.read_config(model_dir, "classify")
    except base.WrongModelError as exc:
        raise ClassifyModelError(str(exc), setting="model") from None
    arch = base.architecture(config)
    if arch not in (None, "BioGptForCausalLM"):
        raise ClassifyModelError(f"classify: {model_dir} is a {arch} checkpoint; classify needs {REQUIRES}")
    try:
        settings = load_task_settings(model_dir)
    except TaskSettingsError as exc:
        raise ClassifyModelError(f"classify: {exc}; classify needs {REQUIRES}", setting="model") from None
    if settings.task != "hoc":
        raise ClassifyModelError(
            f"classify: {model_dir} is a {settings.task} checkpoint, not a document-classification one; "
            f"classify needs {REQUIRES}",
            setting="model",
        )
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and max(settings.prompt_token_ids) >= vocab:
        raise ClassifyModelError(
            f"classify: {model_dir}: prompt token ids {list(settings.prompt_token_ids)} exceed vocab_size {vocab} "
            "of config.json; convert the checkpoint again",
            setting="model",
        )
    return settings


@functools.lru_cache(maxsize=8)
def _settings(model_dir: str) -> TaskSettings:
    """The checked settings of a checkpoint, read once per process (prepare runs in many Ray tasks)."""
    return checked_settings(model_dir)


def sentences(title: Any, abstract: Any) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of an article, offsets into ``title + " " + abstract``
    (:func:`~pipeline.tasks.base.article_text`); title and abstract are split separately (module
    docstring), surrounding whitespace excluded, in text order."""
    title, abstract = base.text_of(title), base.text_of(abstract)
    shift = len(title) + 1
    return sentence_spans(title) + [(s + shift, e + shift) for s, e in sentence_spans(abstract)]


def _find_last(ids: Sequence[int], part: Sequence[int]) -> int:
    """The index just past the last occurrence of ``part`` in ``ids``, or -1."""
    n = len(part)
    for i in range(len(ids) - n, -1, -1):
        if list(ids[i : i + n]) == list(part):
            return i + n
    return -1


def piece_logprobs(
    ids: Sequence[int],
    logprobs: Sequence[float],
    *,
    answer_ids: Sequence[int],
    separator_ids: Sequence[int],
    dropped: set[int],
    period_ids: set[int],
    pieces: int,
) -> list[float | None] | None:
    """The summed log-probability of the tokens of each label piece of one generation: the tokens
    after the last answer sentence (``the type of this document is``), without ``dropped`` ids
    (``</s>``, ``<s>``) and one final ``.``, split at each occurrence of ``separator_ids`` (``|``).
    None when the segments do not match the parsed pieces one to one (never a guess); a piece
    without tokens gets None."""
    kept = [(int(t), float(lp)) for t, lp in zip(ids, logprobs) if int(t) not in dropped]
    start = _find_last([t for t, _ in kept], answer_ids)
    if start < 0 or pieces < 1:
        return None
    tail = kept[start:]
    if tail and tail[-1][0] in period_ids:
        tail.pop()
    segments: list[list[float]] = [[]]
    tokens = [t for t, _ in tail]
    i, n = 0, len(separator_ids)
    while i < len(tail):
        if n and tokens[i : i + n] == list(separator_ids):
            segments.append([])
            i += n
            continue
        segments[-1].append(tail[i][1])
        i += 1
    if len(segments) != pieces:
        return None
    return [sum(s) if s else None for s in segments]


@dataclass
class _Best:
    """A label's best sentence so far and how many sentences named it."""

    sentence: int
    logprob: float | None
    count: int


def document_rows(
    parses: Sequence[LabelParse],
    scores: Sequence[list[float | None] | None],
    spans: Sequence[tuple[int, int]],
    generations: Sequence[str],
    *,
    text: str,
    pmid: int,
    version: int,
    model_id: str,
) -> list[dict[str, Any]]:
    """The label rows of one document from the parse, piece scores, span and generation of each of
    its sentences, in sentence order (module docstring): one ``ok`` row per non-``empty`` label of
    the union, in order of first mention, then one ``unparsed`` row per unparsed sentence."""
    best: dict[str, _Best] = {}
    for i, (parse, piece_scores) in enumerate(zip(parses, scores)):
        by_label: dict[str, float | None] = {}
        for k, piece in enumerate(parse.pieces):
            if piece in parse.labels:  # a class; duplicates keep their best score
                lp = piece_scores[k] if piece_scores is not None else None
                old = by_label.get(piece)
                by_label[piece] = lp if old is None or (lp is not None and lp > old) else old
        for label, lp in by_label.items():
            if label == EMPTY:
                continue
            seen = best.get(label)
            if seen is None:
                best[label] = _Best(i, lp, 1)
                continue
            seen.count += 1
            if lp is not None and (seen.logprob is None or lp > seen.logprob):
                seen.sentence, seen.logprob = i, lp
    keys = {"pmid": pmid, "version": version, "model_id": model_id}
    rows = []
    for label, b in best.items():
        start, end = spans[b.sentence]
        rows.append(
            {
                **keys,
                "label": label,
                "score": math.exp(b.logprob) if b.logprob is not None else None,
                "logprob": b.logprob,
                "evidence_start": start,
                "evidence_end": end,
                "evidence_text": text[start:end],
                "sentences": b.count,
                "parse_status": "ok",
                "raw_generation": generations[b.sentence],
            }
        )
    for i, parse in enumerate(parses):
        if parse.status != "ok":
            start, end = spans[i]
            rows.append(
                {
                    **keys,
                    "evidence_start": start,
                    "evidence_end": end,
                    "evidence_text": text[start:end],
                    "parse_status": "unparsed",
                    "reason": parse.reason,
                    "raw_generation": generations[i],
                }
            )
    return rows


class ClassifyTask(base.Task[ClassifyOptions]):
    """The ``classify`` task (see the module docstring and :mod:`pipeline.tasks.base`)."""

    name = "classify"
    dataset = "labels"
    schema = _labels.LABEL_SCHEMA
    prepared_schema = pa.schema(
        [
            pa.field("_inputs", pa.list_(base.IDS)),  # the prompt of each sentence
            pa.field("_spans", pa.list_(base.SPAN)),  # each sentence's [start, end] in _text
            pa.field("_text", pa.string()),  # title + " " + abstract: what the offsets index
        ]
    )
    Options = ClassifyOptions
    cast_batch = staticmethod(_labels.cast_batch)
    sort_keys: ClassVar[tuple[str, ...]] = ()
    requires = REQUIRES

    @classmethod
    def check_model(cls, options: ClassifyOptions) -> TaskSettings:
        """The checkpoint's :class:`TaskSettings` (:func:`checked_settings`); cheap.

        :raises ClassifyModelError: see :func:`checked_settings`.
        """
        return checked_settings(options.model)

    @classmethod
    def prepare(cls, batch: Any, options: ClassifyOptions) -> pa.Table:
        """Add ``_inputs`` (the prompt ids of each sentence), ``_spans`` (each sentence's offsets)
        and ``_text`` (``title + " " + abstract``)."""
        settings = _settings(options.model)
        tokenizer = base.tokenizer_for(options.model)
        inputs, spans, texts = [], [], []
        docs = base.documents(batch)
        for title, abstract in zip(docs.column("title").to_pylist(), docs.column("abstract").to_pylist()):
            text = base.article_text(title, abstract)
            doc_spans = sentences(title, abstract)
            texts.append(text)
            spans.append([list(s) for s in doc_spans])
            inputs.append(
                [
                    prompt_input(build_source("hoc", {"sentence": text[s:e]}), tokenizer, settings)[0]
                    for s, e in doc_spans
                ]
            )
        return base.prepared(docs, cls.prepared_schema, {"_inputs": inputs, "_spans": spans, "_text": texts})

    def __init__(self, options: ClassifyOptions):
        options.check()
        self.options = options
        self.model_dir = options.model
        self.settings = _settings(self.model_dir)
        self.max_new_tokens = options.max_new_tokens
        self.decoder = GreedyDecoder(
            self.model_dir,
            "classify",
            dtype=options.dtype,
            device=options.device,
            max_batch=options.batch_size,
            max_seq_len=self.settings.max_target_positions,
            cuda_graph=options.cuda_graph,
        )
        tokenizer = self.decoder.tokenizer
        self.prompt_tokens = prompt_tokens(tokenizer, self.settings)
        self.model_id = base.model_id(self.model_dir)
        self._answer_ids = tokenizer.encode(LABELS.pattern.removesuffix("(.*)"), add_special_tokens=False)
        self._separator_ids = tokenizer.encode(SEPARATOR, add_special_tokens=False)
        self._period_ids = set(tokenizer.encode(".", add_special_tokens=False))
        self._dropped = {self.decoder.eos, self.decoder.bos}

    def parse(self, generation: str) -> LabelParse:
        """The labels of one sentence's generation, read as the original post-processing read the
        whole hypothesis (``learned1 .. learnedN`` + generation: :func:`echo_prompt`)."""
        return parse_labels(echo_prompt(self.prompt_tokens, generation))

    def __call__(self, batch: pa.Table) -> list[list[dict[str, Any]]]:
        batch = base.check_prepared(type(self), batch)
        pmids, versions = batch.column("pmid").to_pylist(), batch.column("version").to_pylist()
        texts = batch.column("_text").to_pylist()
        per_doc = batch.column("_inputs").to_pylist()
        spans = batch.column("_spans").to_pylist()
        # Every sentence of the batch in one engine call: continuous batching across documents.
        flat = [ids for doc in per_doc for ids in doc]
        decoded = self.decoder.run_scored(flat, self.max_new_tokens) if flat else []
        out: list[list[dict[str, Any]]] = []
        k = 0
        for i, (pmid, version) in enumerate(zip(pmids, versions)):
            n = len(per_doc[i])
            parses, scores, generations = [], [], []
            for ids, lps in decoded[k : k + n]:
                generation = self.decoder.text(ids)
                parse = self.parse(generation)
                parses.append(parse)
                generations.append(generation)
                scores.append(
                    piece_logprobs(
                        ids,
                        lps,
                        answer_ids=self._answer_ids,
                        separator_ids=self._separator_ids,
                        dropped=self._dropped,
                        period_ids=self._period_ids,
                        pieces=len(parse.pieces),
                    )
                )
            k += n
            out.append(
                document_rows(
                    parses,
                    scores,
                    [tuple(s) for s in spans[i]],
                    generations,
                    text=str(texts[i]),
                    pmid=pmid,
                    version=version,
                    model_id=self.model_id,
                )
            )
        return out
