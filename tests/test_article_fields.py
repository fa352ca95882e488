"""The article fields of schema version 2 (issue "Articles: the PubMed fields users expect"):
chemicals, grants, references, comments/corrections and retraction status, journal details, other
ids and publication-type UIs; on hand-written records, on real efetch answers (../shared, checked
against Bio.Entrez.read), through data files of schema version 1 in a documents Delta table, and into
relations and the knowledge base (read back with independent Delta readers too)."""

from __future__ import annotations

import datetime as dt

import duckdb
import polars
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable
from fake_eutils import PUBMED_DOCTYPE, article_xml, pubmed_document

from pipeline.pubmed.ingest import INGEST_OWNER, ingest_files
from pipeline.pubmed.parser import parse_articles
from pipeline.store.documents import Documents, read_articles
from pipeline.store.output import JobOutput
from pipeline.store.tables import DataFile, Table, write_data_file
from schemas.articles import ARTICLE_SCHEMA, SCHEMA_VERSION, to_table

FULL_RECORD = """<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="1">31000001</PMID>
<Article PubModel="Print-Electronic">
 <Journal><ISSN IssnType="Electronic">1552-4604</ISSN>
  <JournalIssue CitedMedium="Internet"><Volume>59</Volume><Issue>Suppl 1</Issue>
   <PubDate><Year>2019</Year><Month>Mar</Month></PubDate></JournalIssue>
  <Title>Journal of clinical pharmacology</Title><ISOAbbreviation>J Clin Pharmacol</ISOAbbreviation></Journal>
 <ArticleTitle>Warfarin and amiodarone: a retracted study.</ArticleTitle>
 <Pagination><StartPage>S12</StartPage><EndPage>S20</EndPage></Pagination>
 <Abstract><AbstractText>Amiodarone increased the anticoagulant effect of warfarin.</AbstractText></Abstract>
 <Language>eng</Language><Language>ger</Language>
 <GrantList CompleteYN="Y">
  <Grant><GrantID>R01 GM123456</GrantID><Acronym>GM</Acronym><Agency>NIGMS NIH HHS</Agency><Country>United States</Country></Grant>
  <Grant><Agency>Deutsche Forschungsgemeinschaft</Agency><Country>Germany</Country></Grant>
 </GrantList>
 <PublicationTypeList>
  <PublicationType UI="D016428">Journal Article</PublicationType>
  <PublicationType UI="D016441">Retracted Publication</PublicationType>
 </PublicationTypeList>
 <VernacularTitle>Warfarin und Amiodaron.</VernacularTitle>
</Article>
<MedlineJournalInfo><Country>United States</Country><MedlineTA>J Clin Pharmacol</MedlineTA>
 <NlmUniqueID>0366372</NlmUniqueID><ISSNLinking>0091-2700</ISSNLinking></MedlineJournalInfo>
<ChemicalList>
 <Chemical><RegistryNumber>0</RegistryNumber><NameOfSubstance UI="D000925">Anticoagulants</NameOfSubstance></Chemical>
 <Chemical><RegistryNumber>N3RQ532IUT</RegistryNumber><NameOfSubstance UI="D000638">Amiodarone</NameOfSubstance></Chemical>
 <Chemical><RegistryNumber>5Q7ZVV76EI</RegistryNumber><NameOfSubstance UI="D014859">Warfarin</NameOfSubstance></Chemical>
</ChemicalList>
<CommentsCorrectionsList>
 <CommentsCorrections RefType="RetractionIn"><RefSource>J Clin Pharmacol. 2020;60(1):1</RefSource><PMID Version="1">31999999</PMID></CommentsCorrections>
 <CommentsCorrections RefType="ErratumIn"><RefSource>J Clin Pharmacol. 2019;59(6):900</RefSource></CommentsCorrections>
</CommentsCorrectionsList>
<OtherID Source="NLM">PMC6000001</OtherID>
</MedlineCitation>
<PubmedData><PublicationStatus>ppublish</PublicationStatus>
 <ArticleIdList><ArticleId IdType="pubmed">31000001</ArticleId><ArticleId IdType="doi">10.1002/jcph.1</ArticleId>
  <ArticleId IdType="pii">JCPH1</ArticleId><ArticleId IdType="mid">NIHMS99</ArticleId></ArticleIdList>
 <ReferenceList><Reference><Citation>Ref one.</Citation><ArticleIdList><ArticleId IdType="pubmed">100</ArticleId></ArticleIdList></Reference>
  <Reference><Citation>A book, no PMID.</Citation></Reference>
  <ReferenceList><Title>Further reading</Title>
   <Reference><Citation>Ref two.</Citation><ArticleIdList><ArticleId IdType="doi">10.1/x</ArticleId><ArticleId IdType="pubmed">200</ArticleId></ArticleIdList></Reference>
  </ReferenceList>
 </ReferenceList>
</PubmedData></PubmedArticle>"""


