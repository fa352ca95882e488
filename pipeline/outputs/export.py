"""A job's output in the formats the field exchanges: PubTator, BioC JSON, BioC XML (entities and
relations; in BioC also the document labels of ``classify`` and the answers of ``qa``).

Contract:

- :func:`export` streams the live documents of ``OUT`` (tombstoned articles masked, as the query
  views show them) in PMID order with their rows into one file, so an export of the whole corpus
  never holds it in memory (one ordered DuckDB cursor per table: documents, entities, relations,
  labels, answers, merged by (pmid, version); a table the output does not have adds nothing).
- ``pubtator``: per article ``PMID|t|title``, ``PMID|a|abstract`` (line breaks as spaces: same
  offsets), one mention line ``PMID<TAB>start<TAB>end<TAB>text<TAB>label<TAB>id`` per entity (``id``
  the linked ``concept_id``, ``-1`` when unlinked, as BC5CDR writes it), and one relation line
  ``PMID<TAB>relation<TAB>head_id<TAB>tail_id<TAB>score`` per ``ok`` relation whose head and tail
  are both linked (PubTator relations join identifiers; ``score`` is ``exp(logprob)`` when known),
  then a blank line. :func:`pipeline.tasks.pubtator.read_pubtator` reads it back. PubTator has no
  place for document labels or answers (its lines are the title, the abstract, mentions and
  relations; a new line type would break its readers): they are left out; export BioC for them.
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
- Labels (``OUT/labels``, its ``ok`` rows, by label): document infons ``labels`` (the labels joined
  by ``|``, the HoC layout), and per label ``label:LABEL:score`` (its probability) and
  ``label:LABEL:model_id``; a label with an evidence span (the HoC sentence, or a sequence
  classifier's best window) is also an annotation ``L1``, ``L2``, ... at that span in the passage
  holding it (infons ``type`` = the label, ``task`` = ``classify``, ``score``,
  ``sentences``, ``model_id``), one per passage when a window spans title and abstract.
- Answers (``OUT/answers``, every row, by ``question_id``): document infons ``question_ids`` (the
  question ids joined by ``|``) and per question ``qa:QUESTION_ID:question``, ``qa:QUESTION_ID:answer``
  (yes / no / maybe), ``qa:QUESTION_ID:status`` (the parse status: ``ok``, ``unparsed``,
  ``other_answer``, ``skipped``), ``qa:QUESTION_ID:reason``, ``qa:QUESTION_ID:logprob`` (the
  answer's log-probability) and ``qa:QUESTION_ID:model_id``: keyed by the question id, so several
  questions of one article never collide; a key's field is the text after its last ``:``.
- Infons are strings; a null value is left out (an unlinked mention has no ``identifier``, an
  unparsed answer no ``qa:...:answer``).

:raises BioMineError: OUT is not a job output or has no documents; the format is unknown; the
    destination is a folder, or its folder does not exist (it is not created: a missing folder is
    more often a typo than a wish).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator, NamedTuple

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


class Article(NamedTuple):
    """One live article of an output with its rows of each table, in export order."""

    document: dict[str, Any]
    entities: list[dict[str, Any]]
    relations: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    answers: list[dict[str, Any]]


#: The rows each article carries: one ordered query per table (columns as the table has them).
_ROWS = {
    "entities": 'SELECT * FROM entities ORDER BY pmid, version, start, "end"',
    "relations": "SELECT * FROM relations WHERE parse_status = 'ok' ORDER BY pmid, version",
    "labels": "SELECT pmid, version, label, score, evidence_start, evidence_end, sentences, model_id "
    "FROM labels WHERE parse_status = 'ok' ORDER BY pmid, version, label",
    "answers": "SELECT pmid, version, question_id, question, answer, parse_status, reason, answer_logprob, model_id "
    "FROM answers ORDER BY pmid, version, question_id",
}


def documents(out) -> Iterator[Article]:
    """Every live article of ``out`` with its rows (:class:`Article`), in (pmid, version) order."""
    from pipeline.outputs.query import connect

    _, views, _ = connect(out)
    if "documents" not in views:
        raise BioMineError(f"{out} has no documents: export needs a job output or an ingest of one")
    docs = _rows(out, "SELECT pmid, version, title, abstract FROM documents ORDER BY pmid, version")
    tables = {name: _Merged(_grouped(_rows(out, sql))) for name, sql in _ROWS.items() if name in views}
    for doc in docs:
        key = (doc["pmid"], doc["version"])
        yield Article(doc, **{name: tables[name].take(key) if name in tables else [] for name in _ROWS})


def _pubtator(article: Article) -> str:
    """The article's PubTator block (its labels and answers have no place in PubTator: left out)."""
    doc, entities, relations = article.document, article.entities, article.relations
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


