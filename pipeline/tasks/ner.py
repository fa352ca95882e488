"""Named-entity recognition with a fine-tuned BioGPT token classifier: the ``ner`` task, training, evaluation.

No NER checkpoint of BioGPT is published, so users fine-tune one on PubTator data (BC5CDR's format)
with :func:`train_ner` (``biomine train ner``), check it with :func:`evaluate_ner`
(``biomine eval ner``) and run it over PubMed with :class:`NerTask` (``[tasks.ner]`` in a job).
User documentation: ``docs/ner.md``.

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
  way, so nothing is truncated in either.
- Outputs do not depend on which documents share a batch (windows are right-padded under a causal
  mask, so padding never reaches a real token) beyond floating-point noise.
- :func:`train_ner` fine-tunes a base checkpoint (a causal LM gets a new, logged classifier head)
  on a PubTator file and writes a model directory: ``config.json`` (``architectures`` =
  ``BioGptForTokenClassification``, ``id2label`` = the scheme), ``model.safetensors``, the tokenizer
  and ``biomine_ner.json`` (scheme, types, base, data, epochs, final loss, gold spans that could not
  be tagged exactly). Deterministic for a ``seed`` on one device.
- :func:`evaluate_ner` scores a checkpoint on a PubTator file, strictly (same document, start, end
  and type; :func:`pipeline.tasks.ner_spans.mention_scores`); :func:`format_ner_report` prints it.

:raises WrongModelError: a checkpoint that is not an NER token classifier (names the directory and
    the fix).
:raises DataFormatError: a PubTator file that is missing, malformed, or has no documents or mentions.
:raises NerTrainingError: a base directory without ``config.json``, a non-empty output directory
    (without ``overwrite``), or training settings that cannot work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from biogpt.errors import BioMineError, ConfigError
from pipeline.errors import DataFormatError, NerTrainingError, WrongModelError
from schemas import entities as _entities

from . import base as _base
from .linking import link_columns, load_linker
from .ner_spans import (
    IGNORE_INDEX,
    LabelSchemeError,
    Span,
    decode_tags,
    encode_spans,
    entity_rows,
    label_list,
    mention_scores,
    merge_windows,
    parse_label_list,
    plan_windows,
)
from .options import NerOptions
from .pubtator import PubTatorDocument, read_pubtator
from .registry import DATASETS

log = logging.getLogger(__name__)

ARCHITECTURE = "BioGptForTokenClassification"
TRAINING_FILE = "biomine_ner.json"
_NER_COL, _TEXT_COL = "_ner", "_text"
_EOS = 2  # the </s> every BioGPT input starts with (fairseq's start symbol)


# --- shared by training and inference ------------------------------------------------------------


def _labels_of(config: dict[str, Any], where: str) -> list[str]:
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


def _window_settings(max_positions: int, stride: int | None, where: str) -> tuple[int, int]:
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


def _tokenize(tok, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, offsets) per text, without the leading </s> (windows add their own)."""
    enc = tok(list(texts), return_offsets_mapping=True)
    out = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        # A single text is [</s>] + pieces; everything after the first id indexes the text.
        out.append((list(ids[1:]), [tuple(o) for o in offsets[1:]]))
    return out


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


