"""Streaming parser for PubMed XML (efetch responses, baseline and daily update files).

Contract:

- :func:`iter_records` reads a ``PubmedArticleSet`` document from a path (gzip detected by its magic
  bytes, so ``.xml.gz`` and ``.xml`` both work), bytes, or a binary file object, and yields, in
  document order, one row dict per ``PubmedArticle``/``PubmedBookArticle`` (keys are the columns of
  :data:`schemas.articles.ARTICLE_SCHEMA`; ``source`` and ``fetched_at`` are left for the caller)
  and one :class:`Deletion` per ``DeleteCitation`` element.
- Memory stays flat: each record is converted and its element cleared as soon as its end tag is
  read, so a 30,000-citation baseline file never sits in memory as a tree.
  (``Bio.Entrez.parse`` refuses ``PubmedArticleSet`` and ``Bio.Entrez.read`` builds the whole
  document; see ``benchmarks/bench_parse.py``.)
- Text keeps the text of inline markup (``<i>``, ``<sup>``, MathML) without the tags, and every
  non-ASCII character; runs of ASCII whitespace (pretty-printing inside mixed content) collapse to
  one space.
- Rows are yielded as they are parsed, so a document that turns out to be truncated has already
  yielded its leading records: callers that need all-or-nothing (an efetch batch, an ingest
  transaction) collect first and commit only after the iterator finishes.

:raises PubmedXMLError: malformed or truncated XML, a document that is not a ``PubmedArticleSet``
    (the message includes the text of an NCBI ``<ERROR>`` element when there is one), or a record
    without a usable PMID. Messages name the source, the position and the last good PMID.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Protocol, TypedDict, Union

from pipeline.errors import PubmedXMLError

Source = Union[str, os.PathLike, bytes, IO[bytes]]


@dataclass(frozen=True)
class Deletion:
    """A ``DeleteCitation`` entry of an update file: this PMID (at this version) is withdrawn."""

    pmid: int
    version: int


_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_YEAR = re.compile(r"\d{4}")
_WS = re.compile(r"[ \t\r\n]+")  # ASCII only: NBSP, thin spaces etc. are content and stay
_AUTHOR_FIELDS = {
    "LastName": "last_name",
    "ForeName": "fore_name",
    "Initials": "initials",
    "Suffix": "suffix",
    "CollectiveName": "collective_name",
}
_RECORD_TAGS = ("PubmedArticle", "PubmedBookArticle", "DeleteCitation")
_ROOT_TAGS = ("PubmedArticleSet", "PubmedBookArticleSet")


def iter_records(source: Source, name: str | None = None) -> Iterator[dict[str, Any] | Deletion]:
    """Yield article rows and :class:`Deletion` entries from a PubMed XML document, streaming.

    ``name`` is used in error messages (defaults to the path, or ``<bytes>``).

    :raises PubmedXMLError: see the module docstring.
    """
    stream, label, close = _open(source, name)
    state = _Progress(label)
    try:
        yield from _iterparse(stream, state)
    except ET.ParseError as exc:
        line, column = exc.position
        raise PubmedXMLError(
            f"{label}: malformed or truncated PubMed XML at line {line}, column {column} "
            f"({_expat_reason(exc)}){state.after()}"
        ) from exc
    except (EOFError, OSError, zlib.error) as exc:
        raise PubmedXMLError(f"{label}: unreadable or truncated input ({exc}){state.after()}") from exc
    finally:
        if close:
            stream.close()


def parse_articles(source: Source, name: str | None = None) -> list[dict[str, Any]]:
    """All article rows of a (small) document, e.g. one efetch response; deletions are dropped."""
    return [r for r in iter_records(source, name) if not isinstance(r, Deletion)]


# --- internals ------------------------------------------------------------------------------------


class _Progress:
    """What the parser has seen, so errors can say where they happened."""

    def __init__(self, label: str):
        self.label = label
        self.records = 0
        self.last_pmid: int | None = None

    def after(self) -> str:
        if self.last_pmid is None:
            return ", before the first record"
        return f", after record {self.records} (PMID {self.last_pmid})"


class _Stream(Protocol):
    """What the parser reads: a binary file, a gzip reader over one, or a :class:`_Prefixed`."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _open(source: Source, name: str | None) -> tuple[_Stream, str, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _maybe_gunzip(io.BytesIO(bytes(source))), name or "<bytes>", True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            raw = open(path, "rb")
        except OSError as exc:
            raise PubmedXMLError(f"cannot open {path}: {exc.strerror}") from exc
        return _maybe_gunzip(raw), name or str(path), True
    return _maybe_gunzip(source), name or str(getattr(source, "name", "<stream>")), False