def one(xml: str) -> dict:
    (row,) = parse_articles((PUBMED_DOCTYPE + "<PubmedArticleSet>" + xml + "</PubmedArticleSet>").encode())
    return row


def test_every_new_field_of_a_full_record():
    row = one(FULL_RECORD)
    assert row["chemicals"] == [
        {"name": "Anticoagulants", "ui": "D000925", "registry_number": None},  # "0": none assigned
        {"name": "Amiodarone", "ui": "D000638", "registry_number": "N3RQ532IUT"},
        {"name": "Warfarin", "ui": "D014859", "registry_number": "5Q7ZVV76EI"},
    ]
    assert row["grants"] == [
        {"grant_id": "R01 GM123456", "acronym": "GM", "agency": "NIGMS NIH HHS", "country": "United States"},
        {"grant_id": None, "acronym": None, "agency": "Deutsche Forschungsgemeinschaft", "country": "Germany"},
    ]
    assert row["reference_pmids"] == [100, 200]  # nested lists too; references without a PMID skipped
    assert row["comments_corrections"] == [
        {"ref_type": "RetractionIn", "ref_source": "J Clin Pharmacol. 2020;60(1):1", "pmid": 31999999},
        {"ref_type": "ErratumIn", "ref_source": "J Clin Pharmacol. 2019;59(6):900", "pmid": None},
    ]
    assert row["retracted"] is True
    assert (row["vernacular_title"], row["volume"], row["issue"], row["pages"]) == (
        "Warfarin und Amiodaron.",
        "59",
        "Suppl 1",
        "S12-S20",
    )
    assert (row["issn"], row["issn_linking"], row["country"], row["medline_ta"], row["nlm_unique_id"]) == (
        "1552-4604",
        "0091-2700",
        "United States",
        "J Clin Pharmacol",
        "0366372",
    )
    assert row["other_ids"] == [
        {"source": "NLM", "id": "PMC6000001"},
        {"source": "pii", "id": "JCPH1"},
        {"source": "mid", "id": "NIHMS99"},
    ]
    assert row["publication_types"] == ["Journal Article", "Retracted Publication"]
    assert row["publication_type_uis"] == ["D016428", "D016441"]
    assert row["doi"] == "10.1002/jcph.1"  # the columns of version 1 are unchanged
    table = to_table([row])
    assert table.schema.equals(ARTICLE_SCHEMA, check_metadata=True) and SCHEMA_VERSION == 3


def test_retraction_is_either_sign_and_a_notice_is_not_retracted():
    by_link = one(
        article_xml(
            1,
            extra_citation_xml=(
                '<CommentsCorrectionsList><CommentsCorrections RefType="RetractionIn"><RefSource>X</RefSource>'
                '<PMID Version="1">9</PMID></CommentsCorrections></CommentsCorrectionsList>'
            ),
        )
    )
    assert by_link["retracted"] is True
    notice = one(
        FULL_RECORD.replace('RefType="RetractionIn"', 'RefType="RetractionOf"').replace(
            '<PublicationType UI="D016441">Retracted Publication</PublicationType>',
            '<PublicationType UI="D016440">Retraction of Publication</PublicationType>',
        )
    )
    assert notice["retracted"] is False
    plain = one(article_xml(2))
    assert plain["retracted"] is False and plain["chemicals"] == [] and plain["grants"] == []
    assert plain["pages"] == "1-9" and plain["volume"] == "12" and plain["issue"] == "3"


