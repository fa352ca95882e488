"""`biomine export`: PubTator, BioC JSON and BioC XML of a job's output, read back with the bioc
package (and biomine's PubTator reader)."""

from __future__ import annotations

import math

import pytest
from test_kb_query import commit_documents, commit_output

from pipeline.cli import main
from pipeline.tasks.pubtator import read_pubtator
from schemas import entities, relations

TITLE = "Warfarin and aspirin."
ABSTRACT = "Aspirin (ASA) potentiates warfarin.\nBleeding followed."
TEXT = f"{TITLE} {ABSTRACT}"


def span(word: str, label: str, concept: str | None = None, start: int = 0):
    i = TEXT.index(word, start)
    return {
        "pmid": 1,
        "version": 1,
        "start": i,
        "end": i + len(word),
        "label": label,
        "text": word,
        "score": 0.9,
        "model_id": "ner",
        "concept_id": concept,
        "matched_by": word.lower() if concept else None,
    }


@pytest.fixture
def job_out(tmp_path):
    out = tmp_path / "out"
    commit_documents(
        out,
        [
            {
                "pmid": 1,
                "version": 1,
                "record_type": "article",
                "title": TITLE,
                "abstract": ABSTRACT,
                "has_abstract": True,
            },
            {
                "pmid": 2,
                "version": 1,
                "record_type": "article",
                "title": "No entities here.",
                "abstract": None,
                "has_abstract": False,
            },
        ],
    )
    commit_output(
        out,
        "entities",
        entities.cast_batch(
            [
                span("Warfarin", "Chemical", "D014859"),
                span("aspirin", "Chemical", "D001241"),
                span("Aspirin", "Chemical", "D001241", len(TITLE)),
                span("Bleeding", "Disease"),
            ]
        ),
    )
    commit_output(
        out,
        "relations",
        relations.cast_batch(
            [
                {
                    "pmid": 1,
                    "version": 1,
                    "task": "ddi",
                    "head": "aspirin",
                    "tail": "warfarin",
                    "relation": "effect",
                    "head_id": "D001241",
                    "tail_id": "D014859",
                    "parse_status": "ok",
                    "logprob": math.log(0.8),
                    "logprob_tokens": 9,
                    "raw_generation": "the interaction between aspirin and warfarin is effect",
                    "model_id": "re-ddi",
                },
                {
                    "pmid": 1,
                    "version": 1,
                    "task": "ddi",
                    "head": "aspirin",
                    "tail": "heparin",
                    "relation": "int",
                    "parse_status": "ok",
                    "raw_generation": "the interaction between aspirin and heparin is int",
                    "model_id": "re-ddi",
                },
            ]
        ),
    )
    return out


def test_pubtator_export_reads_back(job_out, tmp_path):
    dest = tmp_path / "export.pubtator"
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(dest), "--no-progress"]) == 0
    docs = {d.pmid: d for d in read_pubtator(dest)}  # offsets are checked against the text on reading
    assert set(docs) == {"1", "2"}
    doc = docs["1"]
    assert doc.text == TEXT.replace("\n", " ")
    assert [(m.start, m.text, m.type, m.ids) for m in doc.mentions] == [
        (0, "Warfarin", "Chemical", ("D014859",)),
        (13, "aspirin", "Chemical", ("D001241",)),
        (len(TITLE) + 1, "Aspirin", "Chemical", ("D001241",)),
        (TEXT.index("Bleeding"), "Bleeding", "Disease", ("-1",)),
    ]
    assert doc.relations == [("effect", "D001241", "D014859")]  # the unlinked relation has no ids to join
    assert "\t0.8\n" in dest.read_text()


