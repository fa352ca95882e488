"""The NER task end to end on tiny models: training overfits a few abstracts to F1 = 1.0, windows over
long documents, the task contract as the Ray stage uses it, model checks and the ``train ner`` CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from biogpt.errors import BioMineError
from biogpt.tiny import make_tiny_checkpoint
from pipeline.errors import DataFormatError, NerTrainingError, WrongModelError
from pipeline.evaluation.ner import evaluate_ner, format_ner_report
from pipeline.tasks.base import article_text
from pipeline.tasks.ner import NerTask, document_spans
from pipeline.tasks.ner_spans import Span, encode_spans, label_list
from pipeline.tasks.options import NerOptions
from pipeline.tasks.pubtator import read_pubtator
from pipeline.training.ner import NerTrainingSettings, train_ner
from schemas.entities import cast_batch
from tests.conftest import shared_path

# Abstracts with [mention|Type] markup. They exercise: a non-ASCII character (β), an apostrophe and an
# ampersand (Moses escapes them, so some BPE pieces have empty character spans), a dash split
# ("Lithium-induced", "β-carotene") and a mention that ends the text.
DOCS = [
    (
        "101",
        "[Lithium|Chemical]-induced [nephrogenic diabetes insipidus|Disease] in a patient with "
        "[bipolar disorder|Disease].",
        "We report a woman treated with [lithium carbonate|Chemical] who developed [polyuria|Disease]. "
        "[Amiloride|Chemical] reduced the [polyuria|Disease] within two weeks.",
    ),
    (
        "102",
        "[Haloperidol|Chemical] and [tardive dyskinesia|Disease].",
        "Long-term [haloperidol|Chemical] therapy was associated with [tardive dyskinesia|Disease] and "
        "[Parkinson's disease|Disease]-like symptoms in elderly patients. Withdrawal of the drug improved the movements.",
    ),
    (
        "103",
        "[β-carotene|Chemical] does not prevent [lung cancer|Disease].",
        "Smokers given [β-carotene|Chemical] and [retinol|Chemical] had more [lung cancer|Disease] than controls "
        "given placebo. The excess risk was attributed to [cardiovascular disease|Disease]",
    ),
    (
        "104",
        "[Cocaine|Chemical] use and [myocardial infarction|Disease] in young adults.",
        "[Cocaine|Chemical] use was reported by 5 % of patients with [myocardial infarction|Disease]. "
        "[Aspirin|Chemical] & [heparin|Chemical] were given to all; none had a [stroke|Disease].",
    ),
]
MARK = re.compile(r"\[([^\]|]+)\|(\w+)\]")
N_MENTIONS = sum(len(MARK.findall(t + a)) for _, t, a in DOCS)


def _unmark(marked: str, base: int) -> tuple[str, list[tuple[int, int, str, str]]]:
    out: list[str] = []
    mentions, pos = [], 0
    for m in MARK.finditer(marked):
        out.append(marked[pos : m.start()])
        start = base + len("".join(out))
        out.append(m.group(1))
        mentions.append((start, start + len(m.group(1)), m.group(1), m.group(2)))
        pos = m.end()
    out.append(marked[pos:])
    return "".join(out), mentions


def write_pubtator(path: Path, docs=DOCS) -> list[str]:
    """Write ``docs`` as PubTator (offsets into title + " " + abstract); returns the article texts."""
    lines, texts = [], []
    for pmid, marked_title, marked_abstract in docs:
        title, in_title = _unmark(marked_title, 0)
        abstract, in_abstract = _unmark(marked_abstract, len(title) + 1)
        lines += [f"{pmid}|t|{title}", f"{pmid}|a|{abstract}"]
        lines += [
            f"{pmid}\t{s}\t{e}\t{text}\t{kind}\tD000{k}" for k, (s, e, text, kind) in enumerate(in_title + in_abstract)
        ]
        lines.append("")
        texts.append(f"{title} {abstract}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return texts


def batch_of(docs, **extra):
    """A batch as Ray Data hands it to the stages: numpy columns, None for a missing abstract."""
    return {
        "pmid": np.array([int(d.pmid) for d in docs], dtype=np.int64),
        "version": np.array([1] * len(docs), dtype=np.int32),
        "title": np.array([d.title for d in docs], dtype=object),
        "abstract": np.array([d.abstract for d in docs], dtype=object),
        **extra,
    }


def run_task(task: NerTask, docs, model_dir, **options):
    return task(NerTask.prepare(batch_of(docs), NerOptions(model=str(model_dir), **options)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and spinning OpenMP threads on a busy 2-core
    machine made this file 5-10x slower; the previous setting is restored for the other test files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A tiny BIO model trained to overfit DOCS (max 256 positions: no document needs windows)."""
    root = tmp_path_factory.mktemp("ner")
    data = root / "train.pubtator"
    texts = write_pubtator(data)
    base = make_tiny_checkpoint(root / "base", texts)
    summary = train_ner(
        NerTrainingSettings(data, base, root / "model", epochs=100, lr=1e-2, batch_size=4, progress=False)
    )
    return {"root": root, "data": data, "base": base, "model": root / "model", "summary": summary, "texts": texts}


