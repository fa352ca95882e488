"""``biomine query OUT "SQL"``: DuckDB SQL over an output's Delta tables, at one consistent snapshot.

Each table of OUT is a view (documents, entities, relations, summaries, answers, labels, kb,
runs), read at the
versions the last finished run recorded (``--as-of`` an earlier run or a date: time travel). Any
Delta reader gives the same rows; docs/analysts.md shows DuckDB, polars, pandas and Spark."""

from __future__ import annotations

import argparse

from pipeline.commands import plain, require_positive

EPILOG = """\
views: documents, entities, relations, summaries, answers, labels, kb and runs (those OUT has)

formats (--format): table (aligned, for reading; --max-rows of them), csv (a header row, then
RFC 4180 rows), json (one JSON array of objects), jsonl (JSON Lines: one object per line, to stream
a large result). NULL is NULL in a table, an empty field in CSV and null in JSON, in every column;
nested values (lists, structs) are JSON in a table and in CSV. An empty result is its header and
"(0 rows)" in a table, the header row in CSV, [] in json and nothing in jsonl.

examples:
  biomine query biomine-demo/out "SELECT count(*) FROM documents"
  biomine query out/ddi "SELECT relation, count(*) n FROM relations WHERE parse_status = 'ok' GROUP BY 1 ORDER BY n DESC"
  biomine query out/ddi "SELECT d.pub_year, count(*) FROM relations r JOIN documents d USING (pmid) GROUP BY 1"
  biomine query biomine-demo/out "SELECT * FROM entities LIMIT 20" --format csv > entities.csv
  biomine query biomine-demo/out "SELECT pmid, text, label FROM entities" --format json | jq '.[0]'
  biomine query out/ddi "SELECT count(*) FROM kb" --as-of 2026-12-01     # as the last run before then left it
  biomine query out/ddi "SELECT run_id, event, event_time FROM runs ORDER BY event_time"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="SQL (DuckDB) over a job's outputs",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="the job's output directory (a local path or a URI such as s3://bucket/out)")
    p.add_argument("sql", help="a DuckDB SQL query over the views")
    # The formats of pipeline.outputs.query.FORMATS, not imported here: `biomine --help` stays instant.
    p.add_argument(
        "--format",
        choices=["table", "csv", "json", "jsonl"],
        default="table",
        help="table (default), csv, json (a JSON array) or jsonl (JSON Lines): see below",
    )
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format (default 50)")
    p.add_argument(
        "--as-of",
        metavar="RUN|DATE",
        help="read the tables as finished run RUN (1 = the first) or the last run before DATE left them",
    )
    p.set_defaults(func=run, settings={"as_of": "--as-of"})


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.outputs.query import parse_as_of, query_table, render

    require_positive(args, "--max-rows")
    if not args.sql.strip():
        from pipeline.errors import JobConfigError

        raise JobConfigError('no SQL given: pass a query, e.g. "SELECT count(*) FROM documents"')
    as_of = parse_as_of(args.as_of, "--as-of") if args.as_of else None
    table = query_table(
        args.out, args.sql, warn=lambda w: print(f"biomine: warning: {w}", file=sys.stderr), as_of=as_of
    )
    for chunk in render(table, args.format, max_rows=args.max_rows):
        sys.stdout.write(chunk)
    return 0
