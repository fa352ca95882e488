"""`biomine run --check` runs every check that `run` makes before it starts Ray, lists every problem
at once, exits 2 with a `biomine: error:` message, and writes nothing; `run` refuses the same jobs
with the same message before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
from conftest import DEMO_XML as SAMPLE  # noqa: E402


def job(
    tmp_path: Path,
    *,
    output: str | None = None,
    source: str | None = None,
    tasks: str = "",
    resources: str = "",
    job_extra: str = "",
) -> Path:
    path = tmp_path / "job.toml"
    out = output if output is not None else f'"{tmp_path / "out"}"'
    src = source or f'kind = "files"\npaths = ["{SAMPLE}"]'
    path.write_text(
        f'[job]\nname = "check"\noutput = {out}\n{job_extra}\n[source]\n{src}\n{tasks}\n[resources]\n{resources}\n'
    )
    return path


def problems_head(err: str) -> str:
    """``N problem(s)`` as the error counts them."""
    count = err.removeprefix("biomine: error: ").split(" ", 1)[0]
    return f"{count} problem{'s' if count != '1' else ''}"


def refused(capsys, path: Path, *needles: str, check: bool = True) -> str:
    capsys.readouterr()
    assert main(["run", str(path), "--no-progress"] + (["--check"] if check else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error:") and "Traceback" not in err, err
    # One layout for every problem, whichever check found it: one line, "N problem(s) in JOB: (1) ...; (2) ...".
    assert len(err.strip().splitlines()) == 1 and err.startswith(
        f"biomine: error: {problems_head(err)} in {path}: (1) "
    ), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def bad_models(tmp_path, demo_models):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(demo_models["ner"], corrupt)
    (corrupt / "config.json").write_text("{not json")
    return {"corrupt": corrupt}


CASES = {
    "base LM given to NER": (lambda m, b: f'[tasks.ner]\nmodel = "{m["summarize"]}"\n', ["ner: ", "NER needs"]),
    "NER model given to RE": (lambda m, b: f'[tasks.re]\ntask = "ddi"\nmodel = "{m["ner"]}"\n', ["[tasks.re]"]),
    "RE checkpoint of another task": (
        lambda m, b: f'[tasks.re]\ntask = "bc5cdr"\nmodel = "{m["re"]}"\n',
        # the job key, not `eval re`'s --task
        [
            "is a ddi checkpoint, not bc5cdr: ask for task ddi, or give a bc5cdr model ([tasks.re] task, [tasks.re] model)"
        ],
    ),
    "RE checkpoint given to QA": (
        lambda m, b: f'[tasks.qa]\nquestion = "{{title}}"\nmodel = "{m["re"]}"\n',
        ["is a ddi checkpoint, not a PubMedQA one", "([tasks.qa] model)"],
    ),
    "QA question without its id": (
        lambda m, b: f'[tasks.qa]\nquestion = "Is it safe?"\nmodel = "{m["re"]}"\n',
        ["[tasks.qa]", "question_id is required with a written-out question"],
    ),
    "corrupt config.json": (lambda m, b: f'[tasks.ner]\nmodel = "{b["corrupt"]}"\n', ["cannot read", "config.json"]),
    "max_new_tokens beyond the positions": (
        lambda m, b: f'[tasks.summarize]\nmodel = "{m["summarize"]}"\nmax_new_tokens = 4000\n',
        ["leaves no room"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_refuses_what_run_refuses(tmp_path, demo_models, bad_models, capsys, case):
    tasks, needles = CASES[case]
    path = job(tmp_path, tasks=tasks(demo_models, bad_models))
    first = refused(capsys, path, *needles)
    assert refused(capsys, path, *needles, check=False) == first  # `run` says the same, at once
    assert not (tmp_path / "out").exists()  # and nothing was written


def test_every_problem_is_listed_at_once(tmp_path, demo_models, capsys):
    (tmp_path / "a-file").write_text("x")
    path = job(
        tmp_path,
        output=f'"{tmp_path / "a-file"}"',
        source='kind = "files"\npaths = ["nowhere/*.xml.gz"]',
        tasks=(
            f'[tasks.ner]\nmodel = "{demo_models["summarize"]}"\n'
            f'[tasks.re]\ntask = "ddi"\nmodel = "{demo_models["ner"]}"\n'
        ),
    )
    err = refused(capsys, path, "4 problems", "is a file", "matches no files", "[tasks.ner]", "[tasks.re]")
    assert "(4) " in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "setting, needle",
    [
        ('incremental = "false"', "[job] incremental = 'false': use true or false"),
    ],
)
def test_job_types(tmp_path, demo_models, capsys, setting, needle):
    refused(capsys, job(tmp_path, tasks=f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\n', job_extra=setting), needle)


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("actors = -2", "[resources] actors = -2: must be >= 0"),
        ("gpus_per_actor = -1", "[resources] gpus_per_actor = -1: must be >= 0"),
        ("cpus_per_actor = 0", "[resources] cpus_per_actor = 0: must be > 0"),
    ],
)
def test_resource_values(tmp_path, demo_models, capsys, setting, needle):
    refused(capsys, job(tmp_path, tasks=f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\n', resources=setting), needle)


def test_entrez_without_an_email_and_an_unreachable_address(tmp_path, demo_models, capsys, monkeypatch):
    monkeypatch.delenv("NCBI_EMAIL", raising=False)
    monkeypatch.delenv("BIOMINE_EUTILS_URL", raising=False)
    path = job(
        tmp_path,
        source='kind = "entrez"\nquery = "warfarin"',
        resources='address = "127.0.0.1:1"',
        tasks=f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\n',
    )
    err = refused(capsys, path, "2 problems", "cannot reach the Ray cluster at 127.0.0.1:1")
    # The error names the job key (the client itself speaks of an email only), not a flag.
    assert (
        "no contact email for NCBI, which asks every E-utilities client (https://eutils.ncbi.nlm.nih.gov/entrez/"
        "eutils/) for one: give an email address, or set NCBI_EMAIL ([source] email)" in err
    ), err
    assert "--email" not in err


def test_fetch_without_an_email_names_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NCBI_EMAIL", raising=False)
    monkeypatch.delenv("BIOMINE_EUTILS_URL", raising=False)
    assert main(["fetch", "--query", "warfarin", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "biomine: error: no contact email for NCBI, which asks every E-utilities client (https://eutils.ncbi."
        "nlm.nih.gov/entrez/eutils/) for one: give an email address, or set NCBI_EMAIL (--email)\n"
    )
    assert not (tmp_path / "out").exists()


def test_job_output_errors_name_the_job_key(tmp_path, demo_models, capsys):
    """A job's output that is a file, or another job's, is refused naming ``[job] output`` (never ``--out``)."""
    (tmp_path / "a-file").write_text("x")
    tasks = f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\n'
    err = refused(capsys, job(tmp_path, output=f'"{tmp_path / "a-file"}"', tasks=tasks))
    assert f"[job] output = '{tmp_path / 'a-file'}' is a file: name a folder (it is created if needed)" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_job.json").write_text(json.dumps({"format": "biomine-job", "name": "other", "source": {}}))
    err = refused(capsys, job(tmp_path, tasks=tasks))
    assert err.startswith(
        f"biomine: error: 1 problem in {tmp_path / 'job.toml'}: (1) {tmp_path / 'out'} belongs to job 'other'"
    ), err
    assert err.rstrip().endswith("(the other job's outputs would be mixed in) ([job] output)"), err
    assert "--out" not in err


def test_check_passes_a_good_job_and_sees_an_owned_output(tmp_path, demo_models, capsys):
    path = job(tmp_path, tasks=f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\n')
    assert main(["run", str(path), "--check"]) == 0
    assert "ok" in capsys.readouterr().out and not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_job.json").write_text(json.dumps({"format": "biomine-job", "name": "other", "source": {}}))
    refused(capsys, path, "belongs to job 'other'")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["ingest", str(SAMPLE), "--out", "{tmp}/out", "--shard-rows", "0"], "--shard-rows 0: must be at least 1"),
        (["fetch", "--query", "x", "--out", "{tmp}/out", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["query", "{tmp}", ""], "no SQL given"),
        (["query", "{tmp}", "SELECT 1", "--max-rows", "-1"], "--max-rows -1: must be at least 1"),
        (
            ["ingest", str(SAMPLE), "--out", "{tmp}/a-file"],
            "{tmp}/a-file is a file, not a folder: name a folder for the output (it is created if needed) (--out)",
        ),
        (["ingest", str(SAMPLE), "--out", "{tmp}/x", "--workers", "0"], "--workers 0: must be at least 1"),
        (
            [
                "fetch",
                "--query",
                "x",
                "--email",
                "a@b.org",
                "--eutils-url",
                "http://127.0.0.1:9/",
                "--out",
                "{tmp}/a-file",
            ],
            "{tmp}/a-file is a file, not a folder: name a folder for the output (it is created if needed) (--out)",
        ),
        (
            ["fetch", "--query", "x", "--email", "a@b.org", "--eutils-url", "http://127.0.0.1:9/", "--out", "{tmp}/o"]
            + ["--mindate", "2020-01-01"],
            "mindate '2020-01-01' is not a date: use YYYY, YYYY/MM or YYYY/MM/DD (e.g. 2020/01/31) (--mindate)",
        ),
        (
            ["fetch", "--query", "x", "--email", "a@b.org", "--eutils-url", "http://127.0.0.1:9/", "--out", "{tmp}/o"]
            + ["--mindate", "2021", "--maxdate", "2020/06"],
            "mindate 2021 is after maxdate 2020/06 (--mindate, --maxdate)",
        ),
        (
            ["fetch", "--query", "x", "--email", "a@b.org", "--eutils-url", "http://127.0.0.1:9/", "--out", "{tmp}/o"]
            + ["--max", "-1"],
            "a limit of -1 records: give zero or more (--max)",
        ),
        (
            ["kb", "build", "--relations", "{tmp}/nothing", "--out", "{tmp}"],
            "{tmp} is a folder: name the Parquet file to write, e.g. {tmp}/kb.parquet (--out)",
        ),
        # An output without tables (the relations are a Delta table of the output now, not loose files).
        (["kb", "build", "--relations", "{tmp}/nothing", "--out", "{tmp}/kb.parquet"], "holds no biomine tables"),
        (["kb", "build", "{tmp}"], "holds no biomine tables"),
        (["kb", "diff", "{tmp}", "--since", "yesterday"], "--since 'yesterday': give a version of OUT/kb"),
        (["query", "{tmp}", "SELECT 1", "--as-of", "not-a-date"], "--as-of 'not-a-date': give a run number"),
        (["compact", "{tmp}"], "holds no biomine tables"),
        # `--min-deleted` is gone (compact is optimize + checkpoint + vacuum now): its retention is checked instead.
        (["compact", "{tmp}", "--retention-hours", "-1"], "--retention-hours -1: must be 0 or more"),
    ],
)
def test_command_line_mistakes_are_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "a-file").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    needle = needle.replace("{tmp}", str(tmp_path))
    assert err.startswith("biomine: error:") and len(err.strip().splitlines()) == 1 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file left
    assert (tmp_path / "a-file").read_text() == "x"


def test_help_pages_show_no_rest_markup(capsys):
    """`--help` of every command and subcommand: no reST roles or double backticks."""
    import argparse

    from pipeline.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    pages = [(p.prog, p.format_help()) for p in parsers(build_parser())]
    assert len(pages) > 15
    for prog, text in pages:
        assert "``" not in text and not any(role in text for role in (":mod:`", ":func:`", ":meth:`", ":class:`")), prog


def test_long_work_logs_progress_where_no_terminal_shows_a_bar(tmp_path, caplog):
    import logging

    from pipeline.progress import Progress
    from pipeline.pubmed.ingest import ingest_files

    caplog.set_level(logging.INFO)
    ingest_files([SAMPLE], tmp_path / "out", progress=False)
    # The progress lines name the table written: OUT/documents.
    done = f"ingest into {tmp_path / 'out' / 'documents'}: 1/1 files done"
    assert any(r.message.startswith(done) for r in caplog.records), [r.message for r in caplog.records]
    caplog.clear()
    log = logging.getLogger("test.progress")
    with Progress(3000, unit="article", desc="fetch 'warfarin'", bar=False, logger=log, every=0) as progress:
        progress.update(1000)
        progress.update(1000)
    lines = [r.message for r in caplog.records if r.name == "test.progress"]
    assert lines[0].startswith("fetch 'warfarin': 1000/3000 articles (") and "left" in lines[0], lines
    assert lines[-1].startswith("fetch 'warfarin': 2000/3000 articles done"), lines


def test_a_misspelt_release_is_no_release_and_the_nearest_names_are_suggested(tmp_path, capsys, monkeypatch):
    """`biogpt:re-dd` once read "not pulled; run `biomine models pull re-dd`", which `pull` then refused."""
    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "cache"))
    err = refused(capsys, job(tmp_path, tasks='[tasks.re]\ntask = "ddi"\nmodel = "biogpt:re-dd"\n'))
    assert "'biogpt:re-dd': no released model has that name; did you mean biogpt:re-ddi" in err, err
    assert "not pulled" not in err and "models pull re-dd`" not in err
    assert err.rstrip().endswith("([tasks.re] model)"), err
    # `models pull` says the same of the bare name.
    assert main(["models", "pull", "re-dd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: unknown released model 're-dd': no released model has that name; "), err
    assert "did you mean re-ddi" in err and len(err.strip().splitlines()) == 1


def test_a_misspelt_model_folder_is_a_missing_folder_not_a_hub_failure(tmp_path, demo_models, capsys, monkeypatch):
    """`models/ner-tni` (for models/ner-tiny) was taken for the Hub repository of an owner "models",
    and reported as a Hub network failure. A folder models/ exists here: it is a path, and no network is tried."""
    from biogpt import hub

    def no_network(*args, **kwargs):
        raise AssertionError(f"the Hub was asked for {args}")

    monkeypatch.setattr(hub, "hub_snapshot", no_network)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    shutil.copytree(demo_models["ner"], tmp_path / "models" / "ner-tiny")
    path = job(tmp_path, tasks='[tasks.ner]\nmodel = "models/ner-tni"\n')
    err = refused(capsys, path, "[tasks.ner] model = 'models/ner-tni': no such local folder", "hf://owner/name")
    assert "Hub at" not in err and "cannot fetch" not in err, err
    assert hub.parse("models/ner-tni", base_dir=tmp_path).kind == "path"
    assert hub.parse("microsoft/biogpt", base_dir=tmp_path).kind == "hub"  # no folder microsoft/ here


def test_the_daily_job_lists_every_problem_at_once(tmp_path, capsys, monkeypatch):
    """jobs/pubmed-daily.toml on a fresh checkout once said 1 problem (the NER folder), then, that fixed,
    2 more (inputs, release), in other layouts: the file's problems and the checks after it are one list.
    (Its source now syncs PubMed itself into a folder it creates: no missing input to report.)"""
    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "pubmed-daily.toml"
    shutil.copy(REPO / "jobs" / "pubmed-daily.toml", path)  # its paths are relative to it: nothing exists
    err = refused(
        capsys,
        path,
        "2 problems",
        "(1) [tasks.ner] model = '../models/ner-bc5cdr': no such local folder",
        "[tasks.re] biogpt:re-ddi: not pulled on this machine",
    )
    assert "(3)" not in err and not (tmp_path / "data").exists()  # --check syncs nothing


def test_a_job_broken_in_many_places_is_refused_once_with_every_problem(tmp_path, demo_models, capsys, monkeypatch):
    """Problems of the file (keys, types, values, folders) and of the checks after it (output, inputs,
    releases, checkpoints) in one list, one layout, exit 2; a single problem has the same layout."""
    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("x")
    path = job(
        tmp_path,
        output=f'"{tmp_path / "a-file"}"',
        job_extra='schedule = "nightly"\ncolour = "blue"',
        source='kind = "files"\npaths = ["nowhere/*.xml.gz"]\nshard_size = "10"',
        tasks=(
            f'[tasks.ner]\nmodel = "{demo_models["summarize"]}"\n'  # a base LM given to NER
            '[tasks.re]\ntask = "ddi"\nmodel = "biogpt:re-dd"\n'
            '[tasks.summarize]\nmodel = "./models/lm"\nbatch_size = 0\n'
        ),
        resources='dtype = "int8"',
    )
    err = refused(
        capsys,
        path,
        "10 problems",
        "[job] colour: unknown key",
        "[job] schedule = 'nightly': use one of",
        "[source] shard_size = '10': expected int",
        "[tasks.summarize] model = './models/lm': no such local folder",
        "[tasks.summarize] batch_size must be a positive integer, got 0",
        "[resources] dtype = 'int8'",
        "is a file: name a folder",
        "matches no files",
        "[tasks.ner] ner: ",
        "'biogpt:re-dd': no released model has that name; did you mean biogpt:re-ddi",
    )
    assert "(10) " in err and "(11)" not in err
    single = refused(capsys, job(tmp_path, tasks=f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\ncolour = 1\n'))
    assert single.startswith(
        f"biomine: error: 1 problem in {tmp_path / 'job.toml'}: (1) [tasks.ner] colour: unknown key"
    )


def test_adding_input_files_is_the_same_job_and_another_job_is_told_what_differs(tmp_path, demo_models, capsys):
    """An update file added to a files job's `paths` was refused as another job ("belongs to job 'demo'
    ... not to job 'demo'"); a truly different job is still refused, saying what differs, without reprs."""
    from pipeline.run.jobspec import load_job
    from pipeline.run.plan import job_identity
    from pipeline.store.output import JobOutput

    tasks = f'[tasks.ner]\nmodel = "{demo_models["ner"]}"\n'
    path = job(tmp_path, tasks=tasks)
    JobOutput(str(tmp_path / "out")).check_owner(job_identity(load_job(path)), claim=True)  # what a run records
    update = tmp_path / "pubmed26n0002.xml"
    shutil.copy(SAMPLE, update)
    grown = job(tmp_path, tasks=tasks, source=f'kind = "files"\npaths = ["{SAMPLE}", "{update}"]')
    capsys.readouterr()
    assert main(["run", str(grown), "--check"]) == 0, capsys.readouterr().err
    # A record of an older release listed the paths: another list is still the same job.
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    record["source"]["paths"] = ["data"]
    (tmp_path / "out" / "_job.json").write_text(json.dumps(record))
    assert main(["run", str(grown), "--check"]) == 0, capsys.readouterr().err

    other = job(tmp_path, tasks=tasks, source='kind = "entrez"\nquery = "warfarin"\nemail = "a@b.org"')
    err = refused(capsys, other)
    assert (
        f"{tmp_path / 'out'} belongs to job 'check' (source files), not to this job 'check' (source entrez, query "
        "'warfarin'): the source kind differs ('files' there, 'entrez' here) and the source query differs (none "
        "there, 'warfarin' here); use another output" in err
    ), err
    assert "{" not in err and err.rstrip().endswith("([job] output)")
