"""``biomine demo [DIR]``: the whole pipeline on this machine in under a minute, with tiny models.

The demo is a small project folder (default ``./biomine-demo``; nothing is written elsewhere): the
first run copies the bundled job (``DIR/demo.toml``) and PubMed-format sample
(``DIR/data/demo_pubmed.xml``) out of the installed package, so it works from any install, with
or without a source checkout. So that it needs no download (real weights: ``biomine models pull``),
it writes tiny checkpoints in the published layout (:mod:`biogpt.tiny`) into ``DIR/models/``, each with a BPE
vocabulary learned from the sample abstracts: a token-classification model fine-tuned with
``biomine train ner``'s code on silver annotations of the sample (a lexicon), a prompt-tuned DDI
model with its ``biomine_task.json`` fitted to the sample's drug pairs in BioGPT's fine-tuning
format, and a random causal LM for summaries. It then runs the job (ingest the XML, shard,
NER/RE/summaries on a local Ray) into ``DIR/out``, builds the DDI knowledge base and runs a few
DuckDB queries. The NER and RE models have memorised their training abstracts, so they show the
mechanics, not accuracy; the summaries of a random LM are noise.

A second run reuses what is there: an edited ``DIR/demo.toml`` (real model paths, say) is kept,
models that exist are not rewritten, and finished outputs are verified and skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TypedDict

from pipeline.commands import plain

#: The bundled demo project (package data, see ``[tool.setuptools.package-data]``).
BUNDLE = resources.files("pipeline.commands") / "demo_files"
BUNDLE_FILES = ("demo.toml", "data/demo_pubmed.xml")
DEFAULT_DIR = "biomine-demo"

EPILOG = """\
examples:
  biomine demo                      # into ./biomine-demo: demo.toml, data/, models/, out/
  biomine demo /tmp/demo --fresh    # elsewhere; --fresh deletes the outputs first (models are kept)
  biomine run biomine-demo/demo.toml    # afterwards: the same job through the normal command
  biomine query biomine-demo/out "SELECT pmid, label, text FROM entities LIMIT 10"

Replace the tiny models by real ones by editing the model lines of DIR/demo.toml (`biomine demo DIR`
keeps an edited file): model = "biogpt:re-ddi" after `biomine models pull re-ddi`, model =
"microsoft/biogpt" for summaries (the Hub), an NER model of `biomine train ner --help`.
"""

QUERIES = [
    ("documents", "SELECT pmid, pub_year, has_abstract, left(title, 60) AS title FROM documents ORDER BY pmid"),
    (
        "entities of PMID 90000003",
        'SELECT start, "end", label, text, round(score, 3) AS score FROM entities WHERE pmid = 90000003 ORDER BY start',
    ),
    (
        "entities per label",
        "SELECT label, count(*) AS mentions, count(DISTINCT pmid) AS abstracts FROM entities GROUP BY 1 ORDER BY 1",
    ),
    ("relations by parse status", "SELECT parse_status, count(*) AS n FROM relations GROUP BY 1 ORDER BY 1"),
    (
        "relations",
        "SELECT pmid, head, tail, relation, left(evidence_text, 50) AS evidence FROM relations "
        "WHERE parse_status = 'ok' ORDER BY pmid, head",
    ),
    ("DDI knowledge base", "SELECT drug_a, drug_b, relation, n_abstracts, pmids FROM kb ORDER BY drug_a, drug_b"),
    ("summaries", "SELECT pmid, prompt_id, left(summary, 60) AS summary FROM summaries ORDER BY pmid"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on bundled data with tiny models",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dir",
        nargs="?",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"the demo's folder (default: ./{DEFAULT_DIR}); created if needed",
    )
    p.add_argument("--fresh", action="store_true", help="delete the job's previous outputs first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# The demo's silver annotations of demo_files/data/demo_pubmed.xml: a lexicon for NER and the drug pairs
# each abstract states for DDI (synthetic citations, annotated by the biomine authors).
LEXICON = {
    "Chemical": [
        "warfarin",
        "aspirin",
        "fluconazole",
        "ketoconazole",
        "midazolam",
        "rifampicin",
        "cisplatin",
        "magnesium",
        "simvastatin",
        "clarithromycin",
    ],
    "Disease": ["bleeding", "nephrotoxicity", "acute kidney injury", "ototoxicity", "rhabdomyolysis", "myopathy"],
}
DDI_TRIPLES = {
    90000001: [("aspirin", "warfarin", "effect"), ("fluconazole", "warfarin", "mechanism")],
    90000003: [("ketoconazole", "midazolam", "mechanism"), ("rifampicin", "midazolam", "mechanism")],
}


def demo_records(paths: list[str]) -> list[dict]:
    """The articles of the job's XML files (pmid, version, title, abstract)."""
    import contextlib

    from pipeline.pubmed.ingest import discover_inputs, iter_file_records

    with contextlib.ExitStack() as stack:
        return [r for path in discover_inputs(paths) for r in iter_file_records(path, stack) if isinstance(r, dict)]


