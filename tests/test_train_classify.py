"""``biomine train classify`` (pipeline/training/classify.py): the TSV layout and its line-numbered
errors, the checkpoint the ``classify`` task accepts and runs (multi-label sigmoid, id2label, the same
inputs at training and inference), and a tiny model trained on real HoC sentences that beats the
majority baseline on held-back sentences under HoC's micro-F1."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_path

from pipeline.cli import main

A, B, C = "inducing angiogenesis", "resisting cell death", "activating invasion and metastasis"
TOY = [
    ("Vascular growth factor drove new vessels in the tumour .", A),
    ("Apoptosis was blocked by the overexpressed survival protein .", B),
    ("Tumour cells invaded the stroma and formed liver metastases .", C),
    ("New vessels and blocked apoptosis were both seen .", f"{A}|{B}"),
    ("Patients were enrolled between 2001 and 2005 .", "empty"),
    ("The cohort was followed for ten years .", "empty"),
]


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
    yield
    torch.set_num_threads(threads)


def _tsv(path: Path, rows) -> Path:
    path.write_text("".join(f"{text}\t{labels}\n" for text, labels in rows))
    return path


def _classify(model: Path, texts: list[str], batch_size: int = 64) -> list[list[dict]]:
    """The ``classify`` task's rows for each text as the abstract of one document."""
    from pipeline.tasks.classify import ClassifyTask
    from pipeline.tasks.options import ClassifyOptions

    options = ClassifyOptions(model=str(model), batch_size=batch_size, dtype="float32")
    n = len(texts)
    docs = {"pmid": list(range(1, n + 1)), "version": [1] * n, "title": [None] * n, "abstract": texts}
    return ClassifyTask(options)(ClassifyTask.prepare(docs, options))


