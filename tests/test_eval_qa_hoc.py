"""`biomine eval qa|hoc`: PubMedQA accuracy and HoC micro-F1 as microsoft/BioGPT's examples score them.

Expected values come from the original scripts transcribed below (``orig_*``: examples/QA-PubMedQA and
examples/DC-HoC ``rebuild_data.py``, ``postprocess.py``, ``hard_match_evaluation.py``, with sklearn's
``accuracy_score``, ``MultiLabelBinarizer`` and micro ``f1_score`` written out) and from counts of what
was corrupted, never from the code under test. The data is the real PubMedQA and HoC files in
../shared/data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import DataFormatError, EvaluationError
from pipeline.evaluation.generated import evaluate_generated
from pipeline.evaluation.hoc import HOC_CLASSES, hoc_source, read_hoc
from pipeline.evaluation.qa import qa_source, read_pubmedqa

REPO = Path(__file__).resolve().parents[1]
K = 5  # corrupt every K-th record
LEARNED = {"pubmedqa": 9, "hoc": 1}  # prompt tokens of the released checkpoints


# --- the original scripts, transcribed ------------------------------------------------------------

ORIG_PREFIX = ["(learned[0-9]+ )+", "we can conclude that", "we have that", "in conclusion,"]
ORIG_SENTENCE = {
    "pubmedqa": r"the answer to the question given the context is(.*)",
    "hoc": r"the type of this document is(.*)",
}
ORIG_CLASSES = [
    "tumor promoting inflammation",
    "inducing angiogenesis",
    "evading growth suppressors",
    "resisting cell death",
    "cellular energetics",
    "empty",
    "genomic instability and mutation",
    "sustaining proliferative signaling",
    "avoiding immune destruction",
    "activating invasion and metastasis",
    "enabling replicative immortality",
]


def orig_build_target(task: str, label: str) -> str:
    if task == "pubmedqa":
        return "the answer to the question given the context is " + label + "."
    return "the type of this document is " + label + "."


def orig_postprocess(task: str, out_file: Path) -> tuple[Path, int]:
    """postprocess.py: the extracted file it writes and its fail count."""

    def strip_prefix(line):
        for p in ORIG_PREFIX:
            if re.search(p, line) is not None:
                line = re.split(p, line)[-1].strip()
                break
        return line

    all_lines = []
    with open(out_file, "r", encoding="utf8") as fr:
        for line in fr:
            e = line.strip()
            all_lines.append(e[:-1] if len(e) > 0 and e[-1] == "." else e)
    hypothesis, fail_cnt = [], 0
    for line in all_lines:
        segs = re.search(ORIG_SENTENCE[task], strip_prefix(line))
        if segs is not None:
            hypothesis.append(segs.groups()[0].strip())
        else:
            hypothesis.append("failed")
            fail_cnt += 1
    extracted = Path(f"{out_file}.extracted.txt")
    with open(extracted, "w", encoding="utf8") as fw:
        for eg in hypothesis:
            print(eg, file=fw)
    return extracted, fail_cnt


def orig_gold(gold_file: Path) -> list[str]:
    """hard_match_evaluation.py's golden list (TSV, or test_ground_truth.json for PubMedQA)."""
    if str(gold_file).endswith(".json"):
        return list(json.loads(gold_file.read_text()).values())
    golden = []
    with open(gold_file) as reader:
        for line in reader:
            line = line.strip()
            if line != "" and len(line) > 0:
                golden.append(line.strip().split("\t")[-1])
    return golden


def orig_score(task: str, pred_file: Path, gold_file: Path) -> float:
    """hard_match_evaluation.py of the task."""
    with open(pred_file) as reader:
        preds = [line.strip() for line in reader]
    golden = orig_gold(gold_file)
    assert len(preds) == len(golden)
    if task == "pubmedqa":  # accuracy_score
        return sum(g == p for g, p in zip(golden, preds)) / len(golden)

    def binarise(lines):  # MultiLabelBinarizer(classes=...).fit_transform: unknown labels ignored
        rows = []
        for line in lines:
            labels = [w.strip() for w in line.strip().split("|")]
            rows.append([int(c in labels) for c in ORIG_CLASSES])
        return rows

    tp = fp = fn = 0  # f1_score(average="micro")
    for g_row, p_row in zip(binarise(golden), binarise(preds)):
        for g, p in zip(g_row, p_row):
            tp += g and p
            fp += p and not g
            fn += g and not p
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def orig_pipeline(task: str, generations: Path, gold_file: Path) -> tuple[float, int]:
    extracted, failed = orig_postprocess(task, generations)
    return orig_score(task, extracted, gold_file), failed