def write_silver_pubtator(records: list[dict], path: Path) -> Path:
    """PubTator mentions of the lexicon's terms (whole words, any case) in title + " " + abstract."""
    import re

    from pipeline.tasks.base import article_text

    blocks = []
    for r in records:
        text = article_text(r.get("title"), r.get("abstract"))
        # PubTator is line-based: a structured abstract's section breaks become spaces (same offsets).
        abstract = (r.get("abstract") or "").replace("\n", " ")
        lines = [f"{r['pmid']}|t|{r.get('title') or ''}", f"{r['pmid']}|a|{abstract}"]
        found = []
        for label, terms in LEXICON.items():
            for term in terms:
                found += [(m.start(), m.end(), label) for m in re.finditer(rf"\b{re.escape(term)}\b", text, re.I)]
        for start, end, label in sorted(found):
            lines.append(f"{r['pmid']}\t{start}\t{end}\t{text[start:end]}\t{label}\t-")
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _TinyConfig(TypedDict):
    """Config keys of the demo's tiny checkpoints (passed on to :class:`biogpt.config.BioGptConfig`)."""

    tie_word_embeddings: bool
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float


#: How long each fitting step of the demo takes on a 2-core CPU (measured 3-5 s with the machine
#: half busy; over a minute under full load), said before it starts so a quiet minute is no hang.
_FIT_HINT = "seconds on an idle machine, a minute or more on a busy one"


