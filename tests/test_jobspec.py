"""Job TOML validation: every problem reported at once, with its key path; shipped examples parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from biogpt.errors import ConfigError
from pipeline.cli import main
from pipeline.run.jobspec import load_job

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def write(tmp_path, text):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_valid_job_resolves_paths_relative_to_the_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    spec = load_job(
        write(
            tmp_path,
            """
[job]
name = "x"
output = "out"
[source]
kind = "entrez"
query = "aspirin"
mindate = "2020/01/01"
maxdate = "2020/12"
max = 10
[tasks.re]
task = "ddi"
model = "m"
batch_size = 4
[tasks.summarize]
model = "m"
prompt = "{title} In summary,"
""",
        )
    )
    assert Path(spec.output) == tmp_path / "out"
    assert Path(spec.tasks["re"].model) == tmp_path / "m" and spec.tasks["re"].batch_size == 4
    assert spec.tasks["summarize"].max_new_tokens == 64 and spec.source.max == 10


def test_all_problems_are_listed_with_their_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(
            write(
                tmp_path,
                """
[job]
name = "x"
output = "out"
colour = "blue"
[source]
kind = "entrez"
query = "aspirin"
mindate = "2020/13/01"
maxdate = "2019/01/01"
new_baseline = true
[tasks.re]
task = "chemprot"
model = "missing-model"
[tasks.sentiment]
model = "m"
[resources]
dtype = "int8"
""",
            )
        )
    msg = str(err.value)
    for needle in (
        "[job] colour: unknown key",
        "[source] mindate = '2020/13/01'",
        '[source] new_baseline: only for kind = "files"',
        "[tasks.re] task = 'chemprot'",
        "model = 'missing-model': no such local folder",
        "[tasks.sentiment]: unknown task",
        "[resources] dtype = 'int8'",
    ):
        assert needle in msg, needle


def test_a_files_job_may_say_its_newest_year_is_a_whole_new_baseline(tmp_path):
    job = '[job]\nname = "x"\noutput = "out"\n[source]\nkind = "files"\npaths = ["in"]\nnew_baseline = {}\n'
    assert load_job(write(tmp_path, job.format("true"))).source.new_baseline is True
    assert load_job(write(tmp_path, job.format("false"))).source.new_baseline is False
    with pytest.raises(ConfigError, match=r"\[source\] new_baseline = 'yes': expected bool"):
        load_job(write(tmp_path, job.format('"yes"')))


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(write(tmp_path, "[job\nname="))
    with pytest.raises(ConfigError, match=r"\[source\] paths must be"):
        load_job(write(tmp_path, '[job]\nname="x"\noutput="o"\n[source]\nkind="files"\n'))


@pytest.mark.parametrize("name", ["pubmed-daily.toml", "ddi-kb.toml"])
def test_shipped_examples_parse(name):
    spec = load_job(JOBS / name, check_models=False)
    assert spec.tasks and spec.name


def test_cli_check_reports_without_traceback(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: job file") and "Traceback" not in err


def test_storage_uris_stay_uris(tmp_path):
    """`output = "s3://bucket/out"` once became the local path jobs/s3:/bucket/out."""
    spec = load_job(
        write(
            tmp_path,
            """
