"""Entities and relations of a job's output in the formats the field exchanges: PubTator, BioC JSON, BioC XML.

Contract:

- :func:`export` streams the live documents of ``OUT`` (tombstoned articles masked, as the query
  views show them) in PMID order with their entities and relations into one file, so an export of
  the whole corpus never holds it in memory (three ordered DuckDB cursors, merged by (pmid, version)).
- ``pubtator``: per article ``PMID|t|title``, ``PMID|a|abstract`` (line breaks as spaces: same
  offsets), one mention line ``PMID<TAB>start<TAB>end<TAB>text<TAB>label<TAB>id`` per entity (``id``
  the linked ``concept_id``, ``-1`` when unlinked, as BC5CDR writes it), and one relation line
  ``PMID<TAB>relation<TAB>head_id<TAB>tail_id<TAB>score`` per ``ok`` relation whose head and tail
  are both linked (PubTator relations join identifiers; ``score`` is ``exp(logprob)`` when known),
  then a blank line. :func:`pipeline.tasks.pubtator.read_pubtator` reads it back.
- ``bioc-json`` / ``bioc-xml``: a BioC collection (source ``biomine``, key ``biomine.key``) with a
  document per article (id = PMID, infon ``version``), passages ``title`` (offset 0) and
  ``abstract`` (offset len(title) + 1), so BioC offsets equal the entity offsets into
  ``title + " " + abstract``. Each entity is an annotation (``T1``, ``T2``, ... in the passage
  holding it; infons ``type`` = label, ``identifier`` = concept_id as PubTator3 writes it (absent when unlinked),
  ``score``, ``matched_by``, ``model_id``); each ``ok`` relation a document relation (``R1``, ...;
  infons ``type`` = relation, ``task``, ``head``, ``tail``, ``head_id``, ``tail_id``, ``logprob``,
  ``evidence_start``/``evidence_end``, ``model_id``) with nodes ``head``/``tail`` pointing to the
  first annotation whose text (case-insensitive) or identifier is that entity, when there is one.
  Written with the ``bioc`` package (its JSON and XML encoders, one document at a time).

:raises BioMineError: OUT is not a job output or has no documents; the format is unknown; the
    destination is a folder, or its folder does not exist (it is not created: a missing folder is
    more often a typo than a wish).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator

from pipeline.errors import BioMineError

FORMATS = ("pubtator", "bioc-json", "bioc-xml")
#: The file name ending each format is known by (what a suggested file name ends with).
EXTENSIONS = {"pubtator": ".pubtator", "bioc-json": ".bioc.json", "bioc-xml": ".bioc.xml"}
_BATCH = 2048


def _rows(out, sql: str) -> Iterator[dict[str, Any]]:
    """Rows of ``sql`` over ``out``'s views, in batches. Its own connection: one connection holds one
    open result (and the views' registered scans are per connection), and three stream side by side."""
    from pipeline.outputs.query import connect

    con, _, _ = connect(out)
    for batch in con.sql(sql).to_arrow_reader(_BATCH):
        yield from batch.to_pylist()


def _grouped(rows: Iterator[dict[str, Any]]) -> Iterator[tuple[tuple[int, int], list[dict[str, Any]]]]:
    group, key = [], None
    for row in rows:
        k = (row["pmid"], row["version"])
        if key is not None and k != key:
            yield key, group
            group = []
        key = k
        group.append(row)
    if key is not None:
        yield key, group


class _Merged:
    """Rows of one dataset for each (pmid, version) asked for in increasing order."""

    def __init__(self, groups: Iterator):
        self._groups = groups
        self._next = next(groups, None)

    def take(self, key: tuple[int, int]) -> list[dict[str, Any]]:
        while self._next is not None and self._next[0] < key:
            self._next = next(self._groups, None)
        if self._next is not None and self._next[0] == key:
            rows = self._next[1]
            self._next = next(self._groups, None)
            return rows
        return []


def documents(out) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    """``(document, entities, relations)`` of every live article of ``out``, in (pmid, version) order."""
    from pipeline.outputs.query import connect

    _, views, _ = connect(out)
    if "documents" not in views:
        raise BioMineError(f"{out} has no documents: export needs a job output or an ingest of one")
    docs = _rows(out, "SELECT pmid, version, title, abstract FROM documents ORDER BY pmid, version")
    ents = (
        _Merged(_grouped(_rows(out, 'SELECT * FROM entities ORDER BY pmid, version, start, "end"')))
        if "entities" in views
        else None
    )
    rels = (
        _Merged(_grouped(_rows(out, "SELECT * FROM relations WHERE parse_status = 'ok' ORDER BY pmid, version")))
        if "relations" in views
        else None
    )
    for doc in docs:
        key = (doc["pmid"], doc["version"])
        yield doc, ents.take(key) if ents else [], rels.take(key) if rels else []


def _pubtator(doc, entities, relations) -> str:
    pmid = doc["pmid"]
    title = (doc["title"] or "").replace("\n", " ")
    abstract = (doc["abstract"] or "").replace("\n", " ")
    lines = [f"{pmid}|t|{title}", f"{pmid}|a|{abstract}"]
    for e in entities:
        lines.append(f"{pmid}\t{e['start']}\t{e['end']}\t{e['text']}\t{e['label']}\t{e.get('concept_id') or '-1'}")
    for r in relations:
        if r.get("head_id") and r.get("tail_id") and "-1" not in (r["head_id"], r["tail_id"]):
            score = f"\t{math.exp(r['logprob']):.6g}" if r.get("logprob") is not None else ""
            lines.append(f"{pmid}\t{r['relation']}\t{r['head_id']}\t{r['tail_id']}{score}")
    return "\n".join(lines) + "\n\n"


def _infons(values: dict[str, Any]) -> dict[str, str]:
    """BioC infons are strings; a null is left out (so an unlinked mention has no ``identifier``)."""
    return {k: str(v) for k, v in values.items() if v is not None}


def _bioc_document(doc, entities, relations):
    import bioc

    title, abstract = doc["title"] or "", doc["abstract"] or ""
    d = bioc.BioCDocument()
    d.id = str(doc["pmid"])
    d.infons["version"] = str(doc["version"])
    passages = []
    for kind, offset, text in (("title", 0, title), ("abstract", len(title) + 1, abstract)):
        p = bioc.BioCPassage()
        p.infons["type"], p.offset, p.text = kind, offset, text
        passages.append(p)
        d.add_passage(p)
    annotations = []
    for n, e in enumerate(entities, 1):
        a = bioc.BioCAnnotation()
        a.id, a.text = f"T{n}", e["text"]
        a.infons.update(
            _infons(
                {
                    "type": e["label"],
                    "identifier": e.get("concept_id"),
                    "score": e.get("score"),
                    "matched_by": e.get("matched_by"),
                    "model_id": e.get("model_id"),
                }
            )
        )
        a.add_location(bioc.BioCLocation(e["start"], e["end"] - e["start"]))
        (passages[1] if e["start"] >= passages[1].offset else passages[0]).add_annotation(a)
        annotations.append((a, e))
    for n, r in enumerate(relations, 1):
        rel = bioc.BioCRelation()
        rel.id = f"R{n}"
        rel.infons.update(
            _infons(
                {
                    k: r.get(k)
                    for k in (
                        "task",
                        "head",
                        "tail",
                        "head_id",
                        "tail_id",
                        "logprob",
                        "evidence_start",
                        "evidence_end",
                        "model_id",
                    )
                }
            )
        )
        rel.infons["type"] = r["relation"]
        for role in ("head", "tail"):
            ident, name = r.get(f"{role}_id"), (r.get(role) or "").lower()
            for a, e in annotations:
                if (ident and ident == e.get("concept_id")) or e["text"].lower() == name:
                    rel.add_node(bioc.BioCNode(a.id, role))
                    break
        d.add_relation(rel)
    return d


def export(out, dest, fmt: str, *, progress: bool | None = None) -> int:
    """Write ``out``'s articles with their entities and relations to ``dest`` in ``fmt``; the number
    of documents written. ``dest`` is published whole or not at all (written to a temporary file,
    then renamed).

    :raises BioMineError: see the module docstring.
    """
    from pipeline.progress import Progress

    if fmt not in FORMATS:
        raise BioMineError(f"format {fmt!r}: use one of {', '.join(FORMATS)}", setting="fmt")
    dest = os.fspath(dest)
    if os.path.isdir(dest):
        raise BioMineError(
            f"{dest} is a folder: name the file to write, e.g. {os.path.join(dest, 'export' + EXTENSIONS[fmt])}",
            setting="dest",
        )
    # A missing folder is refused, not created: it is more often a typo than a wish (as with `cp` or a
    # shell's `>`), and a typo would scatter exports into folders nobody reads.
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        what = "is a file, not a folder" if os.path.exists(parent) else "does not exist"
        raise BioMineError(
            f"{dest}: the folder {parent} {what}: create it first, or name a file in an existing folder",
            setting="dest",
        )
    tmp = f"{dest}.part"
    n = 0
    try:
        binary = fmt == "bioc-xml"  # lxml's incremental writer takes bytes
        with (
            open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f,
            Progress(None, unit="document", desc=f"export {fmt}", bar=progress) as bar,
        ):
            if fmt == "pubtator":
                for doc, ents, rels in documents(out):
                    f.write(_pubtator(doc, ents, rels))
                    n += 1
                    bar.update()
            elif fmt == "bioc-json":
                from bioc import biocjson

                head = {"source": "biomine", "date": "", "key": "biomine.key", "infons": {}}
                f.write(json.dumps(head)[:-1] + ', "documents": [')
                for doc, ents, rels in documents(out):
                    f.write(("," if n else "") + "\n" + biocjson.dumps(_bioc_document(doc, ents, rels)))
                    n += 1
                    bar.update()
                f.write("\n]}\n")
            else:
                from bioc import biocxml

                with biocxml.iterwrite(f) as writer:
                    writer.write_collection_info(_collection_info())
                    for doc, ents, rels in documents(out):
                        writer.write_document(_bioc_document(doc, ents, rels))
                        n += 1
                        bar.update()
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n


def _collection_info():
    import bioc

    c = bioc.BioCCollection()
    c.source, c.key = "biomine", "biomine.key"
    return c


__all__ = ["FORMATS", "documents", "export"]
