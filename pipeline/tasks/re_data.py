"""Readers for the relation-extraction benchmark layouts and PubTator files.

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
- :func:`read_pubtator` reads PubTator text: ``PMID|t|title``, ``PMID|a|abstract``, mention lines
  ``PMID<TAB>start<TAB>end<TAB>text<TAB>type<TAB>ids[<TAB>individual mentions]`` with offsets into
  ``title + " " + abstract`` and ``|``-joined ids for composite mentions, and relation lines
  ``PMID<TAB>type<TAB>id1<TAB>id2[<TAB>score]``. Documents are separated by blank lines; a file of
  bare relation lines (as BioGPT's BC5CDR post-processing writes) is accepted.

:raises DataFormatError: a file that is not of the expected layout; the message names the file and
    the record (or line) and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
        raise DataFormatError(f"unknown relation-extraction task {task!r}; use one of {list(RE_TASKS)}")
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


# --- PubTator ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """One annotated mention; offsets index :attr:`PubTatorDocument.text`."""

    start: int
    end: int
    text: str
    type: str
    ids: tuple[str, ...]
    #: For composite mentions ("renal and hepatic dysfunction"), the individual mentions.
    individual: tuple[str, ...] = ()


@dataclass
class PubTatorDocument:
    pmid: str
    title: str | None = None
    abstract: str | None = None
    mentions: list[Mention] = field(default_factory=list)
    #: (relation type, id1, id2), e.g. ("CID", chemical MeSH, disease MeSH).
    relations: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        """``title + " " + abstract``: the string PubTator offsets index."""
        return f"{self.title or ''} {self.abstract or ''}"


def read_pubtator(path: str | Path) -> list[PubTatorDocument]:
    """The documents of a PubTator file, in file order (mention text checked against the offsets).

    :raises DataFormatError: a line that is none of the PubTator line kinds, offsets that do not
        select the mention text, or a PMID appearing in two separate blocks.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataFormatError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path} is not a readable text file: {exc}") from exc
    docs: dict[str, PubTatorDocument] = {}
    current: PubTatorDocument | None = None
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not line.strip():
            current = None
            continue
        head, bar, rest = line.partition("|")
        if bar and head.isdigit() and rest[:2] in ("t|", "a|") and "\t" not in head:
            current = _block(docs, current, head, where)
            if rest[0] == "t":
                current.title = rest[2:]
            else:
                current.abstract = rest[2:]
            continue
        fields = line.split("\t")
        if len(fields) < 4 or not fields[0].isdigit():
            raise DataFormatError(f"{where}: not a PubTator line (PMID|t|, PMID|a|, mention or relation): {line[:80]!r}")
        current = _block(docs, current, fields[0], where)
        if fields[1].isdigit():
            current.mentions.append(_mention(fields, current, where))
        elif len(fields) in (4, 5):
            current.relations.append((fields[1], fields[2], fields[3]))
        else:
            raise DataFormatError(f"{where}: a relation line has PMID, type, id1, id2 and an optional score")
    return list(docs.values())


def _block(docs: dict[str, PubTatorDocument], current: PubTatorDocument | None, pmid: str, where: str):
    if current is not None and current.pmid == pmid:
        return current
    if pmid in docs:
        raise DataFormatError(f"{where}: PMID {pmid} appears in two separate blocks; merge them")
    docs[pmid] = PubTatorDocument(pmid)
    return docs[pmid]


def _mention(fields: list[str], doc: PubTatorDocument, where: str) -> Mention:
    if len(fields) not in (6, 7) or not fields[2].isdigit():
        raise DataFormatError(f"{where}: a mention line has PMID, start, end, text, type, ids[, individual mentions]")
    start, end = int(fields[1]), int(fields[2])
    if doc.title is not None and doc.abstract is not None:
        text = doc.text
        if not 0 <= start < end <= len(text) or text[start:end] != fields[3]:
            raise DataFormatError(
                f"{where}: PMID {doc.pmid}: offsets {start}-{end} select {text[start:end]!r}, not the mention "
                f"{fields[3]!r} (offsets index title + ' ' + abstract)"
            )
    individual = tuple(fields[6].split("|")) if len(fields) == 7 else ()
    return Mention(start, end, fields[3], fields[4], tuple(fields[5].split("|")), individual)
