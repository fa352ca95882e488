"""A confidence on every generated relation: the engine's log-probability of the tokens that state it.

The fixture: twelve synthetic abstracts, each stating one drug pair and relation; a tiny DDI prompt
model is fitted to the first eight (it states their triples right) and run on all twelve (on the
four it never saw it states wrong ones)."""

from __future__ import annotations

import itertools

import pytest
import torch

from biogpt.tiny import make_tiny_task_checkpoint
from pipeline.tasks.options import RelationOptions
from pipeline.tasks.re import RelationTask
from pipeline.tasks.tiny import fit_prompt_model
from schemas.relations import cast_batch

DRUGS = [
    "aspirin",
    "warfarin",
    "fluconazole",
    "ketoconazole",
    "midazolam",
    "rifampicin",
    "simvastatin",
    "clarithromycin",
]
RELATIONS = ["mechanism", "effect", "advise", "int"]
RECORDS = [
    {
        "pmid": k + 1,
        "title": f"Study {k}",
        "abstract": f"{a.capitalize()} changes the {RELATIONS[k % 4]} of {b} in patients {k}.",
        "triples": [{"drug": a, "target": b, "interaction": RELATIONS[k % 4]}],
    }
    for k, (a, b) in enumerate(list(itertools.combinations(DRUGS, 2))[:12])
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    model = tmp_path_factory.mktemp("confidence") / "re-ddi-fitted"
    texts = [r["abstract"] for r in RECORDS] + [r["abstract"].lower() for r in RECORDS]
    texts.append("the interaction between aspirin and warfarin is mechanism; the interaction between a and b is int.")
    make_tiny_task_checkpoint(
        model,
        texts,
        task="re-ddi",
        hidden_size=48,
        seed=3,
        tie_word_embeddings=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    fit_prompt_model(model, "ddi", RECORDS[:8], steps=300)
    task = RelationTask(RelationOptions(model=str(model), task="ddi", max_new_tokens=40, device="cpu", batch_size=4))
    batch = {
        "pmid": [r["pmid"] for r in RECORDS],
        "version": [1] * len(RECORDS),
        "title": [r["title"] for r in RECORDS],
        "abstract": [r["abstract"] for r in RECORDS],
    }
    return task, batch, task(RelationTask.prepare(batch, task.options))


def teacher_forced(task: RelationTask, prompt: list[int], new: list[int]) -> list[float]:
    """log p of each new id from ONE forward pass over prompt + new ids (float32, CPU)."""
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        logp = task.decoder.model(ids).logits[0].float().log_softmax(-1)
    return [logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(new)]


def test_stored_logprob_equals_a_teacher_forced_pass(fitted):
    task, batch, rows = fitted
    prompts = RelationTask.prepare(batch, task.options)["_input_ids"].to_pylist()
    news = task.generate_ids(prompts)
    semicolon = task.tokenizer.encode(";", add_special_tokens=False)
    period = task.tokenizer.encode(".", add_special_tokens=False)
    checked = 0
    for prompt, new, doc_rows in zip(prompts, news, rows):
        lps = teacher_forced(task, prompt, new)
        # the statement's tokens: the new ids without </s> and the final ".", split at ";"
        body = [(t, lp) for t, lp in zip(new, lps) if t != task.tokenizer.eos_token_id]
        if body and [body[-1][0]] == period:
            body.pop()
        pieces = [[]]
        for t, lp in body:
            if [t] == semicolon:
                pieces.append([])
            else:
                pieces[-1].append(lp)
        ok = [r for r in doc_rows if r["parse_status"] == "ok"]
        assert len(ok) == len(pieces)  # one statement per piece here
        for row, piece in zip(ok, pieces):
            assert row["logprob_tokens"] == len(piece)
            assert row["logprob"] == pytest.approx(sum(piece), abs=1e-4)
            checked += 1
    assert checked == len(RECORDS)
    table = cast_batch([r for doc in rows for r in doc])
    assert table.column("logprob").null_count == 0 and table.schema.field("logprob").type == "double"


def test_ranking_by_logprob_separates_right_from_wrong_triples(fitted):
    _, _, rows = fitted
    right, wrong = [], []
    for record, doc_rows in zip(RECORDS, rows):
        gold = {(t["drug"], t["target"], t["interaction"]) for t in record["triples"]}
        for row in doc_rows:
            assert row["parse_status"] == "ok"
            (right if (row["head"], row["tail"], row["relation"]) in gold else wrong).append(row["logprob"])
    # the fitted abstracts give right triples, the unseen ones wrong triples (the fixture works)
    assert len(right) >= 6 and len(wrong) >= 3
    # every right triple outranks every wrong one
    assert min(right) > max(wrong)


def test_pieces_that_do_not_align_get_no_number_and_unparsed_rows_get_theirs(fitted):
    task = fitted[0]
    semicolon = task.tokenizer.encode(";", add_special_tokens=False)[0]
    word = task.tokenizer.encode("aspirin", add_special_tokens=False)
    ids = word + [semicolon] + word + [task.tokenizer.eos_token_id]
    lps = [-0.5] * len(ids)
    assert task.piece_logprobs(ids, lps, 2) == [(-0.5 * len(word), len(word))] * 2
    assert task.piece_logprobs(ids, lps, 3) is None  # more text pieces than token segments: no guess
    assert task.piece_logprobs(ids, lps, 1) is None  # fewer: no guess either
    # a generation cut right after a ";" ("... is int;"): the empty last segment is no piece
    cut = word + [semicolon] + word + [semicolon]
    assert task.piece_logprobs(cut, [-0.5] * len(cut), 2) == [(-0.5 * len(word), len(word))] * 2
    # an empty piece between two separators gets no number (never a logprob of 0 over 0 tokens)
    empty = word + [semicolon, semicolon] + word
    assert task.piece_logprobs(empty, [-0.5] * len(empty), 3) == [
        (-0.5 * len(word), len(word)),
        None,
        (-0.5 * len(word), len(word)),
    ]


def test_heads_and_tails_link_through_the_vocabulary(fitted, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.tasks.vocabulary import dictionary_table, drugbank_rows

    task, batch, _ = fitted
    ids = {
        "aspirin": "DB00945",
        "warfarin": "DB00682",
        "fluconazole": "DB00196",
        "ketoconazole": "DB01026",
        "midazolam": "DB00683",
        "rifampicin": "DB01045",
        "simvastatin": "DB00641",
        "clarithromycin": "DB01211",
    }
    csv = tmp_path / "drugbank vocabulary.csv"
    csv.write_text(
        '"DrugBank ID","Accession Numbers","Common name","CAS","UNII","Synonyms","Standard InChI Key"\n'
        + "".join(f'"{i}","","{d.capitalize()}","","","",""\n' for d, i in ids.items() if d != "midazolam")
    )
    vocab = tmp_path / "drugs.parquet"
    pq.write_table(dictionary_table([drugbank_rows(csv)]), vocab)
    linked = RelationTask(
        RelationOptions(model=str(task.model_dir), task="ddi", max_new_tokens=40, device="cpu", vocabulary=str(vocab))
    )
    rows = [r for doc in linked(RelationTask.prepare(batch, linked.options)) for r in doc if r["parse_status"] == "ok"]
    assert rows
    for r in rows:
        for side in ("head", "tail"):
            assert r[f"{side}_id"] == (ids[r[side]] if r[side] != "midazolam" else None)  # unlinked: null
            assert r[f"{side}_match"] == (r[side].capitalize() if r[side] != "midazolam" else None)
    cast_batch(rows)
