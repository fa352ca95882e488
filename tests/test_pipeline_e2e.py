"""`biomine run` end to end: real local Ray, tiny random BioGPT checkpoints, loopback fake E-utilities.

What must hold (issue "Distributed pipeline on Ray"):

- every input PMID appears exactly once in ``documents``; every output row's PMID (and version)
  exists in ``documents``; every output file has its declared schema (name and version included);
- a run interrupted mid-way (Ctrl-C to the whole process group, as a terminal sends it) and then
  re-run gives the same outputs as an uninterrupted run;
- an incremental files job applies updates: outputs of replaced and deleted articles are dropped,
  only changed shards are recomputed;
- the wrong kind of checkpoint is refused before any work starts.

The jobs run as ``python -m pipeline.cli run`` subprocesses (each starts its own local Ray), except
the incremental test, which runs in-process.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_eutils import FakeEutils, article_xml, pubmed_document

from pipeline.store.datasets import OutputName
from pipeline.store.documents import Documents, read_articles
from pipeline.store.output import JobOutput
from pipeline.store.tables import Table

REPO = Path(__file__).resolve().parents[1]
QUERY = "anticoagulant drug interactions"
DATASETS = {"entities": "schemas.entities", "relations": "schemas.relations", "summaries": "schemas.summaries"}

SENTENCES = [
    "Warfarin and aspirin increase bleeding risk.",
    "Ketoconazole raises midazolam exposure through CYP3A4 inhibition.",
    "Cisplatin causes nephrotoxicity; magnesium protects the kidney.",
    "Fluconazole inhibits CYP2C9 and raises the concentration of warfarin.",
    "Rifampicin induces CYP3A4 and lowers simvastatin levels.",
    "Clarithromycin combined with simvastatin caused rhabdomyolysis in a 70-year-old man.",
]


def _abstract(i: int) -> str | None:
    if i % 7 == 3:
        return None  # kept and flagged, never dropped
    text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 3))
    if i % 5 == 0:
        text += " Patients in Zürich (β-blocker users) were excluded."
    return html.escape(text, quote=False)


ARTICLES = [(40_000_000 + i, dt.date(2018 + i % 5, 1 + i % 12, 1 + i % 27)) for i in range(22)]


def corpus_texts() -> list[str]:
    texts = []
    for i, _ in enumerate(ARTICLES):
        texts.append(f"Article {i} on drug interactions.")
        texts.append(html.unescape(_abstract(i) or ""))
    return texts + [t.lower() for t in texts] + ["the interaction between aspirin and warfarin is mechanism."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random checkpoints in the published layout: NER (BIO), a DDI prompt model, a causal LM."""
    from biogpt.model import BioGptForTokenClassification
    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.tasks.ner_spans import label_list

    root = tmp_path_factory.mktemp("models")
    texts = corpus_texts()
    labels = label_list(["Chemical", "Disease"], "BIO")
    paths = {
        "ner": make_tiny_checkpoint(
            root / "ner-tiny", texts, model_cls=BioGptForTokenClassification, id2label=dict(enumerate(labels)), seed=1
        ),
        "re": make_tiny_task_checkpoint(root / "re-ddi-tiny", texts, task="re-ddi"),
        "summarize": make_tiny_checkpoint(root / "lm-tiny", texts, seed=2),
    }
    return paths


