"""``biomine vocab build``: a concept dictionary for entity linking from public vocabulary files."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Build the dictionary that links entity mentions to identifiers (docs/linking.md), once, from the
vocabulary files you download:

  --mesh FILE       MeSH descriptor and supplementary-concept XML from NLM (desc2025.xml,
                    supp2025.xml; .gz too): every entry term of every concept, typed by tree
                    number (C, F03: Disease; D: Chemical) or supplementary class
  --drugbank FILE   the CC0 DrugBank vocabulary CSV ("drugbank vocabulary.csv": common names and
                    synonyms, ids DB00001 ...)
  --pubtator FILE   annotated PubTator files (BC5CDR, PubTator exports): each mention text with
                    its annotated id

Each flag may repeat. The result is one Parquet file (schemas/concepts.py) that `biomine eval link`
measures and jobs name.
"""

EPILOG = """\
examples:
  biomine vocab build --mesh desc2025.xml.gz --mesh supp2025.xml.gz --drugbank "drugbank vocabulary.csv" \\
      --out vocab/mesh-drugbank.parquet
  biomine vocab build --pubtator CDR_DevelopmentSet.PubTator.txt --out vocab/bc5cdr-dev.parquet
  biomine eval link --data CDR_TestSet.PubTator.txt --vocab vocab/bc5cdr-dev.parquet
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "vocab",
        help="build the concept dictionary for entity linking",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="vocab_command", metavar="{build}")
    build = sub.add_parser(
        "build",
        help="a dictionary from MeSH XML, the DrugBank vocabulary CSV, PubTator files",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--mesh", action="append", default=[], metavar="FILE", help="MeSH desc*.xml or supp*.xml (.gz)")
    build.add_argument("--drugbank", action="append", default=[], metavar="FILE", help="DrugBank vocabulary CSV")
    build.add_argument("--pubtator", action="append", default=[], metavar="FILE", help="annotated PubTator file")
    build.add_argument("--out", required=True, metavar="FILE.parquet", help="the dictionary to write (path or URI)")
    build.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_build(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pipeline.errors import JobConfigError
    from pipeline.store.storage import location
    from pipeline.tasks.vocabulary import dictionary_table, drugbank_rows, mesh_rows, pubtator_rows

    sources = (
        [(mesh_rows, f, "--mesh") for f in args.mesh]
        + [(drugbank_rows, f, "--drugbank") for f in args.drugbank]
        + [(pubtator_rows, f, "--pubtator") for f in args.pubtator]
    )
    if not sources:
        raise JobConfigError("vocab build: pass at least one of --mesh, --drugbank, --pubtator")
    for _, f, flag in sources:
        if not Path(f).is_file():
            raise JobConfigError(f"{flag} {f}: no such file")
    out = location(args.out)
    if out.is_dir():
        raise JobConfigError(
            f"--out {args.out} is a folder: name the dictionary's file, e.g. {out / 'concepts.parquet'}"
        )
    table = dictionary_table(reader(f) for reader, f, _ in sources)
    out.write_parquet(table)
    concepts = len(set(table.column("concept_id").to_pylist()))
    print(f"wrote {args.out}: {table.num_rows} names of {concepts} concepts", file=sys.stderr)
    return 0
