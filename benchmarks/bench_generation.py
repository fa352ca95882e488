"""Generation speed: biogpt's Engine against transformers' generate on the same random weights.

Builds a random BioGPT-base (``biogpt.config.BIOGPT_BASE``) with transformers, saves it once and
loads it with both implementations (bf16 on CUDA; transformers with SDPA attention unless
``--hf-attn eager``), then times every case for both in this one run: a warm-up, then the median of
``--repeat`` runs, each bracketed by ``torch.cuda.synchronize()``. EOS is disabled so both sides
produce exactly the requested tokens (random weights would otherwise stop at arbitrary points).

  case          timed                                                           reported
  prefill       64 prompts x 512: transformers forward(use_cache=True,          prompt tokens/s
                logits_to_keep=1), what its generate runs first; Engine.prefill
                (K/V into the static cache + last-token logits)
  greedy b=N    N = 1, 32, 128; prompt 256, 64 new: generate(do_sample=False)   new tokens/s
                vs Engine.run (greedy, CUDA graphs)                             (and ms/token)
  logprobs b=N  the greedy sizes and prompt length; the engine against itself: new tokens/s
                Engine.run(logprobs=True), the scored path (relation            (ms/step of each),
                extraction), in the transformers column vs Engine.run, the      ids that agree
                plain path (summaries); the ratio is what a caller that needs   (all, or it is a
                no log-probabilities saves                                      bug)
  beam-5 b=32   prompt 256, 64 new: generate(num_beams=5) vs                    new tokens/s of
                Engine.beam_search                                              the best beams
  ragged RE     --ragged-prompts prompts of 200-600 tokens, outputs of 10-300   abstracts/s and
                tokens: transformers in batches of 64, each running to its      GPU-hours for 36M
                longest output (what real EOS does to a static batch);          abstracts
                Engine.run with per-prompt budgets (continuous batching)

    python benchmarks/bench_generation.py                # on a GPU: the full table
    python benchmarks/bench_generation.py --compile      # + torch.compile inside the CUDA graphs
    python benchmarks/bench_generation.py --quick        # tiny model on CPU: a smoke run (< 1 min)
    python benchmarks/bench_generation.py --config large --cases prefill   # BioGPT-Large prefill
    python benchmarks/bench_generation.py --dtype float32 --cases greedy --greedy 1,8 --check-ids

``--check-ids`` exits 1 when a greedy id differs from transformers' (use it in float32: in bf16 the
two sides' kernels round differently and random weights have many near-ties, so ids drift apart),
or when a plain and a scored engine run of the same prompts differ at all (they must never).
The issue's targets are printed for BioGPT-base on CUDA only. ``--json`` rows carry ``ms_per_token``
and ``ids_agree`` (same, total) for greedy and logprobs cases (logprobs rows: ``ms_per_token`` of the
plain path and ``scored_ms_per_token``). The helpers above ``main`` (timing, the same random
weights in both, row format) are shared with ``bench_ner.py`` and ``gpu_proof.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUBMED_ABSTRACTS = 36_000_000
FULL = dict(
    config="base",
    prefill=(64, 512),
    greedy=(1, 32, 128),
    prompt=256,
    new=64,
    beam=(5, 32),
    ragged_prompt=(200, 600),
    ragged_out=(10, 300),
    ragged_n=256,
    hf_batch=64,
    ragged_slots=128,
)
QUICK = dict(
    config=dict(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
    ),
    prefill=(4, 64),
    greedy=(1, 4),
    prompt=32,
    new=16,
    beam=(5, 4),
    ragged_prompt=(20, 60),
    ragged_out=(2, 30),
    ragged_n=12,
    hf_batch=4,
    ragged_slots=4,
)
# The transformers 5.17 numbers on one H100 (bf16) and the engine's targets, as ratios.
TARGETS = {"prefill": ">= 1.4x", "greedy b=1": "<= 1 ms/token", "greedy b=128": ">= 6x", "beam-5 b=32": ">= 5x"}
ROW_HEADER = f"{'case':<14} {'metric':<13} {'transformers':>12} {'biogpt':>12} {'ratio':>8}  {'target':<14} note"


def model_config(name: str) -> dict:
    """The published sizes by name: ``base`` (biogpt.config.BIOGPT_BASE) or ``large`` (BIOGPT_LARGE)."""
    from biogpt.config import BIOGPT_BASE, BIOGPT_LARGE

    return {"base": BIOGPT_BASE, "large": BIOGPT_LARGE}[name]


def median_seconds(fn, repeat: int, sync, warmup: int = 1):
    """Median seconds of ``repeat`` runs of fn after ``warmup`` untimed ones, each bracketed by
    ``sync()`` (the device's synchronize); and fn's last result."""
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def median_seconds_paired(fns, repeat: int, sync, warmup: int = 1):
    """:func:`median_seconds` of several functions timed in turn within each repeat, in alternating
    order (a b, b a, a b, ...), so a load that drifts during the run, or whichever runs first, weighs
    on all of them alike; and each one's last result."""
    outs = [None] * len(fns)
    for _ in range(warmup):
        outs = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeat):
        for k in range(len(fns)) if r % 2 == 0 else reversed(range(len(fns))):
            sync()
            start = time.perf_counter()
            outs[k] = fns[k]()
            sync()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], outs


