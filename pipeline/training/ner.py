"""Fine-tuning BioGPT as a token classifier for NER (``biomine train ner``): :func:`train_ner`.

Contract:

- :func:`train_ner` fine-tunes a base checkpoint (a causal LM gets a new, logged classifier head) on
  a PubTator file as :class:`NerTrainingSettings` say, and writes a model directory that the ``ner``
  task (:class:`pipeline.tasks.ner.NerTask`) runs: ``config.json`` (``architectures`` =
  ``BioGptForTokenClassification``, ``id2label`` = the scheme), ``model.safetensors``, the tokenizer
  and ``biomine_ner.json`` (scheme, types, base, data, epochs, final loss, gold spans that could not
  be tagged exactly). Deterministic for a ``seed`` on one device.
- Long documents are windowed as at inference (the task's :func:`~pipeline.tasks.ner.window_settings`
  and :func:`~pipeline.tasks.ner.tokenize`), so nothing is truncated in either; the loop is
  :func:`pipeline.training.loop.fit`.

User documentation: ``docs/ner.md``.

:raises DataFormatError: a PubTator file that is missing, malformed, or has no documents or mentions.
:raises NerTrainingError: a base directory without ``config.json``, a non-empty output directory
    (without ``overwrite``), or training settings that cannot work.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from biogpt.errors import BioMineError
from pipeline.errors import DataFormatError, NerTrainingError, WrongModelError
from pipeline.tasks import base as _base
from pipeline.tasks.ner import ARCHITECTURE, EOS, labels_of, pad, tokenize, window_settings
from pipeline.tasks.ner_spans import IGNORE_INDEX, LabelSchemeError, Span, encode_spans, label_list, plan_windows
from pipeline.tasks.pubtator import PubTatorDocument, read_pubtator

from .loop import TrainingSettings, check_settings, fit, save_fitted

log = logging.getLogger(__name__)

TRAINING_FILE = "biomine_ner.json"


@dataclass(frozen=True, kw_only=True)
class NerTrainingSettings(TrainingSettings):
    """A ``biomine train ner`` run: :class:`~pipeline.training.loop.TrainingSettings` (``data`` is a
    PubTator file, ``batch_size`` counts windows) and the label and window settings below."""

    #: ``BIO`` or ``BIOES`` (``--scheme``).
    scheme: str = "BIO"
    #: The entity types to learn (``--types``); None: every mention type in ``data``, sorted.
    types: Sequence[str] | None = None
    #: Start distance of the windows over long documents; None: 3/4 of a window (``--stride``).
    stride: int | None = None


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


def _base_labels(base: Path) -> list[str] | None:
    """The label list of a base that is already a token classifier (continued training), else None."""
    config = json.loads((base / "config.json").read_text())
    if _base.architecture(config) != ARCHITECTURE:
        return None
    try:
        return labels_of(config, str(base))
    except WrongModelError:
        return None


def train_ner(settings: NerTrainingSettings) -> dict[str, Any]:
    """Fine-tune ``settings.base`` for NER on the PubTator file ``settings.data`` and save the model
    into ``settings.out``.

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
    data, base, out = check_settings(settings, NerTrainingError)
    scheme = settings.scheme
    docs = _read_training_data(data)
    found = sorted({m.type for doc in docs for m in doc.mentions})
    types = list(settings.types) if settings.types else found
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
    window, stride = window_settings(int(config.get("max_position_embeddings", 1024)), settings.stride, str(base))

    # Examples: one per window, input [</s>] + window ids, labels [-100] + window tags.
    examples: list[tuple[list[int], list[int]]] = []
    unaligned, conflicts, mentions, skipped = [], [], 0, 0
    encoded = tokenize(tok, [doc.text for doc in docs])
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
            examples.append(([EOS] + ids[start:end], [IGNORE_INDEX] + enc.tags[start:end]))
    for pmid, span in unaligned[:5]:
        log.info(
            "PMID %s: gold span %d-%d %r does not start/end on a token boundary; tagged by its tokens",
            pmid,
            span.start,
            span.end,
            span.text,
        )
    for pmid, span in conflicts[:5]:
        log.info(
            "PMID %s: gold span %d-%d %r overlaps an earlier span and is not tagged",
            pmid,
            span.start,
            span.end,
            span.text,
        )

    dev = _base.resolve_device(settings.device)
    torch.manual_seed(settings.seed)  # the new head's initialisation and dropout
    id2label = dict(enumerate(labels))
    try:
        model = BioGptForTokenClassification.from_pretrained(base, dtype=torch.float32, device=dev, id2label=id2label)
    except BioMineError as exc:
        raise NerTrainingError(f"cannot load base model {base}: {exc}") from None

    def collate(chunk: Sequence[tuple[list[int], list[int]]]) -> dict[str, Any]:
        return {
            "input_ids": pad([c[0] for c in chunk], model.config.pad_token_id).to(dev),
            "attention_mask": pad([[1] * len(c[0]) for c in chunk], 0).to(dev),
            "labels": pad([c[1] for c in chunk], IGNORE_INDEX).to(dev),
        }

    step, epoch_loss = fit(model, examples, collate, settings, dev, desc="train ner")

    save_fitted(model, tok, out, ARCHITECTURE)
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
        "epochs": settings.epochs,
        "steps": step,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "freeze_body": settings.freeze_body,
        "seed": settings.seed,
        "device": str(dev),
        "final_loss": epoch_loss,
        "unaligned_spans": len(unaligned),
        "conflicting_spans": len(conflicts),
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