def test_a_trained_classifier_runs_in_the_classify_task(tmp_path, one_thread, capsys):
    import torch
    from transformers import BioGptForSequenceClassification as Oracle

    from biogpt.tiny import make_tiny_checkpoint
    from pipeline.tasks.classify import ClassifyTask
    from pipeline.tasks.options import ClassifyOptions

    base = make_tiny_checkpoint(tmp_path / "base", [t for t, _ in TOY], max_position_embeddings=16)
    data = _tsv(tmp_path / "train.tsv", TOY)
    out = tmp_path / "model"
    args = ["train", "classify", "--data", str(data), "--base", str(base), "--out", str(out)]
    assert main([*args, "--epochs", "3", "--lr", "1e-3", "--batch-size", "4", "--no-progress"]) == 0
    assert "trained" in capsys.readouterr().out

    # what the task reads (its check_model, what `run --check` calls): the labels but `empty`, sorted;
    # a sigmoid per label
    model = ClassifyTask.check_model(ClassifyOptions(model=str(out)))
    assert (model.kind, model.labels, model.multi_label) == ("sequence", (C, A, B), True)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BioGptForSequenceClassification"]
    summary = json.loads((out / "biomine_classify.json").read_text())
    assert summary["texts"] == 6 and summary["texts_without_label"] == 2
    assert summary["texts_per_label"] == {C: 1, A: 2, B: 2}
    assert summary["windows"] > 6  # max_position_embeddings=16: the long texts took several windows

    # the task's rows are transformers' sigmoid picks on each window (the same weights, same inputs)
    oracle = Oracle.from_pretrained(out).eval()
    assert oracle.config.problem_type == "multi_label_classification" and oracle.config.id2label[1] == A
    texts = [t for t, _ in TOY]
    got = _classify(out, texts, batch_size=3)
    prepared = ClassifyTask.prepare(
        {"pmid": [1] * 6, "version": [1] * 6, "title": [None] * 6, "abstract": texts},
        ClassifyOptions(model=str(out), dtype="float32"),
    )
    for i, rows in enumerate(got):
        best: dict[str, float] = {}
        for ids in prepared.column("_inputs")[i].as_py():
            with torch.no_grad():
                probs = torch.sigmoid(oracle(torch.tensor([ids])).logits[0]).tolist()
            for j, p in enumerate(probs):
                if p >= 0.5:
                    best[model.labels[j]] = max(p, best.get(model.labels[j], 0.0))
        assert {r["label"]: pytest.approx(r["score"], rel=1e-4) for r in rows} == best

    # continuing from a classifier of other labels is refused
    other = _tsv(tmp_path / "other.tsv", [("a b .", "x"), ("c d .", "y")])
    capsys.readouterr()  # transformers' loading bar above
    code = main(["train", "classify", "--data", str(other), "--base", str(out), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "already a classifier of the labels" in err


@pytest.mark.parametrize(
    "content, needle",
    [
        ("a text\tempty\nno tab here\n", "line 2: 0 TABs"),
        ("a text\tempty\n\nx\ty\tz\n", "line 3: 2 TABs"),
        ("\tempty\n", "line 1: no text before the TAB"),
        ("text\ta||b\n", "line 1: an empty label in `a||b`"),
        ("text\t\n", "line 1: an empty label"),
        ("text\tempty|a\n", "line 1: `empty` means no label"),
        ("one\ta\ttwo\n", "line 1: 2 TABs"),
        ("one\ta\ntwo\ta\n", "names 1 label(s) besides `empty` (a)"),
        ("\n\n", "holds no example"),
    ],
)
def test_bad_training_data_is_one_error_line_naming_the_line(tmp_path, capsys, content, needle):
    from biogpt.tiny import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base", ["a text of words ."], max_position_embeddings=16)
    data = tmp_path / "data.tsv"
    data.write_text(content)
    code = main(["train", "classify", "--data", str(data), "--base", str(base), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("biomine: error: ") and err.count("\n") == 1, err
    assert needle in err and str(data) in err
    assert not (tmp_path / "out").exists()


def test_train_classify_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["train", "classify", "--help"])
    text = capsys.readouterr().out
    assert "biomine train classify --data HoC/train.tsv --base" in text and "[tasks.classify]" in text


def test_classify_benchmark_quick_smoke_run(tmp_path):
    """benchmarks/bench_classify.py runs both sides on the same windows and they agree exactly."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    report = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_classify.py", "--quick", "--docs", "3", "--repeat", "1", "--json", report],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(report.read_text())
    assert [r["metric"] for r in rows] == ["sentences/s", "documents/s"]
    for row in rows:
        assert row["biogpt"] > 0 and row["transformers"] > 0 and row["max_abs_prob_diff"] < 1e-5
        assert row["sets_agree"][0] == row["sets_agree"][1] == row["windows"]


# --- real HoC sentences ---------------------------------------------------------------------------

#: Measured: the trained model's figure and the baseline's are printed (pytest -s).
TRAIN_LINES, HELD_LINES = 1200, 400


@pytest.mark.slow  # measured 36 s on a busy 2-core CPU (375 optimiser steps, model and BPE vocabulary)
def test_a_tiny_classifier_trained_on_hoc_beats_the_majority_baseline(tmp_path, one_thread, capsys):
    """Train on the first sentences of HoC's train.tsv, score the last ones (other abstracts) with
    HoC's micro-F1 (11 classes, ``empty`` included: a text the model gives no label is ``empty``)
    against always answering the training slice's most frequent label set."""
    from biogpt.tiny import make_tiny_checkpoint
    from pipeline.evaluation.hoc import micro_f1

    lines = shared_path("data", "hoc", "train.tsv").read_text(encoding="utf-8").splitlines()
    train, held = lines[:TRAIN_LINES], lines[-HELD_LINES:]
    started = time.perf_counter()
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(train) + "\n")
    texts = [line.split("\t")[0] for line in train]
    base = make_tiny_checkpoint(
        tmp_path / "base", texts, hidden_size=64, intermediate_size=128, max_position_embeddings=128
    )
    out = tmp_path / "model"
    args = ["train", "classify", "--data", str(data), "--base", str(base), "--out", str(out), "--no-progress"]
    assert main([*args, "--epochs", "5", "--lr", "3e-3", "--batch-size", "16"]) == 0

    gold = [line.split("\t")[1] for line in held]
    rows = _classify(out, [line.split("\t")[0] for line in held])
    predicted = ["|".join(r["label"] for r in doc) or "empty" for doc in rows]
    majority = Counter(line.split("\t")[1] for line in train).most_common(1)[0][0]
    model, baseline = micro_f1(predicted, gold), micro_f1([majority] * len(gold), gold)
    with capsys.disabled():
        print(
            f"\nHoC held-back micro-F1 ({len(train)} training, {len(held)} held-back sentences, "
            f"{time.perf_counter() - started:.1f} s): trained {model.f1:.4f} (P {model.precision:.4f} "
            f"R {model.recall:.4f}) vs majority `{majority}` {baseline.f1:.4f}"
        )
    assert model.f1 > baseline.f1