def same_random_weights(hf_cls, ours_cls, config: dict, dtype, device, hf_attn: str = "sdpa", seed: int = 0):
    """(transformers model, biogpt model), eval mode, on ``device`` in ``dtype``, with the same random
    weights: ``hf_cls`` builds them (seeded), saves them once, and both classes load that directory."""
    import torch
    import transformers

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf_cls(transformers.BioGptConfig(**config)).save_pretrained(tmp)
        hf = hf_cls.from_pretrained(tmp, dtype=dtype, attn_implementation=hf_attn).to(device).eval()
        ours = ours_cls.from_pretrained(tmp, dtype=dtype, device=device).eval()
    return hf, ours


def device_label(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def make_row(case: str, metric: str, theirs: float, mine: float, target: str = "", note: str = "", **extra) -> dict:
    """One result row (the --json schema of every benchmark here), printed as a line of the table."""
    row = dict(
        case=case,
        metric=metric,
        transformers=theirs,
        biogpt=mine,
        ratio=mine / theirs,
        target=target,
        note=note,
        **extra,
    )
    print(
        f"{case:<14} {metric:<13} {theirs:>12,.1f} {mine:>12,.1f} {row['ratio']:>7.2f}x  {target:<14} {note}",
        flush=True,
    )
    return row


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random model, small sizes, 1 repeat (CPU smoke run)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--config",
        choices=["base", "large"],
        default=None,
        help="model size: BioGPT-base (default) or BioGPT-Large; default with --quick: a tiny model",
    )
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument("--compile", action="store_true", help="Engine(compile=True): torch.compile the decode step")
    p.add_argument("--hf-attn", choices=["sdpa", "eager"], default="sdpa", help="transformers' attention")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 3, --quick 1)")
    p.add_argument("--cases", default="prefill,greedy,logprobs,beam,ragged", help="comma-separated subset")
    p.add_argument("--ragged-prompts", type=int, default=None, help="prompts in the ragged RE workload")
    p.add_argument("--prefill", help="override the prefill size, BxT (e.g. 8x128)")
    p.add_argument("--greedy", help="override the greedy batch sizes, comma-separated (e.g. 1,8)")
    p.add_argument("--beam", help="override the beam case, KxB (beams x prompts, e.g. 5x4)")
    p.add_argument("--prompt-len", type=int, help="override the greedy/beam prompt length")
    p.add_argument("--new-tokens", type=int, help="override the greedy/beam new tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--check-ids",
        action="store_true",
        help="exit 1 if any greedy id differs from transformers' (meant for --dtype float32)",
    )
    p.add_argument("--json", help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    import biogpt
    from biogpt.engine import Engine

    sizes = dict(QUICK if args.quick else FULL)
    if args.prefill:
        sizes["prefill"] = tuple(int(x) for x in args.prefill.split("x"))
    if args.greedy:
        sizes["greedy"] = tuple(int(x) for x in args.greedy.split(","))
    if args.beam:
        sizes["beam"] = tuple(int(x) for x in args.beam.split("x"))
    sizes["prompt"] = args.prompt_len or sizes["prompt"]
    sizes["new"] = args.new_tokens or sizes["new"]
    sizes["config"] = args.config or sizes["config"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    repeat = args.repeat or (1 if args.quick else 3)
    cases = set(args.cases.split(","))
    n_ragged = args.ragged_prompts or sizes["ragged_n"]
    config = model_config(sizes["config"]) if isinstance(sizes["config"], str) else sizes["config"]
    rng = random.Random(args.seed)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, warmup=1):
        return median_seconds(fn, repeat, sync, warmup)

    def prompt(n):
        return [2] + [rng.randrange(4, config["vocab_size"]) for _ in range(n - 1)]

    def left_pad(prompts):
        T = max(map(len, prompts))
        ids = torch.tensor([[1] * (T - len(p)) + p for p in prompts], device=device)
        return ids, (ids != 1).long()

    transformers.utils.logging.disable_progress_bar()

    # --- the same random weights, loaded by both -------------------------------------------------
    hf, ours = same_random_weights(
        transformers.BioGptForCausalLM, biogpt.BioGptForCausalLM, config, dtype, device, args.hf_attn, args.seed
    )
    hf.generation_config.eos_token_id = None  # run every row to its length cap (see the docstring)
    hf.generation_config.pad_token_id = 1
    # One engine for every case, its cache sized to the largest (it is most of the memory).
    need = {
        "prefill": (sizes["prefill"][0], sizes["prefill"][1]),
        "greedy": (max(sizes["greedy"]), sizes["prompt"] + sizes["new"]),
        "logprobs": (max(sizes["greedy"]), sizes["prompt"] + sizes["new"]),
        "beam": (sizes["beam"][0] * sizes["beam"][1], sizes["prompt"] + sizes["new"]),
        "ragged": (sizes["ragged_slots"], sizes["ragged_prompt"][1] + sizes["ragged_out"][1]),
    }
    max_batch = max(b for case, (b, _) in need.items() if case in cases)
    longest = max(n for case, (_, n) in need.items() if case in cases)
    max_seq_len = min(-(-longest // 64) * 64, config["max_position_embeddings"])  # aligned attention masks
    engine = Engine(ours, max_batch=max_batch, max_seq_len=max_seq_len, compile=args.compile)

    size = "quick (tiny model)" if not isinstance(sizes["config"], str) else f"BioGPT-{sizes['config']}"
    print(
        f"# {datetime.date.today()}  {device_label(device)}  {dtype}  torch {torch.__version__}  "
        f"transformers {transformers.__version__}  hf-attn {args.hf_attn}  "
        f"Engine(max_batch={max_batch}, max_seq_len={max_seq_len}, cuda_graph={engine.cuda_graph}, "
        f"compile={args.compile})  "
        f"{size}  repeat {repeat}"
    )
    rows = []
    # the targets apply to this only
    full_gpu_run = device.type == "cuda" and not args.quick and sizes["config"] == "base"
    ids_differ = []

    def add(case, metric, theirs, mine, note="", **extra):
        rows.append(make_row(case, metric, theirs, mine, TARGETS.get(case, "") if full_gpu_run else "", note, **extra))

    print(ROW_HEADER)
    with torch.inference_mode():
        if "prefill" in cases:
            B, T = sizes["prefill"]
            prompts = [prompt(T) for _ in range(B)]
            ids = torch.tensor(prompts, device=device)
            t_hf, _ = timed(lambda: hf(ids, use_cache=True, logits_to_keep=1))
            t_us, _ = timed(lambda: engine.prefill(prompts))
            add("prefill", "prompt tok/s", B * T / t_hf, B * T / t_us, f"{B}x{T}")

        if "greedy" in cases:
            new = sizes["new"]
            for B in sizes["greedy"]:
                prompts = [prompt(sizes["prompt"]) for _ in range(B)]
                ids, mask = left_pad(prompts)
                t_hf, out_hf = timed(lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False))
                t_us, out_us = timed(lambda: engine.run(prompts, new, eos_token_id=[]))
                assert out_hf.shape[1] == ids.shape[1] + new and all(len(o) == new for o in out_us)
                same = sum(a == b for o, r in zip(out_us, out_hf[:, ids.shape[1] :].tolist()) for a, b in zip(o, r))
                add(
                    f"greedy b={B}",
                    "new tok/s",
                    B * new / t_hf,
                    B * new / t_us,
                    f"{t_us / new * 1e3:.2f} ms/step (transformers {t_hf / new * 1e3:.2f}); ids agree {same}/{B * new}",
                    ms_per_token=t_us / new * 1e3,
                    ids_agree=[same, B * new],
                )
                if same != B * new:
                    ids_differ.append(f"greedy b={B}: {B * new - same} of {B * new} ids differ")

        if "logprobs" in cases:
            # The engine against itself: what a caller that needs no log-probabilities (summaries)
            # saves per decode step over one that asks for them (relation extraction), timed in turn.
            # Same prompts, so the ids must be identical: asking for log-probabilities never changes a
            # choice.
            new = sizes["new"]
            for B in sizes["greedy"]:
                prompts = [prompt(sizes["prompt"]) for _ in range(B)]
                (t_sc, t_pl), ((out_sc, lps), out_pl) = median_seconds_paired(
                    [
                        lambda: engine.run(prompts, new, eos_token_id=[], logprobs=True),
                        lambda: engine.run(prompts, new, eos_token_id=[]),
                    ],
                    repeat,
                    sync,
                )
                assert all(len(o) == new for o in out_pl) and all(len(lp) == new for lp in lps)
                same = sum(a == b for o, r in zip(out_pl, out_sc) for a, b in zip(o, r))
                add(
                    f"logprobs b={B}",
                    "new tok/s",
                    B * new / t_sc,
                    B * new / t_pl,
                    f"scored (logprobs=True) vs plain Engine.run, not transformers: {t_pl / new * 1e3:.2f} ms/step "
                    f"plain, {t_sc / new * 1e3:.2f} scored; ids agree {same}/{B * new}",
                    ms_per_token=t_pl / new * 1e3,
                    scored_ms_per_token=t_sc / new * 1e3,
                    ids_agree=[same, B * new],
                )
                if same != B * new:
                    ids_differ.append(f"logprobs b={B}: plain and scored runs differ in {B * new - same} ids")

        if "beam" in cases:
            K, B = sizes["beam"]
            new = sizes["new"]
            prompts = [prompt(sizes["prompt"]) for _ in range(B)]
            ids, mask = left_pad(prompts)
            t_hf, _ = timed(
                lambda: hf.generate(
                    ids, attention_mask=mask, max_new_tokens=new, num_beams=K, do_sample=False, early_stopping=False
                )
            )
            t_us, _ = timed(lambda: engine.beam_search(prompts, new, num_beams=K, eos_token_id=[]))
            add(f"beam-{K} b={B}", "new tok/s", B * new / t_hf, B * new / t_us, f"prompt {sizes['prompt']}")

        if "ragged" in cases:
            lo, hi = sizes["ragged_prompt"]
            prompts = [prompt(rng.randint(lo, hi)) for _ in range(n_ragged)]
            budgets = [rng.randint(*sizes["ragged_out"]) for _ in prompts]
            hb = sizes["hf_batch"]

            def hf_ragged():
                for s in range(0, len(prompts), hb):
                    ids, mask = left_pad(prompts[s : s + hb])
                    hf.generate(ids, attention_mask=mask, max_new_tokens=max(budgets[s : s + hb]), do_sample=False)

            # transformers is warm from the cases above; the engine's warm-up captures its graphs.
            t_hf, _ = timed(hf_ragged, warmup=0 if cases != {"ragged"} else 1)
            t_us, _ = timed(lambda: engine.run(prompts, budgets, eos_token_id=[]))
            rate_hf, rate_us = n_ragged / t_hf, n_ragged / t_us
            add(
                "ragged RE",
                "abstracts/s",
                rate_hf,
                rate_us,
                f"{n_ragged} prompts; {device.type.upper()}-hours for 36M abstracts: transformers "
                f"{PUBMED_ABSTRACTS / rate_hf / 3600:,.0f}, biogpt {PUBMED_ABSTRACTS / rate_us / 3600:,.0f}",
            )

    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.check_ids and ids_differ:
        print("--check-ids: " + "; ".join(ids_differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
