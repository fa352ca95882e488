"""``biomine ingest``: PubMed baseline/update XML files into the documents table of an output (the current corpus)."""

from __future__ import annotations

import argparse
import os

from pipeline.commands import require_positive

DESCRIPTION = """\
Stream PubMed XML files (the annual baseline and the daily updates, pubmedYYnNNNN.xml.gz, or any
PubMed efetch XML) into OUT/documents, a Delta Lake table of the article schema (schemas/articles.py)
that any Delta reader (deltalake, polars, DuckDB, Spark) reads as the current corpus.

Files are parsed in parallel (--workers processes) and applied in file-name order; the table is
the current corpus: each PMID once, as the latest file has it (a higher PMID Version is never
replaced by a lower one), and DeleteCitation removes it. An update rewrites only the data files
holding the articles it revises or deletes (copy-on-write) and adds their new versions, in one
commit. Inputs are recognised by their sha256 and apply exactly once: re-running skips files
already ingested, whatever their names, and a file that changed under a known name is applied
again (if no later file is ingested yet). Files are committed together every 30 seconds and at the
end; an interrupted run loses at most those and a re-run finishes the job. One writer at a time:
ingest takes OUT's lease, as every writer of an output does.
"""

EPILOG = """\
examples:
  biomine ingest pubmed25n0001.xml.gz --out data/pubmed                 # one baseline file
  biomine ingest baseline/ updatefiles/ --out data/pubmed               # baseline, then its updates
  biomine ingest updatefiles/pubmed25n1300.xml.gz --out data/pubmed     # later: today's update
  biomine ingest new/pubmed26n*.xml.gz --new-baseline --out data/pubmed # December: the whole new baseline
  biomine ingest biomine-demo/data/demo_pubmed.xml --out /tmp/demo-articles   # the sample `biomine demo` wrote

A new file must sort after every file already in --out (NLM's numbering guarantees it for the
baseline and its updates). Each December NCBI publishes a new baseline (pubmed26n0001... after
pubmed25n*): it applies on top, and once all of its files are applied the articles it no longer
holds are dropped, when --new-baseline or the inputs' sync DEST says the baseline is whole (else a
warning says they stay live); a file of the older year not yet applied is then skipped (superseded).
Read the result with `biomine query OUT "SELECT count(*) FROM documents"`
(OUT/documents works too), or any Delta reader of OUT/documents (docs/analysts.md). `biomine compact OUT` removes the files of
old table versions after a retention. More: docs/ingestion.md.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="PubMed baseline/update XML files -> an output's documents table (the current corpus)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_DIR", help="PubMed XML files (.xml/.xml.gz) or directories of them"
    )
    p.add_argument(
        "--out", required=True, metavar="OUT", help="the output (created): the corpus is the Delta table OUT/documents"
    )
    p.add_argument("--shard-rows", type=int, default=10_000, help="rows per Parquet shard (default 10000)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help=f"processes that hash and parse files in parallel (default: the CPUs, {os.cpu_count()})",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )
    p.add_argument(
        "--new-baseline",
        action="store_const",
        const=True,
        default=None,
        help="the inputs of the newest year prefix (pubmedYYn*) are NCBI's whole new baseline: once they are all "
        "applied, the articles of older baselines that it no longer holds leave the corpus (default: only "
        "when the inputs are a `biomine sync` DEST's folders, whose listing says so)",
    )
    p.set_defaults(func=run, settings={"output": "--out", "new_baseline": "--new-baseline"})


def run(args: argparse.Namespace) -> int:
    from pipeline.pubmed.ingest import ingest_files

    require_positive(args, "--shard-rows", "--workers")
    s = ingest_files(
        args.inputs,
        args.out,
        shard_rows=args.shard_rows,
        progress=args.progress,
        workers=args.workers,
        new_baseline=args.new_baseline,
    )
    superseded = f", {s.superseded} superseded by a newer baseline" if s.superseded else ""
    dropped = f", {s.dropped} dropped (not in the {s.replaced_by} baseline)" if s.dropped else ""
    print(
        f"ingested {s.files} file(s) ({s.skipped} already done{superseded}): {s.records} records, {s.added} new, "
        f"{s.replaced} replaced, {s.deleted} deleted{dropped}; {s.rows} articles in {args.out}/documents"
    )
    return 0
