"""``biomine status OUT|JOB.toml``: where a job's output stands (see :mod:`pipeline.run.status`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Where a job's output stands, read from the output itself (its runs table, its tables' logs and its
lease), without taking the lease: ask while a run is writing, from any machine that can read OUT.

  last run      when it started, its outcome (finished, failed, interrupted; running: started and
                not ended), how long it took, and per stage what it computed, kept and copied
  tables        each Delta table's version, live rows and data files
  newest input  the last PubMed file applied to the documents, and how many were applied in all
  mirror        a pubmed job (given its job file): the newest file its last sync saw on the mirror,
                and how many files the corpus is behind it
  lease         whether a run holds the output now (which, on which host, until when)
  schedule      the job's [job] schedule: a run is due one period after the last finished run
                started, and overdue a quarter of a period later (once: done after it finished)

Give the job file instead of OUT to check against its current schedule (otherwise the schedule the
last run recorded is used). --json prints the same as one JSON object, with "needs_attention": the
list of what a monitor should alert on (a failed or killed last run, an overdue run, failed
documents); --check exits 1 when that list is not empty.
"""

EPILOG = """\
examples:
  biomine status out/ddi-kb
  biomine status jobs/pubmed-daily.toml              # the job's output, with its schedule
  biomine status s3://bucket/pubmed-daily --json     # for monitoring
  biomine status out/ddi-kb --check || notify-team   # exit 1 when it needs attention

exit status: 0, or with --check 1 when something needs attention; 2 for a bad argument.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status",
        help="where a job's output stands: last run, tables, lease, schedule",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="OUT|JOB.toml", help="a job's output (local or s3://...), or its job file")
    p.add_argument("--json", action="store_true", help="one JSON object (for monitoring)")
    p.add_argument("--check", action="store_true", help="exit 1 when something needs attention")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.run.status import format_status, output_status

    out, schedule, dest = args.target, None, None
    if args.target.endswith(".toml") and "://" not in args.target:
        from pipeline.run.jobspec import load_job

        if not Path(args.target).is_file():
            from pipeline.errors import JobConfigError

            raise JobConfigError(f"{args.target}: no such job file; give a job file or a job's output")
        spec = load_job(args.target, check_models=False)
        out, schedule = spec.output, spec.schedule
        dest = spec.source.dest if spec.source.kind == "pubmed" else None
    status = output_status(out, schedule, dest=dest)
    print(status.as_json() if args.json else format_status(status))
    return 1 if args.check and status.needs_attention else 0