def test_training_overfits_to_f1_1(trained):
    s = trained["summary"]
    assert s["documents"] == 4 and s["mentions"] == N_MENTIONS and s["types"] == ["Chemical", "Disease"]
    assert s["windows"] == 4 and s["unaligned_spans"] == 0 and s["conflicting_spans"] == 0
    assert s["final_loss"] < 0.05

    report = evaluate_ner(trained["model"], trained["data"])
    assert report["documents"] == 4 and report["gold_mentions"] == N_MENTIONS
    assert report["micro"]["f1"] == 1.0 and report["micro"]["tp"] == N_MENTIONS
    assert report["micro"]["fp"] == 0 and report["micro"]["fn"] == 0
    assert set(report["per_type"]) == {"Chemical", "Disease"}
    assert all(t["f1"] == 1.0 for t in report["per_type"].values())
    json.dumps(report)  # what `biomine eval ner --json` writes
    table = format_ner_report(report)
    assert "micro" in table and "1.0000" in table and "Chemical" in table and "4 documents" in table


def test_saved_model_directory(trained):
    model = trained["model"]
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["BioGptForTokenClassification"]
    assert config["id2label"] == {"0": "O", "1": "B-Chemical", "2": "I-Chemical", "3": "B-Disease", "4": "I-Disease"}
    files = {p.name for p in model.iterdir()}
    assert {"vocab.json", "merges.txt", "model.safetensors", "tokenizer_config.json"} <= files
    record = json.loads((model / "biomine_ner.json").read_text())
    assert record["scheme"] == "BIO" and record["types"] == ["Chemical", "Disease"] and record["epochs"] == 100
    assert record["base"] == str(trained["base"]) and record["data"] == str(trained["data"])
    assert record["final_loss"] == trained["summary"]["final_loss"]
    assert record["unaligned_spans"] == 0 and record["conflicting_spans"] == 0
    NerTask.check_model(NerOptions(model=model))  # accepted


