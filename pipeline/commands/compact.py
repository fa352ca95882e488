"""``biomine compact OUT``: optimize and vacuum an output's Delta tables (see :mod:`pipeline.store.maintenance`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Every table of OUT (a job's output, or an ingest/fetch output) is a Delta table: updates replace
data files (copy-on-write) and keep the old ones, so that earlier versions stay readable (time
travel: `biomine query --as-of`, `biomine kb diff --since`). This command, under OUT's lease:

  - merges the small files of the runs and kb tables (optimize);
  - checkpoints each table's log and drops old log entries;
  - deletes data files no version within --retention-hours refers to (vacuum), and files a
    killed run left that no version ever referred to.

The documents and task tables are never merged: a task output file is the output of one documents
file, which is what lets a daily update copy the outputs of unchanged articles (docs/ingestion.md).
"""

EPILOG = """\
examples:
  biomine compact out/ddi-kb                        # keep 7 days of history
  biomine compact data/pubmed --retention-hours 24  # an ingest output, one day of history
  biomine compact out/ddi-kb --dry-run              # what would be deleted
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compact",
        help="optimize and vacuum an output's Delta tables",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="OUT", help="a job output, or an ingest/fetch --out; local or s3://...")
    p.add_argument(
        "--retention-hours",
        type=int,
        default=168,
        metavar="HOURS",
        help="keep the files of every table version younger than this (default 168: 7 days)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib

    from pipeline.errors import JobConfigError, StoreError
    from pipeline.store.maintenance import compact
    from pipeline.store.output import JobOutput

    if args.retention_hours < 0:
        raise JobConfigError(f"--retention-hours {args.retention_hours}: must be 0 or more")
    output = JobOutput(args.dir)
    output.refuse_table_path()
    if not output.tables():
        raise StoreError(f"{output.root} holds no biomine tables: pass a job's [job] output or an ingest --out")
    with contextlib.ExitStack() as stack:
        if not args.dry_run:
            stack.enter_context(output.lease(f"biomine compact {output.root}"))
        report = compact(output, retention_hours=args.retention_hours, dry_run=args.dry_run)
    for name, entry in report.items():
        merged = entry.get("merged")
        what = "would delete" if args.dry_run else "deleted"  # files no version within the retention reads
        print(
            f"{name}: version {entry['version']}, {entry['files']} live files"
            + (f", merged {merged['numFilesRemoved']} into {merged['numFilesAdded']}" if merged else "")
            + f", {what} {entry['vacuumed']} files no version within the retention reads"
        )
    return 0