def _bioc_document(article: Article):
    import bioc

    doc, entities, relations = article.document, article.entities, article.relations
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
    _add_labels(d, passages, article.labels)
    _add_answers(d, article.answers)
    return d


def _add_labels(d, passages, labels: list[dict[str, Any]]) -> None:
    """The document's labels as infons, and each label's evidence as annotations ``L1``, ... (module
    docstring)."""
    import bioc

    if not labels:
        return
    d.infons["labels"] = "|".join(row["label"] for row in labels)
    n = 0
    for row in labels:
        label = row["label"]
        d.infons.update(_infons({f"label:{label}:score": row["score"], f"label:{label}:model_id": row["model_id"]}))
        if row["evidence_start"] is None:
            continue
        # A sentence lies in one passage; a sequence classifier's window may run from the title into
        # the abstract, and an annotation's text must be its passage's text at its offsets, so such a
        # span is one annotation per passage (the joining space in neither).
        for p in passages:
            start = max(row["evidence_start"], p.offset)
            end = min(row["evidence_end"], p.offset + len(p.text))
            if start >= end:
                continue
            n += 1
            a = bioc.BioCAnnotation()
            a.id, a.text = f"L{n}", p.text[start - p.offset : end - p.offset]
            a.infons.update(
                _infons(
                    {
                        "type": label,
                        "task": "classify",
                        "score": row["score"],
                        "sentences": row["sentences"],
                        "model_id": row["model_id"],
                    }
                )
            )
            a.add_location(bioc.BioCLocation(start, end - start))
            p.add_annotation(a)


def _add_answers(d, answers: list[dict[str, Any]]) -> None:
    """Each answer as document infons keyed by its question id (module docstring)."""
    if not answers:
        return
    d.infons["question_ids"] = "|".join(row["question_id"] for row in answers)
    for row in answers:
        key = f"qa:{row['question_id']}:"
        d.infons.update(
            _infons(
                {
                    key + "question": row["question"],
                    key + "answer": row["answer"],
                    key + "status": row["parse_status"],
                    key + "reason": row["reason"],
                    key + "logprob": row["answer_logprob"],
                    key + "model_id": row["model_id"],
                }
            )
        )


def export(out, dest, fmt: str, *, progress: bool | None = None) -> int:
    """Write ``out``'s articles with their rows (module docstring) to ``dest`` in ``fmt``; the number
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
                for article in documents(out):
                    f.write(_pubtator(article))
                    n += 1
                    bar.update()
            elif fmt == "bioc-json":
                from bioc import biocjson

                head = {"source": "biomine", "date": "", "key": "biomine.key", "infons": {}}
                f.write(json.dumps(head)[:-1] + ', "documents": [')
                for article in documents(out):
                    f.write(("," if n else "") + "\n" + biocjson.dumps(_bioc_document(article)))
                    n += 1
                    bar.update()
                f.write("\n]}\n")
            else:
                from bioc import biocxml

                with biocxml.iterwrite(f) as writer:
                    writer.write_collection_info(_collection_info())
                    for article in documents(out):
                        writer.write_document(_bioc_document(article))
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


__all__ = ["FORMATS", "Article", "documents", "export"]
