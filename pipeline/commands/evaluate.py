"""``biomine eval ner|re|qa|hoc|link``: score a model on gold data with the original metrics.

The work is done by :func:`pipeline.evaluation.ner.evaluate_ner`, :func:`pipeline.evaluation.re.evaluate_re`,
:func:`pipeline.evaluation.generated.evaluate_generated` (qa, hoc) and
:func:`pipeline.evaluation.linking.evaluate_linking`; this module only parses options, prints the
report and optionally writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biogpt.task_spec import RE_TASKS
from pipeline.commands import require_positive

NER_HELP = """\
Strict mention-level precision/recall/F1 per entity type of a token-classification model on a
PubTator file (BioCreative V CDR's format): a predicted mention counts only with the same document,
start and end offsets (into title + " " + abstract) and type as a gold mention.

examples:
  biomine eval ner --data CDR_TestSet.PubTator.txt --model models/ner-bc5cdr
  biomine eval ner --data dev.PubTator.txt --model models/ner --json out/ner-dev.json
"""

RE_HELP = """\
Precision/recall/F1 of a converted fine-tuned RE checkpoint on a BioGPT test.json, with the
original evaluation: hard-match triples for DDI and KD-DTI (examples/RE-DDI/hard_match_evaluation.py,
ontology-level headline), CID pairs for BC5CDR (the BioCreative V evaluator). Inputs are built
exactly as the fine-tuning data (lower-cased, learned prompt tokens), decoding is greedy.

The defaults are the original protocol: generation up to the position limit (1,024 positions:
3 of 191 DDI and 3 of 1,159 KD-DTI test targets are longer than 256 tokens), float32, and records
without gold relations left out (the original data preparation drops them). --max-new-tokens N,
--dtype auto (bfloat16 on a GPU) and --include-empty are faster or broader, not the original: the
report names the protocol that ran.

examples:
  biomine eval re --task ddi --data BioGPT/data/DDI/raw/test.json --model models/re-ddi
  biomine eval re --task ddi --data BioGPT/data/DDI/raw/test.json --model biogpt:re-ddi   # after `biomine models pull re-ddi`
  biomine eval re --task bc5cdr --data data/BC5CDR/test.json --model models/re-bc5cdr --limit 50
  biomine eval re --task kd-dti --data test.json --model models/re-dti --predictions out/dti.jsonl
"""


QA_HELP = """\
Accuracy on PubMedQA exactly as microsoft/BioGPT's examples/QA-PubMedQA scores it: each generated
line is stripped, loses one final ".", is cut after its last run of echoed prompt tokens
(learned1 .. learnedN; else after "we can conclude that", "we have that" or "in conclusion,"), and
the answer is what follows "the answer to the question given the context is" (postprocess.py), or
"failed"; accuracy is the share of answers equal to the gold yes/no/maybe (hard_match_evaluation.py).

--data: a TSV of the original repository's layout (`question: Q context: C answer: A<TAB>label`) or
PubMedQA's test_set.json (QUESTION, CONTEXTS, final_decision; or test_ground_truth.json with
--generations). --generations: one generated line per record, in the data's order, as infer.sh writes
them (echoed source and learnedN tokens included). --model: a fine-tuned PubMedQA prompt checkpoint,
run as the original infers (input `question: Q context: C `, greedy, float32, to the position limit).

examples:
  biomine eval qa --data test_set.json --generations generate_checkpoint.pt.detok --report out/qa.json
  biomine eval qa --data test_set.json --model biogpt:qa-pubmedqa   # after `biomine models pull qa-pubmedqa`
"""

HOC_HELP = """\
Micro-F1 on HoC (Hallmarks of Cancer) exactly as microsoft/BioGPT's examples/DC-HoC scores it: each
generated line is cleaned as PubMedQA's (one final "." dropped, cut after the echoed learned1 ..
prompt tokens), the labels are what follows "the type of this document is" (postprocess.py), or
"failed"; predicted and gold labels are split on "|", stripped and binarised over the 11 classes,
"empty" included, labels outside them ignored; micro-averaged F1 (hard_match_evaluation.py).
The original repository's valid.tsv and test.tsv are identical files.

--data: a HoC TSV (`sentence<TAB>label|label`). --generations: one generated line per sentence, in the
data's order, as infer.sh writes them. --model: the fine-tuned HoC prompt checkpoint, run as the
original infers (the sentence with a final ".", greedy, float32, to the position limit).

examples:
  biomine eval hoc --data BioGPT/data/HoC/raw/test.tsv --generations generate_checkpoint_last.pt.detok
  biomine eval hoc --data BioGPT/data/HoC/raw/test.tsv --model biogpt:dc-hoc --report out/hoc.json
