"""Concept dictionaries from public vocabulary files, for entity linking (``biomine vocab build``).

Readers (each yields :data:`schemas.concepts.CONCEPT_SCHEMA` rows):

- :func:`mesh_rows`: MeSH descriptor (``desc2025.xml``) and supplementary concept (``supp2025.xml``)
  XML as NLM distributes them (gzip or not), read incrementally (the descriptor file is ~300 MB):
  every ``Term/String`` of every concept of a record, the record's name marked preferred. Types:
  descriptor tree numbers ``C*`` and ``F03*`` Disease, ``D*`` Chemical; supplementary
  ``SCRClass`` 1 Chemical, 3 Disease.
- :func:`drugbank_rows`: the CC0 DrugBank vocabulary CSV (``drugbank vocabulary.csv``: ``DrugBank
  ID``, ``Common name``, ``Synonyms`` joined by `` | ``), every name a Chemical.
- :func:`pubtator_rows`: annotated PubTator files (BC5CDR, PubTator exports): each mention text
  with its annotated id and type; ``-1`` (no id) is skipped; the concept name is the id's most
  frequent mention text.

:func:`dictionary_table` merges sources and drops duplicate (key, concept) rows; ``biomine vocab
build`` writes it (atomically, anywhere storage reaches).

:raises DataFormatError: a file that is not what its reader expects (names the file).
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import os
from pathlib import Path
from typing import Iterable, Iterator
from xml.etree import ElementTree

from pipeline.errors import DataFormatError

from .linking import normalise


def _open_text(path: Path):
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def mesh_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a MeSH descriptor or supplementary-concept XML file (see the module docstring)."""
    path = Path(path)
    kind = None
    try:
        with _open_text(path) as f:
            for event, elem in ElementTree.iterparse(f, events=("start", "end")):
                if event == "start":
                    if kind is None:
                        if elem.tag not in ("DescriptorRecordSet", "SupplementalRecordSet"):
                            raise DataFormatError(
                                f"{path}: root <{elem.tag}> is neither MeSH DescriptorRecordSet "
                                "nor SupplementalRecordSet (desc*.xml / supp*.xml from NLM)"
                            )
                        kind = elem.tag
                    continue
                if elem.tag not in ("DescriptorRecord", "SupplementalRecord"):
                    continue
                descriptor = elem.tag == "DescriptorRecord"
                ui = elem.findtext("DescriptorUI" if descriptor else "SupplementalRecordUI")
                name = elem.findtext(("DescriptorName" if descriptor else "SupplementalRecordName") + "/String")
                if not ui or not name:
                    raise DataFormatError(f"{path}: a {elem.tag} without its UI or name")
                if descriptor:
                    trees = [t.text or "" for t in elem.iter("TreeNumber")]
                    type_ = (
                        "Disease"
                        if any(t.startswith(("C", "F03")) for t in trees)
                        else "Chemical"
                        if any(t.startswith("D") for t in trees)
                        else None
                    )
                else:
                    type_ = {"1": "Chemical", "3": "Disease"}.get(elem.get("SCRClass", "1"))
                # Entry terms only: a supplementary record's HeadingMappedTo names ANOTHER concept.
                terms = {name} | {
                    t.text.strip()
                    for t in elem.iterfind("ConceptList/Concept/TermList/Term/String")
                    if t.text and t.text.strip()
                }
                for term in sorted(terms):
                    key = normalise(term)
                    if key:
                        yield {
                            "key": key,
                            "name": term,
                            "concept_id": ui,
                            "concept_name": name,
                            "vocabulary": "MeSH",
                            "type": type_,
                            "preferred": term == name,
                        }
                elem.clear()
    except ElementTree.ParseError as exc:
        raise DataFormatError(f"{path}: not well-formed XML ({exc})") from None
    if kind is None:
        raise DataFormatError(f"{path}: empty file; pass a MeSH desc*.xml or supp*.xml")


