"""``biomine export``: a job's entities and relations (in BioC also labels and answers) as PubTator, BioC JSON or BioC XML (:mod:`pipeline.outputs.export`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write the live articles of a job's output with their entities and relations in the formats the
field exchanges, for PubTator-compatible tools, BioC pipelines and annotation viewers:

  pubtator    PMID|t|title, PMID|a|abstract, mention lines with the linked id (-1 when unlinked),
              relation lines of linked heads and tails with exp(logprob) as their score
  bioc-json   a BioC collection: a document per article, title and abstract passages, entities
  bioc-xml    as annotations (infon identifier = concept id), relations with head/tail nodes;
              document labels (classify) and answers (qa) as document infons:
                labels = A|B, label:A:score, label:A:model_id, and each label's
                evidence sentence as an annotation L1, L2, ... (type = the label, task = classify);
                question_ids = q1|..., qa:q1:question, qa:q1:answer, qa:q1:status,
                qa:q1:reason, qa:q1:logprob, qa:q1:model_id (keyed by question_id)

PubTator has no place for labels and answers (a new line type would break its readers): they are
left out of it; export BioC for them. Offsets are those of the entity rows (into title + " " +
abstract), which BioC passage offsets match. The file is written whole or not at all; the
articles stream in PMID order, so an export of a whole corpus never holds it in memory.
"""

EPILOG = """\
examples:
  biomine export out/ddi-kb --format bioc-xml --out out/ddi-kb.bioc.xml
  biomine export out/pubmed-daily --format pubtator --out export/daily.pubtator
  biomine export out/ddi-kb --format bioc-json --out out/ddi-kb.bioc.json
"""


def register(subparsers) -> None:
    from pipeline.outputs.export import FORMATS

    p = subparsers.add_parser(
        "export",
        help="entities, relations (BioC: also labels, answers) as PubTator / BioC JSON / BioC XML",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", metavar="OUT", help="a job's output directory")
    p.add_argument("--format", required=True, choices=FORMATS, help="the exchange format")
    p.add_argument(
        "--out", dest="dest", required=True, metavar="FILE", help="the file to write, in a folder that exists"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, settings={"fmt": "--format", "dest": "--out"})


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.outputs.export import export

    n = export(args.out, args.dest, args.format, progress=False if args.no_progress else None)
    print(f"wrote {args.dest}: {n} documents ({args.format})", file=sys.stderr)
    return 0