"""


LINK_HELP = """\
Link every gold mention of a PubTator file (mentions annotated -1 left out) with a concept
dictionary and compare with the gold ids (a composite mention's D1|D2 as one id): accuracy
(correct / mentions), precision (correct / linked), coverage (linked / mentions), per type, and how
many mentions each matching rule linked (docs/linking.md). An unlinked mention is never a guess.

examples:
  biomine vocab build --pubtator CDR_DevelopmentSet.PubTator.txt --out vocab/bc5cdr-dev.parquet
  biomine eval link --data CDR_TestSet.PubTator.txt --vocab vocab/bc5cdr-dev.parquet
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate NER, RE, PubMedQA or HoC models, or entity linking, on gold data",
        description="Evaluate a model with the task's original metric (ner, re, qa, hoc), or a "
        "concept dictionary's entity linking (link).",
    )
    kinds = p.add_subparsers(dest="eval_kind", metavar="TASK")

    ner = kinds.add_parser(
        "ner",
        help="strict mention P/R/F1 on a PubTator file",
        description=NER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ner.add_argument("--data", required=True, metavar="PUBTATOR_FILE", help="gold mentions (PubTator format)")
    ner.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="token-classification model (biomine train ner): a directory or a Hub id",
    )
    _common(ner, batch=16)
    ner.set_defaults(func=_run_ner)

    rel = kinds.add_parser(
        "re",
        help="the original RE metrics on a BioGPT test.json",
        description=RE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rel.add_argument("--task", required=True, choices=list(RE_TASKS), help="relation task")
    rel.add_argument("--data", required=True, metavar="FILE", help="gold file in BioGPT's test.json layout")
    rel.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="fine-tuned checkpoint of --task: a directory or biogpt:NAME (`biomine models pull re-ddi`)",
    )
    rel.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="cap the generation per document (default: up to the position limit, as the original)",
    )
    rel.add_argument(
        "--include-empty",
        action="store_true",
        help="also score records without gold relations (the original leaves them out)",
    )
    rel.add_argument("--limit", type=int, metavar="N", help="score only the first N documents (a quick look)")
    rel.add_argument("--predictions", metavar="FILE.jsonl", help="also write each document's generation")
    _common(rel, batch=16, dtype="float32")
    rel.set_defaults(func=_run_re, settings={"task": "--task", "model": "--model"})
    for kind, task, help_text, what in (
        ("qa", "pubmedqa", QA_HELP, "PubMedQA accuracy, the original protocol"),
        ("hoc", "hoc", HOC_HELP, "HoC micro-F1 (11 classes), the original protocol"),
    ):
        gen = kinds.add_parser(
            kind, help=what, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        gen.add_argument("--data", required=True, metavar="FILE", help="gold data (see above)")
        source = gen.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--generations", metavar="FILE", help="generated lines to score, one per record in the data's order"
        )
        source.add_argument(
            "--model",
            metavar="MODEL",
            help=f"fine-tuned {task} prompt checkpoint to generate with: a directory or biogpt:NAME",
        )
        gen.add_argument("--limit", type=int, metavar="N", help="with --model: only the first N records (a quick look)")
        gen.add_argument(
            "--predictions",
            metavar="FILE",
            help="with --model: also write the generated lines, in the layout --generations reads",
        )
        _common(gen, batch=16, dtype="float32", report="--report")
        gen.set_defaults(func=_run_generated, task=task, settings={"model": "--model"})

    link = kinds.add_parser(
        "link",
        help="entity-linking accuracy on the gold mentions of a PubTator file",
        description=LINK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    link.add_argument("--data", required=True, metavar="PUBTATOR_FILE", help="gold mentions with their ids (PubTator)")
    link.add_argument("--vocab", required=True, metavar="DICT.parquet", help="a dictionary from `biomine vocab build`")
    link.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    link.set_defaults(func=_run_link)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _run_link(args) -> int:
    from pipeline.evaluation.linking import evaluate_linking, format_linking_report

    _check_file(args.data, "--data")
    _check_file(args.vocab, "--vocab")
    report = evaluate_linking(args.data, args.vocab)
    print(format_linking_report(report))
    _write(report, args.json)
    return 0


def _common(parser, batch: int, dtype: str = "auto", report: str | None = None) -> None:
    parser.add_argument("--batch-size", type=int, default=batch, help=f"documents per model batch (default {batch})")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default=dtype,
        choices=["auto", "float32", "bfloat16", "float16"],
        help=f"auto = bfloat16 on GPU, float32 on CPU (default {dtype})",
    )
    flags = (report, "--json") if report else ("--json",)
    parser.add_argument(*flags, dest="json", metavar="FILE", help="write the full report as JSON")


def _check_file(path: str, what: str) -> None:
    from biogpt.errors import BioMineError

    if not Path(path).is_file():
        raise BioMineError(f"{what} {path} does not exist or is not a file")


def _write(report: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def _model(spec: str) -> str:
    """A model directory, Hub id or ``biogpt:NAME`` as a local directory (:mod:`biogpt.hub`)."""
    from biogpt import hub

    return str(hub.resolve(spec).path)


def _run_ner(args) -> int:
    from pipeline.evaluation.ner import evaluate_ner, format_ner_report

    _check_file(args.data, "--data")
    report = evaluate_ner(
        _model(args.model), args.data, batch_size=args.batch_size, device=args.device, dtype=args.dtype
    )
    print(format_ner_report(report))
    _write(report, args.json)
    return 0


def _run_re(args) -> int:
    from pipeline.evaluation.re import evaluate_re, format_re_report

    _check_file(args.data, "--data")
    require_positive(args, "--max-new-tokens")
    report = evaluate_re(
        args.task,
        args.data,
        _model(args.model),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        predictions_out=args.predictions,
        include_empty=args.include_empty,
    )
    print(format_re_report(report))
    _write(report, args.json)
    return 0


def _run_generated(args) -> int:
    from pipeline.errors import JobConfigError
    from pipeline.evaluation.generated import evaluate_generated, format_generated_report

    _check_file(args.data, "--data")
    require_positive(args, "--limit", "--batch-size")
    if args.generations is not None:
        for flag in ("limit", "predictions"):
            if getattr(args, flag) is not None:
                raise JobConfigError(f"--{flag} applies to --model only: --generations gives one line per record")
    report = evaluate_generated(
        args.task,
        args.data,
        generations=args.generations,
        model_dir=_model(args.model) if args.model is not None else None,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        predictions_out=args.predictions,
    )
    print(format_generated_report(report))
    _write(report, args.json)
    return 0
