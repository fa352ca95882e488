"""Document classification: the ``classify`` task, with the released HoC checkpoint (``biogpt:dc-hoc``)
or a ``BioGptForSequenceClassification`` checkpoint.

Contract:

- :class:`ClassifyTask` is the ``classify`` task of the job files (the contract of
  :mod:`pipeline.tasks.base`): ``dataset = "labels"``, rows of :data:`schemas.labels.LABEL_SCHEMA`,
  ``sort_keys = ()`` (rows stay in the order the task yields them: labels in the order the
  document's sentences first name them, then ``unparsed`` rows in sentence order; the stage's sort
  by ``pmid`` is stable).
- Checkpoint (:func:`checked_model`): the fine-tuned HoC prompt checkpoint as ``biomine convert
  fairseq`` / ``biomine models pull dc-hoc`` writes it (``biomine_task.json`` task ``dc-hoc``), or a
  ``BioGptForSequenceClassification`` checkpoint with an ``id2label`` of at least two labels (see
  "Sequence classifier" below); :meth:`ClassifyTask.check_model` refuses anything else - a QA or RE
  checkpoint, a base BioGPT, an NER model, a regression head - with :class:`ClassifyModelError` (a
  :class:`~pipeline.errors.WrongModelError`) naming what it is.
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
- Sequence classifier: the whole ``title + " " + abstract`` is read, windowed past the position
  limit as NER windows it (windows of ``max_position_embeddings - 1`` tokens after ``</s>``, starts
  3/4 of a window apart: :func:`pipeline.tasks.ner_spans.plan_windows`); each window is one input
  (right-padded batches of ``batch_size``; the head pools the last real token). Per window:
  ``problem_type = "multi_label_classification"`` gives every label whose sigmoid is >= 0.5,
  anything else (``single_label_classification`` or none) the softmax's most probable label. The
  document's labels are the union over windows, a label named ``empty`` left out (the HoC layout);
  ``score`` is the label's best probability, ``logprob`` its log, ``raw_generation`` and
  ``sentences`` are null, and the evidence is the best window's character span when the text took
  more than one window (null when the whole text was one input).

:raises ClassifyModelError: from :meth:`ClassifyTask.check_model`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import pyarrow as pa

from biogpt.task_spec import TaskSettings
from schemas import labels as _labels

from . import base
from .decoding import GreedyDecoder
from .hoc_labels import EMPTY, LABELS, SEPARATOR, LabelParse, parse_labels
from .ner_spans import plan_windows, tokenize
from .options import ClassifyOptions
from .re_format import EOS_ID, build_source, echo_prompt, prompt_input, prompt_tokens
from .re_grammar import sentence_spans

SEQUENCE = "BioGptForSequenceClassification"
REQUIRES = (
    'the fine-tuned HoC prompt checkpoint (`biomine models pull dc-hoc`, then model = "biogpt:dc-hoc"; '
    f"or `biomine convert fairseq ... --task dc-hoc`), or a {SEQUENCE} checkpoint with id2label"
)
MULTI_LABEL = "multi_label_classification"
#: The probability from which a multi-label classifier names a label.
THRESHOLD = 0.5


class ClassifyModelError(base.WrongModelError):
    """The model directory is not a checkpoint the ``classify`` task can run."""


@dataclass(frozen=True)
class ClassifyModel:
    """What the task reads from a checkpoint: ``kind`` ``prompt`` (the HoC checkpoint: its
    ``settings``) or ``sequence`` (a sequence classifier: its ``labels`` in id order, whether it is
    ``multi_label``, its ``max_positions``)."""

    kind: str
    settings: TaskSettings | None = None
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    max_positions: int = 0


def checked_model(model_dir: str) -> ClassifyModel:
    """The :class:`ClassifyModel` of ``model_dir`` after checking the task can run it (config.json
    and biomine_task.json only).

    :raises ClassifyModelError: see :func:`checked_settings`; for a sequence classifier, no
        ``id2label`` of ids 0..n-1, fewer than two labels, or a regression ``problem_type``.
    """
    config = _config(model_dir)
    if base.architecture(config) != SEQUENCE:
        return ClassifyModel("prompt", settings=checked_settings(model_dir))
    id2label = config.get("id2label")
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()} if isinstance(id2label, dict) else {}
    except (TypeError, ValueError):
        by_id = {}
    if len(by_id) < 2 or sorted(by_id) != list(range(len(by_id))):
        raise ClassifyModelError(
            f"classify: {model_dir}/config.json needs an id2label of at least two labels with ids 0..n-1 "
            f"(a {SEQUENCE} checkpoint names its classes there)",
            setting="model",
        )
    kind = config.get("problem_type")
    if kind not in (None, "single_label_classification", MULTI_LABEL):
        raise ClassifyModelError(
            f"classify: {model_dir} has problem_type {kind!r}; classify reads single_label_classification "
            f"(softmax) or {MULTI_LABEL} (sigmoid)",
            setting="model",
        )
    return ClassifyModel(
        "sequence",
        labels=tuple(by_id[i] for i in range(len(by_id))),
        multi_label=kind == MULTI_LABEL,
        max_positions=int(config.get("max_position_embeddings", 1024)),
    )


def _config(model_dir: str) -> dict[str, Any]:
    try:
        return base.read_config(model_dir, "classify")
    except base.WrongModelError as exc:
        raise ClassifyModelError(str(exc), setting="model") from None


def checked_settings(model_dir: str) -> TaskSettings:
    """The :class:`TaskSettings` of HoC checkpoint ``model_dir``, after checking it is one (reads only
    config.json and biomine_task.json: :func:`pipeline.tasks.base.prompt_settings`).

    :raises ClassifyModelError: no config.json, a classification head, no or an invalid
        ``biomine_task.json`` (a base BioGPT, an NER model), a checkpoint of another task (QA, RE:
        the message says which), or prompt ids outside the vocabulary.
    """
    return base.prompt_settings(
        model_dir,
        "classify",
        f"classify needs {REQUIRES}",
        error=ClassifyModelError,
        family=("hoc",),
        kind="a document-classification one",
    )


@functools.lru_cache(maxsize=8)
def _model(model_dir: str) -> ClassifyModel:
    """The checked checkpoint, read once per process (prepare runs in many Ray tasks)."""
    return checked_model(model_dir)


def windows(ids_offsets: tuple[list[int], list[tuple[int, int]]], max_positions: int) -> tuple[list, list]:
    """The sequence classifier's inputs of one text (``[</s>] + window``) and each window's character
    span (from its first to its last piece that covers a character)."""
    ids, offsets = ids_offsets
    window = max(max_positions - 1, 1)
    inputs, spans = [], []
    for start, end in plan_windows(len(ids), window, max(1, window * 3 // 4)) if ids else []:
        inputs.append([EOS_ID] + ids[start:end])
        covered = [o for o in offsets[start:end] if o[1] > o[0]] or [offsets[start], offsets[end - 1]]
        spans.append([covered[0][0], covered[-1][1]])
    return inputs, spans


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
    generations: Sequence[str | None],
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
    def check_model(cls, options: ClassifyOptions) -> ClassifyModel:
        """The checkpoint's :class:`ClassifyModel` (:func:`checked_model`); cheap.

        :raises ClassifyModelError: see :func:`checked_model`.
        """
        return checked_model(options.model)

    @classmethod
    def prepare(cls, batch: Any, options: ClassifyOptions) -> pa.Table:
        """Add ``_inputs`` (the prompt ids of each sentence; for a sequence classifier the ids of
        each window), ``_spans`` (each sentence's or window's offsets) and ``_text``
        (``title + " " + abstract``)."""
        model = _model(options.model)
        tokenizer = base.tokenizer_for(options.model)
        inputs: list[list[list[int]]] = []
        spans: list[list[list[int]]] = []
        texts: list[str] = []
        docs = base.documents(batch)
        if model.kind == "sequence":
            titles, abstracts = docs.column("title").to_pylist(), docs.column("abstract").to_pylist()
            texts = [base.article_text(t, a) for t, a in zip(titles, abstracts)]
            for encoded in tokenize(tokenizer, texts) if texts else []:
                doc_inputs, doc_spans = windows(encoded, model.max_positions)
                inputs.append(doc_inputs)
                spans.append(doc_spans)
            return base.prepared(docs, cls.prepared_schema, {"_inputs": inputs, "_spans": spans, "_text": texts})
        settings = model.settings
        assert settings is not None  # a prompt checkpoint
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
        self.model = _model(self.model_dir)
        self.model_id = base.model_id(self.model_dir)
        self.max_new_tokens = options.max_new_tokens
        if self.model.kind == "sequence":
            from biogpt.model import BioGptForSequenceClassification

            self.classifier = base.load_model(
                BioGptForSequenceClassification, self.model_dir, options.dtype, options.device, "classify"
            )
            return
        assert self.model.settings is not None  # a prompt checkpoint
        self.settings = self.model.settings
        self.decoder = GreedyDecoder.for_task(self.model_dir, "classify", options, self.settings.max_target_positions)
        tokenizer = self.decoder.tokenizer
        self.prompt_tokens = prompt_tokens(tokenizer, self.settings)
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
        if self.model.kind == "sequence":
            return self._classify_windows(pmids, versions, texts, per_doc, spans)
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

    def window_probabilities(self, inputs: list[list[int]]) -> list[list[float]]:
        """Each input's label probabilities (sigmoid for a multi-label head, else softmax), in
        right-padded chunks of ``batch_size`` (the head pools the last real token, so padding and
        chunking change nothing beyond floating-point noise)."""
        import torch

        out: list[list[float]] = []
        pad_id = self.classifier.config.pad_token_id
        device = self.classifier.device
        with torch.inference_mode():
            for c in range(0, len(inputs), self.options.batch_size):
                chunk = inputs[c : c + self.options.batch_size]
                ids = base.pad(chunk, pad_id).to(device)
                mask = base.pad([[1] * len(x) for x in chunk], 0).to(device)
                logits = self.classifier(input_ids=ids, attention_mask=mask).logits.float()
                probs = torch.sigmoid(logits) if self.model.multi_label else torch.softmax(logits, dim=-1)
                out.extend(probs.cpu().tolist())
        return out

    def _classify_windows(
        self, pmids: list[int], versions: list[int], texts: list[str], per_doc: list[list[list[int]]], spans: list
    ) -> list[list[dict[str, Any]]]:
        """Rows of a sequence classifier (module docstring): all windows of the batch in one pass."""
        flat = [ids for doc in per_doc for ids in doc]
        probs = self.window_probabilities(flat) if flat else []
        out: list[list[dict[str, Any]]] = []
        k = 0
        for i, (pmid, version) in enumerate(zip(pmids, versions)):
            n = len(per_doc[i])
            parses: list[LabelParse] = []
            scores: list[list[float | None] | None] = []
            for p in probs[k : k + n]:
                if self.model.multi_label:
                    picked = [j for j, q in enumerate(p) if q >= THRESHOLD]
                else:
                    picked = [max(range(len(p)), key=lambda j: p[j])]
                names = tuple(self.model.labels[j] for j in picked)
                parses.append(LabelParse("ok", names, names))
                scores.append([math.log(p[j]) if p[j] > 0 else None for j in picked])
            k += n
            rows = document_rows(
                parses,
                scores,
                [tuple(s) for s in spans[i]],
                [None] * n,
                text=str(texts[i]),
                pmid=pmid,
                version=version,
                model_id=self.model_id,
            )
            for row in rows:
                row["sentences"] = None
                if n == 1:  # the whole text was the input: no span to point at
                    row["evidence_start"] = row["evidence_end"] = row["evidence_text"] = None
            out.append(rows)
        return out
