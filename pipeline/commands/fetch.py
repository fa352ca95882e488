"""``biomine fetch``: search PubMed through NCBI E-utilities into the documents table of an output."""

from __future__ import annotations

import argparse

from pipeline.commands import require_positive

DESCRIPTION = """\
Search PubMed through NCBI E-utilities (esearch on the history server, then efetch in batches)
and write every hit once into OUT/documents, a Delta Lake table of the article schema (schemas/articles.py).

NCBI's rules are honoured: requests carry tool, email and api_key; at most 3 requests/s without
an API key and 10 with one, shared by all biomine processes on this machine that use the same key;
429/5xx/timeouts/truncated or malformed answers are retried with backoff. Queries with more than
9,999 hits (what ESearch can page) are split into publication-date ranges.

Re-running the same command resumes an interrupted run, or fetches only hits that are new since.
"""

EPILOG = """\
examples:
  export NCBI_EMAIL=you@example.org NCBI_API_KEY=...        # or --email/--api-key, or --job
  biomine fetch --query "warfarin AND drug interactions" --max 500 --out data/warfarin
  biomine fetch --query "aspirin[tiab]" --mindate 2020/01/01 --maxdate 2020/12/31 --out data/aspirin-2020
  biomine fetch --query "neoplasms[mh]" --mindate 2024 --out data/cancer-2024   # >10,000 hits: split by date
  biomine fetch --query warfarin --out data/w --eutils-url http://127.0.0.1:8080/eutils   # a mirror

credentials from a job file (--job JOB.toml; only these keys of its [source] table are read):
  [source]
  email = "you@example.org"
  api_key = "..."

Dates (--mindate, --maxdate) are YYYY, YYYY/MM or YYYY/MM/DD, as in a job file.

The articles go into OUT/documents, a Delta Lake table (deltalake, polars, DuckDB and Spark read it:
docs/analysts.md), committed every --shard-rows articles; `biomine query OUT "..."` reads it too.
More: docs/ingestion.md.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="search PubMed (E-utilities) into an output's documents table",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--query", required=True, help="PubMed query, exactly as typed in PubMed's search box")
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="the output (created; one query per output, once a fetch commits into it): OUT/documents",
    )
    p.add_argument("--mindate", metavar="DATE", help="earliest publication date: YYYY, YYYY/MM or YYYY/MM/DD")
    p.add_argument("--maxdate", metavar="DATE", help="latest publication date (inclusive)")
    p.add_argument(
        "--datetype",
        default="pdat",
        choices=["pdat", "edat", "mdat"],
        help="date that --mindate/--maxdate and splitting use: publication (default), Entrez, modification",
    )
    p.add_argument(
        "--max", type=int, metavar="N", dest="max_records", help="fetch at most N hits (the newest first); default: all"
    )
    g = p.add_argument_group("NCBI credentials (default: --job, then $NCBI_EMAIL / $NCBI_API_KEY)")
    g.add_argument("--email", help="contact address NCBI requires with every request")
    g.add_argument("--api-key", help="NCBI API key: allows 10 requests/s instead of 3")
    g.add_argument("--tool", help="tool name sent to NCBI (default: biomine)")
    g.add_argument("--job", metavar="JOB.toml", help="job file whose [source] table holds email/api_key/tool")
    t = p.add_argument_group("tuning")
    t.add_argument(
        "--eutils-url", metavar="URL", help="E-utilities base URL (default: $BIOMINE_EUTILS_URL, else NCBI's)"
    )
    t.add_argument("--batch-size", type=int, default=500, help="records per efetch request (default 500)")
    t.add_argument("--shard-rows", type=int, default=10_000, help="rows per Parquet shard (default 10000)")
    t.add_argument(
        "--split-threshold",
        type=int,
        default=9_999,
        help="most hits one date range may have (default 9999, ESearch's limit)",
    )
    t.add_argument("--tries", type=int, default=6, help="attempts per request before giving up (default 6)")
    t.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    t.add_argument(
        "--rate", type=float, help="requests per second (default 3, or 10 with an API key; NCBI's host allows no more)"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )
    p.set_defaults(func=run, settings=SETTINGS)


#: The flag of each setting that fetching names in its errors (:mod:`pipeline.errors`).
SETTINGS = {
    "output": "--out",
    "query": "--query",
    "mindate": "--mindate",
    "maxdate": "--maxdate",
    "max_records": "--max",
    "email": "--email",
    "api_key": "--api-key",
    "tool": "--tool",
    "eutils_url": "--eutils-url",
    "rate": "--rate",
}


def run(args: argparse.Namespace) -> int:
    from pipeline.pubmed.eutils import Credentials, EutilsClient
    from pipeline.pubmed.fetch import fetch_query
    from pipeline.run.jobspec import source_credentials

    require_positive(args, "--batch-size", "--shard-rows", "--split-threshold", "--tries")
    job = source_credentials(args.job) if args.job else None
    creds = Credentials.resolve(email=args.email, api_key=args.api_key, tool=args.tool, job=job)
    client = EutilsClient(args.eutils_url, creds, rate=args.rate, timeout=args.timeout, tries=args.tries)
    summary = fetch_query(
        client,
        args.query,
        args.out,
        mindate=args.mindate,
        maxdate=args.maxdate,
        datetype=args.datetype,
        max_records=args.max_records,
        batch_size=args.batch_size,
        split_threshold=args.split_threshold,
        shard_rows=args.shard_rows,
        progress=args.progress,
    )
    print(
        f"{args.query!r}: {summary.total_hits} hits in {summary.ranges} date range(s); fetched {summary.fetched} "
        f"new, {summary.already_present} already present; {summary.rows} articles in {args.out}"
    )
    if summary.unavailable:
        print(
            f"{len(summary.unavailable)} hits were not returned by NCBI (listed in the commit info of "
            f"{args.out}/documents, biomine.notes); re-run to try them again"
        )
    return 0