def test_transformers_loads_the_trained_model(trained):
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    import torch

    from biogpt.model import BioGptForTokenClassification

    ref = transformers.BioGptForTokenClassification.from_pretrained(str(trained["model"])).eval()
    assert ref.config.id2label[1] == "B-Chemical"
    ours = BioGptForTokenClassification.from_pretrained(trained["model"])
    ids = torch.tensor([[2, 10, 11, 12, 40, 41]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_rows_index_article_text_and_do_not_depend_on_the_batch(trained):
    docs = read_pubtator(trained["data"])
    task = NerTask(NerOptions(model=str(trained["model"]), batch_size=3))
    together = run_task(task, docs, trained["model"])
    alone = [run_task(task, [d], trained["model"])[0] for d in docs]
    assert len(together) == 4
    for doc, rows, rows_alone in zip(docs, together, alone):
        text = article_text(doc.title, doc.abstract)
        assert rows and all(r["text"] == text[r["start"] : r["end"]] for r in rows)
        assert {(r["start"], r["end"], r["label"]) for r in rows} == {(m.start, m.end, m.type) for m in doc.mentions}

        def keys(rs):
            return [(r["start"], r["end"], r["label"]) for r in rs]

        assert keys(rows) == keys(rows_alone)
        assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in rows_alone], abs=1e-5)
        assert all(0.0 < r["score"] <= 1.0 and r["model_id"] == "model" and r["pmid"] == int(doc.pmid) for r in rows)
    # "Parkinson's disease": its apostrophe is the Moses escape &apos;, BPE'd into pieces of which all but
    # the first cover no character; the mention must still come out whole.
    assert any(r["text"] == "Parkinson's disease" for r in together[1])
    # Rows pass the schema's checked cast, as the stage applies it before writing (via JSON, as Ray carries them).
    table = cast_batch(json.loads(json.dumps([r for rows in together for r in rows])))
    assert table.num_rows == N_MENTIONS and table.column("pmid").to_pylist()[0] == 101


def test_mentions_link_through_the_tasks_vocabulary(trained, tmp_path):
    from pipeline.tasks.vocabulary import dictionary_table

    # A dictionary in the concepts schema: three chemicals and a disease, MeSH ids.
    entries = [
        ("Lithium", "D008094", "Chemical"),
        ("Lithium Carbonate", "D016651", "Chemical"),
        ("Haloperidol", "D006220", "Chemical"),
        ("Tardive Dyskinesia", "D000071057", "Disease"),
        ("Polyuria", "D011141", "Disease"),
    ]
    from pipeline.tasks.linking import normalise

    rows = [
        {
            "key": normalise(n),
            "name": n,
            "concept_id": i,
            "concept_name": n,
            "vocabulary": "MeSH",
            "type": t,
            "preferred": True,
        }
        for n, i, t in entries
    ]
    vocab = tmp_path / "concepts.parquet"
    import pyarrow.parquet as pq

    pq.write_table(dictionary_table([rows]), vocab)
    docs = read_pubtator(trained["data"])
    task = NerTask(NerOptions(model=str(trained["model"]), vocabulary=str(vocab)))
    out = run_task(task, docs, trained["model"], vocabulary=str(vocab))
    by_text = {r["text"]: r for rows_ in out for r in rows_}
    assert by_text["Lithium"]["concept_id"] == "D008094" and by_text["Lithium"]["link_rule"] == "exact"
    assert by_text["lithium carbonate"]["concept_id"] == "D016651"
    assert by_text["haloperidol"]["concept_id"] == "D006220" and by_text["haloperidol"]["matched_by"] == "Haloperidol"
    assert by_text["polyuria"]["concept_id"] == "D011141" and by_text["polyuria"]["link_rule"] == "exact"
    assert by_text["Amiloride"]["concept_id"] is None and by_text["Amiloride"]["link_rule"] is None  # no guess
    assert cast_batch([r for rows_ in out for r in rows_]).column("concept_id").null_count > 0
    # without a vocabulary, no linking columns are set
    plain = run_task(NerTask(NerOptions(model=str(trained["model"]))), docs[:1], trained["model"])
    assert all("concept_id" not in r for r in plain[0])


def test_prepare_keeps_columns_and_handles_missing_text(trained):
    docs = read_pubtator(trained["data"])[:1]
    docs[0].abstract = None
    batch = batch_of(docs, _shard=np.array(["part-000000"], dtype=object))
    prepared = NerTask.prepare(batch, NerOptions(model=str(trained["model"])))
    assert prepared["_shard"].to_pylist() == ["part-000000"] and prepared["pmid"].to_pylist() == [101]
    assert prepared["_text"][0].as_py() == docs[0].title + " "
    inputs = {k: prepared[f"_{k}"][0].as_py() for k in ("ids", "offsets", "windows")}  # the declared columns
    assert len(inputs["ids"]) == len(inputs["offsets"]) and [list(w) for w in inputs["windows"]] == [
        [0, len(inputs["ids"])]
    ]
    empty = NerTask.prepare(
        batch_of(docs, title=np.array([None], dtype=object)), NerOptions(model=str(trained["model"]))
    )
    assert list(empty["_windows"][0].as_py()) == []
    task = NerTask(NerOptions(model=str(trained["model"])))
    assert task(empty) == [[]]
    rows = task(prepared)[0]
    assert rows and all(r["end"] <= len(docs[0].title) for r in rows)