def test_a_book_record_has_the_new_columns_empty():
    book = (
        '<PubmedBookArticle><BookDocument><PMID Version="1">20301295</PMID>'
        '<ArticleIdList><ArticleId IdType="bookaccession">NBK1116</ArticleId></ArticleIdList>'
        "<Book><BookTitle>GeneReviews</BookTitle><PubDate><Year>1993</Year></PubDate></Book>"
        '<PublicationType UI="D016454">Review</PublicationType></BookDocument></PubmedBookArticle>'
    )
    row = one(book)
    assert (row["record_type"], row["chemicals"], row["reference_pmids"], row["retracted"]) == ("book", [], [], False)
    assert row["other_ids"] == [{"source": "bookaccession", "id": "NBK1116"}]
    assert row["publication_type_uis"] == ["D016454"]
    to_table([row])
    chapter = one(
        book.replace("<Book>", "<Book><Volume>3</Volume>").replace(
            "</BookDocument>",
            "<Pagination><MedlinePgn>1-20</MedlinePgn></Pagination>"
            "<GrantList><Grant><Agency>NIH</Agency><Country>United States</Country></Grant></GrantList>"
            "<VernacularTitle>Revues génétiques.</VernacularTitle></BookDocument>"
            '<PubmedBookData><ArticleIdList><ArticleId IdType="pubmed">20301295</ArticleId>'
            '<ArticleId IdType="bookaccession">NBK1116</ArticleId><ArticleId IdType="pii">X1</ArticleId>'
            "</ArticleIdList></PubmedBookData>",
        )
    )
    assert (chapter["volume"], chapter["pages"], chapter["vernacular_title"]) == ("3", "1-20", "Revues génétiques.")
    assert chapter["grants"] == [{"grant_id": None, "acronym": None, "agency": "NIH", "country": "United States"}]
    assert chapter["other_ids"] == [{"source": "bookaccession", "id": "NBK1116"}, {"source": "pii", "id": "X1"}]


def test_real_efetch_answers_agree_with_biopython(shared):
    from Bio import Entrez

    seen_chemicals = seen_grants = 0
    for name in ("pubmed1.xml", "pubmed2.xml", "pubmed4.xml", "pubmed5.xml"):
        path = shared("data", "entrez", name)
        rows = parse_articles(path)
        with open(path, "rb") as handle:
            records = Entrez.read(handle)["PubmedArticle"]
        for row, record in zip(rows, records, strict=True):
            citation, article = record["MedlineCitation"], record["MedlineCitation"]["Article"]
            chemicals = citation.get("ChemicalList", [])
            assert [c["name"] for c in row["chemicals"]] == [str(c["NameOfSubstance"]) for c in chemicals]
            assert [c["ui"] for c in row["chemicals"]] == [c["NameOfSubstance"].attributes["UI"] for c in chemicals]
            assert [c["registry_number"] for c in row["chemicals"]] == [
                None if str(c["RegistryNumber"]) == "0" else str(c["RegistryNumber"]) for c in chemicals
            ]
            grants = article.get("GrantList", [])
            assert [(g["grant_id"], g["agency"]) for g in row["grants"]] == [
                (g.get("GrantID"), g.get("Agency")) for g in grants
            ]
            corrections = citation.get("CommentsCorrectionsList", [])
            assert [(c["ref_type"], c["pmid"]) for c in row["comments_corrections"]] == [
                (c.attributes["RefType"], int(c["PMID"]) if "PMID" in c else None) for c in corrections
            ]
            info = citation["MedlineJournalInfo"]
            assert (row["country"], row["medline_ta"], row["nlm_unique_id"], row["issn_linking"]) == (
                info.get("Country"),
                info.get("MedlineTA"),
                info.get("NlmUniqueID"),
                info.get("ISSNLinking"),
            )
            issue = article["Journal"]["JournalIssue"]
            assert (row["volume"], row["issue"]) == (issue.get("Volume"), issue.get("Issue"))
            assert row["publication_type_uis"] == [t.attributes["UI"] for t in article["PublicationTypeList"]]
            assert [o["id"] for o in row["other_ids"] if o["source"] in ("pii", "mid")] == [
                str(i) for i in record["PubmedData"]["ArticleIdList"] if i.attributes["IdType"] in ("pii", "mid")
            ]
            seen_chemicals += len(chemicals)
            seen_grants += len(grants)
    assert seen_chemicals > 0 and seen_grants > 0  # the answers do exercise both lists


# --- data files of schema version 1, relations and the KB -------------------------------------------


V1_COLUMNS = ARTICLE_SCHEMA.names[: ARTICLE_SCHEMA.get_field_index("fetched_at") + 1]


