"""The task commands as a user types them: `biomine eval ner|re`, `biomine generate`.

The metrics and decoding behind them are tested in test_ner_task.py, test_re_task.py and
test_generation.py; here: the commands run end to end, write what they promise, and turn user
mistakes into one `biomine: error:` line with exit status 2.
"""

from __future__ import annotations

import json

import pytest
import torch

from biogpt.model import BioGptForCausalLM, BioGptForTokenClassification
from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
from biogpt.tokenizer import BioGptTokenizer
from pipeline.cli import main
from pipeline.tasks.ner_spans import label_list

TITLE = "Aspirin and warfarin."
ABSTRACT = "Warfarin bleeding risk rises with aspirin; cisplatin causes nephrotoxicity."
TEXT = f"{TITLE} {ABSTRACT}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-models")
    texts = [TITLE, ABSTRACT, TEXT.lower()]
    return {
        "ner": make_tiny_checkpoint(
            root / "ner",
            texts,
            model_cls=BioGptForTokenClassification,
            id2label=dict(enumerate(label_list(["Chemical", "Disease"]))),
        ),
        "re": make_tiny_task_checkpoint(root / "re-ddi", texts, task="re-ddi"),
        "lm": make_tiny_checkpoint(root / "lm", texts),
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("biomine: error: ") and len(err.splitlines()) == 1, err
    return err


def test_eval_ner_prints_and_writes_the_report(models, tmp_path, capsys):
    start = TEXT.index("warfarin".capitalize(), len(TITLE))
    data = tmp_path / "gold.pubtator"
    data.write_text(
        f"1|t|{TITLE}\n1|a|{ABSTRACT}\n1\t0\t7\tAspirin\tChemical\tD001241\n"
        f"1\t{start}\t{start + 8}\tWarfarin\tChemical\tD014859\n\n"
    )
    assert (
        main(["eval", "ner", "--data", str(data), "--model", str(models["ner"]), "--json", str(tmp_path / "r.json")])
        == 0
    )
    assert "micro" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["documents"] == 1 and report["gold_mentions"] == 2 and 0.0 <= report["micro"]["f1"] <= 1.0

    assert main(["eval", "ner", "--data", str(tmp_path / "missing.txt"), "--model", str(models["ner"])]) == 2
    assert "missing.txt does not exist" in one_error_line(capsys)
    assert main(["eval", "ner", "--data", str(data), "--model", str(models["lm"])]) == 2  # a causal LM
    assert "BioGptForTokenClassification" in one_error_line(capsys)


def test_eval_re_writes_predictions_and_refuses_the_wrong_checkpoint(models, tmp_path, capsys):
    records = {
        f"d{i}": {
            "abstract": ABSTRACT.lower(),
            "pmid": f"d{i}",
            "triples": [{"drug": "aspirin", "target": "warfarin", "interaction": "effect"}],
        }
        for i in range(3)
    }
    data = tmp_path / "test.json"
    data.write_text(json.dumps(records))
    preds = tmp_path / "preds.jsonl"
    assert (
        main(
            [
                "eval",
                "re",
                "--task",
                "ddi",
                "--data",
                str(data),
                "--model",
                str(models["re"]),
                "--max-new-tokens",
                "8",
                "--limit",
                "2",
                "--predictions",
                str(preds),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [p["id"] for p in lines] == ["d0", "d1"] and all("generation" in p for p in lines)
    report = json.loads((tmp_path / "r.json").read_text())
    assert "headline" in report

    # A base LM is not a fine-tuned RE checkpoint: refused with the reason, before any generation.
    assert main(["eval", "re", "--task", "ddi", "--data", str(data), "--model", str(models["lm"])]) == 2
    one_error_line(capsys)


def test_generate_prints_the_greedy_continuation(models, capsys):
    prompt = "Aspirin and warfarin"
    assert main(["generate", "--model", str(models["lm"]), "--max-new-tokens", "4", prompt]) == 0
    out = capsys.readouterr().out.strip()
    tok = BioGptTokenizer.from_pretrained(models["lm"])
    model = BioGptForCausalLM.from_pretrained(models["lm"])
    ids = torch.tensor([tok.encode(prompt)])
    new = model.generate(ids, max_new_tokens=4)[0, ids.shape[1] :].tolist()
    assert out == f"{prompt} {tok.decode(new, skip_special_tokens=True)}".strip()

    assert main(["generate", "--model", str(models["lm"].parent / "nope"), "x"]) == 2
    assert "nope" in one_error_line(capsys)
