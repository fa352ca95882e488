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
        "[tasks.re] task = 'chemprot'",
        "no config.json in",
        "[tasks.sentiment]: unknown task",
        "[resources] dtype = 'int8'",
    ):
        assert needle in msg, needle


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
    from pipeline.tasks.ner import NerTask
    from pipeline.tasks.re import RelationTask
    from pipeline.tasks.registry import DATASETS, TASKS, entry, task_class
    from pipeline.tasks.summarize import SummarizeTask

    assert DATASETS == {"ner": "entities", "re": "relations", "summarize": "summaries"}
    for cls in (NerTask, RelationTask, SummarizeTask):
        assert task_class(cls.name) is cls and entry(cls.name).dataset == cls.dataset
        assert TASKS[cls.name].options is cls.Options
    with pytest.raises(JobConfigError, match="unknown task 'nope'"):
        entry("nope")
    code = "import sys, pipeline.tasks.registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=JOBS.parent, check=True)
    assert done.stdout.strip() == "False"
