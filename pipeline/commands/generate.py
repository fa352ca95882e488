"""``biomine generate``: continue prompts with a causal BioGPT (a quick look at a checkpoint).

Uses :meth:`biogpt.BioGptForCausalLM.generate` (transformers' semantics) on a left-padded batch and
prints one detokenised continuation per prompt. For whole corpora use a job (``biomine run``).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.commands import plain

EPILOG = """\
examples:
  biomine generate --model models/biogpt "COVID-19 is" "Aspirin inhibits"
  biomine generate --model microsoft/biogpt "COVID-19 is"          # from the Hugging Face Hub (cached)
  biomine generate --model models/biogpt --num-beams 5 --max-new-tokens 64 "Metformin is"
  biomine generate --model models/biogpt --do-sample --top-p 0.9 --seed 0 "The p53 gene"
  echo "Warfarin interacts with" | biomine generate --model models/biogpt -
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue prompts with a causal BioGPT",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt texts; '-' reads one prompt per stdin line")
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="causal LM: a directory (Hugging Face layout), a Hub id "
        "such as microsoft/biogpt[@revision], or biogpt:NAME",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    p.add_argument("--min-new-tokens", type=int, default=0, help="no end-of-text before this many (default 0)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (default 1 = greedy)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens (default: no limit)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0, help="random seed for --do-sample (default 0)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from biogpt import BioGptForCausalLM, BioGptTokenizer
    from biogpt.errors import BioMineError
    from pipeline.tasks.base import load_model

    prompts = [line.rstrip("\n") for line in sys.stdin] if args.prompts == ["-"] else list(args.prompts)
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise BioMineError("no prompt given: pass PROMPT arguments or '-' with one prompt per stdin line")
    if args.max_new_tokens < 1 or args.num_beams < 1:
        raise BioMineError("--max-new-tokens and --num-beams must be >= 1")
    tok = BioGptTokenizer.from_pretrained(args.model)
    model = load_model(BioGptForCausalLM, args.model, args.dtype, args.device, "generate")
    batch = tok(prompts, padding=True, padding_side="left", return_tensors="pt").to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(args.seed) if args.do_sample else None
    ids = model.generate(
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    )
    new = ids[:, batch["input_ids"].shape[1] :]
    for prompt, text in zip(prompts, tok.batch_decode(new.tolist(), skip_special_tokens=True)):
        print(f"{prompt} {text}".strip())
    return 0