def _maybe_gunzip(raw: IO[bytes]) -> _Stream:
    # Sniff the gzip magic rather than trust a file name: NCBI serves .xml.gz, users rename things.
    stream: _Stream = raw
    if hasattr(raw, "peek"):
        head = raw.peek(2)[:2]
    else:
        head = raw.read(2)
        stream = _Prefixed(head, raw)
    if head == b"\x1f\x8b":
        # typeshed wants a seekable fileobj; GzipFile seeks only to rewind, which a forward read never does.
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[call-overload]
    return stream


class _Prefixed:
    """A read-only stream: ``head`` (bytes already read while sniffing), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._raw.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._raw.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data if len(data) == size else data + self._raw.read(size - len(data))

    def close(self) -> None:
        self._raw.close()


def _expat_reason(exc: ET.ParseError) -> str:
    return str(exc).split(":")[0]


def _iterparse(stream: _Stream, state: _Progress) -> Iterator[dict[str, Any] | Deletion]:
    # Only end events: start events would double the Python-level work per element for nothing.
    context = ET.iterparse(stream, events=("end",))
    for _, elem in context:
        if elem.tag not in _RECORD_TAGS:
            continue
        if elem.tag == "DeleteCitation":
            for pmid_el in elem.iterfind("PMID"):
                yield Deletion(_pmid(pmid_el, state), _version(pmid_el))
        else:
            row = _article(elem, state) if elem.tag == "PubmedArticle" else _book(elem, state)
            state.records += 1
            state.last_pmid = row["pmid"]
            yield row
        # Drop the finished record's subtree: memory stays flat (the empty element left in the root
        # costs a few dozen bytes).
        elem.clear()
    # typeshed's iterparse iterator lacks .root (set once the document is read to its end).
    root = context.root  # type: ignore[attr-defined]
    if root.tag not in _ROOT_TAGS:
        _raise_not_pubmed(root, state)


def _raise_not_pubmed(root: ET.Element, state: _Progress) -> None:
    error = root if root.tag.upper() == "ERROR" else root.find(".//ERROR")
    message = _text(error) if error is not None else None
    detail = f": NCBI says {message!r}" if message else ""
    raise PubmedXMLError(f"{state.label}: expected a PubmedArticleSet document, got <{root.tag}>{detail}", message)


def _text(elem: ET.Element | None) -> str | None:
    """Text of an element and its inline markup, whitespace-normalised; None when absent or empty."""
    if elem is None:
        return None
    text = elem.text or "" if len(elem) == 0 else "".join(elem.itertext())
    # The regex is the slow part; most texts have no layout whitespace at all.
    if "\n" in text or "  " in text or "\t" in text or "\r" in text:
        text = _WS.sub(" ", text)
    return text.strip() or None


def _plain(elem: ET.Element | None) -> str | None:
    if elem is None or elem.text is None:
        return None
    return elem.text.strip() or None


def _pmid(elem: ET.Element | None, state: _Progress) -> int:
    text = _plain(elem)
    if text is None or not text.isdigit():
        raise PubmedXMLError(f"{state.label}: record {state.records + 1} has no usable PMID ({text!r}){state.after()}")
    return int(text)


def _version(pmid_el: ET.Element) -> int:
    value = pmid_el.get("Version", "1")
    return int(value) if value.isdigit() else 1


def _yn(elem: ET.Element) -> bool:
    return elem.get("MajorTopicYN") == "Y"


def _article(elem: ET.Element, state: _Progress) -> dict[str, Any]:
    citation = elem.find("MedlineCitation")
    if citation is None:
        raise PubmedXMLError(f"{state.label}: PubmedArticle without MedlineCitation{state.after()}")
    # Only the direct PMID child: CommentsCorrections and references carry PMIDs of other articles.
    pmid_el = citation.find("PMID")
    pmid = _pmid(pmid_el, state)
    assert pmid_el is not None  # _pmid refused a record without one
    article = citation.find("Article")
    if article is None:
        raise PubmedXMLError(f"{state.label}: PMID {pmid} has no Article element")
    journal = article.find("Journal")
    row: dict[str, Any] = {
        "pmid": pmid,
        "version": _version(pmid_el),
        "record_type": "article",
        "title": _text(article.find("ArticleTitle")),
        "journal": _text(journal.find("Title")) if journal is not None else None,
        "iso_abbreviation": _plain(journal.find("ISOAbbreviation")) if journal is not None else None,
        "authors": _authors(article.find("AuthorList")),
        "mesh_headings": _mesh(citation.find("MeshHeadingList")),
        "keywords": _keywords(citation),
        "languages": [t for t in (_plain(x) for x in article.iterfind("Language")) if t],
    }
    row.update(_publication_types(article.iterfind("PublicationTypeList/PublicationType")))
    row.update(_abstract(article.find("Abstract")))
    row.update(_date(journal.find("JournalIssue/PubDate") if journal is not None else None))
    ids = _article_ids(elem.find("PubmedData/ArticleIdList"))
    doi = ids.get("doi")
    if doi is None:
        # Not every record has PubmedData ids yet (in-process citations); the publisher's
        # ELocationID carries the same DOI.
        for loc in article.iterfind("ELocationID"):
            if loc.get("EIdType") == "doi":
                doi = _plain(loc)
                break
    row["doi"] = doi
    row["pmc_id"] = ids.get("pmc")
    issue = journal.find("JournalIssue") if journal is not None else None
    info = citation.find("MedlineJournalInfo")
    corrections = _comments_corrections(citation)
    row.update(
        {
            "chemicals": _chemicals(citation),
            "grants": _grants(article),
            "reference_pmids": _references(elem.find("PubmedData")),
            "comments_corrections": corrections,
            "retracted": _retracted(corrections, row["publication_types"]),
            "vernacular_title": _text(article.find("VernacularTitle")),
            "volume": _plain(issue.find("Volume")) if issue is not None else None,
            "issue": _plain(issue.find("Issue")) if issue is not None else None,
            "pages": _pages(article.find("Pagination")),
            "issn": _plain(journal.find("ISSN")) if journal is not None else None,
            "issn_linking": _plain(info.find("ISSNLinking")) if info is not None else None,
            "country": _plain(info.find("Country")) if info is not None else None,
            "medline_ta": _plain(info.find("MedlineTA")) if info is not None else None,
            "nlm_unique_id": _plain(info.find("NlmUniqueID")) if info is not None else None,
            "other_ids": (
                [{"source": o.get("Source"), "id": _plain(o)} for o in citation.iterfind("OtherID") if _plain(o)]
                + _other_article_ids(elem.find("PubmedData/ArticleIdList"))
            ),
        }
    )
    return row


def _book(elem: ET.Element, state: _Progress) -> dict[str, Any]:
    doc = elem.find("BookDocument")
    if doc is None:
        raise PubmedXMLError(f"{state.label}: PubmedBookArticle without BookDocument{state.after()}")
    pmid_el = doc.find("PMID")
    pmid = _pmid(pmid_el, state)
    assert pmid_el is not None  # _pmid refused a record without one
    book = doc.find("Book")
    book_title = _text(book.find("BookTitle")) if book is not None else None
    # A chapter has its own ArticleTitle; a whole book only its BookTitle. Authors likewise: the
    # chapter's AuthorList, else the book's (which may be editors).
    authors = doc.find("AuthorList")
    if authors is None and book is not None:
        authors = book.find("AuthorList")
    row: dict[str, Any] = {
        "pmid": pmid,
        "version": _version(pmid_el),
        "record_type": "book",
        "title": _text(doc.find("ArticleTitle")) or book_title,
        "journal": book_title,
        "iso_abbreviation": None,
        "authors": _authors(authors),
        "mesh_headings": [],
        "keywords": _keywords(doc),
        "languages": [t for t in (_plain(x) for x in doc.iterfind("Language")) if t],
    }
    row.update(_publication_types(doc.iterfind("PublicationType")))
    row.update(_abstract(doc.find("Abstract")))
    row.update(_date(book.find("PubDate") if book is not None else None))
    ids = _article_ids(doc.find("ArticleIdList"))
    ids.update({k: v for k, v in _article_ids(elem.find("PubmedBookData/ArticleIdList")).items() if k not in ids})
    row["doi"] = ids.get("doi")
    row["pmc_id"] = ids.get("pmc")
    # What the DTD gives a BookDocument (no ChemicalList, CommentsCorrections or journal info).
    other_ids = _other_article_ids(doc.find("ArticleIdList"))
    seen = {(o["source"], o["id"]) for o in other_ids}
    other_ids += [
        o for o in _other_article_ids(elem.find("PubmedBookData/ArticleIdList")) if (o["source"], o["id"]) not in seen
    ]
    row.update(
        {
            "chemicals": [],
            "grants": _grants(doc),
            "reference_pmids": _references(doc),
            "comments_corrections": [],
            "retracted": _retracted([], row["publication_types"]),
            "vernacular_title": _text(doc.find("VernacularTitle")),
            "volume": _plain(book.find("Volume")) if book is not None else None,
            "issue": None,
            "pages": _pages(doc.find("Pagination")),
            "issn": None,
            "issn_linking": None,
            "country": None,
            "medline_ta": None,
            "nlm_unique_id": None,
            "other_ids": other_ids,
        }
    )
    return row


def _publication_types(elements) -> dict[str, list]:
    """Publication type names and, in the same order, their MeSH UIs."""
    names, uis = [], []
    for p in elements:
        text = _text(p)
        if text:
            names.append(text)
            uis.append(p.get("UI"))
    return {"publication_types": names, "publication_type_uis": uis}


def _chemicals(citation: ET.Element) -> list[dict[str, Any]]:
    """ChemicalList: the substances NLM indexed for the article. RegistryNumber ``0`` means none was
    assigned (NLM's MEDLINE element descriptions), so it becomes null."""
    out = []
    for chem in citation.iterfind("ChemicalList/Chemical"):
        name = chem.find("NameOfSubstance")
        registry = _plain(chem.find("RegistryNumber"))
        out.append(
            {
                "name": _text(name),
                "ui": name.get("UI") if name is not None else None,
                "registry_number": None if registry in (None, "0") else registry,
            }
        )
    return out


def _grants(article: ET.Element) -> list[dict[str, Any]]:
    return [
        {
            "grant_id": _plain(g.find("GrantID")),
            "acronym": _plain(g.find("Acronym")),
            "agency": _text(g.find("Agency")),
            "country": _plain(g.find("Country")),
        }
        for g in article.iterfind("GrantList/Grant")
    ]


def _references(parent: ET.Element | None) -> list[int]:
    """PMIDs of the reference lists under ``parent`` (nested ReferenceLists included; references
    without a PMID are skipped)."""
    pmids: list[int] = []
    if parent is None:
        return pmids
    # Plain find/iteration, not path expressions: ElementPath is Python code, and a citation has
    # dozens of references.
    for ref_list in parent.iterfind("ReferenceList"):
        for ref in ref_list.iter("Reference"):
            ids = ref.find("ArticleIdList")
            if ids is None:
                continue
            for aid in ids:
                if aid.get("IdType") == "pubmed":
                    text = _plain(aid)
                    if text and text.isdigit():
                        pmids.append(int(text))
    return pmids


def _comments_corrections(citation: ET.Element) -> list[dict[str, Any]]:
    out = []
    for cc in citation.iterfind("CommentsCorrectionsList/CommentsCorrections"):
        pmid = _plain(cc.find("PMID"))
        out.append(
            {
                "ref_type": cc.get("RefType"),
                "ref_source": _text(cc.find("RefSource")),
                "pmid": int(pmid) if pmid and pmid.isdigit() else None,
            }
        )
    return out


def _retracted(corrections: list[dict[str, Any]], publication_types: list[str]) -> bool:
    """NLM marks a retracted article both ways: a ``RetractionIn`` (or ``RetractedandRepublishedIn``)
    correction pointing at the notice,
    and the publication type "Retracted Publication" (the notice itself is "Retraction of
    Publication", with ``RetractionOf``: it is not retracted)."""
    return (
        any(c["ref_type"] in ("RetractionIn", "RetractedandRepublishedIn") for c in corrections)
        or "Retracted Publication" in publication_types
    )


def _pages(pagination: ET.Element | None) -> str | None:
    if pagination is None:
        return None
    medline = _plain(pagination.find("MedlinePgn"))
    if medline:
        return medline
    start, end = _plain(pagination.find("StartPage")), _plain(pagination.find("EndPage"))
    return f"{start}-{end}" if start and end else start


def _other_article_ids(id_list: ET.Element | None) -> list[dict[str, str]]:
    """ArticleIdList ids other than the PMID, DOI and PMC id (those have their own columns)."""
    if id_list is None:
        return []
    out = []
    for item in id_list.iterfind("ArticleId"):
        source, value = item.get("IdType", "pubmed"), _plain(item)
        if source not in ("pubmed", "doi", "pmc") and value:
            out.append({"source": source, "id": value})
    return out


class _AbstractSection(TypedDict):
    """One AbstractText: an element of the ``abstract_sections`` column."""

    label: str | None
    category: str | None
    text: str


def _abstract(abstract: ET.Element | None) -> dict[str, Any]:
    sections: list[_AbstractSection] = []
    if abstract is not None:
        for part in abstract.iterfind("AbstractText"):
            text = _text(part)
            if text is None:
                continue
            sections.append({"label": part.get("Label"), "category": part.get("NlmCategory"), "text": text})
    if not sections:
        return {"abstract": None, "has_abstract": False, "abstract_sections": []}
    lines = [f"{s['label']}: {s['text']}" if s["label"] else s["text"] for s in sections]
    return {"abstract": "\n".join(lines), "has_abstract": True, "abstract_sections": sections}


def _authors(author_list: ET.Element | None) -> list[dict[str, Any]]:
    if author_list is None:
        return []
    authors = []
    for author in author_list.iterfind("Author"):
        entry: dict[str, Any] = {**dict.fromkeys(_AUTHOR_FIELDS.values()), "orcid": None, "affiliations": []}
        # One pass over the children is faster than a find() per field, and authors are many.
        for child in author:
            tag = child.tag
            if tag in _AUTHOR_FIELDS:
                entry[_AUTHOR_FIELDS[tag]] = _text(child)
            elif tag == "AffiliationInfo":
                affiliation = _text(child.find("Affiliation"))
                if affiliation:
                    entry["affiliations"].append(affiliation)
            elif tag == "Identifier" and child.get("Source") == "ORCID" and entry["orcid"] is None:
                entry["orcid"] = _plain(child)
        authors.append(entry)
    return authors


def _mesh(mesh_list: ET.Element | None) -> list[dict[str, Any]]:
    if mesh_list is None:
        return []
    headings = []
    for heading in mesh_list.iterfind("MeshHeading"):
        descriptor = heading.find("DescriptorName")
        if descriptor is None:
            continue
        headings.append(
            {
                "descriptor": _text(descriptor),
                "descriptor_ui": descriptor.get("UI"),
                "major_topic": _yn(descriptor),
                "qualifiers": [
                    {"name": _text(q), "ui": q.get("UI"), "major_topic": _yn(q)}
                    for q in heading.iterfind("QualifierName")
                ],
            }
        )
    return headings


def _keywords(parent: ET.Element) -> list[str]:
    return [k for k in (_text(x) for x in parent.iterfind("KeywordList/Keyword")) if k]


def _article_ids(id_list: ET.Element | None) -> dict[str, str]:
    ids: dict[str, str] = {}
    if id_list is not None:
        for item in id_list.iterfind("ArticleId"):
            value = _plain(item)
            kind = item.get("IdType", "pubmed")
            if value and kind not in ids:
                ids[kind] = value
    return ids


def _date(pub_date: ET.Element | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pub_year": None,
        "pub_month": None,
        "pub_day": None,
        "pub_season": None,
        "medline_date": None,
    }
    if pub_date is None:
        return out
    medline = _plain(pub_date.find("MedlineDate"))
    if medline is not None:
        # Free text such as "1998 Dec-1999 Jan" or "Winter 2001": keep it, and take its first year
        # as the year (what PubMed itself does when it sorts by date).
        out["medline_date"] = medline
        found = _YEAR.search(medline)
        out["pub_year"] = int(found.group()) if found else None
        return out
    year = _plain(pub_date.find("Year"))
    out["pub_year"] = int(year) if year and year.isdigit() else None
    out["pub_month"] = _month(_plain(pub_date.find("Month")))
    day = _plain(pub_date.find("Day"))
    out["pub_day"] = int(day) if day and day.isdigit() and 1 <= int(day) <= 31 else None
    out["pub_season"] = _plain(pub_date.find("Season"))
    return out


def _month(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        value = int(text)
        return value if 1 <= value <= 12 else None
    return _MONTHS.get(text[:3].lower())
