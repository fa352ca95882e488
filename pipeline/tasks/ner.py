"""Named-entity recognition with a fine-tuned BioGPT token classifier: the ``ner`` task of a job.

No NER checkpoint of BioGPT is published, so users fine-tune one on PubTator data (BC5CDR's format)
with :func:`pipeline.training.ner.train_ner` (``biomine train ner``), check it with
:func:`pipeline.evaluation.ner.evaluate_ner` (``biomine eval ner``) and run it over PubMed with
:class:`NerTask` (``[tasks.ner]`` in a job). User documentation: ``docs/ner.md``.

Contract:

- :class:`NerTask` implements :mod:`pipeline.tasks.base`: ``check_model`` accepts only a
  ``BioGptForTokenClassification`` checkpoint whose ``id2label`` is a BIO or BIOES scheme;
  ``prepare`` tokenises ``title + " " + abstract`` with character offsets and plans windows;
  ``__call__`` returns one list of :data:`schemas.entities.ENTITY_SCHEMA` rows per document, with
  ``text == (title + " " + abstract)[start:end]`` and ``score`` = mean probability of the predicted
  tags over the mention's tokens.
- Windowing: a document longer than the model's positions is covered by windows of
  ``max_position_embeddings - 1`` tokens (each input is ``</s>`` + the window), starts ``stride``
  apart (default 3/4 of a window); each token takes the prediction of the window in which it lies
  farthest from an edge (:func:`pipeline.tasks.ner_spans.merge_windows`). Training windows the same
  way (with :func:`window_settings`, :func:`tokenize` and :data:`EOS` of this module), so nothing is
  truncated in either.
- Outputs do not depend on which documents share a batch (windows are right-padded under a causal
  mask, so padding never reaches a real token) beyond floating-point noise.

:raises WrongModelError: a checkpoint that is not an NER token classifier (names the directory and
    the fix).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import pyarrow as pa

from biogpt.errors import ConfigError
from pipeline.errors import WrongModelError
from schemas import entities as _entities

from . import base as _base
from .base import pad
from .linking import link_columns, load_linker
from .ner_spans import (
    LabelSchemeError,
    Span,
    decode_tags,
    entity_rows,
    merge_windows,
    parse_label_list,
    plan_windows,
    tokenize,
)
from .options import NerOptions

ARCHITECTURE = "BioGptForTokenClassification"
EOS = 2  # the </s> every BioGPT input starts with (fairseq's start symbol)


# --- shared by the task and its training (pipeline.training.ner) ------------------------------


def labels_of(config: dict[str, Any], where: str) -> list[str]:
    """config.json's ``id2label`` as a list in id order.

    :raises WrongModelError: no id2label, or ids that are not 0..n-1.
    """
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise WrongModelError(f"ner: {where}/config.json has no id2label: {NerTask.requires}")
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise WrongModelError(
            f"ner: {where}/config.json id2label keys must be integers, got {list(id2label)[:5]}"
        ) from None
    if sorted(by_id) != list(range(len(by_id))):
        raise WrongModelError(f"ner: {where}/config.json id2label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
    return [by_id[i] for i in range(len(by_id))]


def window_settings(max_positions: int, stride: int | None, where: str) -> tuple[int, int]:
    """(window, stride) in tokens for a model with ``max_positions`` positions."""
    window = int(max_positions) - 1  # one position goes to the leading </s>
    if window < 1:
        raise ConfigError(f"ner: {where} has max_position_embeddings={max_positions}; NER needs at least 2")
    if stride is None:
        stride = max(1, (window * 3) // 4)
    if not 1 <= int(stride) <= window:
        raise ConfigError(
            f"ner: stride={stride} must be between 1 and the window of {window} tokens "
            f"({where}: max_position_embeddings - 1); a smaller stride overlaps more"
        )
    return window, int(stride)


@functools.lru_cache(maxsize=8)
def _max_positions(model_dir: str) -> int:
    # prepare runs once per batch in many Ray tasks: read config.json once per process.
    config = _base.read_config(model_dir, "ner")
    return int(config.get("max_position_embeddings", 1024))


def document_spans(
    tags: Sequence[int],
    probs: Sequence[float] | None,
    offsets: Sequence[tuple[int, int]],
    labels: Sequence[str],
    text: str,
) -> list[Span]:
    """Entity spans of one document from its per-token tags (and their probabilities).

    Pieces with an empty span (the tail of a Moses escape: ``'`` is BPE'd as ``&a``, ``po``, ``s``,
    ``;`` of ``&apos;``) cover no character. They are left out here - and carry no label in training
    (:func:`~pipeline.tasks.ner_spans.encode_spans` ignores them) - because decode_tags would read
    them as specials and split ``Parkinson's disease`` in two.
    """
    keep = [i for i, (s, e) in enumerate(offsets) if e > s]
    return decode_tags(
        [tags[i] for i in keep],
        [offsets[i] for i in keep],
        labels,
        text,
        None if probs is None else [probs[i] for i in keep],
    )


# --- the task ------------------------------------------------------------------------------------


class NerTask(_base.Task[NerOptions]):
    """The ``ner`` task (see the module docstring and :mod:`pipeline.tasks.base`)."""

    name = "ner"
    dataset = "entities"
    schema = _entities.ENTITY_SCHEMA
    prepared_schema = pa.schema(
        [
            pa.field("_text", pa.string()),  # title + " " + abstract: what the offsets index
            pa.field("_ids", _base.IDS),  # the text's token ids
            pa.field("_offsets", pa.list_(_base.SPAN)),  # each token's character span
            pa.field("_windows", pa.list_(_base.SPAN)),  # token windows that fit the positions
        ]
    )
    Options = NerOptions
    cast_batch = staticmethod(_entities.cast_batch)
    sort_keys = ("start", "end", "label")
    requires = (
        f"a {ARCHITECTURE} checkpoint whose id2label is a BIO or BIOES scheme (train one with `biomine train ner`)"
    )

    @classmethod
    def check_model(cls, options: NerOptions) -> None:
        """Refuse anything but a token classifier with a tagging scheme; reads config.json only.

        :raises WrongModelError: names ``model_dir``, what it holds and how to get the right one.
        """
        model_dir = options.model
        config = _base.read_config(model_dir, cls.name)
        arch = _base.architecture(config)
        if arch != ARCHITECTURE:
            what = f"a {arch} checkpoint" if arch else "a checkpoint without 'architectures' in config.json"
            raise WrongModelError(f"ner: {model_dir} is {what}, but NER needs {cls.requires}")
        labels = labels_of(config, str(model_dir))
        try:
            parse_label_list(labels)
        except LabelSchemeError as exc:
            raise WrongModelError(
                f"ner: {model_dir}/config.json id2label is not a tagging scheme ({exc}); NER needs {cls.requires}"
            ) from None
        window_settings(int(config.get("max_position_embeddings", 1024)), options.stride, str(model_dir))

    @classmethod
    def prepare(cls, batch: Any, options: NerOptions) -> pa.Table:
        """The documents with ``prepared_schema``: the article text, its token ids and offsets, and
        the windows that fit the model's positions."""
        model_dir = options.model
        window, stride = window_settings(_max_positions(model_dir), options.stride, model_dir)
        docs = _base.documents(batch)
        titles, abstracts = docs.column("title").to_pylist(), docs.column("abstract").to_pylist()
        texts = [_base.article_text(t, a) for t, a in zip(titles, abstracts)]
        encoded = tokenize(_base.tokenizer_for(model_dir), texts) if texts else []
        columns: dict[str, list[Any]] = {"_text": texts, "_ids": [], "_offsets": [], "_windows": []}
        for ids, offsets in encoded:
            columns["_ids"].append(ids)
            columns["_offsets"].append([list(o) for o in offsets])
            columns["_windows"].append([list(w) for w in plan_windows(len(ids), window, stride)] if ids else [])
        return _base.prepared(docs, cls.prepared_schema, columns)

    def __init__(self, options: NerOptions):
        # Checked first: a causal LM would otherwise load with a random head and tag nonsense.
        self.options = options.check()
        self.check_model(options)
        self.linker = load_linker(options.vocabulary) if options.vocabulary else None
        from biogpt.model import BioGptForTokenClassification

        self.model_dir = options.model
        self.model = _base.load_model(
            BioGptForTokenClassification, self.model_dir, options.dtype, options.device, self.name
        )
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.scheme, self.types = parse_label_list(self.labels)
        self.model_id = _base.model_id(self.model_dir)
        self.batch_size = options.batch_size

    def _predict(self, inputs: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        """(tag ids, their probabilities) for each input's tokens after the leading </s>."""
        import torch

        out: dict[int, tuple[list[int], list[float]]] = {}  # input index -> its prediction
        # Longest first so each chunk pads little; a causal model never lets right padding reach a
        # real token, so the chunking changes nothing beyond floating-point noise of the kernels.
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        device = self.model.device
        with torch.inference_mode():
            for c in range(0, len(order), self.batch_size):
                chunk = order[c : c + self.batch_size]
                ids = pad([inputs[i] for i in chunk], self.model.config.pad_token_id).to(device)
                mask = pad([[1] * len(inputs[i]) for i in chunk], 0).to(device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                best_probs, best_tags = torch.softmax(logits, dim=-1).max(dim=-1)
                probs, tags = best_probs.cpu().tolist(), best_tags.cpu().tolist()
                for row, i in enumerate(chunk):
                    n = len(inputs[i])
                    out[i] = (tags[row][1:n], probs[row][1:n])
        return [out[i] for i in range(len(inputs))]

    def __call__(self, batch: pa.Table) -> list[list[dict[str, Any]]]:
        batch = _base.check_prepared(type(self), batch)
        docs = [
            {"ids": ids, "offsets": offsets, "windows": windows}
            for ids, offsets, windows in zip(
                batch.column("_ids").to_pylist(),
                batch.column("_offsets").to_pylist(),
                batch.column("_windows").to_pylist(),
            )
        ]
        texts = batch.column("_text").to_pylist()
        pmids = batch.column("pmid").to_pylist()
        versions = batch.column("version").to_pylist()
        inputs, owners = [], []
        for d, doc in enumerate(docs):
            for start, end in doc["windows"]:
                inputs.append([EOS] + doc["ids"][start:end])
                owners.append(d)
        predictions = self._predict(inputs) if inputs else []
        per_doc: list[list[tuple[list[int], list[float]]]] = [[] for _ in docs]
        for d, pred in zip(owners, predictions):
            per_doc[d].append(pred)
        results: list[list[dict[str, Any]]] = []
        for d, doc in enumerate(docs):
            if not doc["windows"]:
                results.append([])
                continue
            offsets = [tuple(o) for o in doc["offsets"]]
            tags, probs = merge_windows(len(offsets), [tuple(w) for w in doc["windows"]], per_doc[d])
            spans = document_spans(tags, probs, offsets, self.labels, texts[d])
            version = versions[d]
            rows = entity_rows(
                spans, pmid=int(pmids[d]), model_id=self.model_id, version=int(version) if version is not None else 1
            )
            if self.linker is not None and rows:
                links = self.linker.link_all(str(texts[d]), [(r["text"], r["label"]) for r in rows])
                for row, (link, _) in zip(rows, links):
                    row.update(link_columns(link))
            results.append(rows)
        return results
