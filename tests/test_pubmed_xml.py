"""The streaming PubMed XML parser on realistic records (built here) and on real efetch answers (../shared)."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import re
import tracemalloc

import pytest
from fake_eutils import article_xml, pubmed_document

from pipeline.errors import PubmedXMLError
from pipeline.pubmed.parser import Deletion, iter_records, parse_articles
from schemas.articles import ARTICLE_SCHEMA, to_table


def one(xml: str) -> dict:
    rows = parse_articles(pubmed_document([xml]).encode())
    assert len(rows) == 1
    return rows[0]


def test_structured_abstract_keeps_labels_categories_and_markup():
    row = one(
        article_xml(
            31415926,
            title="Effect of <i>CYP2C9</i> variants on warfarin dose: r<sup>2</sup> &lt; 0.3 in H<sub>2</sub>O",
            abstract=[
                ("BACKGROUND", "BACKGROUND", "Warfarin <b>dosing</b> varies."),
                ("PATIENTS AND METHODS", "METHODS", "We enrolled 120 patients (p<sub>trend</sub>=0.04)."),
                ("CONCLUSIONS", "CONCLUSIONS", "Genotype matters."),
            ],
        )
    )
    assert row["title"] == "Effect of CYP2C9 variants on warfarin dose: r2 < 0.3 in H2O"
    assert row["has_abstract"] is True
    assert row["abstract_sections"] == [
        {"label": "BACKGROUND", "category": "BACKGROUND", "text": "Warfarin dosing varies."},
        {"label": "PATIENTS AND METHODS", "category": "METHODS", "text": "We enrolled 120 patients (ptrend=0.04)."},
        {"label": "CONCLUSIONS", "category": "CONCLUSIONS", "text": "Genotype matters."},
    ]
    # Section labels stay in the plain text; the copyright line is not part of the abstract.
    assert row["abstract"] == (
        "BACKGROUND: Warfarin dosing varies.\n"
        "PATIENTS AND METHODS: We enrolled 120 patients (ptrend=0.04).\n"
        "CONCLUSIONS: Genotype matters."
    )


def test_fields_of_a_full_record():
    row = one(
        article_xml(
            123,
            dt.date(2021, 3, 4),
            mesh=[("Warfarin", "D014859", True), ("Humans", "D006801", False)],
            doi="10.1000/xyz123",
            pmc="PMC765",
            keywords=["anticoagulants", "drug interaction"],
            version=2,
        )
    )
    assert (row["pmid"], row["version"], row["record_type"]) == (123, 2, "article")
    assert (row["pub_year"], row["pub_month"], row["pub_day"], row["medline_date"]) == (2021, 3, 4, None)
    assert row["journal"] == "Journal of Clinical Pharmacology"
    assert row["iso_abbreviation"] == "J Clin Pharmacol"
    assert [m["descriptor"] for m in row["mesh_headings"]] == ["Warfarin", "Humans"]
    assert row["mesh_headings"][0] == {
        "descriptor": "Warfarin",
        "descriptor_ui": "D014859",
        "major_topic": True,
        "qualifiers": [],
    }
    assert row["keywords"] == ["anticoagulants", "drug interaction"]
    assert row["publication_types"] == ["Journal Article"]
    assert row["languages"] == ["eng"]
    # The DOI of the article, not the one in its reference list; the PMID is the citation's own,
    # not the one in CommentsCorrections.
    assert (row["doi"], row["pmc_id"]) == ("10.1000/xyz123", "PMC765")
    assert row["authors"][0]["affiliations"] == ["Dept. of Pharmacology, Univ. Smith."]


def test_medline_date_and_season():
    medline = one(article_xml(1, pub_date_xml="<MedlineDate>1998 Dec-1999 Jan</MedlineDate>"))
    assert medline["medline_date"] == "1998 Dec-1999 Jan"
    assert (medline["pub_year"], medline["pub_month"], medline["pub_day"]) == (1998, None, None)
    season = one(article_xml(2, pub_date_xml="<Year>1990</Year><Season>Spring</Season>"))
    assert (season["pub_year"], season["pub_month"], season["pub_season"]) == (1990, None, "Spring")
    numeric = one(article_xml(3, pub_date_xml="<Year>2017</Year><Month>06</Month>"))
    assert (numeric["pub_year"], numeric["pub_month"], numeric["pub_day"]) == (2017, 6, None)


def test_collective_author_and_orcid():
    xml = article_xml(5, authors=[("Müller", "Anna")], collective="RE-LY Investigators")
    xml = xml.replace(
        "<Initials>A</Initials>", '<Initials>A</Initials><Identifier Source="ORCID">0000-0002-1825-0097</Identifier>'
    )
    authors = one(xml)["authors"]
    assert authors[0]["last_name"] == "Müller" and authors[0]["orcid"] == "0000-0002-1825-0097"
    assert authors[1] == {
        "last_name": None,
        "fore_name": None,
        "initials": None,
        "suffix": None,
        "collective_name": "RE-LY Investigators",
        "orcid": None,
        "affiliations": [],
    }


def test_missing_abstract_is_kept_and_flagged():
    row = one(article_xml(7, abstract=None))
    assert row["has_abstract"] is False
    assert row["abstract"] is None and row["abstract_sections"] == []
    assert row["title"] == "Article 7 on drug interactions."


def test_non_ascii_text_is_intact():
    title = "Wirkung von β-Blockern auf Patienten in Zürich — 5\u2009mg/kg, 日本語 &amp; &#x3b1;-Tocopherol"
    row = one(
        article_xml(8, title=title, abstract="Naïve «patients» received 10\u00a0mg.", authors=[("Ångström", "Søren")])
    )
    assert row["title"] == "Wirkung von β-Blockern auf Patienten in Zürich — 5\u2009mg/kg, 日本語 & α-Tocopherol"
    # Non-breaking and thin spaces are content, not layout: only ASCII whitespace is normalised.
    assert row["abstract"] == "Naïve «patients» received 10\u00a0mg."
    assert row["authors"][0]["last_name"] == "Ångström" and row["authors"][0]["fore_name"] == "Søren"


def test_mathml_and_pretty_printing_keep_text():
    title = (
        'Dose <mml:math xmlns:mml="http://www.w3.org/1998/Math/MathML">\n    <mml:mi>x</mml:mi>\n'
        "    <mml:mo>+</mml:mo>\n    <mml:mn>1</mml:mn>\n</mml:math> of\n      drug"
    )
    assert one(article_xml(9, title=title))["title"] == "Dose x + 1 of drug"


def test_delete_citation_and_versions_in_document_order():
    doc = pubmed_document([article_xml(10), article_xml(11, version=2)], deletions=[12, 13])
    records = list(iter_records(doc.encode()))
    assert [r["pmid"] for r in records[:2]] == [10, 11] and records[1]["version"] == 2
    assert records[2:] == [Deletion(12, 1), Deletion(13, 1)]
    assert [r["pmid"] for r in parse_articles(doc.encode())] == [10, 11]


BOOK = """<PubmedBookArticle><BookDocument><PMID Version="1">20301295</PMID>
<ArticleIdList><ArticleId IdType="bookaccession">NBK1116</ArticleId></ArticleIdList>
<Book><Publisher><PublisherName>University of Washington, Seattle</PublisherName></Publisher>
<BookTitle book="gene">GeneReviews<sup>®</sup></BookTitle><PubDate><Year>1993</Year></PubDate>
<AuthorList Type="editors"><Author ValidYN="Y"><LastName>Adam</LastName><ForeName>Margaret P</ForeName></Author></AuthorList></Book>
<ArticleTitle>CYP2C9 Deficiency</ArticleTitle><Language>eng</Language>
<AuthorList Type="authors"><Author ValidYN="Y"><LastName>Pratt</LastName><ForeName>Victoria M</ForeName></Author></AuthorList>
<PublicationType UI="D016454">Review</PublicationType>
<Abstract><AbstractText Label="CLINICAL CHARACTERISTICS">Slow metabolism of warfarin.</AbstractText></Abstract>
</BookDocument><PubmedBookData><History/><PublicationStatus>ppublish</PublicationStatus>
<ArticleIdList><ArticleId IdType="pubmed">20301295</ArticleId></ArticleIdList></PubmedBookData></PubmedBookArticle>"""


def test_book_article():
    row = parse_articles(pubmed_document([BOOK, article_xml(1)]).encode())[0]
    assert (row["pmid"], row["record_type"], row["title"], row["journal"]) == (
        20301295,
        "book",
        "CYP2C9 Deficiency",
        "GeneReviews®",
    )
    assert row["authors"][0]["last_name"] == "Pratt" and row["pub_year"] == 1993
    assert row["abstract"] == "CLINICAL CHARACTERISTICS: Slow metabolism of warfarin."
    assert row["publication_types"] == ["Review"]


def test_sources_gzip_bytes_stream_and_path(tmp_path):
    doc = pubmed_document([article_xml(i) for i in range(1, 4)]).encode()
    plain, packed = tmp_path / "pubmed25n0001.xml", tmp_path / "renamed.xml"
    plain.write_bytes(doc)
    packed.write_bytes(gzip.compress(doc))  # gzip is sniffed, not taken from the name
    for source in (doc, gzip.compress(doc), io.BytesIO(gzip.compress(doc)), plain, packed, open(plain, "rb")):
        assert [r["pmid"] for r in parse_articles(source)] == [1, 2, 3]


def test_malformed_xml_names_source_position_and_last_pmid():
    doc = pubmed_document([article_xml(41), article_xml(42), article_xml(43)]).encode()
    broken = doc[: doc.index(b'<PMID Version="1">43')] + b"<Broken></PubmedArticleSet>"
    with pytest.raises(PubmedXMLError, match=r"update\.xml: malformed or truncated PubMed XML at line \d+.*PMID 42"):
        list(iter_records(broken, "update.xml"))
    packed = gzip.compress(
        pubmed_document([article_xml(i, abstract=f"Text {i}. " * 50) for i in range(1, 201)]).encode()
    )
    with pytest.raises(PubmedXMLError, match=r"truncated input \(Compressed file ended.*after record \d+ \(PMID \d+\)"):
        list(iter_records(packed[: len(packed) // 2]))
    with pytest.raises(PubmedXMLError, match="no usable PMID"):
        parse_articles(pubmed_document([article_xml(44).replace(">44</PMID>", ">abc</PMID>")]).encode())


def test_error_document_is_reported_with_ncbi_text():
    with pytest.raises(PubmedXMLError, match="Cannot retrieve history data") as info:
        parse_articles(b"<eFetchResult><ERROR>Cannot retrieve history data</ERROR></eFetchResult>")
    assert info.value.ncbi_error == "Cannot retrieve history data"


def test_rows_fit_the_article_schema():
    rows = parse_articles(pubmed_document([article_xml(1, abstract=None), BOOK, article_xml(2, version=3)]).encode())
    table = to_table(rows)
    assert table.schema.equals(ARTICLE_SCHEMA, check_metadata=True)
    assert table.column("has_abstract").to_pylist() == [False, True, True]


def test_streaming_keeps_memory_flat():
    # 2,000 articles (~5 MB): a parser that kept the tree would need tens of MB.
    doc = pubmed_document([article_xml(i, abstract="Long abstract text. " * 40) for i in range(1, 2001)]).encode()
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_records(io.BytesIO(doc)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 2000
    assert peak < len(doc) / 4, f"peak {peak} bytes while streaming a {len(doc)}-byte document"


# --- real efetch answers (../shared/data/entrez), checked against Bio.Entrez.read -------------------

_MARKUP = re.compile(r"</?(?:i|b|u|sup|sub)>")


def _bio_text(value) -> str:
    return " ".join(_MARKUP.sub("", str(value)).split())


@pytest.mark.parametrize("name", ["pubmed1.xml", "pubmed2.xml", "pubmed4.xml", "pubmed5.xml"])
def test_real_efetch_answers_agree_with_biopython(shared, name):
    from Bio import Entrez

    path = shared("data", "entrez", name)
    rows = parse_articles(path)
    with open(path, "rb") as handle:
        records = Entrez.read(handle)["PubmedArticle"]
    assert len(rows) == len(records) > 0
    for row, record in zip(rows, records):
        citation = record["MedlineCitation"]
        article = citation["Article"]
        assert row["pmid"] == int(citation["PMID"])
        assert row["title"] == _bio_text(article["ArticleTitle"])
        assert row["journal"] == article["Journal"]["Title"]
        assert row["iso_abbreviation"] == article["Journal"]["ISOAbbreviation"]
        sections = article.get("Abstract", {}).get("AbstractText", [])
        assert [s["text"] for s in row["abstract_sections"]] == [_bio_text(s) for s in sections]
        assert [s["label"] for s in row["abstract_sections"]] == [s.attributes.get("Label") for s in sections]
        assert row["has_abstract"] is bool(sections)
        assert [a["last_name"] or a["collective_name"] for a in row["authors"]] == [
            a.get("LastName") or a.get("CollectiveName") for a in article.get("AuthorList", [])
        ]
        assert [m["descriptor"] for m in row["mesh_headings"]] == [
            str(m["DescriptorName"]) for m in citation.get("MeshHeadingList", [])
        ]
        assert row["keywords"] == [_bio_text(k) for kl in citation.get("KeywordList", []) for k in kl]
        assert row["publication_types"] == [str(t) for t in article["PublicationTypeList"]]
        assert row["languages"] == list(article["Language"])
        ids = {i.attributes["IdType"]: str(i) for i in record["PubmedData"]["ArticleIdList"]}
        assert (row["doi"], row["pmc_id"]) == (ids.get("doi"), ids.get("pmc"))


def test_real_answers_special_cases(shared):
    spring = parse_articles(shared("data", "entrez", "pubmed1.xml"))[0]
    assert (spring["pmid"], spring["pub_year"], spring["pub_season"], spring["has_abstract"]) == (
        12091962,
        1990,
        "Spring",
        False,
    )
    gut = parse_articles(shared("data", "entrez", "pubmed4.xml"))[0]
    assert gut["title"].startswith("Leucocyte telomere length, genetic variants at the TERT gene region")
    assert "linkage disequilibrium r2<0.25" in gut["abstract"]
    assert gut["abstract"].startswith("OBJECTIVE: ") and gut["pmc_id"] == "PMC5442267"
    occupational = parse_articles(shared("data", "entrez", "pubmed5.xml"))[0]
    assert occupational["abstract_sections"][0]["category"] == "OBJECTIVE"
    assert occupational["pmid"] == 28775130  # not a PMID from its CommentsCorrections list
