"""``biomine run JOB.toml``: run a job end to end (see :mod:`pipeline.run.runner`)."""

from __future__ import annotations

import argparse

from pipeline.commands import plain

EPILOG = """\
examples:
  biomine run biomine-demo/demo.toml         # the small local demo `biomine demo` wrote (tiny models)
  biomine run jobs/ddi-kb.toml --address 10.0.0.5:6379   # join a Ray cluster (the head's GCS address)
  RAY_ADDRESS=auto biomine run jobs/pubmed-daily.toml     # the cluster this node belongs to
  biomine run jobs/ddi-kb.toml --check       # validate the job file only

Locations in the job file (output, source paths, models) are paths or URIs (s3://bucket/prefix;
credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION).
Without an address the run starts a private local Ray (token authentication, loopback only);
ray:// addresses need `pip install 'ray[client]'`.

A re-run verifies every committed output before it skips it and recomputes what is missing, damaged
or stale (other settings, another model), saying why; a killed run resumes where it stopped. An
output belongs to one job, and one run at a time holds it.
Outputs: Delta Lake tables OUT/documents, OUT/entities, OUT/relations, OUT/summaries, OUT/labels, OUT/kb (a job with
RE keeps it current) and OUT/runs (one row per run event: what ran, the table versions it left,
failures). Any Delta reader reads them as the live rows (docs/analysts.md).
The job file format is documented in jobs/README.md; clusters and storage in docs/cluster.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a job (fetch/ingest, NER, RE, summaries) on Ray",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", help="job TOML file (see jobs/)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument(
        "--check",
        action="store_true",
        help="run every check `run` makes before starting (job file, "
        "models, inputs, output, address), list every problem at once (exit 2) or say ok; writes nothing",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.run.plan import check_job
    from pipeline.run.runner import run_plan, summary_table

    # The job file and every check `run` makes before it starts Ray, all problems at once; writes nothing.
    plan = check_job(args.job, address=args.address)
    spec = plan.job
    if args.check:
        print(
            f"{args.job}: ok ({spec.source.kind} source, tasks: {', '.join(spec.tasks) or 'none'}, "
            f"output {spec.output})"
        )
        return 0
    manifest = run_plan(plan, progress=not args.no_progress)
    import sys

    print(summary_table(manifest), file=sys.stderr)
    failures = manifest["failures"]
    if failures:
        first = failures[0]
        print(
            f"{len(failures)} record(s) failed, e.g. PMID {first['pmid']} ({first['task']}): {first['error']}; "
            f"all are listed in the runs table ({spec.output}/runs), e.g. `biomine query {spec.output} "
            "\"SELECT failures FROM runs WHERE event = 'finished'\"`",
            file=sys.stderr,
        )
    print(spec.output)
    return 0
