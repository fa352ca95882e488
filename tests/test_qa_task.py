"""The ``[tasks.qa]`` job task (pipeline/tasks/qa.py): PubMedQA answers of articles.

Fast tests: the input is the original ``rebuild_data.py`` source (written out here from the
original script's rules, not from the code under test), title-as-question selection, the answer
grammar's parse statuses, the ``answers`` schema, the checkpoint and option checks. One slow test
runs a tiny prompt model fitted to a slice of the real PubMedQA data (``../shared/data/pubmedqa``)
in a real local Ray job next to ``summarize``, and reads the answers back through ``biomine query``.
"""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from pipeline.errors import WrongModelError
from pipeline.tasks.options import QAOptions
from pipeline.tasks.qa import (
    NO_ABSTRACT,
    NO_TITLE,
    NOT_A_QUESTION,
    QATask,
    answer_logprob,
    parse_answer,
    question_for,
    title_question,
)
from schemas import answers

LEARNED = [f"learned{i}" for i in range(1, 10)]  # the released checkpoints' 9 prompt tokens
TARGET = "the answer to the question given the context is"


def original_source(question: str, contexts: list[str]) -> str:
    """examples/QA-PubMedQA/ReasoningRequired/rebuild_data.py, as written there: contexts stripped
    and joined by a space, newlines then whitespace runs replaced by one space."""
    context = " ".join(c.strip() for c in contexts)
    context = re.sub(r"\n", " ", context)
    context = re.sub(r"\s+", " ", context)
    return f"question: {question.strip()} context: {context.strip()} "


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    from biogpt.tiny import make_tiny_task_checkpoint

    texts = ["Does aspirin reduce pain? Aspirin  was given\n to 40 patients with pain.", f"{TARGET} yes no maybe."]
    return make_tiny_task_checkpoint(
        tmp_path_factory.mktemp("qa") / "qa-tiny", texts, task="qa-pubmedqa", max_position_embeddings=256
    )


# --- input and question --------------------------------------------------------------------------


def test_prepare_builds_the_original_input_and_skips_what_it_cannot_ask(qa_model):
    from biogpt.task_spec import load_task_settings
    from pipeline.tasks import base
    from pipeline.tasks.re_format import EOS_ID

    settings = load_task_settings(qa_model)
    tok = base.tokenizer_for(str(qa_model))
    batch = {
        "pmid": [1, 2, 3, 4],
        "title": ["Does aspirin reduce pain?", "Aspirin and pain.", None, "[Is pain reduced by aspirin?]."],
        "abstract": ["Aspirin  was given\n to 40 patients with pain. ", "Aspirin was given.", "Text.", None],
    }
    by_title = QATask.prepare(batch, QAOptions(model=str(qa_model), question="{title}")).to_pylist()
    expected = original_source("Does aspirin reduce pain?", ["Aspirin  was given\n to 40 patients with pain. "])
    assert expected == "question: Does aspirin reduce pain? context: Aspirin was given to 40 patients with pain. "
    ids = tok.encode(expected, add_special_tokens=False)  # not lower-cased: the released format
    assert by_title[0]["_input_ids"] == [EOS_ID, *ids, *settings.prompt_token_ids]
    assert (by_title[0]["_question"], by_title[0]["_skip"], by_title[0]["_truncated"]) == (
        "Does aspirin reduce pain?",
        "",
        False,
    )
    # not a question, no title, a bracketed (translated) question title without an abstract
    assert [(r["_question"], r["_skip"], r["_input_ids"]) for r in by_title[1:]] == [
        ("Aspirin and pain.", NOT_A_QUESTION, None),
        (None, NO_TITLE, None),
        ("Is pain reduced by aspirin?", NO_ABSTRACT, None),
    ]
    asked = QATask.prepare(batch, QAOptions(model=str(qa_model), question=" Is aspirin safe? ", question_id="q1"))
    rows = asked.to_pylist()
    assert [r["_skip"] for r in rows] == ["", "", "", NO_ABSTRACT]
    assert rows[2]["_input_ids"][1:-9] == tok.encode(
        original_source("Is aspirin safe?", ["Text."]), add_special_tokens=False
    )