def test_windows_over_long_documents(tmp_path):
    """32 positions: every document needs several windows, in training and at inference (BIOES here)."""
    data = tmp_path / "train.pubtator"
    texts = write_pubtator(data)
    base = make_tiny_checkpoint(tmp_path / "base", texts, max_position_embeddings=32)
    summary = train_ner(
        NerTrainingSettings(
            data, base, tmp_path / "model", scheme="BIOES", epochs=100, lr=1e-2, batch_size=8, progress=False
        )
    )
    assert summary["window"] == 31 and summary["windows"] > 2 * len(DOCS)
    report = evaluate_ner(tmp_path / "model", data)
    assert report["scheme"] == "BIOES" and report["micro"]["f1"] == 1.0

    # One document far longer than the positions: all abstracts in a row.
    docs = read_pubtator(data)
    long_doc = docs[0]
    long_doc.abstract = " ".join(f"{d.title} {d.abstract}" for d in docs)
    prepared = NerTask.prepare(batch_of([long_doc]), NerOptions(model=str(tmp_path / "model"), stride=10))
    windows = [list(w) for w in prepared["_windows"][0].as_py()]
    assert len(windows) > 10 and all(e - s <= 31 for s, e in windows) and windows[-1][1] > 100
    task = NerTask(NerOptions(model=str(tmp_path / "model")))
    rows = task(prepared)[0]
    text = article_text(long_doc.title, long_doc.abstract)
    assert len(rows) >= N_MENTIONS // 2
    assert all(r["text"] == text[r["start"] : r["end"]] and 0 <= r["start"] < r["end"] <= len(text) for r in rows)
    assert max(r["end"] for r in rows) > len(text) // 2  # entities found beyond the first windows
    assert cast_batch(rows).num_rows == len(rows)
    with pytest.raises(BioMineError, match="stride=40 must be between 1 and the window of 31"):
        NerTask.prepare(batch_of([long_doc]), NerOptions(model=str(tmp_path / "model"), stride=40))


