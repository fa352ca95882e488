"""The relation-extraction task (pipeline/tasks/re.py) and `evaluate_re` (pipeline/evaluation/re.py) on tiny
prompt checkpoints.

The checkpoints come from biogpt.tiny.make_tiny_task_checkpoint (the layout `biomine convert fairseq`
writes). The strongest test fine-tunes one for a few hundred Adam steps on two abstracts, exactly as
BioGPT's prompt tuning lays out the data (``</s> source learned1..N target </s>``, loss on the target),
then checks that the task and the evaluation recover the relation from the model's own generation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biogpt.errors import BioMineError, ConfigError
from biogpt.generation import generate
from biogpt.model import BioGptForCausalLM, BioGptForTokenClassification
from biogpt.task_spec import load_task_settings
from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
from biogpt.tokenizer import BioGptTokenizer
from pipeline.errors import DataFormatError, TaskSettingsError
from pipeline.evaluation.re import evaluate_re, format_re_report
from pipeline.evaluation.re_scoring import hard_match
from pipeline.tasks import base
from pipeline.tasks.options import RelationOptions
from pipeline.tasks.re import RelationModelError, RelationTask
from pipeline.tasks.re_format import build_source, build_target, prompt_input_ids
from pipeline.tasks.tiny import fit_prompt_model
from schemas.relations import cast_batch
from tests.conftest import shared_path

TITLES = ["Warfarin and aspirin.", "Bleeding risk with anticoagulants"]
ABSTRACTS = [
    "Aspirin increases the anticoagulant effect of warfarin. Monitor the INR closely.",
    "Bleeding was reported. Coadministration of warfarin and aspirin raised the bleeding time.",
]
TRIPLE = {"drug": "aspirin", "target": "warfarin", "interaction": "mechanism"}
TARGET = "the interaction between aspirin and warfarin is mechanism."
LONG = " ".join(["Midazolam clearance was reduced by ketoconazole in healthy volunteers."] * 6)
TEXTS = TITLES + ABSTRACTS + [a.lower() for a in ABSTRACTS] + [TARGET, LONG, LONG.lower()]


def batch_of(titles, abstracts, pmids=None, versions=None):
    n = len(titles)
    return {
        "pmid": np.array(pmids or list(range(1, n + 1)), dtype=np.int64),
        "version": np.array(versions or [1] * n, dtype=np.int32),
        "title": np.array(titles, dtype=object),
        "abstract": np.array(abstracts, dtype=object),
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("re-task")
    # Untied random output projection: a tied random model just repeats its last input token.
    small = dict(max_position_embeddings=64, max_source_positions=20, tie_word_embeddings=False, seed=1)
    return {
        "ddi": make_tiny_task_checkpoint(root / "re-ddi", TEXTS),
        "ddi-small": make_tiny_task_checkpoint(root / "re-ddi-small", TEXTS, **small),
        "kd-dti": make_tiny_task_checkpoint(root / "re-dti", TEXTS, task="re-dti", learned_prompt=4),
        "bc5cdr": make_tiny_task_checkpoint(root / "re-bc5cdr", TEXTS, task="re-bc5cdr", learned_prompt=2),
        "lm": make_tiny_checkpoint(root / "biogpt-base", TEXTS),
        "ner": make_tiny_checkpoint(root / "ner", TEXTS, model_cls=BioGptForTokenClassification),
    }


# --- the tiny task checkpoint -----------------------------------------------------------------------


@pytest.mark.parametrize("key,task,n", [("ddi", "ddi", 9), ("kd-dti", "kd-dti", 4), ("bc5cdr", "bc5cdr", 2)])
def test_tiny_task_checkpoint_is_a_converted_prompt_checkpoint(ckpts, key, task, n):
    path = ckpts[key]
    settings = load_task_settings(path, task)
    tok = BioGptTokenizer.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    v0 = tok.vocab_size
    # learned1..N right after the vocabulary, counted in vocab_size, as the converter writes them
    assert settings.prompt_token_ids == tuple(range(v0, v0 + n))
    assert tok.convert_tokens_to_ids([f"learned{i}" for i in range(1, n + 1)]) == list(range(v0, v0 + n))
    assert json.loads((path / "added_tokens.json").read_text()) == {f"learned{i}": v0 + i - 1 for i in range(1, n + 1)}
    assert config["vocab_size"] == len(tok) == v0 + n
    assert settings.truncation_marker_id == tok.convert_tokens_to_ids("...</w>") != tok.unk_token_id
    assert (settings.max_source_positions, settings.max_target_positions) == (160, 256)
    assert settings.lowercase_source and settings.task == task
    model = BioGptForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok)
    assert RelationTask.check_model(RelationOptions(model=path, task=task)) == settings


def test_tiny_task_checkpoint_rejects_impossible_lengths(tmp_path):
    with pytest.raises(ValueError, match="max_source_positions must be in"):
        make_tiny_task_checkpoint(tmp_path / "x", TEXTS, max_position_embeddings=32, max_source_positions=40)
    with pytest.raises(ValueError, match="unknown task"):
        make_tiny_task_checkpoint(tmp_path / "y", TEXTS, task="re-foo")


# --- check_model -----------------------------------------------------------------------------------


def test_check_model_refuses_the_wrong_checkpoints(ckpts, tmp_path):
    with pytest.raises(RelationModelError) as err:
        RelationTask.check_model(RelationOptions(model=ckpts["lm"], task="ddi"))
    message = str(err.value)
    assert str(ckpts["lm"]) in message and "not a fine-tuned ddi checkpoint" in message
    assert "biomine convert fairseq" in message
    assert isinstance(err.value, base.WrongModelError) and isinstance(err.value, TaskSettingsError)

    with pytest.raises(
        RelationModelError, match=r"is a bc5cdr checkpoint, not ddi: ask for task bc5cdr, or give a ddi model$"
    ):
        RelationTask.check_model(RelationOptions(model=ckpts["bc5cdr"], task="ddi"))
    with pytest.raises(RelationModelError, match="BioGptForTokenClassification"):
        RelationTask.check_model(RelationOptions(model=ckpts["ner"], task="ddi"))
    with pytest.raises(RelationModelError, match="no config.json"):
        RelationTask.check_model(RelationOptions(model=tmp_path / "missing", task="ddi"))
    with pytest.raises(RelationModelError, match="unknown task 'hoc'"):
        RelationTask.check_model(RelationOptions(model=ckpts["ddi"], task="hoc"))
    # the checkpoint's own task when none is asked for; the constructor refuses before loading weights
    assert RelationTask.check_model(RelationOptions(model=ckpts["kd-dti"])).task == "kd-dti"
    with pytest.raises(RelationModelError, match="not ddi"):
        RelationTask(RelationOptions(model=str(ckpts["kd-dti"]), task="ddi", device="cpu"))
    # a checkpoint of another task family (base.prompt_settings' one check for re, qa and classify),
    # and one that is no task checkpoint, when no task is asked for: both say what to give instead
    qa = make_tiny_task_checkpoint(tmp_path / "qa", TEXTS, task="qa-pubmedqa", max_position_embeddings=32)
    with pytest.raises(RelationModelError) as err:
        RelationTask.check_model(RelationOptions(model=qa))
    assert f"re: {qa} is a pubmedqa checkpoint, not a relation-extraction one; relation extraction needs " in str(
        err.value
    )
    assert err.value.settings == ("model",)  # the fix is the model setting: `[tasks.re] model`
    with pytest.raises(RelationModelError, match="not a fine-tuned task checkpoint.*; relation extraction needs"):
        RelationTask.check_model(RelationOptions(model=ckpts["lm"]))


# --- prepare ---------------------------------------------------------------------------------------


def test_prepare_builds_the_fine_tuning_input(ckpts):
    path = ckpts["ddi-small"]
    settings = load_task_settings(path, "ddi")
    tok = BioGptTokenizer.from_pretrained(path)
    prompt = list(settings.prompt_token_ids)
    batch = batch_of([TITLES[0], "Long", "No abstract", None], [ABSTRACTS[0], LONG, None, "   "])
    out = RelationTask.prepare(batch, RelationOptions(model=str(path), task="ddi"))
    ids = out["_input_ids"].to_pylist()

    # DDI: [2] + the lower-cased abstract's ids + learned1..N
    source = tok.encode(ABSTRACTS[0].strip().lower(), add_special_tokens=False)
    assert len(source) <= settings.max_source_positions
    assert ids[0] == [2] + source + prompt
    assert ids[0] == prompt_input_ids(build_source("ddi", {"abstract": ABSTRACTS[0]}), tok, settings)
    # a long source keeps S-1 ids, then the "..." marker, then the prompt
    long_source = tok.encode(LONG.lower(), add_special_tokens=False)
    S = settings.max_source_positions
    assert len(long_source) > S
    assert ids[1] == [2] + long_source[: S - 1] + [settings.truncation_marker_id] + prompt
    assert out["_truncated"].to_pylist() == [False, True, None, None]  # the cut source says so
    # no abstract: no prompt, a reason instead (the task turns it into an 'unparsed' row)
    assert ids[2] is None and ids[3] is None
    skips = out["_skip"].to_pylist()
    assert skips[:2] == ["", ""] and "no abstract" in skips[2] and "no abstract" in skips[3]
    assert out["_text"].to_pylist() == [f"{TITLES[0]} {ABSTRACTS[0]}", f"Long {LONG}", "No abstract ", "    "]
    assert out["pmid"].to_pylist() == [1, 2, 3, 4]  # the batch's own columns are kept


def test_prepare_kd_dti_joins_title_and_abstract(ckpts):
    path = ckpts["kd-dti"]
    settings = load_task_settings(path, "kd-dti")
    tok = BioGptTokenizer.from_pretrained(path)
    batch = batch_of([TITLES[0], TITLES[1], None, None], [ABSTRACTS[0], ABSTRACTS[1], ABSTRACTS[0], None])
    ids = RelationTask.prepare(batch, RelationOptions(model=str(path), task="kd-dti"))["_input_ids"].to_pylist()
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    prompt = list(settings.prompt_token_ids)
    # the title ends in "." (a non-word character): joined by " "; otherwise by ". "
    assert ids[0] == [2] + enc((TITLES[0] + " " + ABSTRACTS[0]).lower()) + prompt
    assert ids[1] == [2] + enc((TITLES[1] + ". " + ABSTRACTS[1]).lower()) + prompt
    assert ids[2] == [2] + enc((". " + ABSTRACTS[0]).lower()) + prompt  # no title: the original's ". " joiner
    assert ids[3] is None  # neither title nor abstract


# --- the task on random weights --------------------------------------------------------------------


def test_random_model_rows_fit_the_schema_and_keep_unparsed_output(ckpts):
    path = ckpts["ddi-small"]
    task = RelationTask(RelationOptions(model=str(path), task="ddi", batch_size=2, max_new_tokens=12, device="cpu"))
    titles = [TITLES[0], TITLES[1], "Nothing", "Long"]
    abstracts = [ABSTRACTS[0], ABSTRACTS[1], None, LONG]
    batch = batch_of(titles, abstracts, pmids=[11, 12, 13, 14], versions=[1, 2, 1, 1])
    prepared = RelationTask.prepare(batch, RelationOptions(model=str(path), task="ddi"))
    per_doc = task(prepared)
    assert len(per_doc) == 4 and all(per_doc)  # every document yields rows, in batch order
    new_ids = task.generate_ids([p for p in prepared["_input_ids"].to_pylist() if p is not None])
    for i, rows in enumerate(per_doc):
        assert {r["pmid"] for r in rows} == {batch["pmid"][i]} and {r["version"] for r in rows} == {batch["version"][i]}
        assert all(r["task"] == "ddi" and r["model_id"] == "re-ddi-small" for r in rows)
    generated = [per_doc[i] for i in (0, 1, 3)]
    for rows, ids in zip(generated, new_ids):
        raw = task.tokenizer.decode([t for t in ids if t != 2])
        for r in rows:
            assert r["raw_generation"] == raw  # the generation itself, without the prompt tokens
            assert r["decoding"] == base.decoding_record(strategy="greedy", num_beams=1, max_new_tokens=12)
            if r["parse_status"] == "unparsed":
                assert r["reason"] and r.get("head") is None
    (skipped,) = per_doc[2]
    assert skipped["parse_status"] == "unparsed" and "no abstract" in skipped["reason"]
    assert skipped["raw_generation"] == "" and skipped["decoding"] is None
    # rows of a cut source carry the flag; rows without a model input carry none
    assert {r["input_truncated"] for r in per_doc[3]} == {True} and skipped["input_truncated"] is None
    assert {r["input_truncated"] for rows in per_doc[:2] for r in rows} == {False}
    for rows in generated:  # random weights do not speak the grammar: kept as unparsed rows
        assert any(r["parse_status"] == "unparsed" for r in rows)
    flat = [r for rows in per_doc for r in rows]
    table = cast_batch(flat)
    assert table.num_rows == len(flat)
    # the stage sorts by (pmid,) + sort_keys: a stable sort that keeps the task's row order
    key = ("pmid",) + RelationTask.sort_keys
    assert sorted(flat, key=lambda r: tuple(r.get(k) if r.get(k) is not None else -1 for k in key)) == flat
    # __call__ takes only prepared batches (one data path): a raw batch is refused, naming prepare
    with pytest.raises(TypeError, match=r"takes a prepared batch \(the table RelationTask.prepare returns\)"):
        task(batch)


def test_greedy_ids_equal_generate_and_budgets_never_overflow(ckpts):
    path = ckpts["ddi-small"]  # 64 positions, S = 20, 9 prompt tokens
    abstracts = ABSTRACTS + [LONG, "Aspirin.", ABSTRACTS[1].upper()]
    task = RelationTask(RelationOptions(model=str(path), task="ddi", batch_size=2, max_new_tokens=256, device="cpu"))
    prompts = RelationTask.prepare(batch_of(["t"] * 5, abstracts), task.options)["_input_ids"].to_pylist()
    got = task.generate_ids(prompts)
    positions = task.decoder.model.config.max_position_embeddings
    for prompt, ids in zip(prompts, got):
        budget = min(256, positions - len(prompt))
        assert 1 <= len(ids) <= budget
        assert len(ids) == budget or ids[-1] == 2
        ref = generate(
            task.decoder.model,
            torch.tensor([prompt]),
            max_new_tokens=budget,
            suppress_tokens=[1],
            eos_token_id=2,
            pad_token_id=1,
        )
        assert ids == ref[0, len(prompt) :].tolist()
        assert 1 not in ids  # <pad> is never generated
    assert len({tuple(ids) for ids in got}) > 1  # the prompts really steer the generation


# --- a fine-tuned tiny model: the whole path --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = make_tiny_task_checkpoint(
        tmp_path_factory.mktemp("trained") / "re-ddi-trained",
        TEXTS,
        hidden_size=48,
        max_position_embeddings=96,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        seed=3,
    )
    records = {
        f"DDI-DrugBank.d{i}": {"abstract": a, "triples": [TRIPLE], "pmid": f"DDI-DrugBank.d{i}"}
        for i, a in enumerate(ABSTRACTS)
    }
    assert all(build_target("ddi", r) == TARGET for r in records.values())
    tok = BioGptTokenizer.from_pretrained(path)
    assert tok.unk_token_id not in tok.encode(TARGET, add_special_tokens=False)
    loss = fit_prompt_model(path, "ddi", list(records.values()), steps=400, stop_loss=0.02)
    assert loss < 0.1
    return path, records


def test_fine_tuned_model_relations_with_evidence(trained):
    path, _ = trained
    task = RelationTask(RelationOptions(model=str(path), task="ddi", batch_size=4, max_new_tokens=40, device="cpu"))
    per_doc = task(RelationTask.prepare(batch_of(TITLES, ABSTRACTS, pmids=[101, 102]), task.options))
    for title, abstract, pmid, rows in zip(TITLES, ABSTRACTS, [101, 102], per_doc):
        (row,) = rows
        text = f"{title} {abstract}"
        assert row["raw_generation"] == TARGET
        assert (row["parse_status"], row["head"], row["tail"], row["relation"]) == (
            "ok",
            "aspirin",
            "warfarin",
            "mechanism",
        )
        assert row["pmid"] == pmid and row["reason"] is None and row["head_id"] is None
        assert row["evidence_match"] == "both"
        assert text[row["evidence_start"] : row["evidence_end"]] == row["evidence_text"]
        assert "aspirin" in row["evidence_text"].lower() and "warfarin" in row["evidence_text"].lower()
    # the smallest sentence naming both drugs: the first article's title (offsets index title + " " +
    # abstract), the second article's last sentence
    assert per_doc[0][0]["evidence_text"] == TITLES[0] and per_doc[0][0]["evidence_start"] == 0
    assert per_doc[1][0]["evidence_text"] == "Coadministration of warfarin and aspirin raised the bleeding time."
    assert cast_batch([r for rows in per_doc for r in rows]).num_rows == 2


def test_evaluate_re_scores_the_fine_tuned_model_perfectly(trained, tmp_path):
    path, records = trained
    data = tmp_path / "test.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "preds" / "ddi.jsonl"
    report = evaluate_re("ddi", data, path, batch_size=2, max_new_tokens=40, device="cpu", predictions_out=out)
    assert report["headline"]["precision"] == report["headline"]["recall"] == report["headline"]["f1"] == 1.0
    assert report["scores"]["sample"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert report["documents"] == 2 and report["failed_generations"] == 0 and report["unparsed_pieces"] == 0
    assert report["scores"]["num_gold"] == report["scores"]["num_pred"] == 2
    assert json.loads(json.dumps(report)) == report  # JSON-serialisable
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [
        {"id": k, "generation": TARGET, "relations": [["aspirin", "warfarin", "mechanism"]]} for k in records
    ]
    text = format_re_report(report)
    assert "ontology-level triples" in text and "1.0000" in text and "failed generations" in text


def test_evaluate_re_defaults_are_the_original_protocol(trained, tmp_path):
    """To the position limit, float32, records without gold relations left out; the report says so."""
    path, records = trained
    data = tmp_path / "test.json"
    data.write_text(json.dumps({**records, "no-gold": {"abstract": ABSTRACTS[0], "triples": []}}))
    report = evaluate_re("ddi", data, path, batch_size=2, device="cpu")
    settings = RelationTask.check_model(RelationOptions(model=str(path), task="ddi"))
    positions = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    assert report["decoding"]["max_new_tokens"] == min(settings.max_target_positions, positions)
    assert report["protocol"] == {
        "name": "original",
        "records": "all",
        "max_new_tokens": "position limit",
        "dtype": "float32",
        "records_without_gold": "left out (1)",
    }
    assert report["documents"] == len(records) and report["headline"]["f1"] == 1.0
    assert "protocol: original (generation to the position limit, float32" in format_re_report(report)
    broader = evaluate_re("ddi", data, path, batch_size=2, device="cpu", include_empty=True, max_new_tokens=40)
    assert broader["documents"] == len(records) + 1 and broader["protocol"]["name"] == "custom"
    assert broader["protocol"]["records_without_gold"] == "scored"
    assert "the original protocol is the default" in format_re_report(broader)
    limited = evaluate_re("ddi", data, path, batch_size=2, device="cpu", limit=1, max_new_tokens=40)
    assert limited["protocol"]["records"] == "the first 1" and limited["protocol"]["name"] == "custom"
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        evaluate_re("ddi", data, path, max_new_tokens=0)


def test_evaluate_re_errors(ckpts, tmp_path):
    data = tmp_path / "test.json"
    data.write_text(json.dumps({"d1": {"abstract": ABSTRACTS[0], "triples": [TRIPLE]}}))
    with pytest.raises(RelationModelError, match="is a ddi checkpoint, not kd-dti: ask for task ddi, or give a kd-dti"):
        evaluate_re("kd-dti", data, ckpts["ddi"], device="cpu")
    with pytest.raises(ConfigError, match="limit"):
        evaluate_re("ddi", data, ckpts["ddi"], limit=0)
    with pytest.raises(ConfigError, match="unknown relation-extraction task"):
        evaluate_re("hoc", data, ckpts["ddi"])
    with pytest.raises(DataFormatError, match="does not exist"):
        evaluate_re("ddi", tmp_path / "nope.json", ckpts["ddi"])
    (tmp_path / "bad.json").write_text(json.dumps({"d1": {"title": "x"}}))
    with pytest.raises(BioMineError, match="lacks 'abstract'"):
        evaluate_re("ddi", tmp_path / "bad.json", ckpts["ddi"])


def test_evaluate_re_smoke_on_the_ddi_test_set(tmp_path):
    data = shared_path("data", "ddi", "test.json")
    gold = json.loads(data.read_text())
    first = dict(list(gold.items())[:3])
    texts = [r["abstract"].lower() for r in first.values()] + [TARGET]
    path = make_tiny_task_checkpoint(tmp_path / "re-ddi-tiny", texts)
    out = tmp_path / "preds.jsonl"
    report = evaluate_re("ddi", data, path, batch_size=2, max_new_tokens=8, device="cpu", limit=3, predictions_out=out)
    scores = report["scores"]
    assert report["documents"] == scores["num_samples"] == 3
    assert scores["num_missing"] == 0 and scores["gold_without_prediction"] == 0
    assert scores["num_gold"] == hard_match([(k, []) for k in first], first).num_gold > 0
    assert [d["doc_id"] for d in scores["per_doc"]] == list(first)
    assert set(report["headline"]) == {"metric", "precision", "recall", "f1"}
    assert 0.0 <= report["headline"]["f1"] <= 1.0
    assert 0 < report["generated_tokens"] <= 3 * 8
    assert report["decoding"]["strategy"] == "greedy" and report["decoding"]["max_new_tokens"] == 8
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == list(first)
    assert report["failed_generations"] == sum(not line["relations"] for line in lines)
    assert scores["num_pred"] == len({tuple(r) for line in lines for r in line["relations"]})
    # real abstracts are far longer than this tiny model's 160 source positions
    settings = load_task_settings(path, "ddi")
    tok = BioGptTokenizer.from_pretrained(path)
    assert report["truncated_sources"] == sum(
        len(tok.encode(build_source("ddi", r), add_special_tokens=False)) > settings.max_source_positions
        for r in first.values()
    )
    assert json.loads(json.dumps(report)) == report
    assert "gold triples" in format_re_report(report)


@pytest.mark.gpu
def test_cuda_graph_decoding_equals_generate_on_gpu(ckpts):
    path = ckpts["ddi-small"]
    abstracts = ABSTRACTS + [LONG, "Aspirin."]
    task = RelationTask(
        RelationOptions(model=str(path), task="ddi", batch_size=2, max_new_tokens=32, device="cuda", dtype="float32")
    )
    assert task.decoder.engine.cuda_graph and task.decoder.model.device.type == "cuda"
    prompts = RelationTask.prepare(batch_of(["t"] * 4, abstracts), task.options)["_input_ids"].to_pylist()
    for prompt, ids in zip(prompts, task.generate_ids(prompts)):
        budget = min(32, task.decoder.model.config.max_position_embeddings - len(prompt))
        ref = generate(
            task.decoder.model,
            torch.tensor([prompt], device="cuda"),
            max_new_tokens=budget,
            suppress_tokens=[1],
            eos_token_id=2,
            pad_token_id=1,
        )
        assert ids == ref[0, len(prompt) :].tolist()
    # the default dtype on CUDA (bfloat16) runs end to end and its rows fit the schema
    bf16 = RelationTask(RelationOptions(model=str(path), task="ddi", batch_size=2, max_new_tokens=16, device="cuda"))
    assert bf16.decoder.model.dtype == torch.bfloat16
    per_doc = bf16(batch_of(["t"] * 4, abstracts))
    assert all(per_doc) and cast_batch([r for rows in per_doc for r in rows]).num_rows >= 4
