"""NER evaluation (``biomine eval ner``): :func:`evaluate_ner`, :func:`format_ner_report`.

Contract:

- :func:`evaluate_ner` runs the ``ner`` task (:class:`pipeline.tasks.ner.NerTask`, through
  :func:`predict_pubtator`: ``prepare`` and ``__call__`` as a job runs them) over a PubTator file and
  scores it strictly (same document, start, end and type;
  :func:`pipeline.tasks.ner_spans.mention_scores`); :func:`format_ner_report` prints it.

User documentation: ``docs/ner.md``.

:raises DataFormatError: a PubTator file that is missing, malformed, or has no documents.
:raises WrongModelError: a checkpoint that is not an NER token classifier.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import DataFormatError
from pipeline.tasks.ner import NerTask
from pipeline.tasks.ner_spans import mention_scores
from pipeline.tasks.options import NerOptions
from pipeline.tasks.pubtator import PubTatorDocument, read_pubtator


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
    gold: list[tuple[int, int, int, str]] = []
    other: dict[str, int] = {}  # mentions of types the model does not tag, by type
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
