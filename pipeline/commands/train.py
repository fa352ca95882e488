"""``biomine train ner|classify``: fine-tune BioGPT for named-entity recognition on a PubTator file,
or as a multi-label document classifier on a ``text<TAB>a|b`` TSV (the HoC layout).

The work is done by :func:`pipeline.training.ner.train_ner` (docs/ner.md) and
:func:`pipeline.training.classify.train_classify` (docs/tasks.md, "Document classification").
"""

from __future__ import annotations

import argparse

NER_DESCRIPTION = """\
Fine-tune a BioGPT checkpoint as a token classifier (BioGptForTokenClassification) that tags
entity mentions, and save it as a model directory that `[tasks.ner]` in a job can use.

No NER checkpoint of BioGPT is published, so you train one: start from the pre-trained BioGPT (a
causal LM; its new classification head is initialised and logged) and a PubTator file, the format
of BC5CDR (CDR_TrainingSet.PubTator.txt) and of most biomedical NER corpora:

  PMID|t|title
  PMID|a|abstract
  PMID<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>ids      offsets into title + " " + abstract

Every mention type in the file becomes an entity type (or choose them with --types); tags follow
--scheme (BIO: B-/I- per type, BIOES adds E-/S-). Documents longer than the model's positions are
split into overlapping windows, exactly as at inference. The output directory holds config.json
(id2label = the tags), model.safetensors, the tokenizer and biomine_ner.json (settings, final loss,
gold spans that did not fall on token boundaries).
"""

NER_EPILOG = """\
examples:
  biomine train ner --data BC5CDR/CDR_TrainingSet.PubTator.txt --base models/biogpt --out models/ner-bc5cdr
  biomine train ner --data train.pubtator --base models/biogpt --out models/ner-chem \\
      --types Chemical --scheme BIOES --epochs 10 --lr 3e-5 --batch-size 16 --device cuda
  biomine train ner --data train.pubtator --base models/biogpt --out models/ner-probe --freeze-body --lr 1e-3

then evaluate it (strict: same document, start, end and type) and use it in a job:
  biomine eval ner --data BC5CDR/CDR_TestSet.PubTator.txt --model models/ner-bc5cdr
  [tasks.ner]
  model = "models/ner-bc5cdr"

More: docs/ner.md.
"""


CLASSIFY_DESCRIPTION = """\
Fine-tune a BioGPT checkpoint as a multi-label document classifier (BioGptForSequenceClassification,
sigmoid per label) and save it as a model directory that `[tasks.classify]` in a job can use.

The data is a TSV in the layout of HoC (Hallmarks of Cancer, microsoft/BioGPT data/HoC/raw/*.tsv),
one text per line:

  text<TAB>label|label        labels joined by |
  text<TAB>empty              a text of none of the labels

Every label in the file except `empty` becomes a class (id2label, sorted). `empty` is no class of its
own: it is the all-zero target, so the model says "none" by giving every label a probability under
0.5 (HoC's scoring, `biomine eval hoc`, counts that as the class `empty`). Texts longer than the
model's positions are split into windows exactly as the classify task splits them, each window with
the text's labels. A bad line is an error naming its line number. The output directory holds
config.json (id2label, problem_type = multi_label_classification), model.safetensors, the tokenizer
and biomine_classify.json (labels, counts, settings, final loss).
"""

CLASSIFY_EPILOG = """\
examples:
  biomine train classify --data HoC/train.tsv --base models/biogpt --out models/hoc-classifier
  biomine train classify --data labelled.tsv --base biogpt:biogpt --out models/topics \\
      --epochs 10 --lr 3e-5 --batch-size 32 --device cuda

then use it in a job (one labels row per label the document's text gets):
  [tasks.classify]
  model = "models/hoc-classifier"

More: docs/tasks.md, "Document classification".
"""


