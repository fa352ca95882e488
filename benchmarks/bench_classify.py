"""Document classification throughput: the ``classify`` task's sequence-classifier path against
transformers' BioGptForSequenceClassification on the same weights and the same windows.

What ``[tasks.classify]`` runs with a BioGptForSequenceClassification checkpoint
(pipeline/tasks/classify.py): ``prepare`` tokenises each document and cuts it into windows
(``[</s>] + ids``, NER's windows past the position limit), then the task's ``__call__`` classifies
every window of a batch of documents (right-padded chunks of ``batch_size``, a sigmoid per label)
and builds the label rows. This times exactly that call, and transformers on the same windows:

  weights   random (seeded), written once by biogpt.tiny.make_tiny_checkpoint with a vocabulary
            learned from the texts (padded to BioGPT's 42,384 ids at full size), 11 HoC labels,
            problem_type multi_label_classification; both sides load that directory; bf16 on CUDA,
            float32 on CPU; transformers' attention SDPA unless --hf-attn eager
  cases     sentences: each sentence of the synthetic abstracts is one document (HoC's unit,
            one window each) -> sentences/s; documents: title + abstract, windowed -> documents/s
  timed     prepare (tokenisation and windows, CPU, the same for both) is done once, untimed; then
            one warm-up and the median of --repeat runs, the two sides timed in turn in alternating
            order (bench_generation.median_seconds_paired: a drifting load weighs on both alike), of: biogpt = ClassifyTask.__call__ on the
            prepared batch (windows, sigmoid, label rows); transformers = its model on the same
            windows in the same right-padded chunks of --batch-size, sigmoid, to CPU lists (no rows)
  reported  one row per case (the --json schema of bench_generation.py): units/s of each and the
            ratio; windows; the largest |probability difference| between the task's
            window_probabilities and transformers' (the same weights, so only the arithmetic
            differs) and whether the labels at >= 0.5 agree, in the run's dtype and again after
            both models are upcast to float32 (fp32_max_abs_prob_diff, fp32_sets_agree)
  --check   exit 1 unless the float32 probabilities agree within --atol (label sets are reported,
            not required equal: on random weights a probability near 0.5 can flip)

    python benchmarks/bench_classify.py                 # GPU: BioGPT-base, 512 abstracts, bf16
    python benchmarks/bench_classify.py --docs 2048 --batch-size 128 --json classify.json
    python benchmarks/bench_classify.py --quick         # tiny model on CPU: a smoke run (seconds)
    python benchmarks/bench_classify.py --device cuda --dtype bfloat16 --check   # as gpu_proof.sh runs it
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import (  # noqa: E402  (after the path insert: benchmarks/ is no package)
    PUBMED_ABSTRACTS,
    ROW_HEADER,
    device_label,
    make_row,
    median_seconds_paired,
    model_config,
)
from bench_pipeline import synthetic_abstract  # noqa: E402

QUICK_SIZES = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, max_position_embeddings=128
)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="tiny random model (128 positions), 24 abstracts (CPU smoke run)"
    )
    p.add_argument("--docs", type=int, help="synthetic abstracts (default 512; --quick 24)")
    p.add_argument("--words", help="abstract length in words, LO,HI (default 150,300; --quick 60,200)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass, both sides (default 64)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument("--hf-attn", choices=["sdpa", "eager"], default="sdpa", help="transformers' attention")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="exit 1 unless the float32 probabilities agree within --atol")
    # bench_ner's float32 logit tolerance (1e-3) through the sigmoid, whose slope is at most 1/4.
    p.add_argument(
        "--atol", type=float, default=2.5e-4, help="float32 probability tolerance for --check (default 2.5e-4)"
    )
    p.add_argument("--json", help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def compare(ours: list[list[float]], theirs: list[list[float]]) -> tuple[int, float]:
    """How many windows get the same label set (probability >= 0.5) from both, and the largest
    |probability difference|."""
    diff = max((abs(a - b) for pa, pb in zip(ours, theirs) for a, b in zip(pa, pb)), default=0.0)
    same = sum([a >= 0.5 for a in pa] == [b >= 0.5 for b in pb] for pa, pb in zip(ours, theirs))
    return same, diff


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from biogpt.model import BioGptForSequenceClassification
    from biogpt.tiny import make_tiny_checkpoint
    from pipeline.tasks import base
    from pipeline.tasks.classify import ClassifyTask, sentences
    from pipeline.tasks.hoc_labels import HOC_CLASSES
    from pipeline.tasks.options import ClassifyOptions

    sizes = dict(QUICK_SIZES) if args.quick else dict(model_config("base"))
    n_docs = args.docs or (24 if args.quick else 512)
    lo, hi = (int(x) for x in (args.words or ("60,200" if args.quick else "150,300")).split(","))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    repeat = args.repeat or 3
    rng = random.Random(args.seed)
    titles = [synthetic_abstract(rng, rng.randint(8, 20)) for _ in range(n_docs)]
    abstracts = [synthetic_abstract(rng, rng.randint(lo, hi)) for _ in range(n_docs)]
    texts = [base.article_text(t, a) for t, a in zip(titles, abstracts)]
    units = [texts[i][s:e] for i in range(n_docs) for s, e in sentences(titles[i], abstracts[i])]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    transformers.utils.logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = sizes.pop("vocab_size", None)
        model_dir = make_tiny_checkpoint(
            Path(tmp) / "classifier",
            texts,
            model_cls=BioGptForSequenceClassification,
            id2label=dict(enumerate(HOC_CLASSES)),
            problem_type="multi_label_classification",
            vocab_size=vocab_size,
            seed=args.seed,
            **sizes,
        )
        options = ClassifyOptions(model=str(model_dir), batch_size=args.batch_size, dtype=dtype, device=str(device))
        task = ClassifyTask(options)
        hf = (
            transformers.BioGptForSequenceClassification.from_pretrained(
                model_dir, dtype=getattr(torch, dtype), attn_implementation=args.hf_attn
            )
            .to(device)
            .eval()
        )
        pad_id = hf.config.pad_token_id

        def hf_probabilities(windows: list[list[int]]) -> list[list[float]]:
            out: list[list[float]] = []
            with torch.inference_mode():
                for c in range(0, len(windows), args.batch_size):
                    chunk = windows[c : c + args.batch_size]
                    ids = base.pad(chunk, pad_id).to(device)
                    mask = base.pad([[1] * len(x) for x in chunk], 0).to(device)
                    out.extend(torch.sigmoid(hf(input_ids=ids, attention_mask=mask).logits.float()).cpu().tolist())
            return out

        print(
            f"# {datetime.date.today()}  {device_label(device)}  {dtype}  torch {torch.__version__}  "
            f"transformers {transformers.__version__}  hf-attn {args.hf_attn}  "
            f"{'quick (tiny model)' if args.quick else 'BioGPT-base'}  {len(HOC_CLASSES)} labels (sigmoid)  "
            f"{n_docs} abstracts of {lo}-{hi} words  batch {args.batch_size}  repeat {repeat}"
        )
        print(ROW_HEADER)
        cases = [
            ("sentences", "sentences/s", [None] * len(units), units),
            ("documents", "documents/s", titles, abstracts),
        ]
        case_windows: list[list[list[int]]] = []
        for case, metric, case_titles, case_abstracts in cases:
            n = len(case_abstracts)
            docs = {"pmid": list(range(1, n + 1)), "version": [1] * n, "title": case_titles, "abstract": case_abstracts}
            prepared = ClassifyTask.prepare(docs, options)
            windows = [w for doc in prepared.column("_inputs").to_pylist() for w in doc]
            (t_us, t_hf), (_, hf_probs) = median_seconds_paired(
                [lambda: task(prepared), lambda: hf_probabilities(windows)], repeat, sync
            )
            case_windows.append(windows)
            same, diff = compare(task.window_probabilities(windows), hf_probs)
            rows.append(
                make_row(
                    f"classify {case}",
                    metric,
                    n / t_hf,
                    n / t_us,
                    "report",
                    f"{len(windows)} windows; label sets agree {same}/{len(windows)}, max |dprob| {diff:.2e}"
                    + (
                        f"; {device.type.upper()}-hours for {PUBMED_ABSTRACTS // 10**6}M abstracts: transformers "
                        f"{PUBMED_ABSTRACTS / (n / t_hf) / 3600:,.1f}, biogpt {PUBMED_ABSTRACTS / (n / t_us) / 3600:,.1f}"
                        if case == "documents"
                        else ""
                    ),
                    windows=len(windows),
                    sets_agree=[same, len(windows)],
                    max_abs_prob_diff=diff,
                )
            )
        # The same weights in float32 on both sides: what is left is each side's arithmetic.
        task.classifier.float()
        hf.float()
        worst = 0.0
        for row, windows in zip(rows, case_windows):
            same, diff = compare(task.window_probabilities(windows), hf_probabilities(windows))
            row.update(fp32_sets_agree=[same, len(windows)], fp32_max_abs_prob_diff=diff)
            worst = max(worst, diff)
            print(
                f"float32 check {row['case']}: label sets agree {same}/{len(windows)}, max |dprob| {diff:.2e} "
                f"(--atol {args.atol:g})",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.check and not worst <= args.atol:
        print(f"--check: float32 probabilities differ by up to {worst:.2e} > --atol {args.atol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
