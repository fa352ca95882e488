"""``biomine upgrade OUT``: convert an output written by an older biomine to Delta tables (see :mod:`pipeline.store.upgrade`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Before its tables were Delta Lake tables, biomine kept its own run state beside the Parquet files
(documents/_manifest.json, deletion vectors in documents/_deleted/, commit records in
<dataset>/_commits/, kb.parquet, _manifest.json). `biomine upgrade OUT` converts such an output in
place, under its lease: every table then reads, with any Delta reader, exactly the live rows the
old readers returned; inputs already ingested stay recorded (nothing is ingested again) and task
outputs keep their settings (a re-run with the same models computes nothing). The old files are
removed last; an interrupted upgrade is resumed by running it again. `biomine run` upgrades its
output by itself when it finds the old layout.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "upgrade",
        help="convert an output of an older biomine to Delta tables",
        description=DESCRIPTION,
        epilog="example:\n  biomine upgrade out/ddi-kb\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="OUT", help="the output (a job's [job] output, or an ingest/fetch --out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.store.output import JobOutput
    from pipeline.store.upgrade import upgrade

    output = JobOutput(args.dir)
    report = upgrade(output)
    tables = ", ".join(f"{n} ({r.get('outputs', 0)} files)" for n, r in report["datasets"].items())
    print(f"{output.root}: upgraded: documents ({report['documents']} articles)" + (f", {tables}" if tables else ""))
    return 0
