"""The summarisation task (pipeline/tasks/summarize.py) on tiny random causal LMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biogpt.errors import ConfigError
from biogpt.generation import generate
from biogpt.model import BioGptForTokenClassification
from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
from biogpt.tokenizer import BioGptTokenizer
from pipeline.tasks import base
from pipeline.tasks.options import SummarizeOptions
from pipeline.tasks.summarize import SummarizeTask, fit_prompt, prompt_ids
from schemas.summaries import cast_batch

TITLES = ["Aspirin increases the effect of warfarin", "Midazolam and ketoconazole", None]
ABSTRACTS = [
    "Aspirin increases the anticoagulant effect of warfarin. Monitor the INR closely.",
    "Ketoconazole reduced midazolam clearance in healthy volunteers.",
    "An abstract without title.",
]
LONG = " ".join(["Midazolam clearance was reduced by ketoconazole in healthy volunteers."] * 8)
TEXTS = [t for t in TITLES if t] + ABSTRACTS + [LONG, "Abstract: Summary: TL;DR:"]
POSITIONS = 64


def batch_of(titles, abstracts):
    n = len(titles)
    return {
        "pmid": np.arange(1, n + 1, dtype=np.int64),
        "version": np.ones(n, dtype=np.int32),
        "title": np.array(titles, dtype=object),
        "abstract": np.array(abstracts, dtype=object),
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("summarize")
    return {
        # untied random output projection: a tied random model just repeats its last input token
        "lm": make_tiny_checkpoint(
            root / "biogpt-tiny", TEXTS, max_position_embeddings=POSITIONS, tie_word_embeddings=False, seed=2
        ),
        "lm-task-file": make_tiny_task_checkpoint(root / "biogpt-converted", TEXTS, task="lm"),
        "re": make_tiny_task_checkpoint(root / "re-ddi", TEXTS),
        "ner": make_tiny_checkpoint(root / "ner", TEXTS, model_cls=BioGptForTokenClassification),
    }


def test_rows_fit_the_schema_and_equal_greedy_generate(ckpts):
    path = ckpts["lm"]
    options = {
        "model": str(path),
        "prompt": "{title} TL;DR:",
        "prompt_id": "tldr-v1",
        "max_new_tokens": 10,
        "batch_size": 2,
        "device": "cpu",
    }
    task = SummarizeTask(SummarizeOptions(**options))
    batch = batch_of(TITLES, ABSTRACTS)
    prepared = SummarizeTask.prepare(batch, SummarizeOptions(**options))
    prompts = prepared["_input_ids"].to_pylist()
    tok = BioGptTokenizer.from_pretrained(path)
    # [2] + the formatted template's ids; a missing title is the empty string
    assert prompts[0] == [2] + tok.encode(f"{TITLES[0]} TL;DR:", add_special_tokens=False)
    assert prompts[2] == [2] + tok.encode(" TL;DR:", add_special_tokens=False)
    per_doc = task(prepared)
    assert [len(rows) for rows in per_doc] == [1, 1, 1]
    model = task.decoder.model
    for prompt, rows, pmid in zip(prompts, per_doc, [1, 2, 3]):
        (row,) = rows
        ref = generate(model, torch.tensor([prompt]), max_new_tokens=10, suppress_tokens=[1])[0, len(prompt) :].tolist()
        assert row["summary"] == tok.decode(ref, skip_special_tokens=True)
        assert task.generate_ids([prompt]) == [ref]
        assert (row["pmid"], row["version"], row["prompt_id"], row["model_id"]) == (pmid, 1, "tldr-v1", "biogpt-tiny")
        assert row["decoding"] == base.decoding_record(strategy="greedy", num_beams=1, max_new_tokens=10)
    assert len({row["summary"] for rows in per_doc for row in rows}) > 1  # the prompts steer it
    table = cast_batch([r for rows in per_doc for r in rows])
    assert table.num_rows == 3 and table.column("summary").null_count == 0
    with pytest.raises(TypeError, match="takes a prepared batch"):  # one data path: prepare, then __call__
        task(batch)


def test_default_prompt_and_articles_without_one(ckpts):
    path = ckpts["lm"]
    task = SummarizeTask(
        SummarizeOptions(model=str(path), max_new_tokens=4, device="cpu")
    )  # prompt "{title}", id "default"
    per_doc = task(SummarizeTask.prepare(batch_of(TITLES, ABSTRACTS), task.options))
    assert per_doc[2] == []  # "{title}" of an article without title: nothing to summarise, no row
    assert [rows[0]["prompt_id"] for rows in per_doc[:2]] == ["default", "default"]
    prompts = SummarizeTask.prepare(batch_of(TITLES, ABSTRACTS), task.options)["_input_ids"].to_pylist()
    tok = task.tokenizer
    assert prompts[:2] == [[2] + tok.encode(t, add_special_tokens=False) for t in TITLES[:2]] and prompts[2] is None


def no_log_softmax(monkeypatch):
    """Make every log-softmax entry point raise: what runs afterwards provably computes none."""

    def refuse(*args, **kwargs):
        raise AssertionError("a log-softmax was computed on the plain (ids only) path")

    monkeypatch.setattr(torch, "log_softmax", refuse)
    monkeypatch.setattr(torch.nn.functional, "log_softmax", refuse)
    monkeypatch.setattr(torch.Tensor, "log_softmax", refuse)


def test_summaries_decode_on_the_plain_path_and_scored_calls_wrap_it(ckpts, monkeypatch):
    options = SummarizeOptions(
        model=str(ckpts["lm"]), prompt="{title} TL;DR:", max_new_tokens=6, batch_size=2, device="cpu"
    )
    task = SummarizeTask(options)
    decoder = task.decoder
    prepared = SummarizeTask.prepare(batch_of(TITLES, ABSTRACTS), options)
    inputs = prepared["_input_ids"].to_pylist() + [None]
    prompts = [p for p in inputs if p is not None] + [[2] * (POSITIONS - 1), [2] * POSITIONS]  # 1 and 0 left
    scored = decoder.run_scored(prompts, 6)  # before the patch: scoring needs a log-softmax
    scored_by_input = decoder.run_prompted_scored(inputs, 6)
    asked = []
    engine_run = decoder.engine.run

    def spy(*args, **kwargs):
        asked.append(kwargs.get("logprobs", False))
        return engine_run(*args, **kwargs)

    monkeypatch.setattr(decoder.engine, "run", spy)
    no_log_softmax(monkeypatch)
    per_doc = task(prepared)  # summaries: ids only, and no log-probability computed anywhere
    plain = decoder.run(prompts, 6)
    plain_by_input = decoder.run_prompted(inputs, 6)
    assert asked == [False, False, False] and [len(rows) for rows in per_doc] == [1, 1, 1]
    # the scored calls return the plain calls' ids, each with one log-probability
    assert [ids for ids, _ in scored] == plain and len(plain[-2]) == 1 and plain[-1] == []
    assert all(len(lps) == len(ids) and all(lp <= 0 for lp in lps) for ids, lps in scored)
    assert scored[-1] == ([], [])
    assert sorted(plain_by_input) == sorted(scored_by_input) == [0, 1, 2]
    assert {i: ids for i, (ids, _) in scored_by_input.items()} == plain_by_input
    assert [task.summary_text(plain_by_input[i]) for i in range(3)] == [rows[0]["summary"] for rows in per_doc]


def test_prompt_truncation_cuts_the_abstract_and_keeps_the_cue(ckpts):
    path = ckpts["lm"]
    tok = BioGptTokenizer.from_pretrained(path)
    template = "Abstract: {abstract} Summary:"
    max_new = 20
    limit = POSITIONS - max_new
    cue = tok.encode("Summary:", add_special_tokens=False)
    full = [2] + tok.encode(template.format(title="", abstract=LONG), add_special_tokens=False)
    assert len(full) > limit  # the test needs a prompt that does not fit
    ids = prompt_ids(template, "", LONG, tok, limit)
    assert len(ids) <= limit and ids[0] == 2 and ids[-len(cue) :] == cue
    # the abstract is cut at a word boundary, as little as possible
    kept = tok.decode(ids[1:])
    assert kept.startswith("Abstract: Midazolam clearance") and kept.endswith(" Summary:")
    words = LONG.split()
    n = len(kept[len("Abstract: ") : -len(" Summary:")].split())
    assert tok.encode(template.format(title="", abstract=" ".join(words[:n])), add_special_tokens=False) == ids[1:]
    longer = [2] + tok.encode(template.format(title="", abstract=" ".join(words[: n + 1])), add_special_tokens=False)
    assert len(longer) > limit
    # a template without {abstract} (or a huge title): the end of the prompt is kept
    title_ids = prompt_ids("{title} TL;DR:", LONG, "", tok, limit)
    every = [2] + tok.encode(f"{LONG} TL;DR:", add_special_tokens=False)
    assert title_ids == [2] + every[len(every) - (limit - 1) :]
    assert fit_prompt("{title} TL;DR:", LONG, "", tok, limit)[1] is True
    assert fit_prompt(template, "", ABSTRACTS[0], tok, limit)[1] is False

    # through the task: every prompt fits with its new tokens, and generation never overflows
    options = {"model": str(path), "prompt": template, "max_new_tokens": max_new, "device": "cpu"}
    prepared = SummarizeTask.prepare(batch_of(["t", "t"], [LONG, ABSTRACTS[0]]), SummarizeOptions(**options))
    prompts = prepared["_input_ids"].to_pylist()
    assert prompts[0] == ids and all(len(p) + max_new <= POSITIONS for p in prompts)
    assert prompts[1] == [2] + tok.encode(template.format(title="", abstract=ABSTRACTS[0]), add_special_tokens=False)
    assert prepared["_truncated"].to_pylist() == [True, False]
    rows = SummarizeTask(SummarizeOptions(**options))(prepared)
    assert [len(r) for r in rows] == [1, 1]
    # the cut row says so in the dataset
    assert [r[0]["input_truncated"] for r in rows] == [True, False]


def test_check_model_refusals(ckpts, tmp_path):
    assert (
        SummarizeTask.check_model(SummarizeOptions(model=ckpts["lm"], max_new_tokens=8))["max_position_embeddings"]
        == POSITIONS
    )
    SummarizeTask.check_model(
        SummarizeOptions(model=ckpts["lm-task-file"], max_new_tokens=8)
    )  # a converted pre-trained LM ("task": "lm") is fine
    with pytest.raises(base.WrongModelError) as err:
        SummarizeTask.check_model(SummarizeOptions(model=ckpts["ner"]))
    assert str(ckpts["ner"]) in str(err.value) and "BioGptForTokenClassification" in str(err.value)
    with pytest.raises(base.WrongModelError) as err:
        SummarizeTask.check_model(SummarizeOptions(model=ckpts["re"]))
    message = str(err.value)
    assert str(ckpts["re"]) in message and "prompt-tuned re-ddi checkpoint" in message
    assert "biomine convert fairseq" in message
    with pytest.raises(base.WrongModelError, match="no config.json"):
        SummarizeTask.check_model(SummarizeOptions(model=tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"only \{title\} and \{abstract\}"):
        SummarizeTask.check_model(SummarizeOptions(model=ckpts["lm"], prompt="{title} {journal}"))
    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        SummarizeTask.check_model(SummarizeOptions(model=ckpts["lm"], max_new_tokens=POSITIONS - 1))
    with pytest.raises(ConfigError, match="leaves no room"):
        SummarizeTask.prepare(
            batch_of(["t"], ["a"]), SummarizeOptions(model=str(ckpts["lm"]), max_new_tokens=POSITIONS)
        )
    with pytest.raises(base.WrongModelError, match="prompt-tuned"):
        SummarizeTask(SummarizeOptions(model=str(ckpts["re"]), device="cpu"))
