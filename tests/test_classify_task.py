"""The ``classify`` job task with the released HoC checkpoint's layout (pipeline/tasks/classify.py):
sentences and their offsets, the label parse statuses, token alignment of label log-probabilities,
the union of sentence labels with each label's best sentence, the labels schema, `run --check`
refusing checkpoints of other tasks, `models list --available`; and one real Ray job running
``classify`` next to ``summarize`` with a tiny HoC prompt model fitted to real HoC sentences."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pytest
from conftest import shared_path

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


# --- a real Ray job -------------------------------------------------------------------------------


def _hoc_sentences() -> dict[str, str]:
    """One short sentence of real HoC data per label string we need."""
    rows = [line.rstrip("\n").split("\t") for line in open(shared_path("data", "hoc", "train.tsv"), encoding="utf-8")]
    wanted = ("empty", A, B, f"resisting cell death|{B}")
    picked = {lab: next(s for s, gold in rows if gold == lab and len(s) < 110) for lab in wanted}
    picked["empty 2"] = next(s for s, gold in rows if gold == "empty" and len(s) < 110 and s != picked["empty"])
    return picked


@pytest.mark.slow
def test_classify_runs_next_to_summarize_in_one_ray_job(tmp_path, ray_local):
    import torch
    from conftest import write_job
    from fake_eutils import article_xml, pubmed_document

    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.outputs.query import query, read_dataset
    from pipeline.run.jobspec import load_job
    from pipeline.run.runner import run_job
    from pipeline.store.documents import read_articles
    from pipeline.tasks.classify import ClassifyTask
    from pipeline.tasks.options import ClassifyOptions
    from pipeline.tasks.re_format import build_source, build_target
    from pipeline.tasks.tiny import fit_prompt_model

    s = _hoc_sentences()
    records = [{"sentence": sentence, "labels": lab.removesuffix(" 2")} for lab, sentence in s.items()]
    texts = [build_source("hoc", r) for r in records] + [build_target("hoc", r) for r in records]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
    try:
        hoc = make_tiny_task_checkpoint(
            tmp_path / "dc-hoc",
            texts,
            task="dc-hoc",
            learned_prompt=1,
            max_position_embeddings=64,
            max_source_positions=40,
        )
        fit_prompt_model(hoc, "hoc", records, steps=300, lr=1e-2, stop_loss=0.05)
    finally:
        torch.set_num_threads(threads)
    lm = make_tiny_checkpoint(tmp_path / "lm", texts, seed=2)

    # PMID 1: a labelled title and three labelled sentences; 2: every sentence empty; 3: a title only;
    # 4: no text at all. Shards of two: the shard of 1 and 2, the shard of 3 and 4.
    docs = {
        1: (s[A], " ".join(html.escape(s[k], quote=False) for k in ("empty", B, f"resisting cell death|{B}"))),
        2: (s["empty"], html.escape(s["empty 2"], quote=False)),
        3: (s[B], None),
        4: ("", None),
    }
    src = tmp_path / "pubmed"
    src.mkdir()
    xml = [article_xml(p, title=html.escape(t, quote=False), abstract=a) for p, (t, a) in docs.items()]
    (src / "pubmed25n0001.xml").write_text(pubmed_document(xml))
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "job.toml",
        output=out,
        source={"kind": "files", "paths": [str(src)], "shard_size": 2},
        tasks={"classify": {"model": str(hoc), "batch_size": 8}, "summarize": {"model": str(lm), "max_new_tokens": 4}},
    )
    record = run_job(load_job(job), progress=False, num_cpus=2)
    assert record["stages"]["classify"]["shards_done"] == 2

    labels = read_dataset(out, "labels")
    by_pmid: dict[int, set[str]] = {}
    for row in labels.to_pylist():
        assert row["parse_status"] == "ok", row  # the fitted model answers every sentence in the grammar
        by_pmid.setdefault(row["pmid"], set()).add(row["label"])
    # the union of the sentences' gold labels, `empty` left out; PMIDs 2 and 4 have no row
    assert by_pmid == {1: {A, B, "resisting cell death"}, 3: {B}}
    articles = read_articles(out)
    # rows equal the task's own output on the same documents (one engine call per batch of sentences)
    task = ClassifyTask(ClassifyOptions(model=str(hoc), dtype="float32"))
    direct = [r for rows in task(ClassifyTask.prepare(articles, task.options)) for r in rows]
    job_rows = sorted(labels.to_pylist(), key=lambda r: (r["pmid"], r["evidence_start"], r["label"]))
    direct = sorted(direct, key=lambda r: (r["pmid"], r["evidence_start"], r["label"]))
    assert len(job_rows) == len(direct)
    for got, want in zip(job_rows, direct):  # the engine's batches differ: the last float bits may
        assert math.isclose(got.pop("logprob"), want.pop("logprob"), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(got.pop("score"), want.pop("score"), rel_tol=1e-5)
        assert {k: v for k, v in got.items() if v is not None} == want
    text = {p: f"{t} {a or ''}" for p, (t, a) in docs.items()}
    for row in labels.to_pylist():  # evidence indexes title + " " + abstract, and states the label
        assert text[row["pmid"]][row["evidence_start"] : row["evidence_end"]] == row["evidence_text"]
        gold = [lab.removesuffix(" 2").split("|") for lab, sentence in s.items() if sentence == row["evidence_text"]]
        assert gold and row["label"] in gold[0]
        assert 0 < row["score"] <= 1 and row["sentences"] >= 1
    best = next(r for r in labels.to_pylist() if r["pmid"] == 1 and r["label"] == B)
    assert best["sentences"] == 2  # two sentences name it; the evidence is the likelier one

    sql = "SELECT pmid, count(*) AS n FROM labels WHERE parse_status = 'ok' GROUP BY pmid ORDER BY pmid"
    assert query(out, sql).to_dict("records") == [{"pmid": 1, "n": 3}, {"pmid": 3, "n": 1}]
    # documents without rows were computed: every documents file has its labels output
    from pipeline.store.datasets import OutputName
    from pipeline.store.documents import Documents
    from pipeline.store.tables import Table

    outputs = [OutputName.parse(f) for f in Table(out / "labels").files()]
    assert sorted(o.doc for o in outputs if o is not None and not o.failed) == sorted(
        f.stem for f in Documents(out / "documents").files().values()
    )

    # BioC export: each label's evidence is an annotation at its sentence, in the passage holding it
    from bioc import biocxml

    dest = tmp_path / "labels.bioc.xml"
    assert main(["export", str(out), "--format", "bioc-xml", "--out", str(dest), "--no-progress"]) == 0
    with open(dest, encoding="utf-8") as f:
        exported = {int(d.id): d for d in biocxml.load(f).documents}
    for pmid, want in by_pmid.items():
        doc = exported[pmid]
        assert set(doc.infons["labels"].split("|")) == want
        rows = [r for r in labels.to_pylist() if r["pmid"] == pmid]
        shown = {
            (a.infons["type"], a.total_span.offset, a.total_span.end, a.text)
            for p in doc.passages
            for a in p.annotations
        }
        assert shown == {(r["label"], r["evidence_start"], r["evidence_end"], r["evidence_text"]) for r in rows}
        for r in rows:
            assert math.isclose(float(doc.infons[f"label:{r['label']}:score"]), r["score"])
    assert "labels" not in exported[2].infons and "labels" not in exported[4].infons


# --- a sequence classifier ------------------------------------------------------------------------

LONG = (
    "Tumour cells invaded the stroma and formed distant metastases in the liver. "
    "Vascular endothelial growth factor drove angiogenesis in every tumour examined. "
    "Apoptosis was rare, and proliferation was high in the invasive front of the tumours."
)


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
def test_a_sequence_classifier_reads_the_whole_text_in_windows(tmp_path, problem_type):
    import torch
    from transformers import BioGptForSequenceClassification as Oracle

    from biogpt.model import BioGptForSequenceClassification
    from biogpt.tiny import make_tiny_checkpoint
    from pipeline.tasks.classify import ClassifyTask
    from pipeline.tasks.options import ClassifyOptions

    labels = {0: "empty", 1: A, 2: B, 3: "resisting cell death"}
    model = make_tiny_checkpoint(
        tmp_path / "seq",
        [LONG, "Short title.", "A short abstract."],
        model_cls=BioGptForSequenceClassification,
        id2label=labels,
        problem_type=problem_type,
        max_position_embeddings=24,
        seed=5,
    )
    options = ClassifyOptions(model=str(model), batch_size=3, dtype="float32")
    docs = {
        "pmid": [1, 2, 3],
        "version": [1, 1, 1],
        "title": ["Short title.", "Invasion", None],
        "abstract": ["A short abstract.", LONG, None],
    }
    prepared = ClassifyTask.prepare(docs, options)
    got = ClassifyTask(options)(prepared)
    oracle = Oracle.from_pretrained(model).eval()
    multi = problem_type == "multi_label_classification"
    assert oracle.config.problem_type == problem_type
    seen = 0
    for i, rows in enumerate(got):
        text = prepared.column("_text")[i].as_py()
        inputs, spans = prepared.column("_inputs")[i].as_py(), prepared.column("_spans")[i].as_py()
        if i == 1:
            assert len(inputs) > 1 and all(len(x) <= 24 and x[0] == 2 for x in inputs)  # windowed past 23 tokens
            assert spans[0][0] == 0 and spans[-1][1] == len(text)  # the windows cover the text
        if i == 2:
            assert inputs == [] and rows == []  # no text: no input, no row
            continue
        # the oracle: transformers' model on each window alone, its probabilities, the picks
        best: dict[str, tuple[float, int]] = {}
        for w, ids in enumerate(inputs):
            with torch.no_grad():
                logits = oracle(torch.tensor([ids])).logits[0]
            probs = (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).tolist()
            picked = (
                [j for j, q in enumerate(probs) if q >= 0.5] if multi else [int(max(range(4), key=probs.__getitem__))]
            )
            for j in picked:
                if labels[j] != "empty" and (labels[j] not in best or probs[j] > best[labels[j]][0]):
                    best[labels[j]] = (probs[j], w)
        assert {r["label"] for r in rows} == set(best)
        for row in rows:
            p, w = best[row["label"]]
            assert math.isclose(row["score"], p, rel_tol=1e-4) and math.isclose(
                row["logprob"], math.log(p), abs_tol=1e-4
            )
            assert row["raw_generation"] is None and row["sentences"] is None
            if len(inputs) == 1:
                assert row["evidence_start"] is None and row["evidence_text"] is None
            else:
                assert (row["evidence_start"], row["evidence_end"]) == tuple(spans[w])
                assert text[row["evidence_start"] : row["evidence_end"]] == row["evidence_text"]
        seen += len(rows)
        cast_batch(rows)
    assert seen >= 1  # the seed gives labels to classify


def test_sequence_classifiers_the_task_cannot_read_are_refused(tmp_path, capsys):
    from biogpt.model import BioGptForSequenceClassification
    from biogpt.tiny import make_tiny_checkpoint
    from pipeline.tasks.classify import ClassifyModelError, checked_model

    def seq(name: str, **config) -> str:
        return str(make_tiny_checkpoint(tmp_path / name, [LONG], model_cls=BioGptForSequenceClassification, **config))

    good = seq("ok", id2label={0: "no", 1: "yes"})
    assert checked_model(good).labels == ("no", "yes")
    sample = Path(__file__).resolve().parents[1] / "pipeline" / "commands" / "demo_files" / "data" / "demo_pubmed.xml"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\nname = "c"\noutput = "{tmp_path / "out"}"\n[source]\nkind = "files"\npaths = ["{sample}"]\n'
        f'[tasks.classify]\nmodel = "{good}"\n'
    )
    assert main(["run", str(job), "--check"]) == 0
    with pytest.raises(ClassifyModelError, match="problem_type 'regression'"):
        checked_model(seq("regression", id2label={0: "a", 1: "b"}, problem_type="regression"))
    with pytest.raises(ClassifyModelError, match="at least two labels"):
        checked_model(seq("one", num_labels=1))


def test_every_sentence_of_a_batch_goes_to_the_engine_in_one_call_and_nothing_is_dropped(tmp_path):
    """A random HoC checkpoint answers nothing in the grammar: every sentence is one unparsed row
    with its reason, sentence and generation; all sentences of all documents were one engine call."""
    from biogpt.tiny import make_tiny_task_checkpoint
    from pipeline.tasks.classify import ClassifyTask
    from pipeline.tasks.options import ClassifyOptions

    titles = ["Angiogenesis in tumours", None, "Short."]
    abstracts = ["VEGF was high. Vessels grew!", "One sentence only.", None]
    hoc = make_tiny_task_checkpoint(
        tmp_path / "hoc",
        [t or "" for t in titles] + [a or "" for a in abstracts],
        task="dc-hoc",
        learned_prompt=1,
        seed=4,
    )
    options = ClassifyOptions(model=str(hoc), batch_size=4, max_new_tokens=3, dtype="float32")
    task = ClassifyTask(options)
    calls = []
    run = task.decoder.engine.run
    task.decoder.engine.run = lambda prompts, *a, **k: calls.append(len(prompts)) or run(prompts, *a, **k)
    out = task(ClassifyTask.prepare({"pmid": [1, 2, 3], "title": titles, "abstract": abstracts}, options))
    assert calls == [5]  # 3 + 1 + 1 sentences: one call for the whole batch
    assert [[r["evidence_text"] for r in rows] for rows in out] == [
        ["Angiogenesis in tumours", "VEGF was high.", "Vessels grew!"],
        ["One sentence only."],
        ["Short."],
    ]
    for rows in out:
        for row in rows:
            assert row["parse_status"] == "unparsed" and row["reason"] and row.get("label") is None
            assert isinstance(row["raw_generation"], str)
    cast_batch([r for rows in out for r in rows])
