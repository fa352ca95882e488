"""``biomine convert fairseq SRC DST``: original BioGPT fairseq checkpoints -> Hugging Face layout.

The work is done by :func:`biogpt.fairseq.convert_fairseq_checkpoint`; see docs/convert.md.
"""

from __future__ import annotations

import argparse

FAIRSEQ_HELP = """\
Convert an original BioGPT fairseq checkpoint (pre-trained or a fine-tuned RE/QA/DC prompt model)
into a directory that biogpt and transformers load: config.json, model.safetensors, the tokenizer
(vocab.json, merges.txt, added learned prompt tokens) and biomine_task.json (task, prompt ids,
source formatting, decoding settings).

examples:
  biomine convert fairseq checkpoints/RE-DDI-BioGPT models/re-ddi \\
      --dict BioGPT/data/dict.txt --bpecodes BioGPT/data/bpecodes
  biomine convert fairseq Pre-trained-BioGPT/checkpoint.pt models/biogpt   # dict.txt/bpecodes beside it
  biomine convert fairseq ckpt/checkpoint_last.pt models/hoc --task dc-hoc --dtype bfloat16
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert original BioGPT checkpoints",
        description="Convert checkpoints into the Hugging Face layout.",
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    fairseq = formats.add_parser(
        "fairseq",
        help="an original fairseq checkpoint (checkpoint.pt, checkpoint_avg.pt)",
        description=FAIRSEQ_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fairseq.add_argument("src", metavar="SRC", help="checkpoint file, or the directory holding it")
    fairseq.add_argument("dst", metavar="DST", help="output directory (created)")
    fairseq.add_argument(
        "--dict", dest="dict_file", metavar="DICT_TXT", help="fairseq dict.txt (default: next to the checkpoint)"
    )
    fairseq.add_argument(
        "--bpecodes", dest="bpecodes_file", metavar="BPECODES", help="fastBPE codes (default: next to the checkpoint)"
    )
    fairseq.add_argument(
        "--task",
        help="task of the checkpoint: re-ddi, re-dti, re-bc5cdr, qa-pubmedqa, dc-hoc or "
        "lm (default: guessed from its data path and file path)",
    )
    fairseq.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="cast the weights (default: keep the checkpoint's dtype)",
    )
    fairseq.add_argument("--force", action="store_true", help="write into DST even if it is not empty")
    fairseq.set_defaults(
        func=_run_fairseq,
        settings={"dict_file": "--dict", "bpecodes_file": "--bpecodes", "task": "--task", "overwrite": "--force"},
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _run_fairseq(args) -> int:
    from biogpt.fairseq import convert_fairseq_checkpoint

    result = convert_fairseq_checkpoint(
        args.src,
        args.dst,
        dict_file=args.dict_file,
        bpecodes_file=args.bpecodes_file,
        task=args.task,
        dtype=args.dtype,
        overwrite=args.force,
    )
    prompt = (
        f", learned prompt {result.learned_prompt} tokens at ids {result.prompt_token_ids[0]}.."
        f"{result.prompt_token_ids[-1]}"
        if result.prompt_token_ids
        else ""
    )
    notes = f" ({len(result.warnings)} warnings, logged above)" if result.warnings else ""
    print(
        f"converted {result.checkpoint} -> {result.dst}: task {result.task}, vocab {result.vocab_size}{prompt}{notes}"
    )
    return 0
