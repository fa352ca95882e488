"""The ``classify`` job task with the released HoC checkpoint's layout (pipeline/tasks/classify.py):
sentences and their offsets, the label parse statuses, token alignment of label log-probabilities,
the union of sentence labels with each label's best sentence, the labels schema, `run --check`
refusing checkpoints of other tasks, `models list --available`; and one real Ray job running
``classify`` next to ``summarize`` with a tiny HoC prompt model fitted to real HoC sentences."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.tasks import hoc_labels
from pipeline.tasks.base import article_text
from pipeline.tasks.classify import document_rows, piece_logprobs, sentences
from pipeline.tasks.hoc_labels import LabelParse, parse_labels
from schemas.labels import LABEL_SCHEMA, SchemaMismatchError, cast_batch

# --- sentences ------------------------------------------------------------------------------------


def test_sentences_split_title_and_abstract_with_offsets_into_the_article_text():
    title = "Angiogenesis in breast cancer"  # no final period: still its own sentence
    abstract = "VEGF was 2.5 times higher in tumours. Did it matter?  Yes!\nMetastases followed."
    text = article_text(title, abstract)
    spans = sentences(title, abstract)
    assert [text[s:e] for s, e in spans] == [
        "Angiogenesis in breast cancer",
        "VEGF was 2.5 times higher in tumours.",  # a decimal does not end a sentence
        "Did it matter?",
        "Yes!",
        "Metastases followed.",
    ]
    # no title, no abstract, whitespace only: offsets still index title + " " + abstract
    assert [article_text(None, "One. Two.")[s:e] for s, e in sentences(None, "One. Two.")] == ["One.", "Two."]
    assert [article_text("T.", None)[s:e] for s, e in sentences("T.", None)] == ["T."]
    assert sentences(None, None) == [] and sentences("  ", " \n") == []


# --- parsing --------------------------------------------------------------------------------------

A, B = "inducing angiogenesis", "activating invasion and metastasis"


def test_label_parse_statuses():
    line = f"learned1 the type of this document is {B} | {A}."
    assert parse_labels(line) == LabelParse("ok", (B, A), (B, A))
    assert parse_labels(f"we can conclude that the type of this document is {A}|{A}.").labels == (A,)
    assert parse_labels("learned1 the type of this document is empty.") == LabelParse("ok", ("empty",), ("empty",))
    partial = parse_labels(f"the type of this document is {A}|made-up hallmark.")
    assert (partial.status, partial.labels, partial.reason) == ("unparsed", (A,), "not a HoC class: 'made-up hallmark'")
    assert parse_labels("the type of this document is Empty.").reason == "not a HoC class: 'Empty'"
    assert parse_labels("the answer to the question given the context is yes.").reason.startswith("no answer sentence")
    assert parse_labels("the type of this document is .").reason == "no label after the answer sentence"
    assert parse_labels("  ").reason == "empty generation"
    # one home: `biomine eval hoc` reads lines with the same functions
    from pipeline.evaluation import hoc as eval_hoc

    assert eval_hoc.extract_labels is hoc_labels.extract_labels and eval_hoc.HOC_CLASSES is hoc_labels.HOC_CLASSES


def test_label_logprobs_are_aligned_to_the_label_tokens_or_not_given():
    answer, sep, period, eos = [10, 11], [99, 98], {4}, 2
    ids = [10, 11, 5, 6, 99, 98, 7, 4, eos]
    lps = [-0.1, -0.2, -1.0, -2.0, -0.3, -0.3, -4.0, -0.5, -0.1]
    kw = dict(answer_ids=answer, separator_ids=sep, dropped={eos}, period_ids=period)
    assert piece_logprobs(ids, lps, pieces=2, **kw) == [-3.0, -4.0]
    assert piece_logprobs(ids, lps, pieces=3, **kw) is None  # never a guess
    assert piece_logprobs([5, 6, 4], [-1.0, -1.0, -1.0], pieces=1, **kw) is None  # no answer sentence
    # the last answer sentence counts (an echoed one in front is no label)
    assert piece_logprobs([10, 11, 8, 10, 11, 5, eos], [0, 0, -9.0, 0, 0, -1.5, 0], pieces=1, **kw) == [-1.5]


# --- union of sentence labels ---------------------------------------------------------------------


def test_document_labels_are_the_union_with_each_best_sentence():
    text = "S zero. S one. S two. S three."
    spans = [(0, 7), (8, 14), (15, 21), (22, 30)]
    parses = [
        parse_labels(f"the type of this document is {A}."),
        parse_labels(f"the type of this document is {A}|{B}."),
        parse_labels("the type of this document is empty."),
        parse_labels("the answer is no."),
    ]
    scores = [[-1.0], [-0.5, -2.0], [-0.01], None]
    generations = ["g0", "g1", "g2", "g3"]
    rows = document_rows(parses, scores, spans, generations, text=text, pmid=7, version=2, model_id="hoc")
    ok = [r for r in rows if r["parse_status"] == "ok"]
    assert [(r["label"], r["evidence_text"], r["sentences"], r["raw_generation"]) for r in ok] == [
        (A, "S one.", 2, "g1"),  # the sentence with its best log-probability, not the first
        (B, "S one.", 1, "g1"),
    ]
    assert ok[0]["logprob"] == -0.5 and math.isclose(ok[0]["score"], math.exp(-0.5))
    (bad,) = [r for r in rows if r["parse_status"] == "unparsed"]
    assert (bad.get("label") is None, bad["evidence_text"], bad["raw_generation"]) == (True, "S three.", "g3")
    assert "empty" not in {r.get("label") for r in rows}
    table = cast_batch(rows)
    assert table.schema.equals(LABEL_SCHEMA) and table.column("pmid").to_pylist() == [7, 7, 7]

    # no scores aligned: the first sentence is the evidence and the score is null
    rows = document_rows(
        parses[:2], [None, None], spans[:2], generations[:2], text=text, pmid=7, version=2, model_id="m"
    )
    assert [(r["label"], r["evidence_start"], r["score"]) for r in rows] == [(A, 0, None), (B, 8, None)]
    # every sentence empty (or no sentence at all): no row
    assert (
        document_rows([parses[2]] * 3, [[-0.1]] * 3, spans[:3], ["g"] * 3, text=text, pmid=1, version=1, model_id="m")
        == []
    )
    assert document_rows([], [], [], [], text=" ", pmid=1, version=1, model_id="m") == []


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"label": None}, "an 'ok' row needs a label"),
        ({"parse_status": "unparsed"}, "an 'unparsed' row needs a reason and no label"),
        ({"parse_status": "maybe"}, "parse_status 'maybe'"),
        ({"score": 1.5}, "not a probability"),
        ({"evidence_text": None}, "go together"),
        ({"evidence_end": 0}, "start < end"),
    ],
)
def test_label_rows_that_break_the_schema_are_refused(change, needle):
    row = {"pmid": 1, "version": 1, "label": A, "score": 0.5, "evidence_start": 0, "evidence_end": 3}
    row |= {"evidence_text": "abc", "parse_status": "ok", "model_id": "m"}
    cast_batch([row])
    with pytest.raises(SchemaMismatchError, match=needle):
        cast_batch([row | change])


# --- checkpoints ----------------------------------------------------------------------------------


def test_run_check_refuses_qa_and_re_checkpoints_and_accepts_hoc(tmp_path, demo_models, capsys):
    from biogpt.tiny import make_tiny_task_checkpoint

    texts = ["the type of this document is empty.", "question: a context: b"]
    qa = make_tiny_task_checkpoint(tmp_path / "qa", texts, task="qa-pubmedqa", max_position_embeddings=32)
    hoc = make_tiny_task_checkpoint(
        tmp_path / "hoc", texts, task="dc-hoc", learned_prompt=1, max_position_embeddings=32
    )
    sample = Path(__file__).resolve().parents[1] / "pipeline" / "commands" / "demo_files" / "data" / "demo_pubmed.xml"

    def check(model: Path) -> tuple[int, str]:
        job = tmp_path / "job.toml"
        job.write_text(
            f'[job]\nname = "c"\noutput = "{tmp_path / "out"}"\n[source]\nkind = "files"\npaths = ["{sample}"]\n'
            f'[tasks.classify]\nmodel = "{model}"\n'
        )
        capsys.readouterr()
        code = main(["run", str(job), "--check"])
        return code, capsys.readouterr().err

    for model, kind in (
        (qa, "pubmedqa"),
        (demo_models["re"], "ddi"),
        (demo_models["ner"], "BioGptForTokenClassification"),
    ):
        code, err = check(model)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("biomine: error:"), err
        assert "[tasks.classify]" in err and f"is a {kind} checkpoint" in err and "biogpt:dc-hoc" in err, err
    assert check(hoc)[0] == 0 and not (tmp_path / "out").exists()


def test_models_list_names_the_job_task_of_the_hoc_release(capsys):
    assert main(["models", "list", "--available"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dc-hoc ")]
    assert "[tasks.classify]" in line
