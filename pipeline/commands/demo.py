"""``biomine demo``: the whole pipeline on this machine in about a minute, with tiny random models.

Real BioGPT weights cannot be downloaded here, so the demo writes tiny random checkpoints in the
published layout (:mod:`biogpt.tiny`): a token-classification model for NER, a prompt-tuned DDI
relation-extraction model with its ``biomine_task.json``, and a causal LM for summaries, each with a
BPE vocabulary learned from the sample abstracts. It then runs ``jobs/demo.toml`` (ingest the
bundled PubMed XML, shard, NER/RE/summaries on a local Ray), builds the DDI knowledge base and runs
a few DuckDB queries. Outputs of random models are meaningless text; every step around them is real.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_JOB = REPO / "jobs" / "demo.toml"

EPILOG = """\
examples:
  biomine demo                      # models into out/demo-models, outputs into out/demo
  biomine demo --fresh              # delete the demo outputs first (models are kept)
  biomine run jobs/demo.toml        # afterwards: the same job through the normal command
  biomine query out/demo "SELECT pmid, label, text FROM entities LIMIT 10"

Replace the tiny models by real ones (see `biomine convert fairseq --help`, `biomine train ner --help`)
by editing the model paths in a copy of jobs/demo.toml.
"""

QUERIES = [
    ("documents", "SELECT pmid, pub_year, has_abstract, left(title, 60) AS title FROM documents ORDER BY pmid"),
    ("entities per label", "SELECT label, count(*) AS mentions, count(DISTINCT pmid) AS abstracts "
                           "FROM entities GROUP BY 1 ORDER BY 1"),
    ("relations by parse status", "SELECT parse_status, count(*) AS n FROM relations GROUP BY 1 ORDER BY 1"),
    ("summaries", "SELECT pmid, prompt_id, left(summary, 60) AS summary FROM summaries ORDER BY pmid"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on bundled data with tiny models",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", default=str(DEMO_JOB), help="job file to run (default: jobs/demo.toml)")
    p.add_argument("--fresh", action="store_true", help="delete the job's previous outputs first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def demo_texts(paths: list[str]) -> list[str]:
    """Titles and abstracts of the job's XML files: what the tiny vocabularies are learned from."""
    from pipeline.ingest import discover_inputs
    from pipeline.pubmed_xml import iter_records

    texts = []
    for path in discover_inputs(paths):
        for record in iter_records(path):
            if isinstance(record, dict):
                texts += [record.get("title") or "", record.get("abstract") or ""]
    return [t for t in texts if t]


def make_demo_models(spec, texts: list[str]) -> list[Path]:
    """Write the tiny checkpoint of every task of ``spec`` whose model directory does not exist yet."""
    from biogpt.model import BioGptForTokenClassification
    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.tasks.ner_spans import label_list

    made = []
    # Random tied embeddings make a model repeat its last input token; untied ones vary a little more.
    untied = {"tie_word_embeddings": False}
    # The prompt-tuned RE model reads lower-cased text (docs/tasks.md): learn its vocabulary so.
    corpus = texts + [t.lower() for t in texts] + ["the interaction between aspirin and warfarin is mechanism."]
    for name, task in spec.tasks.items():
        if (task.model / "config.json").exists():
            continue
        if name == "ner":
            labels = label_list(["Chemical", "Disease"], "BIO")
            make_tiny_checkpoint(task.model, corpus, model_cls=BioGptForTokenClassification,
                                 id2label=dict(enumerate(labels)), **untied)
        elif name == "re":
            make_tiny_task_checkpoint(task.model, corpus, task={"ddi": "re-ddi", "kd-dti": "re-dti",
                                                                 "bc5cdr": "re-bc5cdr"}[task.task], **untied)
        else:
            make_tiny_checkpoint(task.model, corpus, **untied)
        made.append(task.model)
    return made


def run(args: argparse.Namespace) -> int:
    import shutil

    from pipeline.jobspec import load_job
    from pipeline.kb import build_kb
    from pipeline.query import query
    from pipeline.runner import run_job, summary_table

    spec = load_job(args.job, check_models=False)
    if spec.source.kind != "files":
        from biogpt.errors import ConfigError

        raise ConfigError(f"{args.job}: the demo runs a files source (bundled XML), not {spec.source.kind!r}")
    for path in make_demo_models(spec, demo_texts(spec.source.paths)):
        print(f"wrote tiny random model {path}", file=sys.stderr)
    if args.fresh and spec.output.exists():
        shutil.rmtree(spec.output)
    manifest = run_job(spec, progress=not args.no_progress)
    print(summary_table(manifest), file=sys.stderr)
    if (spec.output / "relations").is_dir():
        n = build_kb(spec.output / "relations", spec.output / "kb.parquet", task=spec.tasks["re"].task)
        print(f"kb: {n} edges in {spec.output / 'kb.parquet'}", file=sys.stderr)
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 10):
        for title, sql in QUERIES:
            try:
                frame = query(spec.output, sql)
            except Exception as exc:  # a dataset the job did not produce: skip its query
                print(f"\n-- {title}: skipped ({str(exc).splitlines()[0]})")
                continue
            print(f"\n-- {title}\n{frame.to_string(index=False)}")
    print(f"\noutputs: {spec.output} (query them with `biomine query {spec.output} \"SQL\"`)")
    return 0