def test_check_model_refuses_other_checkpoints(trained, tmp_path):
    with pytest.raises(WrongModelError, match=r"is a BioGptForCausalLM checkpoint.*biomine train ner") as err:
        NerTask.check_model(NerOptions(model=trained["base"]))
    assert str(trained["base"]) in str(err.value)
    with pytest.raises(WrongModelError, match="BioGptForCausalLM"):
        NerTask(NerOptions(model=str(trained["base"])))  # never runs a random head

    bad = tmp_path / "bad-labels"
    shutil.copytree(trained["model"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["id2label"] = {"0": "O", "1": "B-Chemical", "2": "B-Disease", "3": "I-Disease", "4": "X"}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(WrongModelError, match=r"bad-labels/config.json id2label is not a tagging scheme.*'X'"):
        NerTask.check_model(NerOptions(model=bad))
    config["id2label"] = {"0": "O", "1": "B-Chemical", "2": "B-Disease", "3": "I-Disease", "4": "E-Disease"}
    (bad / "config.json").write_text(json.dumps(config))
    missing = r"not a complete BIOES scheme: missing E-Chemical, I-Chemical, S-Chemical, S-Disease"
    with pytest.raises(WrongModelError, match=missing):
        NerTask.check_model(NerOptions(model=bad))
    with pytest.raises(WrongModelError, match="no config.json in"):
        NerTask.check_model(NerOptions(model=tmp_path / "nowhere"))

    # A token classifier saved without labels gets transformers' LABEL_0, LABEL_1: not a scheme either.
    from biogpt.model import BioGptForTokenClassification

    unlabelled = make_tiny_checkpoint(tmp_path / "unlabelled", trained["texts"], model_cls=BioGptForTokenClassification)
    with pytest.raises(WrongModelError, match=r"unlabelled/config.json id2label is not a tagging scheme.*'LABEL_0'"):
        NerTask.check_model(NerOptions(model=unlabelled))


def test_training_refuses_bad_input(trained, tmp_path):
    base, data = trained["base"], trained["data"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="empty.txt holds no PubTator documents"):
        train_ner(NerTrainingSettings(empty, base, tmp_path / "m1", progress=False))
    bare = tmp_path / "bare.txt"
    bare.write_text("1|t|Aspirin.\n1|a|No mentions here.\n")
    with pytest.raises(DataFormatError, match="bare.txt has 1 documents but no mention lines"):
        train_ner(NerTrainingSettings(bare, base, tmp_path / "m2", progress=False))
    with pytest.raises(DataFormatError, match="missing.txt does not exist"):
        train_ner(NerTrainingSettings(tmp_path / "missing.txt", base, tmp_path / "m3", progress=False))
    with pytest.raises(NerTrainingError, match="has no config.json"):
        train_ner(NerTrainingSettings(data, tmp_path, tmp_path / "m4", progress=False))
    with pytest.raises(NerTrainingError, match="model is not empty.*--force"):
        train_ner(NerTrainingSettings(data, base, trained["model"], progress=False))
    with pytest.raises(DataFormatError, match=r"no mentions of the types \['Gene'\]"):
        train_ner(NerTrainingSettings(data, base, tmp_path / "m5", types=["Gene"], progress=False))
    with pytest.raises(NerTrainingError, match="already an NER model with labels"):
        train_ner(NerTrainingSettings(data, trained["model"], tmp_path / "m6", types=["Chemical"], progress=False))
    assert not any((tmp_path / f"m{i}").exists() for i in range(1, 7))  # nothing written on refusal


def test_cli_train_ner(trained, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "cli-model"
    argv = [
        "train",
        "ner",
        "--data",
        str(trained["data"]),
        "--base",
        str(trained["base"]),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--types",
        "Chemical",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"trained {out}: 4 documents, 12 mentions of Chemical (BIO), 2 epochs" in printed
    assert "biomine eval ner --data FILE --model" in printed
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "O", "1": "B-Chemical", "2": "I-Chemical"}

    assert main(argv) == 2  # out is not empty now
    assert "not empty" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    capsys.readouterr()

    bad = [
        "train",
        "ner",
        "--data",
        str(tmp_path / "nope.pubtator"),
        "--base",
        str(trained["base"]),
        "--out",
        str(tmp_path / "other"),
    ]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("biomine: error: ") and "nope.pubtator does not exist" in err


def test_gold_tags_decode_back_through_the_task_path_on_bc5cdr():
    """Tags built from BC5CDR gold spans, read back the way NerTask reads predictions, give the gold spans
    (all but those the encoder reports as off token boundaries or overlapping)."""
    path = shared_path("data", "bc5cdr", "CDR_DevelopmentSet.PubTator.txt")
    vocab = shared_path("data", "biogpt-vocab", "base")
    from biogpt.tokenizer import BioGptTokenizer

    tok = BioGptTokenizer.from_pretrained(vocab)
    docs = read_pubtator(path)[:2]
    labels = label_list(["Chemical", "Disease"])
    for doc in docs:
        enc_text = tok(doc.text, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc_text["offset_mapping"][1:]]
        gold = [Span(m.start, m.end, m.type, m.text) for m in doc.mentions]
        enc = encode_spans(offsets, gold, labels)
        decoded = document_spans(enc.tags, None, offsets, labels, doc.text)
        bad = {(s.start, s.end) for s in enc.unaligned + enc.conflicts}
        expected = {(s.start, s.end, s.label) for s in gold if (s.start, s.end) not in bad}
        assert expected and expected <= {(s.start, s.end, s.label) for s in decoded}
        assert all(s.text == doc.text[s.start : s.end] for s in decoded)
