"""The original relation-extraction evaluations of BioGPT.

Contract:

- :func:`hard_match` is ``examples/RE-DDI/hard_match_evaluation.py`` (identical to RE-DTI's) as a
  function, for DDI and KD-DTI. Predictions are ``(doc_id, [(drug, target, interaction), ...])`` in
  order; an empty list is a failed generation. Rules, all as the script:

  1. Per document, every element is stripped, lower-cased and loses its ASCII spaces; the triples
     and the drug / target / interaction values become SETS (duplicates collapse). A prediction
     whose FIRST triple has the drug ``failed`` counts as empty (the script's failure marker).
     Predictions for ids absent from the gold file are skipped and counted as missing; gold
     documents without a prediction are not scored at all (reported in
     ``gold_without_prediction``).
  2. Metrics compare two views of both sets and take the max: ``abbr`` (``x (y)`` -> ``y``) and
     ``rm`` (``x (y)`` -> ``x``), each followed by :func:`normalize_name` (a final digit after a
     non-digit becomes a Roman numeral, ``-type`` is deleted, then every non-alphanumeric character).
     Precision is ``|P&G|/|P|`` (1 if both are empty, 0 if only P is), recall ``|P&G|/|G|``, accuracy
     ``|P&G|/|P|G|`` (both: ``int(P == G)`` when the denominator set is empty - for accuracy that is G).
  3. Sample level: the mean of per-document precision, recall and F1 (``micro f1`` in the script's
     print-out), the F1 of the two means (``macro f1``), and mean accuracies per field.
  4. Ontology level (the headline ``onto f1``): the union over documents of the normalised predicted
     and gold sets (document identity dropped, duplicates collapse), precision and recall by rule 2,
     F1 = 2PR/(P+R) (0 when P+R = 0); the same for the drug, target and interaction sets.

- :func:`cid_eval` scores BC5CDR chemical-induced-disease relations as the official BioCreative V
  evaluator (``BC5CDR_Evaluation-0.0.3``, ``eval_relation.sh``) counts them: document-level
  ``(pmid, chemical MeSH, disease MeSH)`` pairs, compared as sets, TP / FP / FN and
  P = TP/(TP+FP), R = TP/(TP+FN), F1 (0 when undefined). Duplicates count once: the evaluator's bundled
  sample prediction has 681 CID lines but 623 distinct pairs, and its documented result is
  TP 90 + FP 533 = 623. Pairs with the unmapped id ``"-1"`` are ordinary false positives, as in
  BioGPT's pipeline.
- :func:`score_generations` goes from generated texts (``doc_id -> text``) to the task's report with
  the grammar parser (:mod:`pipeline.tasks.re_grammar`, the one the ``re`` task parses with), so
  ``biomine eval re`` and the tests share one path.

:raises EvaluationError: nothing to score (no prediction has a gold document).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from pipeline.errors import EvaluationError
from pipeline.tasks.pubtator import PubTatorDocument
from pipeline.tasks.re_grammar import parse_generation

from .re_data import gold_triples, split_entity_map

Triple = tuple[str, str, str]


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float


def f1_score(precision: float, recall: float) -> float:
    """2PR/(P+R), 0 when P+R is 0 (``get_f1`` of the script)."""
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


# --- hard match (DDI, KD-DTI) --------------------------------------------------------------------

_ROMAN = {"0": "0", "1": "I", "2": "II", "3": "III", "4": "IV", "5": "V", "6": "VI", "7": "VII", "8": "VIII", "9": "IX"}


def normalize_name(name: str) -> str:
    """``normalize_name`` of hard_match_evaluation.py: Roman final digit, no ``-type``, alphanumerics only."""
    s = name.strip()
    # str.isnumeric (not isdigit) as the script, so "x²1" is left alone while "ht2" becomes "htII".
    if len(s) > 2 and s[-1].isnumeric() and not s[-2].isnumeric() and s[-1] in _ROMAN:
        s = s[:-1] + _ROMAN[s[-1]]
    s = s.replace("-type", "")
    return re.sub("[^a-zA-Z0-9]+", "", s)


def _abbr(value: str) -> str:
    s = value.strip()
    if "(" in s and s.endswith(")"):
        return normalize_name(s[s.rfind("(") + 1 : -1].strip())
    return normalize_name(s)


def _body(value: str) -> str:
    s = value.strip()
    if "(" in s and s.endswith(")"):
        return normalize_name(s[: s.rfind("(")].strip())
    return normalize_name(s)


def _view(items: set, fn: Callable[[str], str]) -> set:
    return {tuple(fn(x) for x in item) if isinstance(item, tuple) else fn(item) for item in items}


def _precision(pred: set, gold: set) -> float:
    return len(pred & gold) / len(pred) if pred else float(pred == gold)


def _recall(pred: set, gold: set) -> float:
    return len(pred & gold) / len(gold) if gold else float(pred == gold)


def _accuracy(pred: set, gold: set) -> float:
    return len(pred & gold) / len(pred | gold) if gold else float(pred == gold)


def normed_eval(pred: set, gold: set, metric: Callable[[set, set], float]) -> float:
    """max(metric on the ``abbr`` views, metric on the ``rm`` views) (``normed_eval`` of the script)."""
    return max(metric(_view(pred, _abbr), _view(gold, _abbr)), metric(_view(pred, _body), _view(gold, _body)))


def _element(value: str) -> str:
    return value.strip().lower().replace(" ", "")


@dataclass(frozen=True)
class DocScore:
    doc_id: str
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class HardMatchReport:
    """Everything hard_match_evaluation.py prints, plus per-document scores."""

    num_samples: int
    num_missing: int
    #: Sum over scored documents of the normalised gold / predicted triple-set sizes.
    num_gold: int
    num_pred: int
    sample: PRF  # f1 = mean per-document F1 ("micro f1")
    sample_macro_f1: float  # F1 of mean P and mean R ("macro f1")
    sample_accuracy: dict[str, float]  # drug / target / interaction
    onto: PRF  # the headline "onto f1"
    onto_fields: dict[str, PRF]  # drug / target / interaction
    gold_without_prediction: int
    per_doc: tuple[DocScore, ...]


def hard_match(
    predictions: Sequence[tuple[str, Sequence[Triple]]], gold: Mapping[str, Mapping[str, Any]]
) -> HardMatchReport:
    """Score ``(doc_id, triples)`` predictions against a DDI/KD-DTI gold mapping (module rules).

    :raises EvaluationError: no prediction names a gold document.
    """
    per_doc: list[DocScore] = []
    acc: dict[str, list[float]] = {"drug": [], "target": [], "interaction": []}
    union_pred: dict[str, set] = {"triple": set(), "drug": set(), "target": set(), "interaction": set()}
    union_gold: dict[str, set] = {"triple": set(), "drug": set(), "target": set(), "interaction": set()}
    missing = num_pred = num_gold = 0
    seen = set()
    for doc_id, triples in predictions:
        pred = _sets(triples if triples and triples[0][0] != "failed" else [])
        if doc_id not in gold:
            missing += 1
            continue
        seen.add(doc_id)
        ref = _sets(gold_triples(gold[doc_id]))
        p = normed_eval(pred["triple"], ref["triple"], _precision)
        r = normed_eval(pred["triple"], ref["triple"], _recall)
        per_doc.append(DocScore(doc_id, p, r, f1_score(p, r)))
        for name in acc:
            acc[name].append(normed_eval(pred[name], ref[name], _accuracy))
        for name in union_pred:
            union_pred[name] |= pred[name]
            union_gold[name] |= ref[name]
        num_pred += len(pred["triple"])
        num_gold += len(ref["triple"])
    if not per_doc:
        raise EvaluationError(
            f"none of the {len(predictions)} predictions names a document of the gold file; "
            "check that the prediction ids are the gold file's keys"
        )

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    def onto(name: str) -> PRF:
        p = normed_eval(union_pred[name], union_gold[name], _precision)
        r = normed_eval(union_pred[name], union_gold[name], _recall)
        return PRF(p, r, f1_score(p, r))

    mean_p, mean_r = mean([d.precision for d in per_doc]), mean([d.recall for d in per_doc])
    return HardMatchReport(
        num_samples=len(per_doc),
        num_missing=missing,
        num_gold=num_gold,
        num_pred=num_pred,
        sample=PRF(mean_p, mean_r, mean([d.f1 for d in per_doc])),
        sample_macro_f1=f1_score(mean_p, mean_r),
        sample_accuracy={name: mean(values) for name, values in acc.items()},
        onto=onto("triple"),
        onto_fields={name: onto(name) for name in ("drug", "target", "interaction")},
        gold_without_prediction=len(set(gold) - seen),
        per_doc=tuple(per_doc),
    )


def _sets(triples: Iterable[Triple]) -> dict[str, set]:
    out: dict[str, set] = {"triple": set(), "drug": set(), "target": set(), "interaction": set()}
    for drug, target, interaction in triples:
        d, t, i = _element(drug), _element(target), _element(interaction)
        out["drug"].add(d)
        out["target"].add(t)
        out["interaction"].add(i)
        out["triple"].add((d, t, i))
    return out


# --- BC5CDR CID ----------------------------------------------------------------------------------

Pair = tuple[str, str, str]  # (pmid, chemical MeSH, disease MeSH)


@dataclass(frozen=True)
class CIDReport:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    #: Generations for documents absent from the gold data (skipped by :func:`score_generations`).
    num_missing: int = 0


def cid_eval(predicted: Iterable[Pair], gold: Iterable[Pair]) -> CIDReport:
    """Document-level CID pair scores; both sides are sets (see the module docstring)."""
    pred_set, gold_set = set(predicted), set(gold)
    tp = len(pred_set & gold_set)
    fp, fn = len(pred_set) - tp, len(gold_set) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return CIDReport(tp, fp, fn, precision, recall, f1_score(precision, recall))


def cid_pairs_from_pubtator(docs: Iterable[PubTatorDocument]) -> list[Pair]:
    """The CID relations of PubTator documents as (pmid, chemical, disease)."""
    return [(doc.pmid, a, b) for doc in docs for kind, a, b in doc.relations if kind == "CID"]


def cid_pairs_from_json(records: Mapping[str, Mapping[str, Any]]) -> list[Pair]:
    """The relations of BioGPT's BC5CDR json records as (pmid, chemical, disease)."""
    return [(pmid, r["chemical"], r["disease"]) for pmid, rec in records.items() for r in rec["relations"] or []]


