"""``biomine models``: real BioGPT weights in one command (``pull``) and what this machine holds (``list``)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Jobs name models three ways (`model =` in a job, or from_pretrained in Python):

  models/re-ddi          a local directory (config.json + weights); a path always wins
  microsoft/biogpt       a Hugging Face Hub id, optionally @revision (branch, tag or commit):
                         fetched with huggingface_hub into its cache (HF_HOME, HF_TOKEN,
                         HF_ENDPOINT for a mirror, HF_HUB_OFFLINE=1 for the cache only); a job
                         pins the commit it resolved to and records it in its manifest
  biogpt:re-ddi          a released fine-tuned fairseq checkpoint of microsoft/BioGPT, after
                         `biomine models pull re-ddi` downloaded and converted it

`pull NAME` downloads a released checkpoint (the archive linked from microsoft/BioGPT's README,
resumed with HTTP Range when a connection breaks or the command is run again), checks the
vocabulary files against pinned sha256s and the archive against its pinned digest (--sha256, or
the one this machine's first pull recorded in $BIOMINE_MODEL_CACHE/release-pins.json: BioGPT
publishes none), unpacks it, converts it
(`biomine convert fairseq`) and puts it in $BIOMINE_MODEL_CACHE/released/NAME (default
~/.cache/biomine/models). `pull` of a Hub id fetches it into the Hub cache now, so that later
runs work offline. `list` shows the pulled releases and the Hub models in the cache.

Converting runs no code from the file: checkpoints are read with torch's weights_only loader and
an allowlist by name (docs/convert.md, "Trust"). Mirrors must be https:// (http:// only with
--allow-http).
"""

EPILOG = """\
examples:
  biomine models list --available           # the released checkpoints that `pull` knows
  biomine models pull re-ddi                # then, in a job:  model = "biogpt:re-ddi"
  biomine models pull re-ddi --mirror https://mirror.internal/biogpt  # MIRROR/RE-DDI-BioGPT.tgz, MIRROR/base/dict.txt
  biomine models pull microsoft/biogpt      # into the Hub cache; later: HF_HUB_OFFLINE=1 biomine run ...
  biomine models list                       # what this machine holds
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="pull released BioGPT checkpoints or Hub models; list what is here",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="models_command", metavar="{pull,list}")
    pull = sub.add_parser(
        "pull",
        help="download, verify, unpack and convert a released checkpoint (or fetch a Hub id)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pull.add_argument("name", metavar="NAME", help="a release name (`biomine models list --available`) or a Hub id")
    pull.add_argument(
        "--mirror",
        metavar="URL",
        help="fetch the archive and vocabulary from this server instead "
        "(MIRROR/<archive>.tgz, MIRROR/base|large/dict.txt|bpecodes); else $BIOMINE_RELEASE_MIRROR",
    )
    pull.add_argument("--sha256", metavar="HEX", help="the archive must have this checksum (default: the pinned one)")
    pull.add_argument("--allow-http", action="store_true", help="accept a plain http:// mirror (a network you trust)")
    pull.add_argument("--revision", metavar="REV", help="Hub ids: a branch, tag or commit (default main)")
    pull.add_argument("--force", action="store_true", help="pull again even if already pulled")
    pull.add_argument(
        "--keep-archive", action="store_true", help="keep the downloaded .tgz (default: deleted once converted)"
    )
    pull.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    pull.set_defaults(
        func=run_pull,
        settings={"mirror": "--mirror", "allow_http": "--allow-http", "sha256": "--sha256", "overwrite": "--force"},
    )
    lst = sub.add_parser(
        "list",
        help="the pulled releases and the Hub models in the cache",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lst.add_argument("--available", action="store_true", help="the released checkpoints `pull` can fetch")
    lst.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_pull(args: argparse.Namespace) -> int:
    from biogpt import hub
    from pipeline.store import releases

    if "/" in args.name or args.name.startswith(hub.HF_SCHEME):
        resolved = hub.resolve(
            args.name if args.name.startswith(hub.HF_SCHEME) else f"{hub.HF_SCHEME}{args.name}", args.revision
        )
        print(f"{resolved.reference.value}@{resolved.revision}: {resolved.path}")
        print(
            f'use it in a job as  model = "{resolved.reference.value}"  (or pinned: '
            f'"{resolved.reference.value}@{resolved.revision}")'
        )
        return 0
    record = releases.pull(
        args.name,
        mirror=args.mirror,
        sha256=args.sha256,
        force=args.force,
        keep_archive=args.keep_archive,
        progress=False if args.no_progress else None,
        allow_http=args.allow_http,
    )
    print(f"{args.name}: {record['path']} (task {record.get('task')}, archive sha256 {record.get('archive_sha256')})")
    print(f'use it in a job as  model = "{hub.RELEASE_PREFIX}{args.name}"')
    return 0


def run_list(args: argparse.Namespace) -> int:
    from biogpt import hub
    from pipeline.store import releases

    if args.available:
        print(f"{'name':<19}{'in a job':<30}{'archive (--mirror)':<30}{'on the Hub':<32}what")
        for r in releases.RELEASES.values():
            print(f"{r.name:<19}{_job_use(r.task):<30}{r.archive + '.tgz':<30}{r.hub or '-':<32}{r.what}")
        return 0
    pulled = releases.list_pulled()
    print(f"released checkpoints in {hub.released_dir('')}:")
    if not pulled:
        print("  none (`biomine models pull NAME`; names: `biomine models list --available`)")
    for rec in pulled:
        sha = (rec.get("archive_sha256") or "?")[:12]
        print(
            f"  {hub.RELEASE_PREFIX + rec['name']:<28}task {rec.get('task', '?'):<13}archive sha256 {sha}  "
            f"pulled {rec.get('pulled_at', '?')}"
        )
    print(f"Hub models in {hub.hub_settings()['cache_dir']}:")
    models = _hub_cache()
    if not models:
        print("  none")
    for repo_id, revisions, size in models:
        print(f"  {repo_id:<40}{', '.join(r[:12] for r in revisions):<30}{size / 1e6:,.1f} MB")
    return 0


def _job_use(task: str) -> str:
    """Where a released checkpoint of ``task`` goes in a job."""
    from biogpt.task_spec import BY_CHECKPOINT

    if task == "lm":
        return "summarize; train ner --base"
    spec = BY_CHECKPOINT[task]
    if spec.family == "qa":
        return '[tasks.qa] question = "..."'
    if spec.family == "re":
        return f'[tasks.re] task = "{spec.name}"'
    if spec.family == "dc":
        return "[tasks.classify]"
    return "- (convert/generate only)"


def _hub_cache() -> list[tuple[str, list[str], int]]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from biogpt import hub

    try:
        info = scan_cache_dir(hub.hub_settings()["cache_dir"])
    except CacheNotFound:
        return []
    return sorted(
        (r.repo_id, sorted(rev.commit_hash for rev in r.revisions), r.size_on_disk)
        for r in info.repos
        if r.repo_type == "model"
    )
