"""Fine-tuning BioGPT as a multi-label document classifier (``biomine train classify``):
:func:`train_classify`.

Contract:

- Data (:func:`read_labelled`): a UTF-8 TSV in the HoC layout, one example per non-blank line
  ``text<TAB>label|label`` (microsoft/BioGPT ``data/HoC/raw/*.tsv``). Labels are joined by ``|``,
  each piece stripped; ``empty`` means "none of the labels". A line without exactly one TAB, an
  empty text, an empty label field or piece, or ``empty`` next to another label is a
  :class:`~pipeline.errors.DataFormatError` naming the file and line number.
- Labels: every label of the file except ``empty``, sorted, are the classes (``id2label``), at least
  two. ``empty`` is NOT a class of its own: it is the all-zero target, so "no label" is what the
  classifier says when every sigmoid stays below 0.5 - it cannot say "empty" and a hallmark at once.
  The ``classify`` task already writes no row for ``empty``; HoC's scoring
  (:func:`pipeline.evaluation.hoc.micro_f1`) counts ``empty`` as a class, so to score a model that
  way, read an empty prediction as ``empty``.
- Model: ``BioGptForSequenceClassification`` from ``base`` (a causal LM gets a new head, initialised
  from ``seed`` and logged), ``problem_type = "multi_label_classification"`` (sigmoid, binary
  cross-entropy on a 0/1 vector per example). Inputs are exactly what the task reads at inference
  (:func:`pipeline.tasks.classify.windows` over :func:`pipeline.tasks.ner_spans.tokenize`):
  ``[</s>] + ids``, a text longer than the positions split into windows that each carry the text's
  labels. The loop is :func:`pipeline.training.loop.fit`.
- Output: a model directory that ``[tasks.classify]`` runs (:func:`pipeline.tasks.classify.checked_model`
  accepts it): ``config.json`` (``architectures`` = ``BioGptForSequenceClassification``,
  ``id2label``, ``problem_type``), ``model.safetensors``, the tokenizer and ``biomine_classify.json``
  (labels, counts, settings, final loss). Deterministic for a ``seed`` on one device.

User documentation: ``docs/tasks.md`` ("Document classification").

:raises DataFormatError: a TSV that is missing, not UTF-8, malformed (line named) or has fewer than
    two labels besides ``empty``.
:raises ClassifyTrainingError: a base directory without ``config.json``, a non-empty output
    directory (without ``overwrite``), settings that cannot work, or a base classifier trained for
    other labels.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from biogpt.errors import BioMineError
from pipeline.errors import ClassifyTrainingError, DataFormatError
from pipeline.tasks import base as _base
from pipeline.tasks.classify import MULTI_LABEL, SEQUENCE, windows
from pipeline.tasks.hoc_labels import EMPTY, SEPARATOR
from pipeline.tasks.ner_spans import tokenize

from .loop import TrainingSettings, check_settings, fit, save_fitted

log = logging.getLogger(__name__)

TRAINING_FILE = "biomine_classify.json"
LAYOUT = "text<TAB>label|label (`empty` for none)"


@dataclass(frozen=True, kw_only=True)
class ClassifyTrainingSettings(TrainingSettings):
    """A ``biomine train classify`` run: :class:`~pipeline.training.loop.TrainingSettings` (``data``
    is a TSV of ``text<TAB>a|b``; ``batch_size`` counts windows, one per text that fits)."""


@dataclass(frozen=True)
class Labelled:
    """One training example: its line number, text and labels (``()`` for ``empty``)."""

    line: int
    text: str
    labels: tuple[str, ...]


def read_labelled(path: str | Path) -> list[Labelled]:
    """The examples of a ``text<TAB>a|b`` file in file order (module docstring).

    :raises DataFormatError: a missing or non-UTF-8 file, a malformed line (named), no example.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataFormatError(f"{path} does not exist: pass a TSV of {LAYOUT}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path} is not UTF-8 text (byte {exc.start}): pass a TSV of {LAYOUT}") from None
    except OSError as exc:
        raise DataFormatError(f"{path} cannot be read ({exc.strerror}): pass a TSV of {LAYOUT}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}, line {number}"
        if len(fields) != 2:
            raise DataFormatError(f"{where}: {len(fields) - 1} TABs; a line is {LAYOUT}")
        text, field = fields[0].strip(), fields[1].strip()
        if not text:
            raise DataFormatError(f"{where}: no text before the TAB; a line is {LAYOUT}")
        pieces = [p.strip() for p in field.split(SEPARATOR)]
        if not all(pieces):
            raise DataFormatError(f"{where}: an empty label in `{field}`; write `{EMPTY}` for a text of no label")
        if EMPTY in pieces and len(pieces) > 1:
            raise DataFormatError(f"{where}: `{EMPTY}` means no label, so it cannot stand next to others in `{field}`")
        labels = () if pieces == [EMPTY] else tuple(dict.fromkeys(pieces))
        out.append(Labelled(number, text, labels))
    if not out:
        raise DataFormatError(f"{path} holds no example: pass a TSV of {LAYOUT}")
    return out


def _base_labels(base: Path) -> list[str] | None:
    """The labels of a base that is already a sequence classifier (continued training), else None."""
    config = json.loads((base / "config.json").read_text())
    if _base.architecture(config) != SEQUENCE or not isinstance(config.get("id2label"), dict):
        return None
    try:
        by_id = {int(k): str(v) for k, v in config["id2label"].items()}
    except (TypeError, ValueError):
        return None
    return [by_id[i] for i in sorted(by_id)]


def train_classify(settings: ClassifyTrainingSettings) -> dict[str, Any]:
    """Fine-tune ``settings.base`` as a multi-label classifier on the TSV ``settings.data`` and save
    the model into ``settings.out`` (module docstring). Returns the summary also written to
    ``out/biomine_classify.json``.

    :raises DataFormatError: see :func:`read_labelled`; fewer than two labels besides ``empty``.
    :raises ClassifyTrainingError: ``base`` has no config.json, ``out`` is not empty (without
        ``overwrite``), bad settings, or a base classifier trained for other labels.
    """
    import torch

    from biogpt.model import BioGptForSequenceClassification
    from biogpt.tokenizer import BioGptTokenizer

    started = time.perf_counter()
    data, base, out = check_settings(settings, ClassifyTrainingError)
    examples_in = read_labelled(data)
    labels = sorted({label for ex in examples_in for label in ex.labels})
    if len(labels) < 2:
        raise DataFormatError(
            f"{data} names {len(labels)} label(s) besides `{EMPTY}` ({', '.join(labels) or 'none'}); "
            "a classifier needs at least two"
        )
    previous = _base_labels(base)
    if previous is not None and previous != labels:
        raise ClassifyTrainingError(
            f"base {base} is already a classifier of the labels {', '.join(previous)}, not {', '.join(labels)}: "
            "start from the base language model, or train on data of the same labels"
        )

    tok = BioGptTokenizer.from_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    max_positions = int(config.get("max_position_embeddings", 1024))
    index = {label: i for i, label in enumerate(labels)}
    # One example per window: the inputs the task builds at inference, the text's 0/1 label vector.
    examples: list[tuple[list[int], list[float]]] = []
    for ex, encoded in zip(examples_in, tokenize(tok, [ex.text for ex in examples_in])):
        target = [0.0] * len(labels)
        for label in ex.labels:
            target[index[label]] = 1.0
        inputs, _ = windows(encoded, max_positions)
        examples += [(ids, target) for ids in inputs]
    if not examples:
        raise DataFormatError(f"{data}: no text gives a token; pass a TSV of {LAYOUT}")

    dev = _base.resolve_device(settings.device)
    torch.manual_seed(settings.seed)  # the new head's initialisation and dropout
    try:
        model = BioGptForSequenceClassification.from_pretrained(
            base, dtype=torch.float32, device=dev, id2label=dict(enumerate(labels)), problem_type=MULTI_LABEL
        )
    except BioMineError as exc:
        raise ClassifyTrainingError(f"cannot load base model {base}: {exc}") from None

    def collate(chunk: Sequence[tuple[list[int], list[float]]]) -> dict[str, Any]:
        return {
            "input_ids": _base.pad([c[0] for c in chunk], model.config.pad_token_id).to(dev),
            "attention_mask": _base.pad([[1] * len(c[0]) for c in chunk], 0).to(dev),
            "labels": torch.tensor([c[1] for c in chunk], dtype=torch.float32, device=dev),
        }

    step, epoch_loss = fit(model, examples, collate, settings, dev, desc="train classify")

    save_fitted(model, tok, out, SEQUENCE)
    counts = {label: sum(label in ex.labels for ex in examples_in) for label in labels}
    summary = {
        "out": str(out),
        "base": str(base),
        "data": str(data),
        "labels": labels,
        "problem_type": MULTI_LABEL,
        "texts": len(examples_in),
        "texts_per_label": counts,
        "texts_without_label": sum(not ex.labels for ex in examples_in),
        "windows": len(examples),
        "epochs": settings.epochs,
        "steps": step,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "freeze_body": settings.freeze_body,
        "seed": settings.seed,
        "device": str(dev),
        "final_loss": epoch_loss,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