def drugbank_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of the DrugBank vocabulary CSV (see the module docstring)."""
    path = Path(path)
    with _open_text(path) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        need = {"DrugBank ID", "Common name", "Synonyms"}
        if not need <= set(reader.fieldnames or ()):
            raise DataFormatError(
                f"{path}: a DrugBank vocabulary CSV has columns {sorted(need)}; found {reader.fieldnames}"
            )
        for row in reader:
            ui, common = (row["DrugBank ID"] or "").strip(), (row["Common name"] or "").strip()
            if not ui or not common:
                continue
            names = {common} | {s.strip() for s in (row["Synonyms"] or "").split(" | ") if s.strip()}
            for term in sorted(names):
                key = normalise(term)
                if key:
                    yield {
                        "key": key,
                        "name": term,
                        "concept_id": ui,
                        "concept_name": common,
                        "vocabulary": "DrugBank",
                        "type": "Chemical",
                        "preferred": term == common,
                    }


def pubtator_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of an annotated PubTator file (see the module docstring)."""
    from .pubtator import read_pubtator

    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for doc in read_pubtator(path):
        for m in doc.mentions:
            concept = "|".join(m.ids)
            if concept and concept != "-1" and "-1" not in m.ids:
                counts[(concept, m.type)][m.text] += 1
    for (concept, type_), names in sorted(counts.items()):
        top = names.most_common(1)[0][0]
        for term in sorted(names):
            key = normalise(term)
            if key:
                yield {
                    "key": key,
                    "name": term,
                    "concept_id": concept,
                    "concept_name": top,
                    "vocabulary": "PubTator",
                    "type": type_ if type_ in ("Chemical", "Disease") else None,
                    "preferred": term == top,
                }


def dictionary_table(sources: Iterable[Iterable[dict]]):
    """Merge ``sources`` (reader outputs) into one :data:`schemas.concepts.CONCEPT_SCHEMA` table:
    duplicate (key, concept, vocabulary) rows dropped, sorted by key."""
    import pyarrow as pa

    from schemas.concepts import CONCEPT_SCHEMA

    kept: dict[tuple[str, str, str], dict] = {}
    for source in sources:
        for row in source:
            ident = (row["key"], row["concept_id"], row["vocabulary"])
            if ident in kept:  # the same name twice (e.g. "alpha Tocopherol", "alpha-Tocopherol"): preferred wins
                if row["preferred"] and not kept[ident]["preferred"]:
                    kept[ident] = row
            else:
                kept[ident] = dict(row)
    rows = _one_id_space(list(kept.values()))
    rows.sort(key=lambda r: (r["key"], r["vocabulary"], r["concept_id"]))
    return pa.Table.from_pylist(rows, schema=CONCEPT_SCHEMA)


def _one_id_space(rows: list[dict]) -> list[dict]:
    """A DrugBank drug whose common name is the name of exactly one MeSH concept joins that concept
    (all its synonyms take the MeSH id), so "warfarin" and "Coumadin" are one drug in a dictionary
    built from both vocabularies; DrugBank drugs MeSH does not name keep their DrugBank ids."""
    mesh: dict[str, set[tuple[str, str | None]]] = {}
    for r in rows:
        if r["vocabulary"] == "MeSH":
            mesh.setdefault(r["key"], set()).add((r["concept_id"], r["concept_name"]))
    if not mesh:
        return rows
    target: dict[str, tuple[str, str | None]] = {}
    for r in rows:
        if r["vocabulary"] == "DrugBank" and r["preferred"]:
            found = mesh.get(r["key"], set())
            if len(found) == 1:
                target[r["concept_id"]] = next(iter(found))
    out, seen = [], {(r["key"], r["concept_id"]) for r in rows if r["vocabulary"] == "MeSH"}
    for r in rows:
        if r["vocabulary"] == "DrugBank" and r["concept_id"] in target:
            concept_id, concept_name = target[r["concept_id"]]
            if (r["key"], concept_id) in seen:
                continue  # MeSH has that name for that concept already
            seen.add((r["key"], concept_id))
            r = {**r, "concept_id": concept_id, "concept_name": concept_name, "vocabulary": "MeSH", "preferred": False}
        out.append(r)
    return out