def write_job(
    path: Path,
    *,
    output: Path,
    source: dict,
    models: dict[str, Path],
    tasks=("ner", "re", "summarize"),
    shard_size: int = 3,
) -> Path:
    settings = {
        "ner": {"model": str(models["ner"]), "batch_size": 2},
        "re": {"task": "ddi", "model": str(models["re"]), "batch_size": 3, "max_new_tokens": 12},
        "summarize": {
            "model": str(models["summarize"]),
            "prompt": "{title} {abstract} In summary,",
            "prompt_id": "in-summary-v1",
            "max_new_tokens": 6,
            "batch_size": 4,
        },
    }
    return conftest.write_job(
        path,
        name="e2e",
        output=output,
        source={**source, "shard_size": shard_size},
        tasks={t: settings[t] for t in tasks},
    )


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "NCBI_API_KEY", "NCBI_EMAIL", "BIOMINE_EUTILS_URL")
    }
    env.update(BIOMINE_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    return env


def run_cli(job: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def doc_stems(out: Path) -> set[str]:
    """The stems of the documents table's live data files (from its Delta log)."""
    return {f.stem for f in Documents(out / "documents").files().values()}


def live_outputs(out: Path, name: str) -> list[str]:
    """The live data files of a task table (from its Delta log)."""
    return sorted(Table(out / name).files()) if Table.exists(out / name) else []


def dataset(out: Path, name: str) -> pa.Table:
    """The table as readers see it (its live rows)."""
    from pipeline.outputs.query import read_dataset

    return read_dataset(out, name) if live_outputs(out, name) else None


def canonical(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def check_invariants(out: Path, expected_pmids: set[int]) -> dict[str, pa.Table]:
    import importlib

    docs = read_articles(out)
    pmids = docs.column("pmid").to_pylist()
    assert sorted(pmids) == sorted(expected_pmids), "every input PMID exactly once in documents"
    versions = dict(zip(pmids, docs.column("version").to_pylist()))
    tables = {"documents": docs}
    for name, module in DATASETS.items():
        schema_module = importlib.import_module(module)
        declared = next(v for k, v in vars(schema_module).items() if k.endswith("_SCHEMA"))
        files = [out / name / f for f in live_outputs(out, name)]
        stems = sorted(OutputName.parse(f.name).doc for f in files)
        assert stems == sorted(doc_stems(out)), f"{name}: one output file per documents data file"
        for f in files:
            schema = pq.read_schema(f)
            assert schema.equals(declared, check_metadata=True), f"{f} does not have the declared schema"
            schema_module.check_schema(schema, str(f))
        table = dataset(out, name)
        for pmid, version in zip(table.column("pmid").to_pylist(), table.column("version").to_pylist()):
            assert versions.get(pmid) == version, f"{name}: row of PMID {pmid} v{version} not in documents"
        tables[name] = table
    return tables


@pytest.fixture
def fake_pubmed():
    with FakeEutils(lifetime=600) as server:
        server.add_query(
            QUERY,
            [
                (pmid, date, article_xml(pmid, date, abstract=_abstract(i), title=f"Article {i} on drug interactions."))
                for i, (pmid, date) in enumerate(ARTICLES)
            ],
        )
        yield server


@pytest.mark.slow
def test_entrez_job_end_to_end_interrupted_run_resumes_to_identical_outputs(tmp_path, models, fake_pubmed):
    env = cli_env(tmp_path)
    source = {"kind": "entrez", "query": QUERY, "email": "tests@example.org", "eutils_url": fake_pubmed.url}
    expected = {pmid for pmid, _ in ARTICLES}

    # 1. Uninterrupted reference run.
    ref_out = tmp_path / "ref"
    done = run_cli(write_job(tmp_path / "ref.toml", output=ref_out, source=source, models=models), env)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = check_invariants(ref_out, expected)
    manifest = JobOutput(ref_out).last_run()["record"]
    assert manifest["failures"] == []
    assert {k: manifest["stages"][k]["documents"] for k in ("ner", "re", "summarize")} == {
        "ner": len(expected),
        "re": len(expected),
        "summarize": len(expected),
    }
    assert set(manifest["models"]) == {"ner", "re", "summarize"} and all(
        len(m["sha256"]) == 64 for m in manifest["models"].values()
    )
    assert ref["summaries"].num_rows == len(expected)  # one summary per article, abstract or not
    statuses = set(ref["relations"].column("parse_status").to_pylist())
    assert statuses <= {"ok", "unparsed"} and ref["relations"].num_rows >= len(expected)

    # 2. Interrupted run: Ctrl-C (SIGINT to the process group) once the first task outputs exist.
    out = tmp_path / "resumed"
    job = write_job(tmp_path / "resumed.toml", output=out, source=source, models=models)
    # As a terminal runs it: a process started in the background by a non-interactive shell (CI's
    # make, `cmd &`) inherits SIGINT *ignored*, so Ctrl-C is re-armed before the CLI starts.
    rearm = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['biomine'] + sys.argv[1:]; runpy.run_module('pipeline.cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", rearm, "run", str(job), "--no-progress"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if Table.exists(out / "entities") and len(live_outputs(out, "entities")) >= 2:  # committed outputs
                break
            time.sleep(0.05)
        interrupted = proc.poll() is None
        if interrupted:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the interrupted Ray, if any
        except ProcessLookupError:
            pass
    assert interrupted, "the run finished before it could be interrupted; make the job larger"
    assert proc.returncode != 0
    events = [e["event"] for e in JobOutput(out).run_events()]
    assert events == ["started", "interrupted"]  # the runs table says the run did not finish
    from pipeline.run.status import output_status

    status = output_status(str(out))  # and `biomine status` says so, with nothing holding the output
    assert status.last_run is not None and status.last_run.outcome == "interrupted" and status.lease is None
    assert status.needs_attention == ["the last run interrupted"]
    n_entities = len(live_outputs(out, "entities"))
    assert n_entities < len(doc_stems(out)) or not live_outputs(out, "summaries")

    again = run_cli(job, env)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = check_invariants(out, expected)
    final = JobOutput(out).last_run()["record"]
    assert final["stages"]["ner"]["shards_skipped"] >= 2  # finished outputs were not redone
    assert final["stages"]["documents"]["already_present"] == len(expected)  # nothing fetched twice

    for name in DATASETS:
        assert canonical(resumed[name]) == canonical(ref[name]), f"{name} differs after the resumed run"
    drop = ["fetched_at", "source"]
    assert canonical(resumed["documents"].drop(drop)) == canonical(ref["documents"].drop(drop))


@pytest.mark.slow
def test_incremental_files_job_drops_replaced_and_deleted_articles(tmp_path, models, ray_local):
    from pipeline.run.jobspec import load_job
    from pipeline.run.runner import run_job

    src = tmp_path / "pubmed"
    src.mkdir()
    baseline = [article_xml(p, abstract=_abstract(p)) for p in range(1, 10)]
    (src / "pubmed25n0001.xml").write_text(pubmed_document(baseline))
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "daily.toml",
        output=out,
        source={"kind": "files", "paths": [str(src)]},
        models=models,
        tasks=("ner", "summarize"),
        shard_size=3,
    )
    first = run_job(load_job(job), progress=False, num_cpus=2)
    check_invariants_files(out, set(range(1, 10)), tasks=("entities", "summaries"))
    assert first["stages"]["ner"]["shards_done"] == 3

    # A daily update: PMID 2 gets version 2, PMID 8 is deleted, PMID 10 is new.
    update = [article_xml(2, title="Second version.", version=2, abstract=_abstract(4)), article_xml(10)]
    (src / "pubmed25n0002.xml").write_text(pubmed_document(update, deletions=[8]))
    second = run_job(load_job(job), progress=False, num_cpus=2)
    tables = check_invariants_files(out, set(range(1, 11)) - {8}, tasks=("entities", "summaries"))
    summaries = {r["pmid"]: r["version"] for r in tables["summaries"].to_pylist()}
    assert summaries.get(2) == 2 and 8 not in summaries and 10 in summaries
    ner = second["stages"]["ner"]
    # Only the update's own articles are computed: the file that held neither revised nor deleted
    # articles is kept, the outputs of the two rewritten files are copied without PMIDs 2 and 8.
    assert ner["shards_skipped"] == 1 and ner["shards_derived"] == 2
    assert ner["documents"] == 2
    from pipeline.run.status import output_status

    status = output_status(str(out))  # what `biomine status` shows is what the run recorded
    assert status.last_run is not None and status.last_run.outcome == "finished" and not status.needs_attention
    assert {k: status.last_run.stages["ner"][k] for k in ("shards_done", "shards_skipped", "shards_derived")} == {
        k: ner[k] for k in ("shards_done", "shards_skipped", "shards_derived")
    }
    assert status.last_run.stages["documents"]["added"] == 1 and status.last_run.stages["documents"]["deleted"] == 1
    assert status.newest_input is not None and status.newest_input["name"] == "pubmed25n0002.xml"
    assert status.inputs_applied == 2 and status.schedule is not None and status.schedule.schedule == "once"

    third = run_job(load_job(job), progress=False, num_cpus=2)  # nothing new: nothing recomputed
    assert third["stages"]["ner"]["shards_done"] == 0 and third["stages"]["summarize"]["shards_done"] == 0


def check_invariants_files(out: Path, expected: set[int], tasks) -> dict[str, pa.Table]:
    docs = read_articles(out)
    assert sorted(docs.column("pmid").to_pylist()) == sorted(expected)
    versions = dict(zip(docs.column("pmid").to_pylist(), docs.column("version").to_pylist()))
    shards = doc_stems(out)
    tables = {}
    for name in tasks:
        assert sorted(OutputName.parse(f).doc for f in live_outputs(out, name)) == sorted(shards)
        table = dataset(out, name)
        assert all(
            versions.get(p) == v for p, v in zip(table.column("pmid").to_pylist(), table.column("version").to_pylist())
        )
        tables[name] = table
    return tables


def test_wrong_checkpoint_kind_is_refused_before_any_work(tmp_path, models, capsys):
    from pipeline.cli import main

    out = tmp_path / "out"
    wrong = dict(models, re=models["summarize"])  # a base LM given to relation extraction
    job = write_job(
        tmp_path / "bad.toml",
        output=out,
        source={"kind": "files", "paths": ["/nonexistent"]},
        models=wrong,
        tasks=("re",),
    )
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and "lm-tiny" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing fetched, nothing written


def installed_copy(tmp_path: Path) -> Path:
    """This package built as a wheel (from a copy of the sources, so the checkout gets no build/) and
    unpacked into a folder: what a non-editable ``pip install`` puts on ``sys.path``."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    for name in ("biogpt", "pipeline", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(tmp_path / "wheel"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = tmp_path / "site"
    (wheel,) = (tmp_path / "wheel").glob("biomine-*.whl")
    zipfile.ZipFile(wheel).extractall(site)
    return site


@pytest.mark.slow
def test_demo_runs_from_a_non_editable_install_outside_any_checkout(tmp_path):
    site = installed_copy(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(cli_env(tmp_path), PYTHONPATH=str(site))
    # The unpacked wheel comes first on sys.path (the checkout's editable finder comes after it).
    script = (
        "import sys, pipeline; assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__; "
        "from pipeline.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    before = sorted(p.name for p in REPO.iterdir())
    done = subprocess.run(
        [sys.executable, "-c", script, str(site), "demo", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in REPO.iterdir()) == before  # nothing written into the checkout
    demo = work / "biomine-demo"
    assert sorted(p.name for p in demo.iterdir()) == ["data", "demo.toml", "models", "out"]
    assert f"biomine run biomine-demo{os.sep}demo.toml" in done.stdout
    assert "-- entities per label" in done.stdout and "-- summaries" in done.stdout
    # Each long quiet step says what it does before it starts (a minute under load: not a hang).
    for task in ("ner", "re"):
        err = done.stderr
        assert -1 < err.find(f"{task}: fitting a tiny model") < err.find(f"{task}: fitted "), err[-3000:]
    out = demo / "out"
    docs = read_articles(out)
    assert docs.num_rows == 4
    for name in DATASETS:
        assert (out / name).is_dir()
    # The demo's NER and DDI models are fitted to the sample: their outputs are the sample's terms.
    from pipeline.commands.demo import LEXICON
    from pipeline.outputs.query import query

    terms = {t for ts in LEXICON.values() for t in ts}
    entities = query(out, "SELECT lower(text) AS t FROM entities")["t"].tolist()
    assert entities and set(entities) <= terms
    kb = query(out, "SELECT drug_a, drug_b, relation FROM kb")
    assert len(kb) >= 1 and set(kb["drug_a"]) | set(kb["drug_b"]) <= set(LEXICON["Chemical"])
    assert set(kb["relation"]) <= {"effect", "mechanism", "advise", "int"}


def test_demo_folder_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys):
    from pipeline.cli import main

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    assert main(["demo", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: ") and "is a file" in err and len(err.strip().splitlines()) == 1
    assert a_file.read_text() == "mine\n"
    # A folder that cannot be created (its parent is a file; a read-only folder would not stop root).
    assert main(["demo", str(a_file / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: cannot write the demo into ") and len(err.strip().splitlines()) == 1
    assert a_file.read_text() == "mine\n"


def test_demo_keeps_an_edited_job_and_restores_missing_files(tmp_path):
    from pipeline.commands.demo import BUNDLE, write_bundle

    folder = tmp_path / "demo"
    job = write_bundle(folder)
    assert job.read_bytes() == BUNDLE.joinpath("demo.toml").read_bytes()
    edited = job.read_text().replace("max_new_tokens = 16", "max_new_tokens = 8")
    job.write_text(edited)
    (folder / "data" / "demo_pubmed.xml").unlink()
    assert write_bundle(folder) == job
    assert job.read_text() == edited
    assert (folder / "data" / "demo_pubmed.xml").read_bytes() == BUNDLE.joinpath("data/demo_pubmed.xml").read_bytes()
