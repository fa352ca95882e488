"""PubMedQA as microsoft/BioGPT's examples/QA-PubMedQA scores it: gold data, answers, accuracy.

Contract:

- :func:`read_pubmedqa` reads the gold data, in file order, as :class:`QARecord` s:

  - a ``.tsv`` in the layout of the original repository's ``data/PubMedQA/raw``: one record per
    non-blank line ``question: Q context: C answer: LONG_ANSWER<TAB>label`` (the gold answer is the
    last TAB field of the stripped line, as ``hard_match_evaluation.py`` reads it; question,
    context and long answer are read back from the first field for generation);
  - a ``.json``: PubMedQA's own files, an object keyed by PMID: ``test_set.json`` (records with
    ``QUESTION``, ``CONTEXTS`` (a list), ``LONG_ANSWER``, ``final_decision``), or
    ``test_ground_truth.json`` (PMID -> answer; gold only, enough to score a generations file).

  Every gold answer must be ``yes``, ``no`` or ``maybe`` (the original compares strings and would
  silently count every prediction wrong against anything else: here that is an error naming the line
  or PMID, the sign of a file of another task).
- :data:`ANSWER` is the answer sentence of ``postprocess.py`` (``re.search``, not anchored);
  :func:`extract_answer` is that script on one generated line: cleaned as every ``postprocess.py``
  (:func:`pipeline.tasks.re_grammar.clean_line`: stripped, one final ``.`` dropped, the echoed
  ``learned1 .. learnedN`` and ``we can conclude that`` / ``we have that`` / ``in conclusion,`` cut),
  then the text after the sentence, stripped; ``None`` where the sentence is absent (the script
  writes ``failed`` there). Both live in :mod:`pipeline.tasks.qa`, whose ``[tasks.qa]`` job task
  parses its answers with them; they are re-exported here.
- :func:`accuracy` is ``hard_match_evaluation.py``'s ``accuracy_score(golden, preds)``: the share of
  predictions equal, as strings, to the gold answer (``failed`` never is).
- :func:`qa_source` builds a record's model input for a checkpoint's ``source_format``
  (:data:`biogpt.task_spec.SOURCE_FORMATS`): the released models' reasoning-required
  ``question: Q context: C `` (:func:`pipeline.tasks.re_format.build_source`), the reasoning-free
  variant with the long answer, or the first recipe's lower-cased TSV line with a final ``.``.

:raises DataFormatError: from :func:`read_pubmedqa`, a file that is not one of the layouts above.
:raises RecordError: from :func:`qa_source`, a record without what the checkpoint's input needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.errors import DataFormatError, RecordError
from pipeline.tasks.qa import ANSWER, ANSWERS, extract_answer
from pipeline.tasks.re_format import build_source

from .generated import text_lines

__all__ = ["ANSWER", "ANSWERS", "QARecord", "accuracy", "extract_answer", "qa_source", "read_pubmedqa"]

# The first field of a TSV line: "question: Q context: C answer: A" (the answer part is the long
# answer; a line may lack it). The question ends at the first " context: ", the context at the last
# " answer: ".
_TSV_SOURCE = re.compile(r"question: (.*?) context: (.*?)(?: answer: ((?:(?! answer: ).)*))?", re.DOTALL)


@dataclass(frozen=True)
class QARecord:
    """One PubMedQA question: its id (PMID, or ``line N`` of a TSV), the gold answer, and what the
    model input is built from (None where the file does not say: a ground-truth json)."""

    id: str
    gold: str
    question: str | None = None
    contexts: tuple[str, ...] | None = None
    long_answer: str | None = None
    #: The TSV's first field as written (the first recipe's model input).
    tsv_source: str | None = None


def accuracy(predictions: Sequence[str], gold: Sequence[str]) -> tuple[float, int]:
    """(share of exact matches, number of matches); the lists must be equally long and not empty."""
    assert len(predictions) == len(gold) and gold, "accuracy of unequal or empty lists"
    correct = sum(p == g for p, g in zip(predictions, gold))
    return correct / len(gold), correct


def _check_answer(answer: object, where: str) -> str:
    if not isinstance(answer, str) or answer not in ANSWERS:
        shown = f"'{answer}'" if isinstance(answer, str) else f"of JSON type {type(answer).__name__}"
        raise DataFormatError(
            f"{where}: gold answer {shown} is not yes, no or maybe; is this a PubMedQA file "
            "(a TSV `question: ... context: ...<TAB>yes`, or PubMedQA's test_set.json / test_ground_truth.json)?"
        )
    return str(answer)


def read_pubmedqa(path: str | Path) -> list[QARecord]:
    """The records of a PubMedQA gold file, in file order (module docstring).

    :raises DataFormatError: unreadable file, a TSV line without a TAB, a json that is not an object
        of records (or of answers), a record without ``final_decision``, a gold answer that is not
        yes/no/maybe, or no record at all.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        records = _read_json(path)
    else:
        records = []
        for number, line in text_lines(path):
            fields = line.split("\t")
            if len(fields) < 2:
                raise DataFormatError(
                    f"{path}, line {number}: no TAB; a PubMedQA TSV line is "
                    "`question: Q context: C answer: A<TAB>yes|no|maybe`"
                )
            # hard_match_evaluation.py: the last field of the stripped line; rebuild_data.py: the first.
            gold = _check_answer(fields[-1], f"{path}, line {number}")
            source = fields[0].strip()
            match = _TSV_SOURCE.fullmatch(source)
            records.append(
                QARecord(
                    id=f"line {number}",
                    gold=gold,
                    question=match.group(1) if match else None,
                    contexts=(match.group(2),) if match else None,
                    long_answer=match.group(3) if match else None,
                    tsv_source=source,
                )
            )
    if not records:
        raise DataFormatError(f"{path} holds no PubMedQA record")
    return records