def _pad(rows: Sequence[Sequence[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


# --- the task ------------------------------------------------------------------------------------


class NerTask(_base.Task[NerOptions]):
    """The ``ner`` task (see the module docstring and :mod:`pipeline.tasks.base`)."""

    name = "ner"
    dataset = DATASETS["ner"]
    schema = _entities.ENTITY_SCHEMA
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
        labels = _labels_of(config, str(model_dir))
        try:
            parse_label_list(labels)
        except LabelSchemeError as exc:
            raise WrongModelError(
                f"ner: {model_dir}/config.json id2label is not a tagging scheme ({exc}); NER needs {cls.requires}"
            ) from None
        _window_settings(int(config.get("max_position_embeddings", 1024)), options.stride, str(model_dir))

    @classmethod
    def prepare(cls, batch: dict[str, Any], options: NerOptions) -> dict[str, Any]:
        """Add ``_text`` (the article text) and ``_ner`` (per document: ``ids``, ``offsets``, ``windows``)."""
        model_dir = options.model
        window, stride = _window_settings(_max_positions(model_dir), options.stride, model_dir)
        titles, abstracts = _base.as_list(batch["title"]), _base.as_list(batch["abstract"])
        texts = [_base.article_text(t, a) for t, a in zip(titles, abstracts)]
        encoded = _tokenize(_base.tokenizer_for(model_dir), texts) if texts else []
        inputs = []
        for ids, offsets in encoded:
            windows = plan_windows(len(ids), window, stride) if ids else []
            inputs.append({"ids": ids, "offsets": offsets, "windows": windows})
        batch = dict(batch)
        batch[_TEXT_COL] = texts
        batch[_NER_COL] = inputs
        return batch

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

        out: list[tuple[list[int], list[float]] | None] = [None] * len(inputs)
        # Longest first so each chunk pads little; a causal model never lets right padding reach a
        # real token, so the chunking changes nothing beyond floating-point noise of the kernels.
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        device = self.model.device
        with torch.inference_mode():
            for c in range(0, len(order), self.batch_size):
                chunk = order[c : c + self.batch_size]
                ids = _pad([inputs[i] for i in chunk], self.model.config.pad_token_id).to(device)
                mask = _pad([[1] * len(inputs[i]) for i in chunk], 0).to(device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                probs, tags = torch.softmax(logits, dim=-1).max(dim=-1)
                probs, tags = probs.cpu().tolist(), tags.cpu().tolist()
                for row, i in enumerate(chunk):
                    n = len(inputs[i])
                    out[i] = (tags[row][1:n], probs[row][1:n])
        return out  # type: ignore[return-value]

    def __call__(self, batch: dict[str, Any]) -> list[list[dict[str, Any]]]:
        docs = _base.as_list(batch[_NER_COL])
        texts = _base.as_list(batch[_TEXT_COL])
        pmids = _base.as_list(batch["pmid"])
        versions = _base.as_list(batch["version"]) if "version" in batch else [1] * len(docs)
        inputs, owners = [], []
        for d, doc in enumerate(docs):
            for start, end in doc["windows"]:
                inputs.append([_EOS] + doc["ids"][start:end])
                owners.append(d)
        predictions = self._predict(inputs) if inputs else []
        per_doc: list[list[tuple[list[int], list[float]]]] = [[] for _ in docs]
        for d, pred in zip(owners, predictions):
            per_doc[d].append(pred)
        results = []
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


# --- training ------------------------------------------------------------------------------------


def _read_training_data(data: str | Path) -> list[PubTatorDocument]:
    docs = read_pubtator(data)
    if not docs:
        raise DataFormatError(f"{data} holds no PubTator documents (PMID|t|title, PMID|a|abstract, mention lines)")
    if not any(doc.mentions for doc in docs):
        raise DataFormatError(
            f"{data} has {len(docs)} documents but no mention lines "
            "(PMID<TAB>start<TAB>end<TAB>text<TAB>type<TAB>ids): nothing to learn from"
        )
    return docs


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NerTrainingError(f"output {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NerTrainingError(
            f"output directory {out} is not empty: choose a new one, or pass --force (overwrite=True) to write into it"
        )


def _base_labels(base: Path) -> list[str] | None:
    """The label list of a base that is already a token classifier (continued training), else None."""
    config = json.loads((base / "config.json").read_text())
    if _base.architecture(config) != ARCHITECTURE:
        return None
    try:
        return _labels_of(config, str(base))
    except WrongModelError:
        return None


def train_ner(
    data: str | Path,
    base: str | Path,
    out: str | Path,
    *,
    scheme: str = "BIO",
    types: Sequence[str] | None = None,
    epochs: int = 5,
    lr: float = 5e-5,
    batch_size: int = 8,
    freeze_body: bool = False,
    seed: int = 0,
    device: str | None = None,
    stride: int | None = None,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
    log_every: int = 50,
) -> dict[str, Any]:
    """Fine-tune ``base`` for NER on the PubTator file ``data`` and save the model into ``out``.

    ``types`` (default: every mention type in ``data``, sorted) and ``scheme`` (``BIO``/``BIOES``)
    make the label list; mentions of other types are left untagged. Long documents are windowed as
    at inference. AdamW with ``warmup`` (a fraction of the steps) then linear decay, gradient
    clipping at 1.0, float32 weights (bfloat16 autocast on CUDA). ``freeze_body`` trains only the
    classifier. Returns the summary also written to ``out/biomine_ner.json``.

    :raises DataFormatError: ``data`` is missing, malformed, or has no documents or mentions.
    :raises NerTrainingError: ``base`` has no config.json, ``out`` is not empty (without
        ``overwrite``), a bad scheme/type list, or a base classifier trained for other labels.
    """
    import torch

    from biogpt.model import BioGptForTokenClassification
    from biogpt.tokenizer import BioGptTokenizer

    started = time.perf_counter()
    data, base, out = Path(data), Path(base), Path(out)
    if not (base / "config.json").is_file():
        raise NerTrainingError(
            f"base model {base} has no config.json: pass a BioGPT model directory "
            "(e.g. one written by `biomine convert fairseq`)"
        )
    _check_out_dir(out, overwrite)
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise NerTrainingError(f"epochs ({epochs}) and batch size ({batch_size}) must be >= 1 and lr ({lr}) > 0")
    docs = _read_training_data(data)
    found = sorted({m.type for doc in docs for m in doc.mentions})
    types = list(types) if types else found
    try:
        labels = label_list(types, scheme)
    except LabelSchemeError as exc:
        raise NerTrainingError(f"{data}: {exc}; choose the types with --types, e.g. --types Chemical,Disease") from None
    absent = [t for t in types if t not in found]
    if len(absent) == len(types):
        raise DataFormatError(f"{data} has no mentions of the types {types} (it has {found})")
    if absent:
        log.warning("%s has no mentions of %s; the model will not learn them", data, absent)
    previous = _base_labels(base)
    if previous is not None and previous != labels:
        raise NerTrainingError(
            f"base {base} is already an NER model with labels {previous}, not {labels}: start "
            "from the base language model, or train with the same --types and --scheme"
        )

    tok = BioGptTokenizer.from_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    window, stride = _window_settings(int(config.get("max_position_embeddings", 1024)), stride, str(base))

    # Examples: one per window, input [</s>] + window ids, labels [-100] + window tags.
    examples: list[tuple[list[int], list[int]]] = []
    unaligned, conflicts, mentions, skipped = [], [], 0, 0
    encoded = _tokenize(tok, [doc.text for doc in docs])
    for doc, (ids, offsets) in zip(docs, encoded):
        spans = [Span(m.start, m.end, m.type, m.text) for m in doc.mentions if m.type in types]
        skipped += len(doc.mentions) - len(spans)
        mentions += len(spans)
        if not ids:
            continue
        enc = encode_spans(offsets, spans, labels)
        unaligned += [(doc.pmid, s) for s in enc.unaligned]
        conflicts += [(doc.pmid, s) for s in enc.conflicts]
        for start, end in plan_windows(len(ids), window, stride):
            examples.append(([_EOS] + ids[start:end], [IGNORE_INDEX] + enc.tags[start:end]))
    for pmid, s in unaligned[:5]:
        log.info(
            "PMID %s: gold span %d-%d %r does not start/end on a token boundary; tagged by its tokens",
            pmid,
            s.start,
            s.end,
            s.text,
        )
    for pmid, s in conflicts[:5]:
        log.info("PMID %s: gold span %d-%d %r overlaps an earlier span and is not tagged", pmid, s.start, s.end, s.text)

    dev = _base.resolve_device(device)
    torch.manual_seed(seed)  # the new head's initialisation and dropout
    id2label = dict(enumerate(labels))
    try:
        model = BioGptForTokenClassification.from_pretrained(base, dtype=torch.float32, device=dev, id2label=id2label)
    except BioMineError as exc:
        raise NerTrainingError(f"cannot load base model {base}: {exc}") from None
    if freeze_body:
        for p in model.biogpt.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * epochs
    warm = int(total * warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    )
    generator = torch.Generator().manual_seed(seed)  # shuffling, independent of other RNG use

    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="train ner", unit="step", disable=not progress)
    model.train()
    step, epoch_loss = 0, float("nan")
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(examples), generator=generator).tolist()
            losses = []
            for b in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[b : b + batch_size]]
                ids = _pad([c[0] for c in chunk], model.config.pad_token_id).to(dev)
                mask = _pad([[1] * len(c[0]) for c in chunk], 0).to(dev)
                targets = _pad([c[1] for c in chunk], IGNORE_INDEX).to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    loss = model(input_ids=ids, attention_mask=mask, labels=targets).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
                if log_every and step % log_every == 0:
                    log.info("step %d/%d epoch %d loss %.4f", step, total, epoch + 1, losses[-1])
            epoch_loss = sum(losses) / len(losses)
            log.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, epoch_loss)
    finally:
        bar.close()

    model.eval().to("cpu")
    # The config came from the base: make it say what it now is, so check_model and transformers
    # (AutoModelForTokenClassification) read it as a token classifier with these labels.
    model.config.extra["architectures"] = [ARCHITECTURE]
    model.config.torch_dtype = "float32"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    summary = {
        "out": str(out),
        "base": str(base),
        "data": str(data),
        "scheme": scheme,
        "types": types,
        "labels": labels,
        "documents": len(docs),
        "mentions": mentions,
        "mentions_of_other_types": skipped,
        "windows": len(examples),
        "window": window,
        "stride": stride,
        "epochs": epochs,
        "steps": step,
        "lr": lr,
        "batch_size": batch_size,
        "freeze_body": freeze_body,
        "seed": seed,
        "device": str(dev),
        "final_loss": epoch_loss,
        "unaligned_spans": len(unaligned),
        "conflicting_spans": len(conflicts),
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- evaluation ----------------------------------------------------------------------------------


def _score_dict(score) -> dict[str, Any]:
    return {
        "precision": score.precision,
        "recall": score.recall,
        "f1": score.f1,
        "tp": score.tp,
        "fp": score.fp,
        "fn": score.fn,
    }


def predict_pubtator(
    task: NerTask, docs: Sequence[PubTatorDocument], *, stride: int | None = None, batch_size: int = 16
) -> list[list[dict[str, Any]]]:
    """Entity rows of each PubTator document, through ``prepare`` and ``__call__`` as a job runs them."""
    options = dataclasses.replace(task.options, stride=stride)
    rows: list[list[dict[str, Any]]] = []
    for b in range(0, len(docs), batch_size):
        chunk = docs[b : b + batch_size]
        batch = {
            "pmid": [int(d.pmid) for d in chunk],
            "version": [1] * len(chunk),
            "title": [d.title for d in chunk],
            "abstract": [d.abstract for d in chunk],
        }
        rows += task(NerTask.prepare(batch, options))
    return rows


def evaluate_ner(
    model_dir: str | Path,
    data: str | Path,
    *,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = "auto",
    stride: int | None = None,
) -> dict[str, Any]:
    """Strict mention-level scores of the NER model ``model_dir`` on the PubTator file ``data``.

    Gold mentions of types the model does not know are left out (counted in ``gold_other_types``).
    Returns ``{"documents", "per_type": {type: {precision, recall, f1, tp, fp, fn}}, "micro", ...}``.

    :raises DataFormatError: ``data`` is missing, malformed or holds no documents.
    :raises WrongModelError: ``model_dir`` is not an NER checkpoint.
    """
    docs = read_pubtator(data)
    if not docs:
        raise DataFormatError(f"{data} holds no PubTator documents (PMID|t|title, PMID|a|abstract, mention lines)")
    task = NerTask(NerOptions(model=str(model_dir), dtype=dtype or "auto", batch_size=batch_size, device=device))
    rows = predict_pubtator(task, docs, stride=stride, batch_size=batch_size)
    gold, other = [], {}
    for doc in docs:
        for m in doc.mentions:
            if m.type in task.types:
                gold.append((int(doc.pmid), m.start, m.end, m.type))
            else:
                other[m.type] = other.get(m.type, 0) + 1
    predicted = [(r["pmid"], r["start"], r["end"], r["label"]) for doc_rows in rows for r in doc_rows]
    scores = mention_scores(gold, predicted)
    # mention_scores lists only types seen in gold or predictions; the report lists every model type.
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}
    per_type = {t: _score_dict(scores[t]) if t in scores else dict(zero) for t in task.types}
    return {
        "model": str(model_dir),
        "model_id": task.model_id,
        "data": str(data),
        "documents": len(docs),
        "scheme": task.scheme,
        "types": list(task.types),
        "gold_mentions": len(set(gold)),
        "predicted_mentions": len(set(predicted)),
        "gold_other_types": other,
        "per_type": per_type,
        "micro": _score_dict(scores["micro"]),
    }


def format_ner_report(report: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate_ner` report."""
    head = (
        f"NER {report.get('model_id', report.get('model', ''))} on {report.get('data', '')}: "
        f"{report['documents']} documents, strict match (document, start, end, type)"
    )
    width = max([len("micro")] + [len(t) for t in report["per_type"]])
    lines = [head, f"{'type':<{width}}  {'precision':>9}  {'recall':>7}  {'f1':>7}  {'tp':>6}  {'fp':>6}  {'fn':>6}"]
    rows = list(report["per_type"].items()) + [("micro", report["micro"])]
    for name, s in rows:
        lines.append(
            f"{name:<{width}}  {s['precision']:>9.4f}  {s['recall']:>7.4f}  {s['f1']:>7.4f}  "
            f"{s['tp']:>6}  {s['fp']:>6}  {s['fn']:>6}"
        )
    if report.get("gold_other_types"):
        other = ", ".join(f"{t}: {n}" for t, n in sorted(report["gold_other_types"].items()))
        lines.append(f"not scored (types the model does not tag): {other}")
    return "\n".join(lines)
