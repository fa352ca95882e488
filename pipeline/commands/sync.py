"""``biomine sync``: a verified copy of NCBI's PubMed baseline and update files, downloading only what is new."""

from __future__ import annotations

import argparse

from pipeline.commands import require_positive

DESCRIPTION = """\
Keep DEST (a local folder or a storage URI such as s3://bucket/pubmed) a copy of NCBI's PubMed
files: the baseline/ and updatefiles/ folders of https://ftp.ncbi.nlm.nih.gov/pubmed/ (or --mirror).

Only files DEST does not hold yet are downloaded, a few at a time (--concurrency, default 3: NCBI
asks for modest concurrency). Each is checked against the .md5 NCBI publishes beside it; a mismatch
is downloaded again once, then refused naming the file (nothing of it is kept). A cut connection or
a killed sync continues where it stopped (HTTP Range), transient errors are retried with backoff.
Files land whole and never change: DEST/baseline/NAME, DEST/updatefiles/NAME. DEST/_sync.json
records each verified file (size, md5, sha256, when) and the newest file the mirror listed, so a
re-run downloads nothing and a killed one resumes. One sync at a time per DEST (DEST's lease).
"""

EPILOG = """\
examples:
  biomine sync data/pubmed                                   # NCBI's baseline + daily updates
  biomine sync data/pubmed --only updatefiles                # just the daily updates
  biomine sync s3://corpus/pubmed --concurrency 2            # onto object storage (AWS_* environment)
  biomine sync data/pubmed --mirror https://mirror.example.org/pubmed/   # an internal copy
  biomine ingest data/pubmed/baseline data/pubmed/updatefiles --out data/pubmed-current   # then ingest

This command downloads in --concurrency threads of its own process (no Ray). A job with
[source] kind = "pubmed" syncs and then ingests in one run (jobs/README.md); there each download is
a Ray task on any node, so on a multi-node cluster its dest is s3://... or a shared filesystem. The full
baseline is about 1,300 files and 50 GB (2026: 1,334 files, 51.8 GB). Staged downloads of
a local DEST are in DEST/.sync-partial; of an object store, under $XDG_CACHE_HOME/biomine/sync.
More: docs/ingestion.md, "Syncing PubMed".
"""


def register(subparsers) -> None:
    from pipeline.pubmed.sync import DEFAULT_CONCURRENCY, DEFAULT_MIRROR, FOLDERS, MIRROR_ENV

    p = subparsers.add_parser(
        "sync",
        help="download NCBI's PubMed baseline/update files not yet held, verified by their .md5",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dest", metavar="DEST", help="where the files are kept: a local folder or a storage URI (s3://...)")
    p.add_argument(
        "--mirror", metavar="URL", help=f"the pubmed/ folder to copy (default: ${MIRROR_ENV}, else {DEFAULT_MIRROR})"
    )
    p.add_argument(
        "--allow-http", action="store_true", help="accept a plain http:// mirror (only on a network you trust)"
    )
    p.add_argument(
        "--only",
        choices=FOLDERS,
        action="append",
        help="sync only this folder (repeatable; default: both)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"files downloaded at once (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument("--tries", type=int, default=5, help="attempts per download without progress (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal; log lines otherwise)",
    )
    p.set_defaults(func=run, settings={"mirror": "--mirror", "allow_http": "--allow-http", "output": "DEST"})


def run(args: argparse.Namespace) -> int:
    from pipeline.pubmed.sync import FOLDERS, sync

    require_positive(args, "--concurrency", "--tries")
    s = sync(
        args.dest,
        args.mirror,
        allow_http=args.allow_http,
        concurrency=args.concurrency,
        folders=tuple(args.only) if args.only else FOLDERS,
        progress=args.progress,
        attempts=args.tries,
        timeout=args.timeout,
    )
    done = (
        f"downloaded {len(s.downloaded)} file(s) ({s.bytes / 1e6:.1f} MB), each verified by its .md5"
        if s.downloaded
        else "nothing new to download"
    )
    if s.adopted:
        done += f"; {len(s.adopted)} found complete in DEST and recorded"
    print(f"{done}; {s.held} already held; {s.listed} listed on the mirror; {args.dest} is current")
    if s.waiting:
        print(f"{len(s.waiting)} file(s) have no .md5 on the mirror yet and wait for the next sync")
    return 0
