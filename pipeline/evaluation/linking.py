"""Entity-linking evaluation (``biomine eval link``): :func:`evaluate_linking`, :func:`format_linking_report`.

The gold mentions of an annotated PubTator file are linked with the rules of
:mod:`pipeline.tasks.linking` (the :class:`~pipeline.tasks.linking.Linker` the ``ner`` and ``re``
tasks link with) and compared with their gold ids. User documentation: ``docs/linking.md``.

:raises DataFormatError: a file that is not PubTator.
"""

from __future__ import annotations

import collections
from typing import Mapping

from pipeline.tasks.linking import Linker
from pipeline.tasks.pubtator import read_pubtator


def evaluate_linking(data, dictionary) -> dict:
    """Link the gold mentions of an annotated PubTator file (mentions whose id is ``-1`` left out)
    and compare with their gold ids (a composite mention's ``D1|D2`` as one id). The report:
    ``mentions``, ``linked``, ``correct``, ``accuracy`` (correct / mentions), ``precision`` (correct
    / linked), ``coverage`` (linked / mentions), the same per type (``by_type``), how many each rule
    linked (``by_rule``) and how many stayed ``ambiguous``.

    :raises DataFormatError: ``data`` is not PubTator.
    """
    linker = dictionary if isinstance(dictionary, Linker) else Linker(dictionary)
    total: collections.Counter[str] = collections.Counter()
    by_type: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_rule: collections.Counter[str] = collections.Counter()
    for doc in read_pubtator(data):
        gold = [m for m in doc.mentions if "-1" not in m.ids]
        results = linker.link_all(doc.text, [(m.text, m.type) for m in gold])
        for m, (found, status) in zip(gold, results):
            for counter in (total, by_type[m.type]):
                counter["mentions"] += 1
                counter["ambiguous"] += status == "ambiguous"
                if found is not None:
                    counter["linked"] += 1
                    counter["correct"] += found.concept_id == "|".join(m.ids)
            if found is not None:
                by_rule[found.rule] += 1

    def summary(c: collections.Counter[str]) -> dict:
        n, linked, correct = c["mentions"], c["linked"], c["correct"]
        return {
            "mentions": n,
            "linked": linked,
            "correct": correct,
            "ambiguous": c["ambiguous"],
            "accuracy": correct / n if n else 0.0,
            "precision": correct / linked if linked else 0.0,
            "coverage": linked / n if n else 0.0,
        }

    return {
        **summary(total),
        "by_type": {t: summary(c) for t, c in sorted(by_type.items())},
        "by_rule": dict(sorted(by_rule.items())),
        "dictionary_names": len(linker),
    }


def format_linking_report(report: Mapping) -> str:
    lines = [f"{'':<10}{'mentions':>9}{'linked':>8}{'correct':>8}{'accuracy':>10}{'precision':>10}{'coverage':>10}"]
    for name, r in [("all", report), *report["by_type"].items()]:
        lines.append(
            f"{name:<10}{r['mentions']:>9}{r['linked']:>8}{r['correct']:>8}{r['accuracy']:>10.4f}"
            f"{r['precision']:>10.4f}{r['coverage']:>10.4f}"
        )
    lines.append(
        "linked by rule: "
        + ", ".join(f"{k} {v}" for k, v in report["by_rule"].items())
        + f"; ambiguous {report['ambiguous']}; dictionary names {report['dictionary_names']}"
    )
    return "\n".join(lines)