def test_long_abstracts_are_cut_as_the_fine_tuning_data(qa_model):
    from biogpt.task_spec import load_task_settings

    settings = load_task_settings(qa_model)
    long = " ".join(f"word{i}" for i in range(200))
    (row,) = QATask.prepare(
        {"pmid": [5], "title": ["Why?"], "abstract": [long]}, QAOptions(str(qa_model), question="{title}")
    ).to_pylist()
    source = row["_input_ids"][1 : -len(settings.prompt_token_ids)]
    assert row["_truncated"] is True and len(source) == settings.max_source_positions
    assert source[-1] == settings.truncation_marker_id


@pytest.mark.parametrize(
    "title, question",
    [
        ("Does X cause Y?", "Does X cause Y?"),
        ("  Is it safe? ", "Is it safe?"),
        ("[Is the new therapy effective?].", "Is the new therapy effective?"),
        ("Is it safe?.", "Is it safe?"),
        ("Aspirin and warfarin: an interaction.", None),
        ("What is known? A review", None),  # a question inside, not the title
        ("", None),
    ],
)
def test_title_as_question(title, question):
    assert title_question(title) == question


def test_question_for_each_mode():
    assert question_for("Is it safe?", "") == ("Is it safe?", "")  # a written-out question needs no title
    assert question_for("{title}", "") == (None, NO_TITLE)
    assert question_for("{title}", "A study.") == ("A study.", NOT_A_QUESTION)


# --- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "generation, parsed",
    [
        (f"{TARGET} yes.", ("yes", "ok")),
        (f"{TARGET} maybe", ("maybe", "ok")),
        (f"we can conclude that {TARGET} no.", ("no", "ok")),  # the prompt-token cut comes first
        (f"{TARGET} yes. {TARGET} no.", (None, "other_answer")),  # the text after the FIRST sentence
        (f"{TARGET} probably.", (None, "other_answer")),
        ("the type of this document is empty.", (None, "unparsed")),
        ("", (None, "unparsed")),
    ],
)
def test_parse_statuses(generation, parsed):
    answer, status, reason = parse_answer(generation, LEARNED)
    assert (answer, status) == parsed
    assert (reason is None) == (status == "ok")


def test_answer_logprob_is_the_answer_tokens_sum(qa_model):
    from pipeline.tasks import base

    tok = base.tokenizer_for(str(qa_model))
    ids = tok.encode(f"{TARGET} yes .", add_special_tokens=False) + [2]
    lps = [-0.1 * (i + 1) for i in range(len(ids))]
    yes = tok.encode("yes", add_special_tokens=False)
    start = len(ids) - 2 - len(yes)
    assert answer_logprob("yes", ids, lps, tok) == pytest.approx(sum(lps[start : start + len(yes)]))
    assert answer_logprob("maybe", ids, lps, tok) is None


def _row(**change):
    row = {
        "pmid": 7,
        "version": 1,
        "question_id": "title",
        "question": "Is it safe?",
        "answer": "yes",
        "parse_status": "ok",
        "raw_generation": f"{TARGET} yes.",
        "answer_logprob": -0.2,
        "model_id": "qa-tiny",
        "decoding": {"strategy": "greedy", "num_beams": 1},
        "input_truncated": False,
    }
    return {**row, **change}


def test_answer_rows_cast():
    skipped = _row(
        parse_status="skipped",
        answer=None,
        answer_logprob=None,
        reason=NO_ABSTRACT,
        raw_generation=None,
        decoding=None,
        input_truncated=None,
    )
    table = answers.cast_batch([_row(), skipped])
    assert table.schema.metadata[b"biomine.schema"] == b"answers"
    assert table.column("answer").to_pylist() == ["yes", None]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"parse_status": "failed"}, "parse_status 'failed' is not one of"),
        ({"answer": "Yes"}, "an 'ok' row needs an answer in"),
        ({"parse_status": "unparsed", "answer": None, "answer_logprob": None}, "and a reason"),
        ({"parse_status": "other_answer", "reason": "x"}, "has no answer"),
        ({"raw_generation": None}, "raw_generation is null exactly for 'skipped' rows"),
        ({"question": None}, "a question that was asked is required"),
        ({"question_id": None}, "column 'question_id' is required"),
    ],
)
def test_answer_invariants(change, message):
    with pytest.raises(answers.SchemaMismatchError, match=re.escape(message) if "'" in message else message):
        answers.cast_batch([_row(**change)])


