"""NER forward throughput: biogpt's BioGptForTokenClassification against transformers' on the same random weights.

What the NER task (pipeline/tasks/ner.py) runs per batch is one token-classification forward pass
over right-padded abstracts with an attention mask; this times exactly that for both implementations:

  weights   random, built by transformers' BioGptForTokenClassification (seeded), saved once and
            loaded by both (BioGPT-base sizes, ``--labels`` labels: 7 = BIO over Chemical, Disease,
            Gene); bf16 on CUDA, float32 on CPU; transformers' attention SDPA unless --hf-attn eager
  batch     the same for both: ``--batch`` abstracts of ``--lengths`` tokens (uniform, default
            200-500, what 150-300 words become), right-padded, starting with </s> as the task does
  timed     one warm-up, then the median of ``--repeat`` forward passes under inference_mode, each
            bracketed by torch.cuda.synchronize() (bench_generation.median_seconds)
  reported  abstracts/s of each and the ratio (one row per batch size, the --json schema of
            bench_generation.py), plus, on the real (unpadded) tokens: how many label ids (argmax)
            agree and the largest |logit difference|, in the run's dtype and again after both models
            are upcast to float32 (the same weights, so only the arithmetic differs)
  --check   exit 1 unless the float32 logits agree within --atol (label ids are reported, not
            required equal: on random weights a near-tie can flip one argmax in ~10^5 tokens)

    python benchmarks/bench_ner.py                      # GPU: BioGPT-base, 64 abstracts of 200-500 tokens
    python benchmarks/bench_ner.py --batch 16,64,128 --hf-attn eager --json ner.json
    python benchmarks/bench_ner.py --quick              # tiny model on CPU: a smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import (  # noqa: E402  (after the path insert: benchmarks/ is no package)
    PUBMED_ABSTRACTS,
    QUICK,
    ROW_HEADER,
    device_label,
    make_row,
    median_seconds,
    model_config,
    same_random_weights,
)

FULL = dict(config="base", batch=(64,), lengths=(200, 500))
QUICK_NER = dict(config=QUICK["config"], batch=(4,), lengths=(20, 60))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random model, small batch, 1 repeat (CPU smoke run)")
    p.add_argument(
        "--config",
        choices=["base", "large"],
        default=None,
        help="model size (default base; with --quick: a tiny model)",
    )
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument("--hf-attn", choices=["sdpa", "eager"], default="sdpa", help="transformers' attention")
    p.add_argument("--batch", help="abstracts per forward pass, comma-separated (default 64; --quick 4)")
    p.add_argument("--lengths", help="abstract lengths in tokens, LO-HI (default 200-500; --quick 20-60)")
    p.add_argument("--labels", type=int, default=7, help="number of token labels (default 7: BIO over 3 types)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per batch size (default 5, --quick 1)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the float32 logits agree within --atol")
    p.add_argument("--atol", type=float, default=1e-3, help="float32 logit tolerance for --check (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def compare(hf_logits, our_logits, mask) -> tuple[int, int, float]:
    """(label ids that agree, real tokens, max |logit difference|) over the tokens where mask is 1."""
    real = mask.bool()
    a, b = hf_logits[real].float(), our_logits[real].float()
    return int((a.argmax(-1) == b.argmax(-1)).sum()), int(real.sum()), float((a - b).abs().max())


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    import biogpt

    sizes = dict(QUICK_NER if args.quick else FULL)
    if args.batch:
        sizes["batch"] = tuple(int(x) for x in args.batch.split(","))
    if args.lengths:
        sizes["lengths"] = tuple(int(x) for x in args.lengths.split("-"))
    sizes["config"] = args.config or sizes["config"]
    size = f"BioGPT-{sizes['config']}" if isinstance(sizes["config"], str) else "quick (tiny model)"
    config = model_config(sizes["config"]) if isinstance(sizes["config"], str) else sizes["config"]
    config = dict(config, num_labels=args.labels)
    lo, hi = sizes["lengths"]
    if not 2 <= lo <= hi <= config["max_position_embeddings"]:
        raise SystemExit(f"--lengths {lo}-{hi}: need 2 <= LO <= HI <= {config['max_position_embeddings']} positions")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    repeat = args.repeat or (1 if args.quick else 5)
    rng = random.Random(args.seed)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def batch(n):
        """n right-padded abstracts (ids, mask) of random lengths, each starting with </s> (id 2)."""
        rows = [
            [2] + [rng.randrange(4, config["vocab_size"]) for _ in range(rng.randint(lo, hi) - 1)] for _ in range(n)
        ]
        T = max(map(len, rows))
        ids = torch.tensor([r + [1] * (T - len(r)) for r in rows], device=device)
        return ids, (ids != 1).long()

    transformers.utils.logging.disable_progress_bar()
    hf, ours = same_random_weights(
        transformers.BioGptForTokenClassification,
        biogpt.BioGptForTokenClassification,
        config,
        dtype,
        device,
        args.hf_attn,
        args.seed,
    )
    print(
        f"# {datetime.date.today()}  {device_label(device)}  {dtype}  torch {torch.__version__}  "
        f"transformers {transformers.__version__}  hf-attn {args.hf_attn}  {size}  {args.labels} labels  "
        f"lengths {lo}-{hi}  repeat {repeat}"
    )
    print(ROW_HEADER)
    rows, batches = [], []
    with torch.inference_mode():
        for B in sizes["batch"]:
            ids, mask = batch(B)
            batches.append((ids, mask))
            t_hf, out_hf = median_seconds(lambda: hf(input_ids=ids, attention_mask=mask).logits, repeat, sync)
            t_us, out_us = median_seconds(lambda: ours(input_ids=ids, attention_mask=mask).logits, repeat, sync)
            same, total, diff = compare(out_hf, out_us, mask)
            rows.append(
                make_row(
                    f"ner b={B}",
                    "abstracts/s",
                    B / t_hf,
                    B / t_us,
                    "",
                    f"{total / t_us:,.0f} real tok/s (transformers {total / t_hf:,.0f}); {dtype}: label ids agree "
                    f"{same}/{total}, max |dlogit| {diff:.2e}; {device.type.upper()}-hours for 36M abstracts: "
                    f"transformers {PUBMED_ABSTRACTS / (B / t_hf) / 3600:,.0f}, biogpt {PUBMED_ABSTRACTS / (B / t_us) / 3600:,.0f}",
                    ids_agree=[same, total],
                    max_abs_logit_diff=diff,
                )
            )

    # The same weights in float32 on both sides: what is left is each side's arithmetic.
    hf.float()
    ours.float()
    worst = 0.0
    with torch.inference_mode():
        for row, (ids, mask) in zip(rows, batches):
            same, total, diff = compare(
                hf(input_ids=ids, attention_mask=mask).logits, ours(input_ids=ids, attention_mask=mask).logits, mask
            )
            row.update(fp32_ids_agree=[same, total], fp32_max_abs_logit_diff=diff)
            worst = max(worst, diff)
            print(
                f"float32 check {row['case']}: label ids agree {same}/{total}, max |dlogit| {diff:.2e} "
                f"(--atol {args.atol:g})",
                flush=True,
            )

    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.check and not worst <= args.atol:
        print(f"--check: float32 logits differ by up to {worst:.2e} > --atol {args.atol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
