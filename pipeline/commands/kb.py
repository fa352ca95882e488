"""``biomine kb``: the drug-drug interaction knowledge base of an output (see :mod:`pipeline.outputs.kb`).

A job with relation extraction keeps OUT/kb (a Delta table) current at the end of every run; ``kb
build`` rebuilds it by hand (or writes the edges to one Parquet file with ``--out``), ``kb diff``
says what changed since a version or date: edges added, removed and rescored."""

from __future__ import annotations

import argparse

from biogpt.task_spec import RE_TASKS
from pipeline.commands import plain

EPILOG = """\
examples:
  biomine kb build out/ddi                         # rebuild out/ddi/kb from its relations
  biomine kb build out/ddi --out /tmp/kb.parquet   # the edges as one Parquet file
  biomine kb diff out/ddi --since 3                # since version 3 of out/ddi/kb
  biomine kb diff out/ddi --since 2026-12-01 --format json
  biomine query out/ddi "SELECT * FROM kb WHERE drug_a = 'aspirin' OR drug_b = 'aspirin'"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kb",
        help="the DDI knowledge base of an output: build, diff",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kb_sub = p.add_subparsers(dest="kb_command", metavar="KB_COMMAND", required=True)
    b = kb_sub.add_parser(
        "build",
        help="rebuild OUT/kb (or write the edges to a Parquet file)",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("output", nargs="?", metavar="OUT", help="the job's output")
    b.add_argument("--relations", help="(older form) OUT/relations: the same as giving OUT")
    b.add_argument("--out", help="write the edges to this Parquet file instead of OUT/kb")
    b.add_argument(
        "--task", default="ddi", choices=list(RE_TASKS), help="which relation task's rows to use (default ddi)"
    )
    b.set_defaults(func=run_build, settings={"dest": "--out"})
    d = kb_sub.add_parser(
        "diff",
        help="edges added, removed and rescored since a version or date",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("output", metavar="OUT", help="the job's output")
    d.add_argument("--since", required=True, metavar="VERSION|DATE", help="a version of OUT/kb, or a date/time")
    d.add_argument("--format", choices=["table", "json"], default="table")
    d.set_defaults(func=run_diff)


def _output(args: argparse.Namespace):
    from pipeline.errors import JobConfigError
    from pipeline.store.output import JobOutput
    from pipeline.store.storage import location

    if args.output:
        return JobOutput(args.output)
    if args.relations:
        return JobOutput(location(args.relations).parent)
    raise JobConfigError("kb build: give the job's output, e.g. `biomine kb build out/ddi`")


def run_build(args: argparse.Namespace) -> int:
    from pipeline.outputs.kb import export_kb, update_kb
    from pipeline.outputs.query import snapshot

    output = _output(args)
    if args.out:
        n = export_kb(output, args.out, task=args.task)
        print(f"{args.out}: {n} edges")
        return 0
    # Refuse a folder that is no output before taking its lease (which would write into it).
    output.refuse_table_path()
    snapshot(output)
    with output.lease(f"biomine kb build {output.root}"):
        result = update_kb(output, task=args.task)
    print(
        f"{output.kb}: {result['edges']} edges (version {result['version']}{'' if result['changed'] else ', unchanged'})"
    )
    return 0


def run_diff(args: argparse.Namespace) -> int:
    import json

    from pipeline.outputs.kb import diff
    from pipeline.outputs.query import parse_as_of
    from pipeline.store.output import JobOutput

    since = parse_as_of(args.since, "--since", "a version of OUT/kb")
    result = diff(JobOutput(args.output), since)
    if args.format == "json":
        print(json.dumps(result, default=str, indent=1))
        return 0
    print(
        f"kb version {result['from_version']} -> {result['to_version']}: {len(result['added'])} added, "
        f"{len(result['removed'])} removed, {len(result['rescored'])} rescored"
    )
    for what, edges in (("added", result["added"]), ("removed", result["removed"]), ("rescored", result["rescored"])):
        for edge in edges:
            score = edge.get("score")
            before = f" (was {edge['score_before']})" if what == "rescored" else ""
            print(
                f"  {what:<9}{edge['drug_a']} -- {edge['drug_b']}  {edge['relation']}  "
                f"n_abstracts={edge['n_abstracts']}  score={score}{before}"
            )
    return 0
