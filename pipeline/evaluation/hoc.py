"""HoC (Hallmarks of Cancer) as microsoft/BioGPT's examples/DC-HoC scores it: gold data, labels, micro-F1.

Contract:

- :func:`read_hoc` reads ``data/HoC/raw/{split}.tsv``: one record per non-blank line
  ``sentence<TAB>labels`` (labels joined by ``|``, ``empty`` for none), in file order. The gold labels
  are the last TAB field of the stripped line (``hard_match_evaluation.py``), the sentence the first
  (``rebuild_data.py``). A gold label outside :data:`HOC_CLASSES` is an error naming the line (the
  original's binariser would drop it silently: the sign of a file of another task). The original
  repository's ``valid.tsv`` and ``test.tsv`` are identical files, so its "test" score is also its
  validation score.
- :data:`HOC_CLASSES`, :data:`LABELS` (the answer sentence), :func:`extract_labels` (``postprocess.py``
  on one line, ``None`` for its ``failed``) and :func:`label_set` live in
  :mod:`pipeline.tasks.hoc_labels`, shared with the ``classify`` job task; they are re-exported here.
- :func:`micro_f1` is ``hard_match_evaluation.py``: both sides split on ``|``, each piece stripped,
  binarised over the 11 :data:`HOC_CLASSES` (``empty`` is a class like the others: a sentence of no
  hallmark predicted ``empty`` is a true positive); pieces outside the classes - ``failed``,
  misspellings, an empty piece - are ignored, duplicates count once; then sklearn's
  ``f1_score(average='micro')``: ``2 TP / (2 TP + FP + FN)`` over all (sentence, class) cells,
  0 when there is no positive cell at all.
- :func:`hoc_source` is the model input of ``rebuild_data.py`` (the sentence, ``.`` appended
  unless it ends in one: :func:`pipeline.tasks.re_format.build_source`).

:raises DataFormatError: from :func:`read_hoc`, a file that is not of the layout above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.errors import DataFormatError
from pipeline.tasks.hoc_labels import HOC_CLASSES, LABELS, extract_labels, label_set
from pipeline.tasks.re_format import build_source

from .generated import text_lines

__all__ = [
    "HOC_CLASSES",
    "LABELS",
    "HocRecord",
    "MicroF1",
    "extract_labels",
    "hoc_source",
    "label_set",
    "micro_f1",
    "read_hoc",
]


@dataclass(frozen=True)
class HocRecord:
    """One HoC sentence: ``line N``, the sentence and the gold label string as in the file (``a|b``)."""

    id: str
    sentence: str
    gold: str


@dataclass(frozen=True)
class MicroF1:
    f1: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int


def micro_f1(predictions: Sequence[str], gold: Sequence[str]) -> MicroF1:
    """Micro-averaged P/R/F1 of label strings over the 11 classes (module docstring)."""
    assert len(predictions) == len(gold), "micro_f1 of unequal lists"
    tp = fp = fn = 0
    for pred, ref in zip(predictions, gold):
        p, g = label_set(pred), label_set(ref)
        tp += len(p & g)
        fp += len(p - g)
        fn += len(g - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return MicroF1(f1, precision, recall, tp, fp, fn)


def read_hoc(path: str | Path) -> list[HocRecord]:
    """The records of a HoC TSV, in file order (module docstring).

    :raises DataFormatError: unreadable file, a line without a TAB, a gold label that is not one of
        the 11 classes, or no record at all.
    """
    path = Path(path)
    records = []
    for number, line in text_lines(path):
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataFormatError(f"{path}, line {number}: no TAB; a HoC line is `sentence<TAB>label|label`")
        unknown = [p.strip() for p in fields[-1].split("|") if p.strip() not in HOC_CLASSES]
        if unknown:
            raise DataFormatError(
                f"{path}, line {number}: {', '.join(repr(u) for u in unknown)} is not a HoC class; labels are "
                f"joined by | from: {', '.join(HOC_CLASSES)}"
            )
        records.append(HocRecord(id=f"line {number}", sentence=fields[0], gold=fields[-1]))
    if not records:
        raise DataFormatError(f"{path} holds no HoC record")
    return records


def hoc_source(record: HocRecord) -> str:
    """The model input of one sentence (``rebuild_data.py``).

    :raises RecordError: an empty sentence.
    """
    return build_source("hoc", {"sentence": record.sentence}, record_id=record.id)