def _read_json(path: Path) -> list[QARecord]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path} must hold a JSON object keyed by PMID (PubMedQA's test_set.json layout)")
    records = []
    for pmid, value in data.items():
        where = f"{path}, PMID {pmid}"
        if isinstance(value, str):  # test_ground_truth.json
            records.append(QARecord(id=str(pmid), gold=_check_answer(value, where)))
            continue
        if not isinstance(value, dict):
            raise DataFormatError(f"{where}: a record must be an object with QUESTION, CONTEXTS and final_decision")
        if "final_decision" not in value:
            raise DataFormatError(f"{where} has no final_decision (the gold answer); give the labelled split")
        contexts = value.get("CONTEXTS")
        if contexts is not None and (not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts)):
            raise DataFormatError(f"{where}: CONTEXTS must be a list of strings")
        question, long_answer = value.get("QUESTION"), value.get("LONG_ANSWER")
        records.append(
            QARecord(
                id=str(pmid),
                gold=_check_answer(value["final_decision"], where),
                question=question if isinstance(question, str) else None,
                contexts=tuple(contexts) if contexts is not None else None,
                long_answer=long_answer if isinstance(long_answer, str) else None,
            )
        )
    return records


def qa_source(record: QARecord, source_format: str) -> str:
    """The model input text of ``record`` for a checkpoint whose ``source_format`` name is
    ``source_format`` (module docstring). Lower-casing is left to the prompt builder, which applies
    the checkpoint's ``lowercase`` flag.

    :raises RecordError: the record lacks the question or context (a ground-truth json, a TSV line
        not of the ``question: ... context: ...`` form), or the long answer the format needs.
    """
    if source_format == "qa-pubmedqa-legacy":
        # The first recipe's rebuild_data.py: the TSV's first field, stripped, lower-cased, "." added.
        source = record.tsv_source
        if source is None and record.question is not None and record.contexts is not None:
            source = (
                f"question: {record.question} context: {' '.join(record.contexts)} answer: {record.long_answer or ''}"
            )
        if not source:
            raise RecordError(f"PubMedQA record {record.id} has no question to build an input from")
        source = source.strip()
        return source if source.endswith(".") else source + "."
    if record.question is None or record.contexts is None:
        raise RecordError(
            f"PubMedQA record {record.id} has no question and context to generate from; give PubMedQA's "
            "test_set.json (QUESTION, CONTEXTS) or a TSV `question: Q context: C ...<TAB>label`, "
            "not test_ground_truth.json"
        )
    fields = {"QUESTION": record.question, "CONTEXTS": list(record.contexts), "LONG_ANSWER": record.long_answer}
    if source_format == "qa-pubmedqa-reasoning-free":
        return build_source("pubmedqa", fields, with_long_answer=True, record_id=record.id)
    return build_source("pubmedqa", fields, record_id=record.id)