def make_demo_models(spec, records: list[dict]) -> list[Path]:
    """Write (and, for NER and RE, fit to the sample) the tiny checkpoint of every task of ``spec``
    whose model directory does not exist yet."""
    from biogpt.task_spec import BY_NAME
    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.tasks.tiny import fit_prompt_model
    from pipeline.training.ner import NerTrainingSettings, train_ner

    texts = [t for r in records for t in (r.get("title"), r.get("abstract")) if t]
    made = []
    # The prompt-tuned RE model reads lower-cased text (docs/tasks.md): learn its vocabulary so too.
    corpus = texts + [t.lower() for t in texts] + ["the interaction between aspirin and warfarin is mechanism."]
    # Random tied embeddings make a model repeat its last input token; untied ones vary a little more.
    tiny: _TinyConfig = {"tie_word_embeddings": False, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    from biogpt.hub import is_explicit_name

    for name, task in spec.tasks.items():
        if is_explicit_name(task.model):  # a Hub id or a pulled release: a real model, nothing to write
            continue
        model = Path(task.model)
        if (model / "config.json").exists():
            continue
        if name == "ner":
            t0 = time.perf_counter()
            print(
                f"ner: fitting a tiny model to the sample's silver mentions (100 epochs, ~{_FIT_HINT})", file=sys.stderr
            )
            work = model.parent / f".{model.name}-work"
            base = make_tiny_checkpoint(work / "base", corpus, **tiny)
            data = write_silver_pubtator(records, work / "silver.pubtator")
            with _quiet("pipeline.training", "biogpt.weights"):  # 100 epoch lines and the new-head notice
                summary = train_ner(
                    NerTrainingSettings(data, base, model, epochs=100, lr=1e-2, batch_size=4, progress=False)
                )
            print(
                f"ner: fitted {model} to {summary['mentions']} silver mentions (loss "
                f"{summary.get('final_loss', float('nan')):.3f}) in {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
        elif name == "re":
            make_tiny_task_checkpoint(model, corpus, task=BY_NAME[task.task].checkpoint, hidden_size=48, seed=3, **tiny)
            if task.task == "ddi":
                # The DDI model reads the abstract only; an abstract without interactions is taught
                # to end at once (an empty generation).
                gold = [
                    {
                        "abstract": r["abstract"],
                        "triples": [
                            dict(drug=a, target=b, interaction=c) for a, b, c in DDI_TRIPLES.get(r["pmid"], [])
                        ],
                    }
                    for r in records
                    if r.get("abstract")
                ]
                t0 = time.perf_counter()
                print(
                    f"re: fitting a tiny model to the sample's DDI targets (300 steps, ~{_FIT_HINT})", file=sys.stderr
                )
                with _quiet("biogpt.weights"):
                    loss = fit_prompt_model(model, "ddi", gold, steps=300)
                print(
                    f"re: fitted {model} to the sample's DDI targets (loss {loss:.3f}) in {time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                )
        else:
            make_tiny_checkpoint(model, corpus, **tiny)
        made.append(model)
    return made


def write_bundle(folder: Path) -> Path:
    """Copy the bundled job and sample into ``folder`` where they are missing; the job file's path.

    :raises ConfigError: ``folder`` (or a file it needs) is not a folder, or cannot be written.
    """
    from biogpt.errors import ConfigError

    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file: name a folder for the demo (it is created if needed)")
    try:
        for name in BUNDLE_FILES:
            target = folder / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(BUNDLE.joinpath(name).read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"cannot write the demo into {folder}: {exc.strerror or exc}; name a writable folder (biomine demo DIR)"
        ) from None
    return folder / "demo.toml"


def run(args: argparse.Namespace) -> int:
    import shutil

    from pipeline.outputs.query import query_table, render
    from pipeline.run.jobspec import load_job
    from pipeline.run.runner import run_job, summary_table

    job = write_bundle(Path(args.dir))
    spec = load_job(job, check_models=False)
    if spec.source.kind != "files":
        from biogpt.errors import ConfigError

        raise ConfigError(f"{job}: the demo runs a files source (bundled XML), not {spec.source.kind!r}")
    for path in make_demo_models(spec, demo_records(spec.source.paths)):
        print(f"wrote tiny model {path}", file=sys.stderr)
    out = Path(spec.output)  # the demo writes on this machine
    if args.fresh and out.exists():
        shutil.rmtree(out)
    manifest = run_job(spec, progress=not args.no_progress)
    print(summary_table(manifest), file=sys.stderr)
    if "kb" in manifest["stages"]:
        print(f"kb: {manifest['stages']['kb']['edges']} edges in {out / 'kb'}", file=sys.stderr)
    for title, sql in QUERIES:
        try:
            table = query_table(spec.output, sql)
        except Exception as exc:  # a dataset the job did not produce: skip its query
            print(f"\n-- {title}: skipped ({str(exc).splitlines()[0]})")
            continue
        print(f"\n-- {title}\n" + "".join(render(table, "table")), end="")  # as `biomine query` prints it
    print(
        f'\noutputs: {spec.output} (query them with `biomine query {spec.output} "SQL"`; '
        f"run the job again with `biomine run {job}`)"
    )
    return 0
