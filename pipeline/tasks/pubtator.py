"""PubTator files: the annotated-abstract format of BC5CDR and PubTator, read for NER training,
NER evaluation and the relation benchmarks.

- :func:`read_pubtator` reads PubTator text: ``PMID|t|title``, ``PMID|a|abstract``, mention lines
  ``PMID<TAB>start<TAB>end<TAB>text<TAB>type<TAB>ids[<TAB>individual mentions]`` with offsets into
  ``title + " " + abstract`` and ``|``-joined ids for composite mentions, and relation lines
  ``PMID<TAB>type<TAB>id1<TAB>id2[<TAB>score]``. Documents are separated by blank lines; a file of
  bare relation lines (as BioGPT's BC5CDR post-processing writes) is accepted.

:raises DataFormatError: a file that is not PubTator; the message names the file and the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DataFormatError


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


def read_pubtator(path: str | os.PathLike[str]) -> list[PubTatorDocument]:
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
            raise DataFormatError(
                f"{where}: not a PubTator line (PMID|t|, PMID|a|, mention or relation): {line[:80]!r}"
            )
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
