"""``biomine compact``: rewrite the article shards that are mostly tombstoned (see :func:`pipeline.store.shards.compact`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Daily updates never rewrite an article shard: a revised or deleted article is tombstoned in the
shard that held it (its deletion vector) and readers skip it. Over the years some shards become
mostly tombstones. This command rewrites every shard whose tombstoned share is at least
--min-deleted as a new shard of its live rows, in one commit.

DIR is a job's output (its documents/ are compacted, under the job's lease, so no run can overlap)
or a `biomine ingest` directory. The job's next run retires the task outputs of the old shards and
computes those of the new ones: the live articles of the compacted shards are computed again. That
is the price of compaction, and why it runs only when you ask.
"""

EPILOG = """\
examples:
  biomine compact out/ddi-kb                      # shards at least half tombstoned
  biomine compact data/pubmed --min-deleted 0.2   # an ingest directory, more eagerly
  biomine compact out/ddi-kb --dry-run            # what would be rewritten
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compact",
        help="rewrite mostly tombstoned article shards",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="a job output (OUT) or an ingest directory; local or s3://...")
    p.add_argument(
        "--min-deleted",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="rewrite shards with at least this share of rows tombstoned (0 < SHARE <= 1; default 0.5)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the shards that would be rewritten; write nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib

    from pipeline.errors import JobConfigError, StoreError
    from pipeline.store.lease import Lease
    from pipeline.store.shards import MANIFEST, ShardStore, committed_shards, compact, read_manifest
    from pipeline.store.storage import location

    if not 0 < args.min_deleted <= 1:
        raise JobConfigError(f"--min-deleted {args.min_deleted}: must be more than 0 and at most 1")
    root = location(args.dir)
    job = (root / "documents" / MANIFEST).exists()
    docs = root / "documents" if job else root
    if not (docs / MANIFEST).exists():
        raise StoreError(
            f"{root} is neither a job output (no documents/{MANIFEST}) nor an ingest directory "
            f"(no {MANIFEST}): pass the [job] output or the --out of `biomine ingest`"
        )
    kind = read_manifest(docs).get("kind")
    if kind != "ingest":
        raise StoreError(f"{docs} holds `biomine {kind}` output, which has no tombstones: nothing to compact")
    if args.dry_run:
        due = [s for s in committed_shards(docs) if s.rows and s.deleted / s.rows >= args.min_deleted]
        for s in due:
            print(f"{s.name}: {s.deleted} of {s.rows} rows tombstoned")
        print(f"{len(due)} shard(s) would be rewritten ({sum(s.live for s in due)} live articles)")
        return 0
    with contextlib.ExitStack() as stack:
        if job:  # the job's lease: no `biomine run` of this output can overlap
            stack.enter_context(Lease(root, what=f"biomine compact {root}"))
        store = stack.enter_context(ShardStore(docs, "ingest", lock=not job))
        before = {s.name: s for s in store.shards}
        done = compact(store, min_deleted=args.min_deleted)
    for old, new in done:
        info = before[old]
        print(f"{old} -> {new or '(removed: no live rows)'}: {info.live} of {info.rows} rows kept")
    recompute = sum(before[old].live for old, _ in done)
    print(
        f"{len(done)} shard(s) compacted"
        + (f"; the next run of the job computes {recompute} articles again" if job and done else "")
    )
    return 0