def _common(parser, data_help: str, batch_help: str, *, metavar: str = "FILE") -> None:
    """The flags every ``train`` head takes (:class:`pipeline.training.loop.TrainingSettings`)."""
    parser.add_argument("--data", required=True, metavar=metavar, help=data_help)
    parser.add_argument(
        "--base",
        required=True,
        metavar="MODEL",
        help="checkpoint to start from, e.g. the pre-trained BioGPT: a directory, microsoft/biogpt "
        "(the Hub) or biogpt:biogpt (`biomine models pull biogpt`)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output model directory (created; must be empty)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    parser.add_argument(
        "--lr",
        type=float,
        default=5e-5,
        help="peak AdamW learning rate, after 10%% warm-up then linear decay (default 5e-5)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help=batch_help)
    parser.add_argument(
        "--freeze-body", action="store_true", help="train only the classification head (fast, much weaker; for probing)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the head, dropout and shuffling (default 0)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune BioGPT for a task (ner, classify)",
        description="Fine-tune BioGPT checkpoints for the mining tasks.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="TASK")
    ner = kinds.add_parser(
        "ner",
        help="named-entity recognition from a PubTator file (e.g. BC5CDR)",
        description=NER_DESCRIPTION,
        epilog=NER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(
        ner,
        "training documents with mention annotations, in PubTator format",
        "windows per optimiser step (default 8)",
        metavar="PUBTATOR_FILE",
    )
    ner.add_argument("--scheme", choices=["BIO", "BIOES"], default="BIO", help="tagging scheme (default BIO)")
    ner.add_argument(
        "--types",
        metavar="T1,T2",
        help="comma-separated entity types to learn, e.g. Chemical,Disease (default: all in --data)",
    )
    ner.add_argument(
        "--stride",
        type=int,
        metavar="TOKENS",
        help="start distance of the windows over long documents (default 3/4 of the window)",
    )
    ner.set_defaults(func=_run_ner)
    classify = kinds.add_parser(
        "classify",
        help="multi-label document classification from a text<TAB>a|b TSV (e.g. HoC)",
        description=CLASSIFY_DESCRIPTION,
        epilog=CLASSIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(
        classify,
        "training texts with their labels: text<TAB>label|label per line, `empty` for none",
        "windows (one per text that fits) per optimiser step (default 8)",
    )
    classify.set_defaults(func=_run_classify)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _types(value: str | None) -> list[str] | None:
    from pipeline.errors import NerTrainingError

    if value is None:
        return None
    types = [t.strip() for t in value.split(",")]
    if not all(types):
        raise NerTrainingError(f"--types {value!r}: give comma-separated type names, e.g. --types Chemical,Disease")
    return types


def _run_ner(args) -> int:
    import sys

    from pipeline.training.ner import NerTrainingSettings, train_ner

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    from biogpt import hub

    s = train_ner(
        NerTrainingSettings(
            args.data,
            str(hub.resolve(args.base).path),
            args.out,
            scheme=args.scheme,
            types=_types(args.types),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            freeze_body=args.freeze_body,
            seed=args.seed,
            device=args.device,
            stride=args.stride,
            overwrite=args.force,
            progress=progress,
        )
    )
    notes = ""
    if s["unaligned_spans"] or s["conflicting_spans"]:
        notes = f"; gold spans off token boundaries {s['unaligned_spans']}, overlapping {s['conflicting_spans']}"
    print(
        f"trained {s['out']}: {s['documents']} documents, {s['mentions']} mentions of "
        f"{','.join(s['types'])} ({s['scheme']}), {s['epochs']} epochs, final loss {s['final_loss']:.4f}{notes}; "
        f"evaluate with `biomine eval ner --data FILE --model {s['out']}`"
    )
    return 0


def _run_classify(args) -> int:
    import sys

    from biogpt import hub
    from pipeline.training.classify import ClassifyTrainingSettings, train_classify

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    s = train_classify(
        ClassifyTrainingSettings(
            args.data,
            str(hub.resolve(args.base).path),
            args.out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            freeze_body=args.freeze_body,
            seed=args.seed,
            device=args.device,
            overwrite=args.force,
            progress=progress,
        )
    )
    print(
        f"trained {s['out']}: {s['texts']} texts ({s['texts_without_label']} without a label), "
        f"{len(s['labels'])} labels, {s['epochs']} epochs, final loss {s['final_loss']:.4f}; "
        f'use it with [tasks.classify] model = "{s["out"]}"'
    )
    return 0
