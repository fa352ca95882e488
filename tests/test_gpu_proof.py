"""benchmarks/gpu_proof.sh, the one-call GPU proof, checked on CPU through its dry run.

The dry run runs every step of the proof at tiny sizes (the benchmarks' --quick; ``pytest -m gpu``
reports its tests skipped), so it shows that the script, each command and the summary work; it
measures nothing about a GPU. The plan and the budget paths are checked without running a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_proof.sh"
STEPS = ("env", "pytest-gpu", "gen", "gen-ids-fp32", "ner", "classify", "large-prefill", "gen-compile")
BENCH_STEPS = STEPS[2:]  # the ones that write rows: transformers, biogpt, ratio
RATIO_ROW = re.compile(r"^\S.*\s\d[\d,]*\.\d\s+\d[\d,]*\.\d\s+\d+\.\d\dx\b", re.M)

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="gpu_proof.sh needs bash and coreutils' timeout",
)


def run_proof(out: Path, *args: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **env)
    environ.pop("DRY_RUN", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=environ
    )


def test_list_shows_every_step_with_its_timeout_and_command(tmp_path):
    proc = run_proof(tmp_path / "out", "--list")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert names == list(STEPS)
    # the full plan is the issue's: the sizes are bench_generation's defaults, greedy b=1 and b=128
    assert "--greedy 1,128" in proc.stdout and "--config large --cases prefill" in proc.stdout
    assert "-m pytest -q -m gpu" in proc.stdout and "--compile" in proc.stdout
    assert "bench_classify.py --device cuda --dtype bfloat16 --check" in proc.stdout
    assert not (tmp_path / "out").exists()  # --list runs and writes nothing


def test_help_teaches_and_bad_arguments_are_refused(tmp_path):
    proc = run_proof(tmp_path, "--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "pip download" in proc.stdout
    assert "GPU_PROOF_BUDGET_S" in proc.stdout and "set -euo" not in proc.stdout
    for bad in (["--steps", "gen,nonsense"], ["--frobnicate"]):
        proc = run_proof(tmp_path, *bad)
        assert proc.returncode == 2 and ("no step nonsense" in proc.stderr or "unknown argument" in proc.stderr)


def test_a_spent_budget_skips_every_step_and_fails_the_run(tmp_path):
    proc = run_proof(tmp_path, "--dry-run", GPU_PROOF_BUDGET_S="1", timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in STEPS:
        assert re.search(rf"^{re.escape(step)}\s+SKIPPED \(budget spent\)", summary, re.M), summary
    assert "FAILED steps: " + " ".join(STEPS) in proc.stdout


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_ratio_rows(tmp_path):
    pytest.importorskip("transformers", reason="the dry run compares with transformers: pip install -e '.[test]'")
    proc = run_proof(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proof.log", "results.json", "summary.txt"]

    summary = (tmp_path / "summary.txt").read_text()
    assert "mode dry-run" in summary and "NOT a measurement" in summary
    for step in STEPS:
        assert re.search(rf"^{re.escape(step)}\s+ok\s+0\s", summary, re.M), summary
    assert re.search(r"pytest: .*skipped", summary)  # pytest -m gpu ran; on CPU its tests skip

    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["step"] for s in results["steps"]] == list(STEPS)
    assert {r["step"] for r in results["rows"]} == set(BENCH_STEPS)
    for row in results["rows"]:
        assert row["transformers"] > 0 and row["biogpt"] > 0
        assert row["ratio"] == pytest.approx(row["biogpt"] / row["transformers"])
    # the goals are printed next to the rows they judge; a dry run never claims one is met
    gen = {r["case"]: r for r in results["rows"] if r["step"] == "gen"}
    assert gen["prefill"]["goal"] == ">= 1.4x" and gen["greedy b=1"]["goal"] == "<= 1 ms/token"
    assert {r["verdict"] for r in results["rows"] if r["goal"]} == {"n/a (dry run)"}
    # ids are compared wherever they exist: greedy ids in float32 equal transformers' (the check passed)
    fp32 = [r for r in results["rows"] if r["step"] == "gen-ids-fp32"]
    assert fp32 and all(r["ids_agree"][0] == r["ids_agree"][1] for r in fp32)
    (ner,) = [r for r in results["rows"] if r["step"] == "ner"]
    assert ner["fp32_max_abs_logit_diff"] <= 1e-3 and "fp32" in ner["ids"]
    # classify: sentences/s and documents/s against transformers' sequence classifier, probabilities checked
    classify = {r["case"]: r for r in results["rows"] if r["step"] == "classify"}
    assert [(c, r["metric"]) for c, r in classify.items()] == [
        ("classify sentences", "sentences/s"),
        ("classify documents", "documents/s"),
    ]
    for row in classify.values():
        assert row["fp32_max_abs_prob_diff"] <= 2.5e-4 and "fp32 sets" in row["ids"] and row["windows"] > 0

    # the ratio rows are in the summary's table and in the teed benchmark output alike
    log = (tmp_path / "proof.log").read_text()
    table = summary.split("\nstep ", 2)[2]
    assert len(RATIO_ROW.findall(table)) == len(results["rows"])
    for step in STEPS:
        assert f"=== {step} " in log and f"--- {step}: ok" in log
    assert len(RATIO_ROW.findall(log)) == len(results["rows"])