[job]
name = "x"
output = "s3://bucket/out"
[source]
kind = "files"
paths = ["s3://bucket/pubmed/baseline/", "updates/*.xml.gz"]
[tasks.ner]
model = "s3://bucket/models/ner"
""",
        ),
        check_models=False,
    )
    assert spec.output == "s3://bucket/out" and spec.tasks["ner"].model == "s3://bucket/models/ner"
    assert spec.source.paths == ["s3://bucket/pubmed/baseline/", str(tmp_path / "updates" / "*.xml.gz")]
    with pytest.raises(ConfigError, match=r"\[job\] output = 5: expected a string"):
        load_job(write(tmp_path, '[job]\nname = "x"\noutput = 5\n[source]\nkind = "files"\npaths = ["a"]\n'))


def test_the_task_registry_is_built_from_the_task_classes_without_torch():
    """Each task class declares its name and dataset; the registry collects them, and importing it
    (job validation, ``biomine --help``) loads no torch."""
    import subprocess
    import sys

    from pipeline.errors import JobConfigError
    from pipeline.tasks.classify import ClassifyTask
    from pipeline.tasks.ner import NerTask
    from pipeline.tasks.qa import QATask
    from pipeline.tasks.re import RelationTask
    from pipeline.tasks.registry import DATASETS, TASKS, entry, task_class
    from pipeline.tasks.summarize import SummarizeTask

    assert DATASETS == {
        "ner": "entities",
        "re": "relations",
        "summarize": "summaries",
        "qa": "answers",
        "classify": "labels",
    }
    for cls in (NerTask, RelationTask, SummarizeTask, QATask, ClassifyTask):
        assert task_class(cls.name) is cls and entry(cls.name).dataset == cls.dataset
        assert TASKS[cls.name].options is cls.Options
    with pytest.raises(JobConfigError, match="unknown task 'nope'"):
        entry("nope")
    code = "import sys, pipeline.tasks.registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=JOBS.parent, check=True)
    assert done.stdout.strip() == "False"


# --- one date grammar, one reader, and the job keys errors end with ---------------------------------

DATES = {
    "2020": None,
    "2020/1": None,
    "2020/02/29": None,
    "2020-01-01": "use YYYY, YYYY/MM or YYYY/MM/DD (e.g. 2020/01/31)",
    "20/01/01": "use YYYY, YYYY/MM or YYYY/MM/DD (e.g. 2020/01/31)",
    "2020/13": "not a calendar date (month must be in 1..12)",
    "2019/02/29": "not a calendar date (day is out of range for month)",
}


@pytest.mark.parametrize("text", list(DATES))
def test_jobs_and_fetch_share_one_date_grammar(tmp_path, text):
    """The job parser and the fetch step accept and refuse the same dates, with the same reason."""
    from pipeline.errors import EutilsError, JobConfigError
    from pipeline.pubmed.eutils import parse_date

    path = write(
        tmp_path, f'[job]\nname = "x"\noutput = "out"\n[source]\nkind = "entrez"\nquery = "q"\nmindate = "{text}"\n'
    )
    problem = DATES[text]
    if problem is None:
        assert load_job(path, check_models=False).source.mindate == text
        assert parse_date(text, end=False, setting="mindate") is not None
        return
    with pytest.raises(JobConfigError) as job_error:
        load_job(path, check_models=False)
    assert f"[source] mindate = '{text}': {problem}" in str(job_error.value)
    with pytest.raises(EutilsError) as fetch_error:
        parse_date(text, end=False, setting="mindate")
    assert str(fetch_error.value) == f"mindate '{text}' is not a date: {problem}"
    assert fetch_error.value.setting == "mindate"


def test_date_order_compares_periods_not_strings(tmp_path):
    from pipeline.errors import JobConfigError

    job = '[job]\nname = "x"\noutput = "out"\n[source]\nkind = "entrez"\nquery = "q"\n'
    # June 2020 lies within the year 2020 (the old string comparison refused it).
    spec = load_job(write(tmp_path, job + 'mindate = "2020/06"\nmaxdate = "2020"\n'), check_models=False)
    assert (spec.source.mindate, spec.source.maxdate) == ("2020/06", "2020")
    with pytest.raises(JobConfigError, match=r"\[source\] mindate 2021 is after maxdate 2020/12$"):
        load_job(write(tmp_path, job + 'mindate = "2021"\nmaxdate = "2020/12"\n'), check_models=False)


def test_fetch_credentials_come_through_the_job_reader(tmp_path):
    from pipeline.errors import JobConfigError
    from pipeline.run.jobspec import source_credentials

    path = write(tmp_path, '[source]\nemail = "a@b.org"\napi_key = 7\n')
    with pytest.raises(JobConfigError, match=r"1 problem in .*job.toml: \(1\) \[source\] api_key = 7: expected str$"):
        source_credentials(path)
    with pytest.raises(JobConfigError, match=r"job file .*nothing.toml does not exist"):
        source_credentials(tmp_path / "nothing.toml")


def test_errors_name_the_job_key_or_the_flag_once(monkeypatch):
    """A lower room's error names its setting; the run layer adds the job key (first spelling wins)."""
    import pickle

    from pipeline.errors import EutilsError, StorageError
    from pipeline.run import runner
    from pipeline.run.jobspec import JOB_KEYS, task_keys

    def fail(*args):
        raise EutilsError("no contact email for NCBI", setting="email")

    monkeypatch.setattr(runner, "_run_plan", fail)
    with pytest.raises(EutilsError) as err:
        runner.run_plan(None)  # type: ignore[arg-type]
    assert str(err.value) == "no contact email for NCBI ([source] email)"
    assert str(err.value.spell({"email": "--email"})) == "no contact email for NCBI ([source] email)"
    copy = pickle.loads(pickle.dumps(err.value))  # errors cross Ray's process boundaries
    assert (copy.setting, copy.spelling, str(copy)) == ("email", "[source] email", str(err.value))

    both = EutilsError("mindate 2021 is after maxdate 2020", setting=("mindate", "maxdate"))
    assert str(both.spell(JOB_KEYS)).endswith("([source] mindate, [source] maxdate)")
    assert str(EutilsError("x", setting="max_records").spell(JOB_KEYS)) == "x ([source] max)"
    assert str(StorageError("x", setting="output").spell(JOB_KEYS)) == "x ([job] output)"  # an OSError too
    assert str(EutilsError("x", setting="rate").spell(JOB_KEYS)) == "x"  # a job has no rate
    assert task_keys("re")["task"] == "[tasks.re] task"