# --- data --------------------------------------------------------------------------------------


def _gold_file(task: str) -> Path:
    from conftest import shared_path

    if task == "hoc":
        return shared_path("data", "hoc", "train.tsv")
    return shared_path("data", "pubmedqa", "train.tsv")


def _rows(path: Path) -> list[tuple[str, str]]:
    # Read as the scripts read (file iteration), not str.splitlines: PubMedQA's text holds characters
    # (U+2028 and the like) that splitlines would take for line ends.
    with open(path, encoding="utf-8") as reader:
        return [(s, label) for s, label in (line.strip().split("\t") for line in reader if line.strip())]


def _infer_line(task: str, source: str, label: str) -> str:
    """A line as infer.sh leaves it: the detokenised hypothesis, echoed source, prompt tokens,
    generation (HoC's `|` comes back spaced from Moses)."""
    learned = " ".join(f"learned{i}" for i in range(1, LEARNED[task] + 1))
    label = " | ".join(label.split("|")) if task == "hoc" else label
    return f"{source} {learned} {orig_build_target(task, label)}"


def _clean_lines(task: str, gold_file: Path) -> list[str]:
    return [_infer_line(task, source, label) for source, label in _rows(gold_file)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _score(task, gold_file, lines, tmp_path, name="gen.txt"):
    generations = _write(tmp_path / name, lines)
    report = evaluate_generated(task, gold_file, generations=generations)
    expected, failed = orig_pipeline(task, generations, gold_file)
    assert report["score"] == pytest.approx(expected, abs=1e-12)
    assert report["failed"] == failed
    assert report["total"] == len(lines)
    return report


# --- the real files ------------------------------------------------------------------------------


def test_real_files_are_read_as_the_original_reads_them():
    hoc = read_hoc(_gold_file("hoc"))
    assert len(hoc) == 9972 and sum(r.gold == "empty" for r in hoc) == 7019  # shared/README.md
    assert [r.gold for r in hoc] == orig_gold(_gold_file("hoc"))
    for name, count in (("train.tsv", 450), ("valid.tsv", 50)):
        path = _gold_file("pubmedqa").with_name(name)
        records = read_pubmedqa(path)
        assert len(records) == count and [r.gold for r in records] == orig_gold(path)
        assert all(r.question and r.contexts for r in records)  # question and context read back


@pytest.mark.parametrize("task", ["pubmedqa", "hoc"])
def test_clean_generations_score_one(task, tmp_path):
    gold_file = _gold_file(task)
    report = _score(task, gold_file, _clean_lines(task, gold_file), tmp_path)
    assert report["score"] == 1.0 and report["failed"] == 0
    assert report["protocol"]["name"] == "original"
    assert sum(report["predicted"].values()) == report["total"] and len(report["predicted"]) <= 21
    if task == "pubmedqa":
        assert set(report["predicted"]) == {"yes", "no", "maybe"}


# --- corrupted generations: every K-th record ----------------------------------------------------


def _extra_label(label: str) -> str:
    return label + ("|inducing angiogenesis" if "inducing angiogenesis" not in label else "|empty")


HOC_CORRUPTIONS = {
    # name: (what to do to (source, label) -> line, how many gold labels it loses, how many it adds)
    "label order reversed": lambda s, lab: _infer_line("hoc", s, "|".join(reversed(lab.split("|")))),
    "extra label": lambda s, lab: _infer_line("hoc", s, _extra_label(lab)),
    "duplicated label": lambda s, lab: _infer_line("hoc", s, lab + "|" + lab),
    "unknown label added": lambda s, lab: _infer_line("hoc", s, lab + "|failed|made-up hallmark"),
    "unknown label instead": lambda s, lab: _infer_line("hoc", s, "Empty"),
    "answer phrase missing": lambda s, lab: f"{s} learned1 {lab}.",
    "empty line": lambda s, lab: "",
    "prefix phrase, no prompt tokens": lambda s, lab: f"we can conclude that {orig_build_target('hoc', lab)}",
    "no final period": lambda s, lab: _infer_line("hoc", s, lab)[:-1],
    "two final periods": lambda s, lab: _infer_line("hoc", s, lab) + ".",
    "phrase inside the echoed source only": lambda s, lab: f"the type of this document is {lab} learned1 nothing",
}


@pytest.mark.parametrize("name", list(HOC_CORRUPTIONS))
def test_hoc_corrupted_generations(name, tmp_path):
    gold_file = _gold_file("hoc")
    rows = _rows(gold_file)
    corrupt = HOC_CORRUPTIONS[name]
    hit = [i for i in range(len(rows)) if i % K == 0]
    lines = [corrupt(*row) if i % K == 0 else _infer_line("hoc", *row) for i, row in enumerate(rows)]
    report = _score("hoc", gold_file, lines, tmp_path)
    gold_labels = sum(len(set(label.split("|"))) for _, label in rows)
    lost = sum(len(set(rows[i][1].split("|"))) for i in hit)
    tp, fp, fn = report["tp"], report["fp"], report["fn"]
    assert tp + fn == gold_labels
    if name in ("label order reversed", "duplicated label", "unknown label added", "prefix phrase, no prompt tokens"):
        assert (report["score"], report["failed"]) == (1.0, 0)  # order, duplicates, unknowns don't matter
    elif name == "no final period":
        assert report["score"] == 1.0
    elif name == "extra label":
        assert (tp, fp, fn) == (gold_labels, len(hit), 0)
    elif name == "unknown label instead":  # "Empty" is no class: every gold label is missed
        assert (fp, fn, report["failed"]) == (0, lost, 0)
    elif name == "two final periods":  # one "." is dropped, the last label reads "x.": it alone is missed
        assert (fp, fn, report["failed"]) == (0, len(hit), 0)
    else:  # the answer sentence is absent: "failed", which is no class either
        assert (fp, fn, report["failed"]) == (0, lost, len(hit))
        assert report["failed_lines"] == [i + 1 for i in hit]


QA_CORRUPTIONS = {
    "capitalised answer": lambda s, a: _infer_line("pubmedqa", s, a.capitalize()),
    "answer with more words": lambda s, a: _infer_line("pubmedqa", s, a + ", because of the context"),
    "answer phrase missing": lambda s, a: f"{s} {' '.join(f'learned{i}' for i in range(1, 10))} {a}.",
    "empty line": lambda s, a: "",
    "two final periods": lambda s, a: _infer_line("pubmedqa", s, a) + ".",
    "prefix phrase, no prompt tokens": lambda s, a: f"in conclusion, we have that {orig_build_target('pubmedqa', a)}",
    "no final period": lambda s, a: _infer_line("pubmedqa", s, a)[:-1],
    "another answer": lambda s, a: _infer_line("pubmedqa", s, "no" if a != "no" else "yes"),
}


@pytest.mark.parametrize("name", list(QA_CORRUPTIONS))
def test_pubmedqa_corrupted_generations(name, tmp_path):
    gold_file = _gold_file("pubmedqa")
    rows = _rows(gold_file)
    hit = [i for i in range(len(rows)) if i % K == 0]
    lines = [QA_CORRUPTIONS[name](*row) if i % K == 0 else _infer_line("pubmedqa", *row) for i, row in enumerate(rows)]
    report = _score("pubmedqa", gold_file, lines, tmp_path)
    if name in ("prefix phrase, no prompt tokens", "no final period"):
        assert (report["score"], report["failed"]) == (1.0, 0)
    else:
        assert report["correct"] == len(rows) - len(hit)
        assert report["failed"] == (len(hit) if name in ("answer phrase missing", "empty line") else 0)


def test_windows_line_ends_and_stray_carriage_returns_count_as_the_original_counts(tmp_path):
    gold_file = _gold_file("pubmedqa").with_name("valid.tsv")
    lines = _clean_lines("pubmedqa", gold_file)
    path = tmp_path / "crlf.txt"
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())
    report = evaluate_generated("pubmedqa", gold_file, generations=path)
    assert (report["score"], report["total"]) == (1.0, 50)
    lines[0] = lines[0][:10] + "\r" + lines[0][10:]
    path.write_bytes("".join(line + "\n" for line in lines).encode())
    with pytest.raises(EvaluationError, match="has 51 lines but .* has 50 records"):  # a lone \r ends a line too
        evaluate_generated("pubmedqa", gold_file, generations=path)