@pytest.mark.parametrize("fmt", ["bioc-json", "bioc-xml"])
def test_bioc_export_round_trips_through_the_bioc_package(job_out, tmp_path, fmt):
    import bioc
    from bioc import biocjson, biocxml

    dest = tmp_path / f"export.{fmt}"
    assert main(["export", str(job_out), "--format", fmt, "--out", str(dest), "--no-progress"]) == 0
    with open(dest, encoding="utf-8") as f:
        collection = (biocjson if fmt == "bioc-json" else biocxml).load(f)
    assert isinstance(collection, bioc.BioCCollection) and collection.source == "biomine"
    assert [d.id for d in collection.documents] == ["1", "2"]
    doc = collection.documents[0]
    title, abstract = doc.passages
    assert (title.offset, title.text, abstract.offset, abstract.text) == (0, TITLE, len(TITLE) + 1, ABSTRACT)
    found = [
        (a.id, a.total_span.offset, a.total_span.length, a.text, a.infons["type"], a.infons.get("identifier"))
        for p in doc.passages
        for a in p.annotations
    ]
    assert found == [
        ("T1", 0, 8, "Warfarin", "Chemical", "D014859"),
        ("T2", 13, 7, "aspirin", "Chemical", "D001241"),
        ("T3", len(TITLE) + 1, 7, "Aspirin", "Chemical", "D001241"),
        ("T4", TEXT.index("Bleeding"), 8, "Bleeding", "Disease", None),
    ]  # unlinked: no identifier
    for p in doc.passages:  # every annotation's text is the passage text at its offset
        for a in p.annotations:
            loc = a.total_span
            assert p.text[loc.offset - p.offset : loc.offset - p.offset + loc.length] == a.text
    r1, r2 = doc.relations
    assert r1.infons["type"] == "effect" and r1.infons["head_id"] == "D001241" and float(r1.infons["logprob"]) < 0
    assert [(n.refid, n.role) for n in r1.nodes] == [("T2", "head"), ("T1", "tail")]
    assert [(n.refid, n.role) for n in r2.nodes] == [("T2", "head")]  # "heparin" is not an annotation
    assert collection.documents[1].passages[1].text == "" and not collection.documents[1].relations


def test_export_refuses_a_folder_and_unknown_outputs(job_out, tmp_path, capsys):
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"biomine: error: {tmp_path} is a folder: name the file to write, e.g. {tmp_path}/export.pubtator (--out)\n"
    )
    assert main(["export", str(job_out), "--format", "bioc-json", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith(f"e.g. {tmp_path}/export.bioc.json (--out)\n")
    assert main(["export", str(tmp_path / "nothing"), "--format", "pubtator", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("biomine: error: ")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_export_refuses_a_missing_folder_instead_of_creating_it(job_out, tmp_path, capsys):
    dest = tmp_path / "missing" / "dir" / "x.pubtator"
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"biomine: error: {dest}: the folder {dest.parent} does not exist: create it first, or name a file in "
        "an existing folder (--out)\n"
    )
    assert not (tmp_path / "missing").exists()
    (tmp_path / "afile").write_text("")
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(tmp_path / "afile" / "x")]) == 2
    assert "the folder " + str(tmp_path / "afile") + " is a file, not a folder" in capsys.readouterr().err


def test_export_holds_the_live_articles_only(job_out, tmp_path):
    """An article removed from the documents table (copy-on-write: its file rewritten without it)
    is not exported, nor are its rows; the older table version still holds it (time travel)."""
    from deltalake import DeltaTable

    from pipeline.store.documents import Documents
    from pipeline.store.output import JobOutput

    docs = Documents(JobOutput(job_out).documents)
    before = docs.table.version
    (path,) = docs.files()
    with docs.transaction() as txn:
        txn.remove(path, [1])
        txn.commit()
    assert sorted(DeltaTable(str(job_out / "documents")).to_pandas()["pmid"]) == [2]
    assert sorted(DeltaTable(str(job_out / "documents"), version=before).to_pandas()["pmid"]) == [1, 2]
    dest = tmp_path / "live.pubtator"
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(dest), "--no-progress"]) == 0
    docs_out = {d.pmid: d for d in read_pubtator(dest)}
    assert set(docs_out) == {"2"} and not docs_out["2"].mentions
