#!/usr/bin/env bash
# GPU proof in one prepared call: the CUDA paths run, and the speed table is measured.
#
#   bash benchmarks/gpu_proof.sh [--dry-run] [--steps NAME,NAME] [--list] [--help]
#
# Contract. Runs the steps below in order, from the repository root, each under its own `timeout`
# and all within one budget (GPU_PROOF_BUDGET_S), so one hang cannot eat the call. It prints each
# command before running it, tees every step's output into $OUT/proof.log, keeps going after a failed
# step, then writes $OUT/summary.txt (each step: status, exit code, seconds; the speed table:
# transformers, biogpt, ratio, goal, verdict, ids) and $OUT/results.json (the same, every row), prints
# the summary last, and exits 1 if any step failed, timed out or was skipped, else 0. A missed speed
# goal is a measured result, not a failed step: read the verdict column. Three files land in $OUT
# (the device tool brings back at most 8); scratch files live in a temporary folder, removed at exit.
#
# Steps (full mode: one CUDA GPU; BioGPT-base sizes on random weights unless named; bf16; transformers
# with SDPA attention; both implementations timed in the same process, on the same inputs):
#   env            versions, nvidia-smi, CUDA visible (else every later step is skipped); installs the
#                  packages the device image lacks (sacremoses, fastBPE) from $WHEELS, without network;
#                  fails when pyarrow is missing (the RE gpu test and the classify step use pipeline/tasks)
#   pytest-gpu     python -m pytest -m gpu over the test files that mark tests gpu (not all of tests/:
#                  the Ray, DuckDB and Biopython test files cannot be collected where Ray is absent)
#   gen            bench_generation.py: prefill 64x512; greedy b=1 and b=128 (prompt 256, 64 new);
#                  beam-5 b=32; the ragged RE workload (256 prompts, continuous batching)
#   gen-ids-fp32   bench_generation.py --dtype float32, greedy b=1,8, --check-ids: the greedy ids must
#                  equal transformers' (in bf16 they drift apart on near-ties, so gen only counts them)
#   ner            bench_ner.py --check: NER token-classification forward, 64 abstracts of 200-500
#                  tokens, abstracts/s; label ids and float32 logits compared with transformers'
#   classify       bench_classify.py --check: the classify task's sequence-classifier path (11 HoC
#                  labels, sigmoid) on 512 synthetic abstracts, sentences/s (each sentence a document,
#                  HoC's unit) and documents/s (title + abstract, windowed) against transformers'
#                  BioGptForSequenceClassification on the same weights and windows; label sets and
#                  float32 probabilities compared
#   large-prefill  bench_generation.py --config large --cases prefill: BioGPT-Large, 64x512
#   gen-compile    the gen step with --compile (torch.compile inside the CUDA graphs); last, since
#                  compiling is the likeliest to run long
# Goals, as ratios against transformers on the same GPU in the same run (gen and gen-compile rows):
#   prefill >= 1.4x, greedy b=128 >= 6x, beam-5 b=32 >= 5x, greedy b=1 <= 1 ms per token.
#
# Options.
#   --dry-run      (or DRY_RUN=1) every step on CPU at tiny sizes (the benchmarks' --quick; pytest -m
#                  gpu reports its tests skipped, which counts as success here only); well under a
#                  minute once torch.compile's cache is warm. It proves the script, not the GPU:
#                  its figures are no measurement. tests/test_gpu_proof.py runs it.
#   --steps A,B    run only these steps (env always runs: it sets up the imports); e.g. rerun one that
#                  failed or ran out of budget: --steps gen-compile
#   --list         print the plan (step, timeout, command) and exit
#
# Environment. OUT: where the three files go (the device tool sets it; default out/gpu-proof, which
# git ignores). PYTHON: the interpreter (default .venv/bin/python when present, else python3: on the
# device the image's python3 holds torch 2.11+cu130 and transformers 5.17). WHEELS: carried wheels
# (default .whl). GPU_PROOF_BUDGET_S: total seconds for all steps (default 480; dry run 300).
#
# On the device (benchmarks/README.md, "GPU proof"). The image has torch, transformers, safetensors,
# pytest, Cython and setuptools, but neither sacremoses nor fastBPE (the tokenizer, which the gpu test
# of the RE task needs), and no network. Fill the git-ignored .whl/ here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl sacremoses==0.2.0
#   python3 -m pip download --no-deps --no-binary=:all: --no-build-isolation -d .whl fastBPE==0.1.0
# (sacremoses is pure Python; fastBPE has no wheel, so its source travels and is built there with the
# image's Cython and g++; the rest of sacremoses' needs, click, joblib, regex and tqdm, are in the
# image.) Then, in one device call with .whl carried and a timeout that leaves time to rerun:
#   run(command="bash benchmarks/gpu_proof.sh", carry=[".whl"], timeout_s=540)
# Ray's wheel is too large to carry, so nothing here uses Ray (the engine runs in-process).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/benchmarks/gpu_proof.sh"
[[ -n ${OUT:-} && $OUT != /* ]] && OUT=$PWD/$OUT  # a relative OUT is the caller's, not the repository's
cd "$REPO"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

MODE=full
[[ ${DRY_RUN:-0} != 0 ]] && MODE=dry-run
ONLY="" LIST=0 INTERNAL=""
while (($#)); do
    case $1 in
        --dry-run) MODE=dry-run ;;
        --steps) ONLY=${2:?--steps needs NAME,NAME}; shift ;;
        --steps=*) ONLY=${1#--steps=} ;;
        --list) LIST=1 ;;
        -h | --help) usage; exit 0 ;;
        --_env) INTERNAL="env" ;;  # the env step, run by this script under its timeout
        *) echo "gpu_proof.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

STEP_NAMES=" env pytest-gpu gen gen-ids-fp32 ner classify large-prefill gen-compile "
for name in ${ONLY//,/ }; do
    [[ $STEP_NAMES == *" $name "* ]] || { echo "gpu_proof.sh: no step $name; steps:$STEP_NAMES" >&2; exit 2; }
done

if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    [[ -x $REPO/.venv/bin/python ]] && PYTHON=$REPO/.venv/bin/python
fi
WHEELS=${WHEELS:-$REPO/.whl}
export PYTHON WHEELS MODE

# The env step: versions, GPU, and the packages the image lacks, installed from $WHEELS.
env_step() {
    local rc=0 mod file missing=() files=()
    echo "date $(date -u +%FT%TZ)  host $(uname -srm)  mode $MODE  python $PYTHON"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 || true
    else
        echo "nvidia-smi: not on the PATH"
    fi
    for mod in sacremoses fastBPE; do
        if "$PYTHON" -c "import $mod" 2>/dev/null; then echo "have $mod"; else missing+=("$mod"); fi
    done
    for mod in ${missing[@]+"${missing[@]}"}; do
        file=$(find "$WHEELS" -maxdepth 1 \( -iname "$mod-*.whl" -o -iname "$mod-*.tar.gz" \) 2>/dev/null | sort | tail -n 1 || true)
        if [[ -n $file ]]; then
            files+=("$file")
        else
            echo "MISSING $mod: no $mod-*.whl or $mod-*.tar.gz in $WHEELS (the header of $SELF says how to fill it)"
            rc=1
        fi
    done
    for file in ${files[@]+"${files[@]}"}; do  # one at a time: a source build that fails keeps the rest
        echo "+ pip install --no-index --no-deps --no-build-isolation --target $SITE $file"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
            --target "$SITE" "$file" 2>&1 || rc=1
    done
    "$PYTHON" - "$WORK/env.txt" <<'PY' || rc=1
import importlib, importlib.metadata, platform, sys
parts, missing = [f"python {platform.python_version()}"], []
for name in ("torch", "transformers", "safetensors", "pyarrow", "sacremoses", "fastBPE", "pytest"):
    try:
        module = importlib.import_module(name)
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(module, "__version__", "?")
        parts.append(f"{name} {version}")
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        parts.append(f"{name} MISSING ({type(exc).__name__})")
        missing.append(name)
try:
    import torch
    parts.append(f"GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
                 else "no CUDA device")
except Exception:  # noqa: BLE001
    pass
line = "  ".join(parts)
print(line)
open(sys.argv[1], "w").write(line + "\n")
sys.exit(1 if missing else 0)
PY
    return $rc
}

if [[ $INTERNAL == env ]]; then
    env_step
    exit
fi

if [[ $MODE == dry-run ]]; then
    DRY=1
    BUDGET_S=${GPU_PROOF_BUDGET_S:-300}
    GEN=(--quick)
    IDS=(--quick --dtype float32 --cases greedy --greedy "1,4" --check-ids)
    NER=(--quick --check)
    CLASSIFY=(--quick --docs 8 --repeat 1 --check)
    LARGE=(--quick --cases prefill)  # a CPU cannot build BioGPT-Large in a dry run's time: the tiny model
    COMPILE=(--quick --compile --cases greedy --greedy 1)  # one case: compiling on CPU takes ~30 s cold
else
    DRY=""
    BUDGET_S=${GPU_PROOF_BUDGET_S:-480}
    GEN=(--greedy "1,128")
    IDS=(--dtype float32 --cases greedy --greedy "1,8" --new-tokens 32 --repeat 1 --check-ids)
    NER=(--check)
    CLASSIFY=(--device cuda --dtype bfloat16 --check)
    LARGE=(--config large --cases prefill)
    COMPILE=(--compile --greedy "1,128")
fi
# timeout of a step: full-mode seconds, dry-run seconds
t() { if [[ -n $DRY ]]; then echo "$2"; else echo "$1"; fi; }

OUT=${OUT:-$REPO/out/gpu-proof}
((LIST)) || { mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd); }
LOG=$OUT/proof.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-proof.XXXXXX")
SITE=$WORK/site
trap 'rm -rf "$WORK"' EXIT
export WORK SITE PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
mapfile -t GPU_TESTS < <(grep -l -E 'pytest\.mark\.gpu' tests/test_*.py || true)

T0=$SECONDS
FAILED=()
SKIP_REASON=""
((LIST)) || : >"$LOG"

selected() { [[ $1 == env || -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

# step NAME TIMEOUT [--ok-rc=N] COMMAND...: run COMMAND under timeout, tee its output, record the outcome.
step() {
    local name=$1 limit=$2 ok=" 0 " status rc start
    shift 2
    if [[ $1 == --ok-rc=* ]]; then ok+="${1#--ok-rc=} "; shift; fi
    if ((LIST)); then printf '%-14s %4ss  %s\n' "$name" "$limit" "$*"; return 0; fi
    if ! selected "$name"; then printf '%s\tnot selected\t-\t0\t%s\n' "$name" "$*" >>"$WORK/steps.tsv"; return 0; fi
    local left=$((BUDGET_S - (SECONDS - T0)))
    ((left < 0)) && left=0
    ((limit > left)) && limit=$left
    {
        printf '\n=== %s (timeout %ss, %ss of the budget left) ===\n+ ' "$name" "$limit" "$left"
        printf '%q ' "$@"
        echo
    } | tee -a "$LOG"
    start=$SECONDS
    if [[ -n $SKIP_REASON ]] || ((limit < 10)); then
        status="SKIPPED (${SKIP_REASON:-budget spent})" rc=-
        echo "$status" | tee -a "$LOG"
    else
        if timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" "$WORK/$name.log"; then rc=0; else rc=$?; fi
        if [[ $ok == *" $rc "* ]]; then status=ok
        elif ((rc == 124 || rc == 137)); then status="TIMEOUT after ${limit}s"
        else status="FAILED"; fi
        echo "--- $name: $status (exit $rc, $((SECONDS - start)) s)" | tee -a "$LOG"
    fi
    [[ $status == ok ]] || FAILED+=("$name")
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" "$*" >>"$WORK/steps.tsv"
}

gen_py=benchmarks/bench_generation.py
((LIST)) && echo "mode $MODE, budget ${BUDGET_S}s; gpu test files: ${GPU_TESTS[*]:-none}"
step env "$(t 60 60)" bash "$SELF" ${DRY:+--dry-run} --_env
if ((!LIST)) && [[ -z $DRY ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    SKIP_REASON="no CUDA"
    echo "torch sees no CUDA device: the full run needs one, so every later step is skipped (--dry-run runs on CPU)" |
        tee -a "$LOG"
fi
if ((${#GPU_TESTS[@]})); then
    step pytest-gpu "$(t 90 120)" ${DRY:+--ok-rc=5} "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}"
else
    step pytest-gpu 10 bash -c 'echo "no test file under tests/ marks pytest.mark.gpu" >&2; exit 1'
fi
step gen "$(t 150 120)" "$PYTHON" "$gen_py" "${GEN[@]}" --json "$WORK/gen.json"
step gen-ids-fp32 "$(t 60 120)" "$PYTHON" "$gen_py" "${IDS[@]}" --json "$WORK/gen-ids-fp32.json"
step ner "$(t 60 120)" "$PYTHON" benchmarks/bench_ner.py "${NER[@]}" --json "$WORK/ner.json"
# classify: a BioGPT-base checkpoint written and loaded twice, 512 abstracts and their sentences
# tokenised on the CPU, then short bf16 forward passes; 75 s is a cap, not an estimate of its length.
step classify "$(t 75 120)" "$PYTHON" benchmarks/bench_classify.py "${CLASSIFY[@]}" --json "$WORK/classify.json"
step large-prefill "$(t 90 120)" "$PYTHON" "$gen_py" "${LARGE[@]}" --json "$WORK/large-prefill.json"
step gen-compile "$(t 210 150)" "$PYTHON" "$gen_py" "${COMPILE[@]}" --json "$WORK/gen-compile.json"
((LIST)) && exit 0

# summary.txt and results.json from the steps' records and JSON rows.
"$PYTHON" - "$WORK" "$OUT" "$MODE" "$BUDGET_S" <<'PY' || FAILED+=(summary)
import json, re, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from bench_generation import TARGETS  # noqa: E402

work, out, mode, budget = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = ("step", "status", "rc", "seconds", "command")
steps = [dict(zip(keys, line.split("\t", 4))) for line in (work / "steps.tsv").read_text().splitlines()]
env = (work / "env.txt").read_text().strip() if (work / "env.txt").exists() else "(env step did not report)"
GOAL_STEPS = ("gen", "gen-compile")  # BioGPT-base in bf16: the issue's goals apply to these rows


def verdict(step, row):
    goal = TARGETS.get(row["case"], "") if step in GOAL_STEPS else ""
    if not goal:
        return "", ""
    if mode != "full":
        return goal, "n/a (dry run)"
    op, bound, unit = re.fullmatch(r"([<>]=) ([\d.]+) ?(x|ms/token)", goal).groups()
    value = row["ratio"] if unit == "x" else row.get("ms_per_token")
    ok = value is not None and (value >= float(bound) if op == ">=" else value <= float(bound))
    return goal, "met" if ok else "NOT met"


def ids(row):
    parts = []
    for key, label in (("ids_agree", ""), ("fp32_ids_agree", "fp32 "), ("sets_agree", "sets "),
                       ("fp32_sets_agree", "fp32 sets ")):
        if key in row:
            same, total = row[key]
            parts.append(f"{label}{same}/{total}{' identical' if same == total else ' DIFFER'}")
    return ", ".join(parts)


rows, lines = [], []
for s in steps:
    path = work / f"{s['step']}.json"
    for row in json.loads(path.read_text()) if path.exists() and s["status"] != "not selected" else []:
        goal, verdict_ = verdict(s["step"], row)
        rows.append(dict(step=s["step"], **row, goal=goal, verdict=verdict_, ids=ids(row)))
    log = work / f"{s['step']}.log"
    if s["step"] == "pytest-gpu" and log.exists():
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()]
        s["result"] = tail[-1].strip("= ") if tail else ""

lines += [f"# GPU proof  mode {mode}  budget {budget} s" + ("  (CPU, tiny sizes: NOT a measurement)" if mode != "full" else ""),
          f"# {env}", "", f"{'step':<14} {'status':<24} {'exit':>4} {'s':>5}  command"]
for s in steps:
    lines.append(f"{s['step']:<14} {s['status']:<24} {s['rc']:>4} {s['seconds']:>5}  {s['command']}")
    if s.get("result"):
        lines.append(f"{'':<14} pytest: {s['result']}")
lines += ["", f"{'step':<14} {'case':<18} {'metric':<13} {'transformers':>12} {'biogpt':>12} {'ratio':>7}  "
              f"{'goal':<14} {'verdict':<14} ids"]
for r in rows:
    lines.append(f"{r['step']:<14} {r['case']:<18} {r['metric']:<13} {r['transformers']:>12,.1f} {r['biogpt']:>12,.1f} "
                 f"{r['ratio']:>6.2f}x  {r['goal']:<14} {r['verdict']:<14} {r['ids']}")
lines += ["", "notes (the benchmarks' own):"] + [f"  {r['step']:<14} {r['case']:<18} {r['note']}" for r in rows]
(out / "summary.txt").write_text("\n".join(lines) + "\n")
(out / "results.json").write_text(json.dumps(dict(mode=mode, env=env, steps=steps, rows=rows), indent=2) + "\n")
PY

echo
cat "$OUT/summary.txt" 2>/dev/null || true
echo
if ((${#FAILED[@]})); then
    echo "gpu_proof: FAILED steps: ${FAILED[*]} ($((SECONDS - T0)) s; logs in $LOG)"
    exit 1
fi
echo "gpu_proof: every step ok ($((SECONDS - T0)) s); summary in $OUT/summary.txt"