def add_v1_table(out, rows: list[dict]) -> DataFile:
    """A documents table as a biomine of article schema version 1 would have written it: table property
    ``biomine.schema_version`` 1, a Delta schema and one data file with only the old columns (version 1
    in its footer). Was: a version-1 shard in the old manifest layout."""
    output = JobOutput(out)
    output.root.mkdir()
    output.check_owner(INGEST_OWNER, claim=True)
    table = to_table(rows).select(V1_COLUMNS)
    meta = dict(ARTICLE_SCHEMA.metadata)
    meta[b"biomine.schema_version"] = b"1"
    table = table.replace_schema_metadata(meta)
    delta = Table.create(output.documents, table.schema, "documents", 1)
    info = write_data_file(output.documents, "part-000000", table)
    delta.commit([info])
    assert DeltaTable(str(out / "documents")).metadata().configuration["biomine.schema_version"] == "1"
    assert pq.read_schema(out / "documents" / info.path).names == V1_COLUMNS
    return info


def test_version_1_data_files_still_read_with_the_new_columns_null(tmp_path):
    from pipeline.outputs.query import query

    out = tmp_path / "out"
    old = add_v1_table(out, parse_articles(pubmed_document([article_xml(1), article_xml(2)]).encode()))
    src = tmp_path / "pubmed26n0001.xml"
    src.write_text(PUBMED_DOCTYPE + "<PubmedArticleSet>" + FULL_RECORD + "</PubmedArticleSet>")
    ingest_files([src], out)
    table = read_articles(out)
    assert table.schema.equals(ARTICLE_SCHEMA) and table.num_rows == 3
    by_pmid = {r["pmid"]: r for r in table.to_pylist()}
    assert by_pmid[1]["retracted"] is None and by_pmid[1]["chemicals"] is None  # unknown, not "none"
    assert by_pmid[31000001]["retracted"] is True
    # Was: the manifest's schema_version became 2. Now the table's schema evolved in the log (the new
    # columns added, the property raised); the version-1 file is untouched, and every Delta reader
    # reads its rows with the new columns null.
    delta = DeltaTable(str(out / "documents"))
    assert delta.metadata().configuration["biomine.schema_version"] == str(SCHEMA_VERSION) == "3"
    assert pa.schema(delta.schema().to_arrow()).names == ARTICLE_SCHEMA.names
    assert old.path in Documents(JobOutput(out).documents).files()
    frame = delta.to_pandas(columns=["pmid", "retracted", "chemicals"]).sort_values("pmid")
    assert frame["pmid"].tolist() == [1, 2, 31000001] and frame["retracted"].isna().tolist() == [True, True, False]
    assert frame["chemicals"].isna().tolist() == [True, True, False]
    pl_rows = polars.read_delta(str(out / "documents")).select("pmid", "retracted").sort("pmid").rows()
    assert pl_rows == [(1, None), (2, None), (31000001, True)]
    frame = query(out, "SELECT pmid, retracted, medline_ta, reference_pmids FROM documents ORDER BY pmid")
    assert frame["pmid"].tolist() == [1, 2, 31000001]
    assert frame["retracted"].isna().tolist() == [True, True, False]
    # Was: compaction rewrote a version-1 shard in the current schema. Now an update that removes an
    # article from the version-1 file rewrites it (copy-on-write), in the current schema.
    deletion = tmp_path / "pubmed26n0002.xml"
    deletion.write_text(pubmed_document([], deletions=[1]))
    ingest_files([deletion], out)
    files = Documents(JobOutput(out).documents).files()
    assert old.path not in files
    (new,) = [f for f in files.values() if f.base == old.base]
    assert new.rows == 1 and (new.min_pmid, new.max_pmid) == (2, 2)
    schema = pq.read_schema(out / "documents" / new.path)
    assert schema.metadata[b"biomine.schema_version"] == b"3" and schema.names == ARTICLE_SCHEMA.names
    assert sorted(read_articles(out, ["pmid"]).column("pmid").to_pylist()) == [2, 31000001]
    assert sorted(DeltaTable(str(out / "documents")).to_pandas(columns=["pmid"])["pmid"]) == [2, 31000001]


