"""``biomine kb build``: a deduplicated drug-drug interaction edge table (see :mod:`pipeline.outputs.kb`)."""

from __future__ import annotations

import argparse

from biogpt.task_spec import RE_TASKS
from pipeline.commands import plain

EPILOG = """\
examples:
  biomine kb build --relations out/ddi/relations --out out/ddi/kb.parquet
  biomine query out/ddi "SELECT * FROM kb WHERE drug_a = 'aspirin' OR drug_b = 'aspirin'"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kb",
        help="knowledge-base tables from relation outputs",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kb_sub = p.add_subparsers(dest="kb_command", metavar="KB_COMMAND", required=True)
    b = kb_sub.add_parser(
        "build",
        help="build the DDI edge table",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--relations", required=True, help="a job's OUT/relations directory (or one Parquet file)")
    b.add_argument("--out", required=True, help="the edge table to write, e.g. OUT/kb.parquet")
    b.add_argument(
        "--task", default="ddi", choices=list(RE_TASKS), help="which relation task's rows to use (default ddi)"
    )
    b.add_argument("--documents", help="documents store for publication dates (default: beside --relations)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.outputs.kb import build_kb

    n = build_kb(
        args.relations,
        args.out,
        task=args.task,
        documents=args.documents,
        warn=lambda w: print(f"biomine: warning: {w}", file=sys.stderr),
    )
    print(f"{args.out}: {n} edges")
    return 0
