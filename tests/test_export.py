"""`biomine export`: PubTator, BioC JSON and BioC XML of a job's output, read back with the bioc
package (and biomine's PubTator reader): entities, relations, and in BioC the document labels
(``classify``) and answers (``qa``), whose rows are built by the tasks' own row builders and
committed as the pipeline's stage commits them."""

from __future__ import annotations

import math

import pytest
from test_kb_query import commit_documents, commit_output

from pipeline.cli import main
from pipeline.tasks.base import article_text
from pipeline.tasks.classify import document_rows, sentences
from pipeline.tasks.hoc_labels import LabelParse, parse_labels
from pipeline.tasks.pubtator import read_pubtator
from pipeline.tasks.qa import NO_ABSTRACT, NOT_A_QUESTION, parse_answer, question_for
from schemas import answers, entities, labels, relations

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


# --- labels and answers (BioC only) -----------------------------------------------------------------

INFLAMMATION, ANGIOGENESIS = "tumor promoting inflammation", "inducing angiogenesis"
QUESTION = "Does aspirin potentiate warfarin?"


def hoc_rows(pmid: int, title: str, abstract: str | None, generations: list[str], logprobs: list) -> list[dict]:
    """The label rows the ``classify`` task gives one article from its sentences' generations."""
    return document_rows(
        [parse_labels(g) for g in generations],
        logprobs,
        sentences(title, abstract),
        generations,
        text=article_text(title, abstract),
        pmid=pmid,
        version=1,
        model_id="dc-hoc",
    )


def answer_row(pmid: int, question_id: str, question: str, title: str, abstract: str | None, generation: str | None):
    """The answer row the ``qa`` task gives one article (its `skipped` rule, its parser)."""
    asked, skip = question_for(question, title)
    skip = skip or ("" if abstract else NO_ABSTRACT)
    row = {"pmid": pmid, "version": 1, "question_id": question_id, "question": asked, "model_id": "qa-pubmedqa"}
    if skip:
        return {**row, "parse_status": "skipped", "reason": skip}
    assert generation is not None
    answer, status, reason = parse_answer(generation, ["learned1"])
    logprob = -0.25 if answer else None  # the sum of the answer tokens' log-probabilities
    return {
        **row,
        "answer": answer,
        "parse_status": status,
        "reason": reason,
        "raw_generation": generation,
        "answer_logprob": logprob,
        "input_truncated": False,
    }


def add_task_rows(job_out):
    """Commit into ``job_out`` the labels of a HoC prompt model and the answers of two questions."""
    hoc = "the type of this document is "
    commit_output(
        job_out,
        "labels",
        labels.cast_batch(
            hoc_rows(
                1,
                TITLE,
                ABSTRACT,
                # the title: no answer sentence (unparsed: not exported); the abstract's sentences
                ["the answer is no.", f"{hoc}{INFLAMMATION}|{ANGIOGENESIS}.", f"{hoc}{ANGIOGENESIS}."],
                [None, [-0.1, -2.0], [-0.5]],
            )
            + hoc_rows(2, "No entities here.", None, [f"{hoc}empty."], [[-0.01]])  # empty: no row
        ),
    )
    rows = []
    for pmid, title, abstract in ((1, TITLE, ABSTRACT), (2, "No entities here.", None)):
        target = "the answer to the question given the context is yes."
        rows.append(answer_row(pmid, "q1", QUESTION, title, abstract, target))
        rows.append(answer_row(pmid, "title", "{title}", title, abstract, target))
    commit_output(job_out, "answers", answers.cast_batch(rows))


@pytest.fixture
def task_out(job_out):
    add_task_rows(job_out)
    return job_out


def load_bioc(path, fmt: str):
    from bioc import biocjson, biocxml
    from bioc.validator import BioCValidator

    with open(path, encoding="utf-8") as f:
        collection = (biocjson if fmt == "bioc-json" else biocxml).load(f)
    BioCValidator().validate(collection)  # every annotation's text is its passage's text at its offsets
    return collection