def test_retraction_reaches_relations_and_the_kb(tmp_path):
    from pipeline.outputs.kb import export_kb, update_kb
    from pipeline.outputs.query import query
    from pipeline.store.datasets import settings_key, write_output
    from schemas.relations import RELATION_SCHEMA, cast_batch

    out = tmp_path / "out"
    src = tmp_path / "pubmed26n0001.xml"
    src.write_text(PUBMED_DOCTYPE + "<PubmedArticleSet>" + FULL_RECORD + article_xml(5) + "</PubmedArticleSet>")
    ingest_files([src], out, now=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    output = JobOutput(out)
    (doc,) = Documents(output.documents).files().values()

    def row(pmid: int, head: str, tail: str) -> dict:
        return {
            "pmid": pmid,
            "version": 1,
            "task": "ddi",
            "head": head,
            "tail": tail,
            "relation": "mechanism",
            "parse_status": "ok",
            "model_id": "m",
            "raw_generation": "x",
        }

    # Relations computed from the one documents file, committed as a task would (its output file is
    # named after that file and the settings).
    relations = output.dataset("relations", RELATION_SCHEMA)
    table = cast_batch(
        [
            row(31000001, "warfarin", "amiodarone"),
            row(5, "warfarin", "amiodarone"),
            row(31000001, "warfarin", "aspirin"),
        ]
    )
    settings = {"task": "re"}
    assert relations.table.files() == {}  # created, empty, before a worker writes into its folder
    written = write_output(relations.loc, doc.stem, settings_key(settings), table)
    relations.commit([written], [], settings=settings)
    assert list(relations.outputs()) == [written.path] and relations.outputs()[written.path][0].doc == doc.stem
    flags = query(out, "SELECT pmid, article_retracted FROM relations ORDER BY pmid, tail")
    assert list(zip(flags["pmid"].tolist(), flags["article_retracted"].tolist())) == [
        (5, False),
        (31000001, True),
        (31000001, True),
    ]
    # The same join with DuckDB straight over the two Delta tables (no biomine view).
    con = duckdb.connect()
    con.register("rel", DeltaTable(str(out / "relations")).to_pyarrow_dataset())
    con.register("docs", DeltaTable(str(out / "documents")).to_pyarrow_dataset())
    joined = con.sql(
        "SELECT r.pmid, d.retracted FROM rel r JOIN docs d USING (pmid, version) ORDER BY r.pmid, r.tail"
    ).fetchall()
    assert joined == [(5, False), (31000001, True), (31000001, True)]

    # Was: build_kb(OUT/relations, FILE). Now the KB is exported to one file, and kept as OUT/kb.
    assert export_kb(output, out / "kb.parquet") == 2
    kb = {(r["drug_a"], r["drug_b"]): r for r in pq.read_table(out / "kb.parquet").to_pylist()}
    both = kb[("amiodarone", "warfarin")]
    assert (both["pmids"], both["retracted_pmids"], both["retracted"]) == ([5, 31000001], [31000001], False)
    only = kb[("aspirin", "warfarin")]
    assert (only["retracted_pmids"], only["retracted"]) == ([31000001], True)
    assert pa.types.is_boolean(pq.read_schema(out / "kb.parquet").field("retracted").type)
    assert update_kb(output)["edges"] == 2
    table = polars.read_delta(str(out / "kb")).sort("drug_a", "drug_b")
    assert table.select("drug_a", "drug_b", "retracted_pmids", "retracted").rows() == [
        ("amiodarone", "warfarin", [31000001], False),
        ("aspirin", "warfarin", [31000001], True),
    ]


def test_ingest_keeps_the_new_fields(tmp_path):
    src = tmp_path / "pubmed26n0001.xml"
    src.write_text(PUBMED_DOCTYPE + "<PubmedArticleSet>" + FULL_RECORD + "</PubmedArticleSet>")
    ingest_files([src], tmp_path / "out")
    (row,) = read_articles(tmp_path / "out").to_pylist()
    expected = one(FULL_RECORD)
    assert {k: row[k] for k in expected if k not in ("source", "fetched_at")} == {
        k: v for k, v in expected.items() if k not in ("source", "fetched_at")
    }
    # An independent Delta reader returns the same nested values.
    (by_polars,) = polars.read_delta(str(tmp_path / "out" / "documents")).to_dicts()
    for key in ("chemicals", "grants", "reference_pmids", "comments_corrections", "other_ids", "publication_type_uis"):
        assert by_polars[key] == expected[key], key
    assert (by_polars["retracted"], by_polars["pages"], by_polars["issn_linking"]) == (True, "S12-S20", "0091-2700")
