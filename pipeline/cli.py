"""The ``biomine`` command line.

Subcommands live in :mod:`pipeline.commands` (one module each). User mistakes raise
:class:`biogpt.errors.BioMineError` and are printed as one ``biomine: error: ...`` line with exit
status 2, never as a traceback; set ``BIOMINE_DEBUG=1`` to see the traceback anyway. A command's
``settings`` default (setting -> flag) names the flag of the setting an error is about, e.g.
``(--out)`` (:mod:`pipeline.errors`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from biogpt.errors import BioMineError
from pipeline import package_version

# Order here is the order in `biomine --help`. A module missing from the tree is skipped so that a
# partial install still offers the commands it has.
COMMAND_MODULES = [
    "pipeline.commands.demo",
    "pipeline.commands.fetch",
    "pipeline.commands.ingest",
    "pipeline.commands.sync",
    "pipeline.commands.compact",
    "pipeline.commands.upgrade",
    "pipeline.commands.convert",
    "pipeline.commands.models",
    "pipeline.commands.vocab",
    "pipeline.commands.generate",
    "pipeline.commands.train",
    "pipeline.commands.evaluate",
    "pipeline.commands.run",
    "pipeline.commands.kb",
    "pipeline.commands.export",
    "pipeline.commands.query",
    "pipeline.commands.status",
]

DESCRIPTION = """\
biomine: batch literature mining of PubMed with BioGPT.

Typical flow:
  biomine fetch --query "warfarin AND drug interactions" --max 500 --out data/warfarin
  biomine sync data/pubmed             # NCBI's baseline/update files: only new ones, verified by .md5
  biomine ingest pubmed25n0001.xml.gz --out data/baseline
  biomine models pull re-ddi          # a released checkpoint, downloaded + converted: model = "biogpt:re-ddi"
  biomine convert fairseq RE-DDI/checkpoint_avg.pt models/re-ddi
  biomine train ner --data CDR_TrainingSet.PubTator.txt --base models/biogpt --out models/ner
  biomine eval re --task ddi --data DDI/test.json --model models/re-ddi
  biomine run jobs/ddi-kb.toml       # fetch + tasks on Ray -> Parquet under the job's output
  biomine vocab build --mesh desc2025.xml.gz --drugbank "drugbank vocabulary.csv" --out vocab/concepts.parquet
  biomine kb build --relations out/ddi-kb/relations --out out/ddi-kb/kb.parquet
  biomine query out/ddi-kb "SELECT * FROM kb ORDER BY n_abstracts DESC LIMIT 20"
  biomine status jobs/ddi-kb.toml    # last run, tables, lease, whether the next scheduled run is due
  biomine export out/ddi-kb --format bioc-xml --out ddi-kb.bioc.xml   # PubTator / BioC for other tools
  biomine demo                       # the whole pipeline on this machine, tiny models

Run `biomine COMMAND --help` for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biomine", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"biomine {package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def _terminate_as_interrupt():
    """SIGTERM (what cron, Kubernetes, `ray job stop` and `kill` send) stops biomine as Ctrl-C does:
    the same cleanup (leases released, the run recorded as interrupted), line and exit status.
    Returns the handler it replaced (None when it could not install one: not the main thread)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # huggingface_hub's HTTP client logs every request at INFO
        for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except BioMineError as exc:
        exc.spell(getattr(args, "settings", None) or {})  # the flag of the setting it is about
        if os.environ.get("BIOMINE_DEBUG"):
            raise
        print(f"biomine: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biomine: interrupted; what was committed is kept and a re-run resumes", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