# --- from generated text -------------------------------------------------------------------------


def score_generations(
    task: str,
    generations: Mapping[str, str],
    gold: Mapping[str, Mapping[str, Any]],
    *,
    entity_map: str = "split",
    split_map: Mapping[str, Mapping[str, str]] | None = None,
) -> HardMatchReport | CIDReport:
    """Parse ``doc_id -> generated text`` with the task grammar and score it against ``gold`` records.

    For BC5CDR, ``entity_map="split"`` maps names with the union of all gold records' maps (what the
    released pipeline did with ``test.entities.json``; ``split_map``: that union, when the records
    scored are a part of the split); ``"document"`` uses each record's own maps.
    The gold pairs are the records' ``relations``.

    :raises EvaluationError: an unknown ``entity_map``, or nothing to score.
    """
    if task != "bc5cdr":
        predictions = [
            (doc_id, [(r.head, r.tail, r.relation) for r in parse_generation(text, task).relations])
            for doc_id, text in generations.items()
        ]
        return hard_match(predictions, gold)
    if entity_map not in ("split", "document"):
        raise EvaluationError(f"entity_map must be 'split' or 'document', not {entity_map!r}")
    split = (split_map or split_entity_map(gold)) if entity_map == "split" else None
    predicted: list[Pair] = []
    missing = 0
    for doc_id, text in generations.items():
        if doc_id not in gold:
            missing += 1
            continue
        maps = split or gold[doc_id]
        result = parse_generation(text, task, chemical2id=maps["chemical2id"], disease2id=maps["disease2id"])
        for r in result.relations:
            assert r.head_id is not None and r.tail_id is not None  # BC5CDR relations always carry both ids
            predicted.append((doc_id, r.head_id, r.tail_id))
    if missing == len(generations):
        raise EvaluationError(
            f"none of the {len(generations)} generations names a document of the gold file; check the document ids"
        )
    return replace(cid_eval(predicted, cid_pairs_from_json(gold)), num_missing=missing)