@pytest.mark.parametrize("fmt", ["bioc-json", "bioc-xml"])
def test_bioc_export_carries_labels_and_answers(task_out, tmp_path, fmt):
    import math

    dest = tmp_path / f"export.{fmt}"
    assert main(["export", str(task_out), "--format", fmt, "--out", str(dest), "--no-progress"]) == 0
    doc1, doc2 = load_bioc(dest, fmt).documents
    # labels: the union of the sentences' labels, by label; the unparsed title sentence is left out
    assert doc1.infons["labels"] == f"{ANGIOGENESIS}|{INFLAMMATION}"
    assert math.isclose(float(doc1.infons[f"label:{ANGIOGENESIS}:score"]), math.exp(-0.5))
    assert math.isclose(float(doc1.infons[f"label:{INFLAMMATION}:score"]), math.exp(-0.1))
    assert doc1.infons[f"label:{INFLAMMATION}:model_id"] == "dc-hoc"
    title, abstract = doc1.passages
    assert [a.id for a in title.annotations] == ["T1", "T2"]  # entities only: no label's evidence is the title
    found = [(a.id, a.infons["type"], a.total_span.offset, a.text) for a in abstract.annotations if a.id[0] == "L"]
    first, second = ABSTRACT.split("\n")
    # each label's best sentence (angiogenesis: the second, likelier than in the first), by offset
    # into title + " " + abstract, as the entity annotations
    assert found == [
        ("L1", ANGIOGENESIS, TEXT.index(second), second),
        ("L2", INFLAMMATION, len(TITLE) + 1, first),
    ]
    angiogenesis = next(a for a in abstract.annotations if a.id == "L1")
    assert (angiogenesis.infons["task"], angiogenesis.infons["sentences"], angiogenesis.infons["model_id"]) == (
        "classify",
        "2",  # both abstract sentences name it
        "dc-hoc",
    )
    assert angiogenesis.total_span.length == len(second)
    assert "labels" not in doc2.infons and not any(k.startswith("label:") for k in doc2.infons)

    # answers: keyed by question id, so two questions of one article do not collide
    assert doc1.infons["question_ids"] == "q1|title"
    assert {k: v for k, v in doc1.infons.items() if k.startswith("qa:q1:")} == {
        "qa:q1:question": QUESTION,
        "qa:q1:answer": "yes",
        "qa:q1:status": "ok",
        "qa:q1:logprob": "-0.25",
        "qa:q1:model_id": "qa-pubmedqa",
    }
    assert {k: v for k, v in doc1.infons.items() if k.startswith("qa:title:")} == {
        "qa:title:question": TITLE,  # not a question: recorded, not asked
        "qa:title:status": "skipped",
        "qa:title:reason": NOT_A_QUESTION,
        "qa:title:model_id": "qa-pubmedqa",
    }
    assert (doc2.infons["qa:q1:status"], doc2.infons["qa:q1:reason"]) == ("skipped", NO_ABSTRACT)
    assert "qa:q1:answer" not in doc2.infons
    assert doc1.infons["version"] == "1"


def test_pubtator_export_has_no_place_for_labels_and_answers(job_out, tmp_path):
    """PubTator lines are title, abstract, mentions and relations: labels and answers are left out,
    and the file is the same as before the output had them."""
    before, after = tmp_path / "before.pubtator", tmp_path / "after.pubtator"
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(before), "--no-progress"]) == 0
    add_task_rows(job_out)
    assert main(["export", str(job_out), "--format", "pubtator", "--out", str(after), "--no-progress"]) == 0
    assert after.read_bytes() == before.read_bytes()
    assert ANGIOGENESIS not in after.read_text() and [d.pmid for d in read_pubtator(after)] == ["1", "2"]


def test_a_window_spanning_title_and_abstract_is_one_annotation_per_passage(tmp_path):
    """A sequence classifier's best window may run from the title into the abstract: its evidence
    is an annotation in each passage (BioC annotation text is its passage's text at its offsets)."""
    title, abstract = "Tumour cells invaded.", "Vessels grew in every tumour."
    text = article_text(title, abstract)
    out = tmp_path / "out"
    commit_documents(
        out,
        [
            {
                "pmid": 9,
                "version": 1,
                "record_type": "article",
                "title": title,
                "abstract": abstract,
                "has_abstract": True,
            }
        ],
    )
    # two windows: the second, from "invaded." into the abstract, is the likelier one
    windows = [(0, 12), (13, len(text))]
    parses = [LabelParse("ok", (INFLAMMATION,), (INFLAMMATION,)), LabelParse("ok", (ANGIOGENESIS,), (ANGIOGENESIS,))]
    rows = document_rows(parses, [[-1.0], [-0.2]], windows, [None, None], text=text, pmid=9, version=1, model_id="clf")
    for row in rows:  # as the task gives a sequence classifier's rows
        row["sentences"] = None
    commit_output(out, "labels", labels.cast_batch(rows))
    dest = tmp_path / "x.bioc.xml"
    assert main(["export", str(out), "--format", "bioc-xml", "--out", str(dest), "--no-progress"]) == 0
    (doc,) = load_bioc(dest, "bioc-xml").documents
    t, a = doc.passages
    spans = [(x.id, x.infons["type"], x.total_span.offset, x.text) for p in (t, a) for x in p.annotations]
    assert spans == [  # the title's annotations, then the abstract's
        ("L1", ANGIOGENESIS, 13, "invaded."),
        ("L3", INFLAMMATION, 0, "Tumour cells"),
        ("L2", ANGIOGENESIS, len(title) + 1, abstract),  # the joining space is in neither
    ]
    assert "sentences" not in a.annotations[0].infons  # null: a window, not sentences
    assert doc.infons["labels"] == f"{ANGIOGENESIS}|{INFLAMMATION}"
