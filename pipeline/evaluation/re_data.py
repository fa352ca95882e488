"""Readers for the relation-extraction benchmark layouts (PubTator files: :mod:`pipeline.tasks.pubtator`).

Contract:

- :func:`read_re_json` reads a BioGPT RE ``{split}.json`` (``data/DDI/raw``, ``data/KD-DTI/raw``,
  ``data/BC5CDR/raw`` in microsoft/BioGPT): a JSON object keyed by document id, in file order, each
  record validated for its task:

  - ddi: ``abstract``, ``triples`` = [{``drug``, ``target``, ``interaction``, (``modify``)}], ``pmid``
  - kd-dti: ``title``, ``abstract``, ``triples`` as above, ``pmid``
  - bc5cdr: ``title``, ``abstract``, ``relations`` = [{``chemical``, ``disease``}] (MeSH ids),
    ``chemical2id``/``disease2id`` (lower-cased mention text -> MeSH id, ``"-1"`` if unnormalised)

- :func:`split_entity_map` rebuilds a split's ``{split}.entities.json`` from its records (the union of
  the per-document maps, a later document overriding an earlier one's id for the same name - this
  reproduces the released ``test.entities.json``, e.g. ``statins`` -> ``D019821``).

:raises DataFormatError: a file that is not of the expected layout; the message names the file and
    the record (or line) and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from biogpt.task_spec import RE_TASKS
from pipeline.errors import DataFormatError

# --- BioGPT RE json ------------------------------------------------------------------------------

_REQUIRED = {
    "ddi": ("abstract", "triples"),
    "kd-dti": ("title", "abstract", "triples"),
    "bc5cdr": ("title", "abstract", "relations", "chemical2id", "disease2id"),
}


def _check_record(doc_id: str, record: Any, task: str, where: str) -> None:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: record {doc_id} is not a JSON object")
    for key in _REQUIRED[task]:
        if key not in record:
            raise DataFormatError(f"{where}: record {doc_id} lacks {key!r}; is this a {task} file?")
    for key in ("title", "abstract"):
        if key in _REQUIRED[task] and not isinstance(record[key], str):
            raise DataFormatError(f"{where}: record {doc_id}: {key!r} must be a string")
    if task in ("ddi", "kd-dti"):
        triples = record["triples"]
        if triples is not None and not isinstance(triples, list):
            raise DataFormatError(f"{where}: record {doc_id}: 'triples' must be a list")
        for i, triple in enumerate(triples or []):
            if not isinstance(triple, dict) or not all(
                isinstance(triple.get(k), str) for k in ("drug", "target", "interaction")
            ):
                raise DataFormatError(
                    f"{where}: record {doc_id}: triple {i} needs string 'drug', 'target' and 'interaction'"
                )
    else:
        for i, rel in enumerate(record["relations"] or []):
            if not isinstance(rel, dict) or not all(isinstance(rel.get(k), str) for k in ("chemical", "disease")):
                raise DataFormatError(f"{where}: record {doc_id}: relation {i} needs string 'chemical' and 'disease'")
        for key in ("chemical2id", "disease2id"):
            if not isinstance(record[key], dict):
                raise DataFormatError(f"{where}: record {doc_id}: {key!r} must map names to MeSH ids")


def read_re_json(path: str | Path, task: str) -> dict[str, dict[str, Any]]:
    """Document id -> record of a BioGPT RE json file of ``task``, in file order, validated.

    :raises DataFormatError: unreadable JSON, not an object of records, or a record without the
        fields of ``task`` (see the module docstring).
    """
    if task not in RE_TASKS:
        raise DataFormatError(f"unknown relation-extraction task {task!r}; use one of {', '.join(RE_TASKS)}")
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataFormatError(f"{path} must hold a JSON object keyed by document id (the BioGPT {task} layout)")
    for doc_id, record in data.items():
        _check_record(doc_id, record, task, str(path))
    return data


def gold_triples(record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(drug, target, interaction) of a DDI/KD-DTI record, as in the file."""
    return [(t["drug"], t["target"], t["interaction"]) for t in record.get("triples") or []]


def split_entity_map(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """``{"chemical2id": ..., "disease2id": ...}`` over all BC5CDR records (later records win)."""
    chemicals: dict[str, str] = {}
    diseases: dict[str, str] = {}
    for record in records.values():
        chemicals.update(record["chemical2id"])
        diseases.update(record["disease2id"])
    return {"chemical2id": chemicals, "disease2id": diseases}