# --- PubMedQA json -------------------------------------------------------------------------------


def _pubmedqa_json(tmp_path, rows) -> tuple[Path, Path]:
    records, truth = {}, {}
    for i, (source, label) in enumerate(rows):
        question, rest = source[len("question: ") :].split(" context: ", 1)
        context = rest.rsplit(" answer: ", 1)[0]
        pmid = str(1000 + i)
        halves = [context[: len(context) // 2], "\n  " + context[len(context) // 2 :] + "  "]
        records[pmid] = {"QUESTION": question, "CONTEXTS": halves, "LONG_ANSWER": "x", "final_decision": label}
        truth[pmid] = label
    test_set, ground_truth = tmp_path / "test_set.json", tmp_path / "test_ground_truth.json"
    test_set.write_text(json.dumps(records))
    ground_truth.write_text(json.dumps(truth))
    return test_set, ground_truth


def test_pubmedqa_json_layouts_and_the_reasoning_required_input(tmp_path):
    rows = _rows(_gold_file("pubmedqa").with_name("valid.tsv"))[:6]
    test_set, ground_truth = _pubmedqa_json(tmp_path, rows)
    records = read_pubmedqa(test_set)
    assert [r.gold for r in records] == [label for _, label in rows] == [r.gold for r in read_pubmedqa(ground_truth)]
    # rebuild_data.py (reasoning required): contexts stripped, joined, whitespace collapsed, trailing space
    data = json.loads(test_set.read_text())
    for record, raw in zip(records, data.values()):
        context = re.sub(r"\s+", " ", re.sub(r"\n", " ", " ".join(c.strip() for c in raw["CONTEXTS"])))
        assert qa_source(record, "qa-pubmedqa") == f"question: {raw['QUESTION'].strip()} context: {context.strip()} "
    lines = [_infer_line("pubmedqa", s, a) for s, a in rows]
    lines[2] = lines[2].replace(" is ", " is not ")  # one wrong answer
    generations = _write(tmp_path / "gen.txt", lines)
    expected = orig_pipeline("pubmedqa", generations, ground_truth)  # the original scores test_ground_truth.json
    assert expected == (5 / 6, 0)
    for gold in (test_set, ground_truth):
        report = evaluate_generated("pubmedqa", gold, generations=generations)
        assert (report["score"], report["failed"]) == expected


def test_model_inputs_are_rebuild_data_sources():
    # examples/DC-HoC/rebuild_data.py: first field, newlines removed, stripped, "." appended if missing
    for record, (sentence, _) in zip(read_hoc(_gold_file("hoc")), _rows(_gold_file("hoc"))):
        source = sentence.replace("\n", "").strip()
        assert hoc_source(record) == (source if source[-1] == "." else source + ".")
    # PubMedQA TSV lines: the question and context read back; the first recipe's source is the line
    # itself with a final "." (lower-cased by the prompt builder), the reasoning-free one keeps the answer
    for record, (source, _) in zip(read_pubmedqa(_gold_file("pubmedqa")), _rows(_gold_file("pubmedqa"))):
        assert source.startswith("question: ") and " answer: " in source
        question, context = source.rsplit(" answer: ", 1)[0][len("question: ") :].split(" context: ", 1)
        # rebuild_data.py's build_source_seq with the context as one CONTEXTS entry (\s+ also collapses
        # the non-breaking and thin spaces of the abstracts)
        context = re.sub(r"\s+", " ", re.sub(r"\n", " ", context.strip()))
        assert qa_source(record, "qa-pubmedqa") == f"question: {question.strip()} context: {context.strip()} "
        answer = source.rsplit(" answer: ", 1)[1]
        assert qa_source(record, "qa-pubmedqa-reasoning-free") == (
            f"question: {question.strip()} context: {context.strip()} answer: {answer.strip()}"
        )
        assert qa_source(record, "qa-pubmedqa-legacy") == (source if source.endswith(".") else source + ".")


def test_bad_gold_files_are_one_error_naming_the_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a sentence\tempty\nno tab here\n")
    with pytest.raises(DataFormatError, match="line 2: no TAB"):
        read_hoc(bad)
    with pytest.raises(DataFormatError, match="line 1: gold answer 'empty' is not yes, no or maybe"):
        read_pubmedqa(bad)
    bad.write_text("a sentence\tempty|angiogenesis\n")
    with pytest.raises(DataFormatError, match="'angiogenesis' is not a HoC class"):
        read_hoc(bad)
    assert set(HOC_CLASSES) == set(ORIG_CLASSES) and len(HOC_CLASSES) == 11
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"123": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": ["yes"]}}))
    with pytest.raises(DataFormatError, match=r"PMID 123: gold answer of JSON type list is not yes, no or maybe"):
        read_pubmedqa(bad)
    bad.write_text(json.dumps({"123": {"QUESTION": "q?", "CONTEXTS": ["c"]}}))
    with pytest.raises(DataFormatError, match="PMID 123 has no final_decision"):
        read_pubmedqa(bad)


# --- the command ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


@pytest.mark.parametrize("task", ["pubmedqa", "hoc"])
def test_cli_end_to_end_and_line_count_error(task, tmp_path):
    gold_file = _gold_file(task) if task == "hoc" else _gold_file(task).with_name("valid.tsv")
    lines = _clean_lines(task, gold_file)
    lines[1] = ""  # one failed line
    generations = _write(tmp_path / "gen.txt", lines)
    command = "qa" if task == "pubmedqa" else "hoc"
    report_file = tmp_path / "out" / "report.json"
    done = _cli(
        "eval", command, "--data", str(gold_file), "--generations", str(generations), "--report", str(report_file)
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(report_file.read_text())
    assert {"task", "metric", "score", "failed", "total", "protocol"} <= set(report)
    expected, failed = orig_pipeline(task, generations, gold_file)
    assert (report["task"], report["score"], report["failed"], report["total"]) == (task, expected, 1, len(lines))
    assert f"failed = 1, total = {len(lines)}" in done.stdout

    short = _write(tmp_path / "short.txt", lines[:-1])
    done = _cli("eval", command, "--data", str(gold_file), "--generations", str(short))
    assert done.returncode == 2
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("biomine: error: ")
    assert f"has {len(lines) - 1} lines but" in errors[0] and f"has {len(lines)} records" in errors[0]


# --- generating with a model ---------------------------------------------------------------------


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
    yield
    torch.set_num_threads(threads)


def _fitted(tmp_path, task: str, records: list[dict]) -> Path:
    from biogpt.tiny import make_tiny_task_checkpoint
    from pipeline.tasks.re_format import build_source, build_target
    from pipeline.tasks.tiny import fit_prompt_model

    checkpoint = "qa-pubmedqa" if task == "pubmedqa" else "dc-hoc"
    texts = [build_source(task, r) for r in records] + [build_target(task, r) for r in records]
    model = make_tiny_task_checkpoint(
        tmp_path / checkpoint,
        texts,
        task=checkpoint,
        learned_prompt=LEARNED[task],
        max_position_embeddings=64,
        max_source_positions=40,
    )
    fit_prompt_model(model, task, records, steps=300, lr=1e-2, stop_loss=0.05)
    return model


@pytest.mark.parametrize("task", ["pubmedqa", "hoc"])
def test_model_generates_as_the_original_and_its_lines_score_the_same(task, tmp_path, one_thread, capsys):
    rows = _rows(_gold_file(task))
    if task == "hoc":  # short sentences of three different label sets
        picked = [
            next(r for r in rows if r[1] == lab and len(r[0]) < 120)
            for lab in ("empty", "inducing angiogenesis", "activating invasion and metastasis")
        ]
        records = [{"sentence": s, "labels": lab} for s, lab in picked]
    else:
        picked = [next(r for r in rows if r[1] == a) for a in ("yes", "no")]
        test_set, ground_truth = _pubmedqa_json(tmp_path, picked)
        records = list(json.loads(test_set.read_text()).values())
    model = _fitted(tmp_path, task, records)
    gold_file = test_set if task == "pubmedqa" else _write(tmp_path / "hoc.tsv", [f"{s}\t{lab}" for s, lab in picked])
    command = "qa" if task == "pubmedqa" else "hoc"
    out = tmp_path / "lines.txt"
    args = ["eval", command, "--data", str(gold_file), "--model", str(model), "--batch-size", "2"]
    assert main([*args, "--predictions", str(out), "--report", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert (report["score"], report["failed"], report["total"]) == (1.0, 0, len(records))
    assert report["protocol"]["name"] == "original" and report["model_id"] == model.name
    if task == "pubmedqa":  # whole abstracts do not fit 40 source positions: cut to 39 ids + "..."
        assert report["truncated_sources"] == len(records)
    learned = " ".join(f"learned{i}" for i in range(1, LEARNED[task] + 1))
    assert all(line.startswith(learned + " ") for line in out.read_text().splitlines())
    # the written lines are a generations file: scored again, and by the original, they give the same
    assert (
        main(["eval", command, "--data", str(gold_file), "--generations", str(out), "--json", str(tmp_path / "g.json")])
        == 0
    )
    assert json.loads((tmp_path / "g.json").read_text())["score"] == 1.0
    assert orig_pipeline(task, out, ground_truth if task == "pubmedqa" else gold_file) == (1.0, 0)
    capsys.readouterr()

    # the other task's checkpoint, and gold without questions, are one error line each
    other = "hoc" if task == "pubmedqa" else "qa"
    assert main(["eval", other, "--data", str(_gold_file("hoc")), "--model", str(model), "--limit", "2"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    if task == "pubmedqa":
        assert main(["eval", "qa", "--data", str(ground_truth), "--model", str(model)]) == 2
        assert "test_ground_truth.json" in capsys.readouterr().err