# --- checks --------------------------------------------------------------------------------------


def test_check_model_refuses_other_checkpoints(qa_model, tmp_path, demo_models):
    from biogpt.task_spec import read_task_spec, write_task_spec
    from biogpt.tiny import make_tiny_task_checkpoint

    assert QATask.check_model(QAOptions(str(qa_model), question="{title}")).task == "pubmedqa"
    hoc = make_tiny_task_checkpoint(
        tmp_path / "hoc", ["the type of this document is empty.", "Aspirin was given to patients."], task="dc-hoc"
    )
    for model, needle in [
        (demo_models["re"], "is a ddi checkpoint, not a PubMedQA one"),
        (hoc, "is a hoc checkpoint, not a PubMedQA one"),
        (demo_models["summarize"], "lm is not a fine-tuned task checkpoint"),
        (demo_models["ner"], "BioGptForTokenClassification checkpoint"),
    ]:
        with pytest.raises(WrongModelError, match=needle):
            QATask.check_model(QAOptions(str(model), question="{title}"))
    # a reasoning-free checkpoint needs a long answer, which an article does not have
    free = tmp_path / "free"
    import shutil

    shutil.copytree(qa_model, free)
    spec = read_task_spec(free)
    spec["source_format"]["name"] = "qa-pubmedqa-reasoning-free"
    write_task_spec(spec, free)
    with pytest.raises(WrongModelError, match="reads the qa-pubmedqa-reasoning-free input"):
        QATask.check_model(QAOptions(str(free), question="{title}"))


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"question": "Is it safe?"}, "question_id is required"),
        ({"question": "Does {abstract} say so?", "question_id": "q"}, 'the only template is the whole "{title}"'),
        ({"question": "  "}, "question must be a question"),
        ({"question": "{title}", "max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ],
)
def test_option_problems(options, needle):
    assert any(needle in p for p in QAOptions(model="m", **options).problems())


def test_title_mode_names_its_question_id():
    assert QAOptions(model="m", question="{title}").question_id == "title"
    assert QAOptions(model="m", question="{title}", question_id="t2").question_id == "t2"


# --- a real job ----------------------------------------------------------------------------------


def _pubmedqa_rows() -> list[tuple[str, str, str]]:
    """(question, context, answer) of the first short labelled question of each answer in the real
    PubMedQA train file (read as `biomine eval qa` reads it)."""
    from conftest import shared_path

    from pipeline.evaluation.qa import read_pubmedqa

    rows: dict[str, tuple[str, str, str]] = {}
    for record in read_pubmedqa(shared_path("data", "pubmedqa", "train.tsv")):
        if record.question and record.contexts and record.gold not in rows and len(record.question) < 90:
            rows[record.gold] = (record.question, record.contexts[0], record.gold)
    return [rows[a] for a in ("yes", "no", "maybe") if a in rows]


@pytest.mark.slow
def test_qa_job_answers_next_to_summarize(tmp_path, ray_local, capsys):
    """A tiny prompt model fitted to three real PubMedQA questions answers them in a real Ray job
    (title mode), records the articles it cannot ask, and the answers view reads them back."""
    import conftest
    import torch
    from fake_eutils import article_xml, pubmed_document

    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.cli import main
    from pipeline.outputs.query import read_dataset
    from pipeline.run.jobspec import load_job
    from pipeline.run.runner import run_job
    from pipeline.tasks.re_format import build_source, build_target
    from pipeline.tasks.tiny import fit_prompt_model

    picked = _pubmedqa_rows()
    assert len(picked) == 3, picked
    records = [{"QUESTION": q, "CONTEXTS": [c], "final_decision": a} for q, c, a in picked]
    texts = [build_source("pubmedqa", r) for r in records] + [build_target("pubmedqa", r) for r in records]
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_tiny_task_checkpoint(
            tmp_path / "qa-tiny", texts, task="qa-pubmedqa", max_position_embeddings=96, max_source_positions=40
        )
        fit_prompt_model(model, "pubmedqa", records, steps=300, lr=1e-2, stop_loss=0.05)
        lm = make_tiny_checkpoint(tmp_path / "lm-tiny", texts, seed=2)
    finally:
        torch.set_num_threads(threads)
    fitted = time.perf_counter() - start

    src = tmp_path / "pubmed"
    src.mkdir()
    articles = [
        article_xml(100 + i, title=html.escape(q), abstract=html.escape(c)) for i, (q, c, _) in enumerate(picked)
    ]
    articles.append(article_xml(200, title="Aspirin and pain.", abstract="Aspirin was given."))
    articles.append(article_xml(201, title="Is aspirin safe?", abstract=None))
    (src / "pubmed25n0001.xml").write_text(pubmed_document(articles))
    out = tmp_path / "out"
    job = conftest.write_job(
        tmp_path / "qa.toml",
        output=out,
        source={"kind": "files", "paths": [str(src)], "shard_size": 5},
        tasks={
            "qa": {"model": str(model), "question": "{title}", "batch_size": 4},
            "summarize": {"model": str(lm), "max_new_tokens": 4},
        },
    )
    ran = time.perf_counter()
    result = run_job(load_job(job), progress=False, num_cpus=2)
    ran = time.perf_counter() - ran
    assert result["stages"]["qa"]["shards_done"] == 1

    rows = {r["pmid"]: r for r in read_dataset(out, "answers").to_pylist()}
    assert sorted(rows) == [100, 101, 102, 200, 201]  # one row per article, none dropped
    for i, (question, _, gold) in enumerate(picked):
        row = rows[100 + i]
        assert (row["question_id"], row["question"], row["parse_status"], row["answer"]) == (
            "title",
            question,
            "ok",
            gold,
        ), row
        assert row["raw_generation"].startswith(TARGET) and row["input_truncated"] is True
        assert row["answer_logprob"] is not None and row["answer_logprob"] <= 0
        assert row["model_id"] == "qa-tiny" and row["decoding"]["strategy"] == "greedy"
    assert (rows[200]["parse_status"], rows[200]["reason"], rows[200]["raw_generation"]) == (
        "skipped",
        NOT_A_QUESTION,
        None,
    )
    assert (rows[201]["parse_status"], rows[201]["reason"]) == ("skipped", NO_ABSTRACT)
    assert len(read_dataset(out, "summaries")) == 5

    capsys.readouterr()
    sql = "SELECT answer, count(*) AS n FROM answers WHERE parse_status = 'ok' GROUP BY 1 ORDER BY 1"
    assert main(["query", str(out), sql, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)  # one JSON array
    assert shown == [{"answer": a, "n": 1} for a in sorted(gold for _, _, gold in picked)]

    # BioC export: each article's answer as document infons keyed by the question id
    from bioc import biocjson

    dest = tmp_path / "answers.bioc.json"
    assert main(["export", str(out), "--format", "bioc-json", "--out", str(dest), "--no-progress"]) == 0
    with open(dest, encoding="utf-8") as f:
        exported = {int(d.id): d.infons for d in biocjson.load(f).documents}
    for pmid, row in rows.items():
        infons = exported[pmid]
        assert infons["question_ids"] == "title" and infons["qa:title:status"] == row["parse_status"]
        assert infons.get("qa:title:answer") == row["answer"] and infons.get("qa:title:reason") == row["reason"]
        assert infons.get("qa:title:question") == row["question"] and infons["qa:title:model_id"] == "qa-tiny"
        logprob = infons.get("qa:title:logprob")
        assert (float(logprob) if logprob else None) == row["answer_logprob"]
    print(f"fitted in {fitted:.1f} s, job in {ran:.1f} s")


def test_models_list_names_the_qa_job_task(capsys):
    from pipeline.cli import main

    assert main(["models", "list", "--available"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in ("qa-pubmedqa", "qa-pubmedqa-large"):
        assert '[tasks.qa] question = "..."' in lines[name], lines[name]
